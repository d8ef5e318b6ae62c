"""``owl synth OUT_DIR``: write a procedural visual world (images + caption/instruction data).

See docs/synthetic-world.md for the world, its tasks and the file formats.
"""

from __future__ import annotations

import argparse

from owlkit.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "out_dir", metavar="OUT_DIR", help="folder to write into (created; must be empty unless --overwrite)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="random seed; the same seed gives byte-identical files (default 0)"
    )
    parser.add_argument("--n", type=int, default=1000, help="number of images / stage-1 captions (default 1000)")
    parser.add_argument(
        "--n-instruct", type=int, default=None, help="number of stage-2 instruction samples (default: --n)"
    )
    parser.add_argument("--image-size", type=int, default=224, help="image side in pixels (default 224)")
    parser.add_argument(
        "--format", dest="fmt", choices=("jsonl", "wds", "both"), default="both",
        help="stage-1 caption data as captions.jsonl, webdataset shards, or both (default both)",
    )
    parser.add_argument(
        "--tasks", nargs="+", default=None, metavar="TASK[=WEIGHT]",
        help="stage-2 task mix, e.g. 'colour count=2' or 'colour,count' (default: every task, equal weights)",
    )
    parser.add_argument("--word-prob", type=float, default=0.5, help="chance an image carries a word (default 0.5)")
    parser.add_argument("--noise-prob", type=float, default=0.3, help="chance of background noise (default 0.3)")
    parser.add_argument("--shard-size", type=int, default=1000, help="samples per webdataset shard (default 1000)")
    parser.add_argument(
        "--shard-image-ext", choices=("png", "jpg"), default="png", help="image format inside shards (default png)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace the world files already in OUT_DIR")


def parse_tasks(items: list[str] | None) -> dict[str, float] | None:
    """``["colour", "count=2"]`` or ``["colour,count=2"]`` -> ``{"colour": 1.0, "count": 2.0}``."""
    if items is None:
        return None
    weights: dict[str, float] = {}
    for item in items:
        for part in filter(None, (p.strip() for p in item.split(","))):
            name, sep, value = part.partition("=")
            try:
                weights[name.strip()] = float(value) if sep else 1.0
            except ValueError:
                raise ConfigError(f"bad task weight {part!r}; write TASK or TASK=NUMBER") from None
    if not weights:
        raise ConfigError("--tasks needs at least one task")
    return weights


def run(args: argparse.Namespace) -> int:
    from owlkit.zoo.world import make_world  # numpy + PIL: import only when the command runs

    manifest = make_world(
        args.out_dir,
        args.seed,
        args.n,
        args.image_size,
        fmt=args.fmt,
        task_weights=parse_tasks(args.tasks),
        n_instruct=args.n_instruct,
        word_prob=args.word_prob,
        noise_prob=args.noise_prob,
        shard_size=args.shard_size,
        shard_image_ext=args.shard_image_ext,
        overwrite=args.overwrite,
    )
    size = manifest["image_size"]
    print(f"wrote a synthetic world to {args.out_dir} (seed {manifest['seed']})")
    print(f"  images: {manifest['n']} at {size}x{size} in images/, scene descriptions in scenes.jsonl")
    stage1 = [f for f in manifest["files"] if f == "captions.jsonl"]
    shards = [f for f in manifest["files"] if f.startswith("shards/")]
    if shards:
        stage1.append(f"{len(shards)} shard{'s' if len(shards) != 1 else ''} in shards/")
    print(f"  stage 1 (captions): {', '.join(stage1)}")
    counts = ", ".join(f"{task} {count}" for task, count in manifest["task_counts"].items())
    print(f"  stage 2 (instructions): instruct.json, {manifest['n_instruct']} samples: {counts or 'none'}")
    print("  manifest: world.json")
    return 0
