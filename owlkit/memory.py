"""What a model needs in memory, what the machine has, and the dtype that fits.

A 7B-parameter checkpoint is 33 GB in float32: loading it on a 24 GB machine would be killed by
the kernel (exit 137, no message). So before anything is read, :func:`choose_dtype` compares
what the model needs in the chosen dtype with what is available, and refuses with one line
that says which dtype would fit.

The rule for the default dtype (no ``dtype`` given), the same in the Python API and every
command:

* CPU: float32 when it fits comfortably (what it needs, weights and room to run, is at most
  :data:`COMFORTABLE` of the available memory),
  else bfloat16 when that fits (a half-precision checkpoint loses nothing; float16 is not
  chosen on a CPU, where its products are slow), else an error;
* a GPU: the checkpoint's own dtype (usually half precision), checked against the GPU's free
  memory.

"Available" is the smallest of the kernel's ``MemAvailable``, the room left under the cgroup's
memory limit (containers) and ``OWLKIT_MAX_MEMORY`` / the ``max_memory`` argument, when given.
"""

from __future__ import annotations

import ctypes
import os
import re
import sys
from pathlib import Path

import torch

from owlkit.errors import CheckpointError, ConfigError
from owlkit.models.owl import OwlForCausalLM

#: Float32 is the CPU default while the model takes at most this share of the available memory.
COMFORTABLE = 0.6
#: Room needed besides the weights: activations, caches, the process itself (bytes, and a share).
OVERHEAD_BYTES = 512 * 2**20
OVERHEAD_SHARE = 0.10
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16", "float": "float32"}


def parse_dtype(value) -> torch.dtype | None:
    """``None``, a torch dtype or a name (``bfloat16``, ``bf16``, ``torch.float16``, ``auto``)."""
    if value is None or isinstance(value, torch.dtype):
        return value
    name = str(value).strip().lower().removeprefix("torch.")
    if name == "auto":
        return None
    name = _ALIASES.get(name, name)
    if name not in DTYPES:
        raise ConfigError(f"unknown dtype {value!r}; use float32, bfloat16 or float16 (or auto)")
    return DTYPES[name]


def parse_bytes(text: str) -> int:
    """``"8GB"``, ``"512 MiB"``, ``"1.5g"`` or a plain number of bytes."""
    found = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?b)?\s*", str(text).lower())
    if not found:
        raise ConfigError(f"cannot read {text!r} as a memory size; write it like 8GB or 512MB")
    scale = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}[found.group(2)]
    return int(float(found.group(1)) * scale)


def gb(n: int | float) -> str:
    return f"{n / 2**30:.1f} GB"


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil  # not a dependency: used where it happens to be installed (macOS, Windows)

        return int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001
        return None


def _cgroup_room() -> int | None:
    """Bytes left under the cgroup (v2, else v1) memory limit, if one is set."""
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit == "max" or not limit.isdigit() or int(limit) >= 2**60:
            return None
        return max(0, int(limit) - usage)
    return None


def available_bytes(device: torch.device | str | None = None, max_memory: int | str | None = None) -> int | None:
    """Memory a model may use on ``device`` (CPU RAM, or a GPU's free memory); None if unknown."""
    device = torch.device(device or "cpu")
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        found = [free]
    else:
        found = [x for x in (_meminfo_available(), _cgroup_room()) if x is not None]
    cap = max_memory if max_memory is not None else os.environ.get("OWLKIT_MAX_MEMORY")
    if cap not in (None, ""):
        found.append(cap if isinstance(cap, int) else parse_bytes(cap))
    return min(found) if found else None


def needed_bytes(num_params: int, dtype: torch.dtype, fixed_bytes: int = 0) -> int:
    """``num_params`` weights in ``dtype`` and ``fixed_bytes`` more (quantized weights), plus room to run them."""
    weights = num_params * torch.empty((), dtype=dtype).element_size() + fixed_bytes
    return int(weights * (1 + OVERHEAD_SHARE)) + OVERHEAD_BYTES


def count_parameters(config) -> int:
    """Parameters of the model ``config`` describes, without allocating it (meta device)."""
    with torch.device("meta"):
        model = OwlForCausalLM(config)
    return sum(p.numel() for p in model.parameters())


def choose_dtype(num_params: int, stored: torch.dtype, device: torch.device, requested: torch.dtype | None,
                 max_memory: int | str | None = None, what: str = "the model", fixed_bytes: int = 0) -> torch.dtype:
    """The dtype to load in (see module doc); a :class:`CheckpointError` when it cannot fit.

    ``num_params`` are held in the chosen dtype; ``fixed_bytes`` whatever the dtype (quantized
    weights).
    """
    def needed(dtype: torch.dtype) -> int:
        return needed_bytes(num_params, dtype, fixed_bytes)

    available = available_bytes(device, max_memory)
    if requested is None:
        if device.type != "cpu":
            requested = stored
        elif available is None or needed(torch.float32) <= COMFORTABLE * available:
            requested = torch.float32
        else:
            requested = torch.bfloat16
    if available is None or needed(requested) <= available:
        return requested
    where = "the GPU has" if device.type == "cuda" else "this machine has"
    count = f"{num_params / 1e9:.2f} B" if num_params >= 1e9 else f"{num_params / 1e6:.1f} M"
    line = (f"{what} ({count} parameters) needs {gb(needed(requested))} in "
            f"{str(requested).removeprefix('torch.')} and {where} {gb(available)} available")
    if requested == torch.float32 and needed(torch.bfloat16) <= available:  # the one smaller dtype to offer
        line += f"; --dtype bfloat16 (dtype=bfloat16) needs {gb(needed(torch.bfloat16))} and fits"
    else:
        line += "; no dtype fits: free memory, or use a machine (or GPU) with more"
    raise CheckpointError(line)


def release_free_memory() -> None:
    """Hand memory the process has freed back to the kernel (glibc's ``malloc_trim``; Linux).

    Freed blocks of a few to tens of megabytes stay in glibc's heap, fragmented, so the resident
    set keeps growing while a model is quantized layer by layer from such temporaries (measured:
    a peak of 10.3 GB instead of 6-7 GB for the 7B shapes in int4). Cheap enough to call per layer.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
