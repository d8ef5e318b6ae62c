"""A world on disk: :func:`make_world` writes one, :func:`load_scenes` reads its scenes back.

Files: ``images/`` (PNG), ``scenes.jsonl``, stage-1 captions as ``captions.jsonl`` and/or
img2dataset-style webdataset shards, stage-2 instructions as LLaVA JSON, the manifest
``world.json``. Shards carry fixed metadata (mtime, owner), so the same seed gives
byte-identical files.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Mapping

from PIL import Image

from owlkit.errors import ConfigError
from owlkit.zoo.world.language import caption
from owlkit.zoo.world.rendering import render
from owlkit.zoo.world.scenes import Scene, random_scene
from owlkit.zoo.world.settings import check_image_size, check_prob, check_task_weights, stream
from owlkit.zoo.world.tasks import conversations, generate, images_for
from owlkit.zoo.world.vocabulary import TASKS


_TAR_MTIME = 946684800  # 2000-01-01, fixed so shards are byte-identical across runs
WORLD_FILES = ("images", "shards", "scenes.jsonl", "captions.jsonl", "instruct.json", "world.json")
FORMATS = ("jsonl", "wds", "both")


def _image_bytes(img: Image.Image, ext: str) -> bytes:
    buf = io.BytesIO()
    if ext == "png":
        img.save(buf, format="PNG")
    else:
        img.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _tar_add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = _TAR_MTIME
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def _apportion(weights: Mapping[str, float], total: int) -> dict[str, int]:
    """Exact counts per task summing to ``total``, proportional to weights (largest remainder)."""
    s = sum(weights.values())
    raw = {t: total * w / s for t, w in weights.items()}
    counts = {t: int(v) for t, v in raw.items()}
    rest = total - sum(counts.values())
    for t in sorted(raw, key=lambda t: (-(raw[t] - counts[t]), TASKS.index(t)))[:rest]:
        counts[t] += 1
    return counts



def _prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"{out_dir} is a file; give a folder to write the world into")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            raise ConfigError(f"{out_dir} is not empty; choose an empty folder or pass --overwrite")
        # Remove only what a world consists of, never anything else the user keeps there.
        for name in WORLD_FILES:
            path = out_dir / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)


def make_world(
    out_dir: str | Path,
    seed: int,
    n: int,
    image_size: int = 224,
    *,
    fmt: str = "both",
    task_weights: Mapping[str, float] | Iterable[str] | None = None,
    n_instruct: int | None = None,
    word_prob: float = 0.5,
    noise_prob: float = 0.3,
    shard_size: int = 1000,
    shard_image_ext: str = "png",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write a world of ``n`` images to ``out_dir`` and return its manifest (also in ``world.json``).

    Files: ``images/000001.png``...; ``scenes.jsonl`` (``{"key", "image", "scene"}`` a line);
    stage-1 captions as ``captions.jsonl`` (``fmt`` jsonl/both) and ``shards/00000.tar``...
    (``fmt`` wds/both; ``KEY.png|jpg``, ``KEY.txt``, ``KEY.json`` per sample); stage-2
    ``instruct.json``: ``n_instruct`` (default ``n``) LLaVA samples over the same images, task
    counts proportional to ``task_weights`` (a mapping, or task names for equal weights).
    A task a drawn image does not allow is retried on other images, then falls back to
    ``caption`` (the manifest's counts tell the truth).
    """
    if int(n) != n or n <= 0:
        raise ConfigError(f"n must be a positive integer, got {n}")
    n = int(n)
    n_instruct = n if n_instruct is None else n_instruct
    if int(n_instruct) != n_instruct or n_instruct < 0:
        raise ConfigError(f"n_instruct must be an integer >= 0, got {n_instruct}")
    image_size = check_image_size(image_size)
    if fmt not in FORMATS:
        raise ConfigError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if shard_image_ext not in ("png", "jpg"):
        raise ConfigError(f"shard image extension must be png or jpg, got {shard_image_ext!r}")
    if int(shard_size) != shard_size or shard_size <= 0:
        raise ConfigError(f"shard size must be a positive integer, got {shard_size}")
    weights = check_task_weights(task_weights)
    word_prob, noise_prob = check_prob("word_prob", word_prob), check_prob("noise_prob", noise_prob)
    out = Path(out_dir)
    _prepare_out_dir(out, overwrite)

    keys = [f"{i + 1:06d}" for i in range(n)]
    paths = [f"images/{k}.png" for k in keys]
    scenes = [
        random_scene(stream("train", seed, "scene", i), word_prob=word_prob, noise_prob=noise_prob)
        for i in range(n)
    ]
    captions = [caption(s) for s in scenes]
    files: list[str] = []

    # Images, scene descriptions, stage-1 captions.
    (out / "images").mkdir()
    write_jsonl = fmt in ("jsonl", "both")
    write_wds = fmt in ("wds", "both")
    tar: tarfile.TarFile | None = None
    n_shards = 0
    if write_wds:
        (out / "shards").mkdir()
    with open(out / "scenes.jsonl", "w", encoding="utf-8") as f_scenes, (
        open(out / "captions.jsonl", "w", encoding="utf-8") if write_jsonl else io.StringIO()
    ) as f_caps:
        for i, (key, path, scene, cap) in enumerate(zip(keys, paths, scenes, captions)):
            img = render(scene, image_size)
            png = _image_bytes(img, "png")
            (out / path).write_bytes(png)
            f_scenes.write(json.dumps({"key": key, "image": path, "scene": scene.to_dict()}) + "\n")
            if write_jsonl:
                f_caps.write(json.dumps({"image": path, "caption": cap}) + "\n")
            if write_wds:
                if i % shard_size == 0:
                    if tar is not None:
                        tar.close()
                    shard = out / "shards" / f"{n_shards:05d}.tar"
                    tar = tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT)
                    n_shards += 1
                data = png if shard_image_ext == "png" else _image_bytes(img, "jpg")
                meta = {
                    "key": key, "caption": cap, "status": "success", "error_message": None,
                    "width": image_size, "height": image_size, "scene": scene.to_dict(),
                }
                _tar_add(tar, f"{key}.{shard_image_ext}", data)
                _tar_add(tar, f"{key}.txt", cap.encode("utf-8"))
                _tar_add(tar, f"{key}.json", json.dumps(meta).encode("utf-8"))
    if tar is not None:
        tar.close()
    files += ["images/", "scenes.jsonl"]
    if write_jsonl:
        files.append("captions.jsonl")
    if write_wds:
        files += [f"shards/{i:05d}.tar" for i in range(n_shards)]

    # Stage-2 instruction samples.
    rng = stream("train", seed, "instruct")
    plan = [t for t, c in _apportion(weights, int(n_instruct)).items() for _ in range(c)]
    rng.shuffle(plan)
    samples = []
    for j, task in enumerate(plan):
        turns, idx = None, []
        for attempt in range(60):
            first = j % n if attempt == 0 else rng.randrange(n)
            if images_for(task) == 0:
                idx = []
            elif images_for(task) == 1:
                idx = [first]
            else:
                second = rng.randrange(n - 1) if n > 1 else 0
                idx = [first, second + (second >= first and n > 1)]
            turns = generate(task, rng, [scenes[k] for k in idx])
            if turns:
                break
        if not turns:
            task, idx = "caption", [j % n]
            turns = generate(task, rng, [scenes[idx[0]]])
        sample: dict[str, Any] = {"id": f"{j + 1:06d}", "task": task}
        if len(idx) == 1:
            sample["image"] = paths[idx[0]]
        elif idx:
            sample["image"] = [paths[k] for k in idx]
        sample["conversations"] = conversations(turns, len(idx))
        samples.append(sample)
    with open(out / "instruct.json", "w", encoding="utf-8") as f:
        json.dump(samples, f, indent=1)
        f.write("\n")
    files.append("instruct.json")

    counts = Counter(s["task"] for s in samples)
    manifest = {
        "generator": "owlkit.data.synth",  # the name world.json files carry for this format
        "version": 1,
        "seed": seed,
        "n": n,
        "n_instruct": int(n_instruct),
        "image_size": image_size,
        "format": fmt,
        "task_weights": weights,
        "word_prob": word_prob,
        "noise_prob": noise_prob,
        "shard_size": int(shard_size),
        "shard_image_ext": shard_image_ext,
        "task_counts": {t: counts[t] for t in TASKS if counts[t]},
        "files": files + ["world.json"],
    }
    with open(out / "world.json", "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    return manifest


def load_scenes(path: str | Path) -> dict[str, Scene]:
    """``scenes.jsonl`` (or a world folder) as ``{image path: Scene}``."""
    path = Path(path)
    if path.is_dir():
        path = path / "scenes.jsonl"
    out = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                out[row["image"]] = Scene.from_dict(row["scene"])
    return out
