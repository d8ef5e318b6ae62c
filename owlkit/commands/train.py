"""``owl train RECIPE [key=value ...] [--resume [CHECKPOINT]] [--nproc N]``.

RECIPE is the name of a recipe shipped in the package (a bare name, no ``/`` and no ``.yaml``:
``owl2_stage1``, ``owl2_stage2``, ``owl1_stage1``, ``owl1_stage2``, ``smoke``, ...; they live in
``owlkit/recipes/``) or the path of a YAML file; every key can be overridden as ``a.b=value``
(YAML scalars).
``--nproc N`` starts N processes with torchrun (or ``--launcher spawn``: torch.multiprocessing);
the recipe's ``train.distributed`` chooses DDP or FSDP2. See docs/training.md.
"""

from __future__ import annotations

import argparse
import os
import sys

from owlkit.errors import ConfigError, OwlError
from owlkit.training.launch import launch_torchrun, spawn
from owlkit.training.recipe import dump_recipe, load_recipe


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="packaged recipe name (e.g. owl2_stage2) or recipe YAML file")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="recipe overrides, nested keys with dots (e.g. optim.lr=2e-5 train.steps=100)")
    parser.add_argument("--resume", nargs="?", const="latest", default=None, metavar="CHECKPOINT",
                        help="continue from the newest checkpoint of output_dir (or from CHECKPOINT)")
    parser.add_argument("--nproc", type=int, default=None, metavar="N",
                        help="number of processes on this machine (DDP / FSDP2 per train.distributed)")
    parser.add_argument("--launcher", choices=("torchrun", "spawn"), default="torchrun",
                        help="how --nproc starts processes (default torchrun)")
    parser.add_argument("--print-recipe", action="store_true", help="print the resolved recipe and exit")


def _worker(recipe: str, overrides: list[str], resume) -> None:
    from owlkit.training.loop import train  # torch: import only when the command runs

    try:
        train(recipe, overrides, resume=resume or False)
    except OwlError as exc:
        if os.environ.get("RANK", "0") == "0":
            print(f"owl train: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)


def run(args) -> int:
    if args.resume and "=" in args.resume and not os.path.exists(args.resume):
        # `--resume key=value`: argparse took an override for the optional CHECKPOINT
        args.overrides = [*args.overrides, args.resume]
        args.resume = "latest"
    recipe = load_recipe(args.recipe, args.overrides)  # validate before starting anything
    if args.print_recipe:
        print(dump_recipe(recipe), end="")
        return 0
    nproc = args.nproc
    if nproc is not None and nproc < 1:
        raise ConfigError("--nproc must be at least 1")
    if nproc and nproc > 1 and "WORLD_SIZE" not in os.environ:
        extra = ["--resume", args.resume] if args.resume else []
        if args.launcher == "torchrun":
            return launch_torchrun(nproc, [args.recipe, *args.overrides, *extra])
        from torch.multiprocessing import ProcessExitedException

        try:
            spawn(_worker, nproc, (args.recipe, list(args.overrides), args.resume))
        except ProcessExitedException as exc:
            return exc.exit_code or 1
        return 0
    from owlkit.training.loop import train  # torch: import only when the command runs

    train(recipe, resume=args.resume or False)
    return 0
