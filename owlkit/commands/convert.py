"""``owl convert SRC DST [--format owlkit|official] [--dtype D]``."""

from __future__ import annotations

from pathlib import Path

from owlkit.errors import OwlError


def add_arguments(parser) -> None:
    parser.add_argument("src", help="model folder (official mPLUG-Owl / mPLUG-Owl2, or owlkit)")
    parser.add_argument("dst", help="output folder (must not exist or be empty)")
    parser.add_argument("--format", choices=["owlkit", "official"], default="owlkit",
                        help="layout of the output (default: owlkit)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                        help="store the weights in this dtype (default: as stored in SRC, bit for bit)")


def run(args) -> int:
    from owlkit.checkpoints import FORMATS, convert, detect_format  # torch: import only when the command runs

    dst = Path(args.dst)
    if dst.exists() and any(dst.iterdir()):
        raise OwlError(f"{dst} exists and is not empty; choose a new output folder")
    kind = detect_format(args.src)
    out = convert(args.src, dst, format=args.format, dtype=args.dtype)
    print(f"converted {args.src} ({FORMATS[kind]}) -> {out} ({args.format})")
    return 0
