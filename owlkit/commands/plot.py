"""``owl plot RUN_DIR [--out DIR]``: PNG curves of the training loss and learning rate."""

from __future__ import annotations

from owlkit.training.metrics import plot_run


def add_arguments(parser) -> None:
    parser.add_argument("run_dir", help="training output folder (holds metrics.jsonl)")
    parser.add_argument("--out", default=None, help="folder for the PNG files (default: RUN_DIR)")


def run(args) -> int:
    for path in plot_run(args.run_dir, args.out):
        print(path)
    return 0
