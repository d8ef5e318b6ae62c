"""Checkpoints that survive a crash.

A checkpoint is a folder ``OUTPUT_DIR/checkpoints/step-NNNNNNNN/`` holding

* ``model/``: the weights as an owlkit model folder (``owlkit.load_model`` loads it), or for LoRA
  runs ``adapter/``: the peft adapter (adapters + ``modules_to_save``; the base stays the init);
* ``optimizer.pt``: the optimiser state with parameter names as keys (plain tensors and
  primitives, read back with ``torch.load(weights_only=True)``);
* ``state.pt``: step, scheduler state, data position (samples consumed), counters;
* ``rng-rank{R}.pt``: python / numpy / torch (/ CUDA) generator states of each rank;
* ``trainer_state.json``: the same facts for people.

It is written into ``step-NNNNNNNN.tmp`` first; every file is flushed to disk and the folder is
renamed into place only when complete, so a crash at any instant leaves either the old set of
checkpoints or the new one, never a half-written checkpoint that resume would pick up. Only the
``keep`` newest are kept.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError

from owlkit import outputs
from owlkit.errors import OwlError, first_line

CHECKPOINTS = "checkpoints"
FORMAT_VERSION = 1


def checkpoint_dir(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"step-{step:08d}"


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    out = []
    for path in root.iterdir():
        name = path.name
        if path.is_dir() and name.startswith("step-") and name[5:].isdigit() and (path / "state.pt").exists():
            out.append((int(name[5:]), path))
    return sorted(out)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def remove_partial(run_dir: str | Path) -> None:
    """Delete leftovers of a checkpoint (or final model) write that was interrupted."""
    root = Path(run_dir) / CHECKPOINTS
    if root.is_dir():
        for path in root.iterdir():
            if path.name.endswith((".tmp", ".old")):
                shutil.rmtree(path, ignore_errors=True)
    for name in ("final", "adapter"):
        for suffix in (".tmp", ".old"):
            shutil.rmtree(Path(run_dir) / (name + suffix), ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# RNG states
# ---------------------------------------------------------------------------------------------


def rng_state() -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype("int64")), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype("uint32"), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def _fsync_tree(path: Path) -> None:
    for root, _, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


#: What a failed write raises: the OS (full disk, permissions, file size limit), torch.save's
#: zip writer (RuntimeError "... failed writing file ..."), safetensors (its own error type).
WRITE_ERRORS: tuple[type[BaseException], ...] = (OSError, RuntimeError, SafetensorError)


def os_reason(exc: BaseException) -> str:
    """A write error in a few words: ``No space left on device``, ``File too large``, ..."""
    if isinstance(exc, OSError):
        return outputs.os_reason(exc)
    return first_line(exc, 200)


def replace_folder(tmp: Path, final: Path) -> None:
    """Flush ``tmp`` and rename it to ``final`` (replacing an older ``final``)."""
    _fsync_tree(tmp)
    old = final.with_name(final.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.rename(final, old)
    os.rename(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def begin(run_dir: str | Path, step: int) -> Path:
    """Create the temporary folder of the checkpoint of ``step`` (main rank)."""
    tmp = checkpoint_dir(run_dir, step).with_name(f"step-{step:08d}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def commit(tmp: Path, keep: int) -> Path:
    """Flush, rename into place, prune to the ``keep`` newest (main rank)."""
    final = tmp.with_name(tmp.name[: -len(".tmp")])
    replace_folder(tmp, final)  # the same step written again (e.g. after a resume) replaces it
    parent_fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(parent_fd)
    finally:
        os.close(parent_fd)
    for _, path in list_checkpoints(final.parents[1])[:-keep]:
        shutil.rmtree(path, ignore_errors=True)
    return final


def save_torch(obj, path: Path) -> None:
    torch.save(obj, str(path))


def load_torch(path: Path):
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise OwlError(f"checkpoint file {path} is missing; the checkpoint is incomplete") from None
    except Exception as exc:
        first = first_line(exc, 200, empty="")
        raise OwlError(f"cannot read checkpoint file {path} ({first})") from None


def write_json(obj, path: Path) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")
