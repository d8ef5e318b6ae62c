"""``python -m owlkit.training RECIPE [key=value ...] [--resume [CHECKPOINT]]``.

The entry point torchrun starts on every process::

    torchrun --nproc_per_node 4 -m owlkit.training owl2_stage2 train.distributed=fsdp2

It is ``owl train`` without ``--nproc`` (each process runs this; ranks come from torchrun's
environment). Errors a user can fix print one line and exit with code 2.
"""

from __future__ import annotations

import sys

from owlkit.cli import main as cli_main


def main(argv: list[str] | None = None) -> int:
    return cli_main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
