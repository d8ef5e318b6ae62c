"""``owl merge-lora RUN_OR_ADAPTER_DIR OUT [--base MODEL_DIR]``: fold LoRA weights into the base.

The source may be a training output folder (its ``adapter/``, else the newest checkpoint's), a
checkpoint folder, or a peft adapter folder. The base model is ``--base``, else the run's
``base/`` folder, else the folder named in ``adapter_config.json``. OUT is a plain owlkit model
folder (``owl convert OUT DST --format official`` exports it).
"""

from __future__ import annotations

from pathlib import Path

from owlkit.errors import OwlError


def add_arguments(parser) -> None:
    parser.add_argument("source", help="run folder, checkpoint folder or adapter folder")
    parser.add_argument("out", help="output model folder (must not exist or be empty)")
    parser.add_argument("--base", default=None, help="base model folder (default: found from the source)")


def run(args) -> int:
    from owlkit.training.lora import find_adapter, find_base, merge_lora  # torch: import only when the command runs

    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise OwlError(f"{out} exists and is not empty; choose a new output folder")
    adapter = find_adapter(args.source)
    base = find_base(adapter, args.base)
    merge_lora(adapter, out, base=base)
    print(f"merged {adapter} into {base} -> {out}")
    return 0
