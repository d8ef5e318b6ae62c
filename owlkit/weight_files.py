"""Weight files of a model folder, read whole or one tensor at a time.

Formats: ``model.safetensors``, ``pytorch_model.bin`` (``torch.load(weights_only=True)``: no
arbitrary unpickling) or a sharded ``*.index.json`` of either kind; safetensors first.

:func:`read_state_dict` reads everything (small models, tests). :func:`weight_index` lists
names, shapes and dtypes without reading any tensor data, and :func:`stream_tensors` yields the
tensors one at a time, so that a loader converts and places each and keeps no second copy of
the model: a safetensors tensor is read alone (the file is mapped only while it is read); a
``.bin`` shard is memory-mapped and the pages of each tensor are handed back to the kernel once
the caller has made its own copy (``madvise(MADV_DONTNEED)`` on Linux), so a 16 GB shard never
becomes resident as a whole.
"""

from __future__ import annotations

import ctypes
import json
import mmap
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from owlkit.errors import CheckpointError, first_line

WEIGHT_FILES = ("model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json", "pytorch_model.bin")
_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}


@dataclass(frozen=True)
class TensorInfo:
    file: Path
    shape: tuple[int, ...]
    dtype: torch.dtype


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror}") from None


def find_weights(folder: Path) -> list[Path]:
    """The weight files of a folder, in the preferred format (safetensors first)."""
    for name in WEIGHT_FILES:
        path = folder / name
        if path.exists():
            if name.endswith(".index.json"):
                index = read_json(path)
                if "weight_map" not in index:
                    raise CheckpointError(f"{path} has no 'weight_map'; it is not a sharded-checkpoint index")
                return [folder / f for f in sorted(set(index["weight_map"].values()))]
            return [path]
    raise CheckpointError(
        f"no weights in {folder}: expected model.safetensors, pytorch_model.bin or a sharded *.index.json"
    )


def _missing(file: Path) -> CheckpointError:
    return CheckpointError(f"weight file {file} is missing (named by the index); the download is incomplete")


def _corrupt(file: Path, exc: Exception) -> CheckpointError:
    return CheckpointError(f"{file} is truncated or corrupt ({first_line(exc)}); re-download it")


def _load_bin(file: Path) -> dict[str, torch.Tensor]:
    """A ``.bin`` file memory-mapped: tensors are views of the file, nothing is read yet."""
    if not file.exists():
        raise _missing(file)
    try:
        return torch.load(str(file), map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # torch raises many types for corrupt archives / forbidden pickles
        reason = first_line(exc, 200)
        raise CheckpointError(
            f"{file} cannot be read as a weights-only PyTorch checkpoint ({reason}); re-download it or convert it to safetensors"
        ) from None


def read_file(file: Path) -> dict[str, torch.Tensor]:
    """Every tensor of one weight file."""
    if file.suffix != ".safetensors":
        return _load_bin(file)
    if not file.exists():
        raise _missing(file)
    try:
        return load_file(str(file))
    except (SafetensorError, OSError, ValueError) as exc:
        raise _corrupt(file, exc) from None


def read_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for file in find_weights(Path(folder)):
        state.update(read_file(file))
    return state


def weight_index(folder: Path) -> dict[str, TensorInfo]:
    """Name -> (file, shape, dtype) of every tensor, read from the headers only."""
    out: dict[str, TensorInfo] = {}
    for file in find_weights(Path(folder)):
        if file.suffix == ".safetensors":
            if not file.exists():
                raise _missing(file)
            try:
                with safe_open(str(file), framework="pt") as f:
                    for name in f.keys():
                        part = f.get_slice(name)
                        dtype = _SAFETENSORS_DTYPES.get(part.get_dtype())
                        if dtype is None:
                            raise CheckpointError(f"{file}: tensor {name} has the unsupported dtype {part.get_dtype()}")
                        out[name] = TensorInfo(file, tuple(part.get_shape()), dtype)
            except (SafetensorError, OSError, ValueError) as exc:
                raise _corrupt(file, exc) from None
        else:
            state = _load_bin(file)
            out.update({name: TensorInfo(file, tuple(t.shape), t.dtype) for name, t in state.items()})
            del state
    return out


def stream_tensors(index: dict[str, TensorInfo]) -> Iterator[tuple[str, torch.Tensor, bool]]:
    """``(name, tensor, mapped)`` one at a time, file by file.

    ``mapped`` tensors are views of a memory-mapped ``.bin`` file: copy them before the next
    item, because their pages are released as soon as the caller asks for the next one.
    """
    by_file: dict[Path, list[str]] = {}
    for name, info in index.items():
        by_file.setdefault(info.file, []).append(name)
    for file, names in by_file.items():
        if file.suffix == ".safetensors":
            for name in names:
                try:
                    with safe_open(str(file), framework="pt") as f:  # mapped only while this tensor is read
                        tensor = f.get_tensor(name)
                except (SafetensorError, OSError, ValueError) as exc:
                    raise _corrupt(file, exc) from None
                yield name, tensor, False
        else:
            state = _load_bin(file)
            for name in names:
                tensor = state.pop(name)
                try:
                    yield name, tensor, True
                finally:
                    release_pages(tensor)
                    del tensor
            del state


_PAGE = mmap.PAGESIZE
_MADV_DONTNEED = 4


def release_pages(tensor: torch.Tensor) -> None:
    """Tell the kernel the (file-backed, unmodified) pages under ``tensor`` are not needed now.

    They are dropped from this process's resident set and read again from the file if touched.
    Linux only; elsewhere the pages go when the file's mapping is closed.
    """
    if not sys.platform.startswith("linux") or tensor.device.type != "cpu" or tensor.numel() == 0:
        return
    start = tensor.untyped_storage().data_ptr() + tensor.storage_offset() * tensor.element_size()
    end = start + tensor.numel() * tensor.element_size()
    start -= start % _PAGE
    end += -end % _PAGE
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), ctypes.c_int(_MADV_DONTNEED))
    except (OSError, AttributeError):
        pass
