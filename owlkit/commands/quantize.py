"""``owl quantize SRC DST --bits 4|8 [--group-size 128]``: a quantized owlkit folder.

SRC is any folder ``load_model`` reads (official or owlkit); each weight is quantized as it is
read, so the float model is never held. DST loads as it is (``owl chat --model DST``), without
quantizing again.
"""

from __future__ import annotations

from pathlib import Path

from owlkit.errors import OwlError
from owlkit.outputs import writable_folder


def add_arguments(parser) -> None:
    parser.add_argument("src", help="model folder (official mPLUG-Owl / mPLUG-Owl2, or owlkit)")
    parser.add_argument("dst", help="output folder (must not exist or be empty)")
    parser.add_argument("--bits", type=int, choices=(4, 8), required=True, help="int8 per channel or int4 in groups")
    parser.add_argument("--group-size", type=int, default=None, help="int4 group size (default: the model config's int4_group_size, else 128)")
    parser.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"),
                        help="dtype of the parts that stay unquantized (default: as the loader chooses)")


def run(args) -> int:
    from owlkit.checkpoints import copy_side_files, load_model, save_model  # torch: import only when the command runs
    from owlkit.quantization import CONFIG_KEY  # torch: import only when the command runs

    dst = Path(args.dst)
    if dst.exists() and dst.is_dir() and any(dst.iterdir()):
        raise OwlError(f"{dst} exists and is not empty; choose a new output folder")
    writable_folder(dst, "DST")
    model = load_model(args.src, dtype=args.dtype, quantize=f"int{args.bits}", group_size=args.group_size,
                       keep_portable=True)
    save_model(model, dst)
    copy_side_files(Path(args.src), dst)
    info = getattr(model.config, CONFIG_KEY)
    kept = f"; kept in {model.dtype}: {', '.join(info['kept'])}" if info["kept"] else ""
    if info.get("in_int8"):
        kept += f"; in int8 (widths not a multiple of {info['group_size']}): {len(info['in_int8'])} layer(s)"
    if info.get("low_rank"):
        kept += f"; {len(info['low_rank'])} layer(s) keep their low-rank update in float"
    size = sum(f.stat().st_size for f in dst.glob("*.safetensors"))
    print(f"quantized {args.src} -> {dst} (int{info['bits']}"
          + (f", groups of {info['group_size']}" if info["bits"] == 4 else "") + f", {size / 2**20:.1f} MB{kept})")
    return 0
