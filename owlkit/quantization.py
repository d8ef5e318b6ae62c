"""Weight-only int8 / int4 quantization of the decoder, on PyTorch's own CPU kernels.

What is quantized: every linear layer of the language model (query, key/value of both
modality-adaptive branches, output, gate/up/down) and the LM head. The vision encoder, the
abstractor, the embeddings and the norms keep the model's dtype.

* ``int8``: one scale per output channel, symmetric: ``w ~ q * scale``, ``q`` in [-128, 127];
  kernel ``aten._weight_int8pack_mm``.
* ``int4``: groups of ``group_size`` inputs (default 128) per output channel, asymmetric:
  ``w ~ (q - 8) * scale + zero``, ``q`` in [0, 15], the scale and zero fitted by least squares
  to the codes; kernel ``aten._weight_int4pack_mm_for_cpu``. The LM head is int8 in this mode
  (:data:`INT8_IN_INT4`), and so are the layers a model's config names in ``int8_in_int4``.
  A layer whose input width is not a multiple of the group size, or whose output width is not
  a multiple of 16 (the kernel's tiles), stays unquantized (reported).

Files (``owl quantize``, ``save_pretrained``) hold a portable layout, plain tensors that
safetensors stores: ``qweight`` (int8 ``[N, K]``, or uint8 ``[N, K/2]`` with two 4-bit values a
byte, the even column in the high nibble), ``scales`` (``[N]`` or ``[N, K/G]``) and, for int4,
``zeros`` (``[N, K/G]``); the kernel's own layout is rebuilt when the model is loaded.

A fine-tuning's low-rank update can stay outside the rounding. A folder whose weights hold LoRA
merged in may carry the factors in ``low_rank.safetensors`` (``{layer}.lora_A`` ``[r, K]``,
``{layer}.lora_B`` ``[N, r]``, the update being ``lora_B @ lora_A``); quantized loading then
quantizes the weight without the update and adds ``x @ A.T @ B.T`` in float (the layer's
``lora_A`` / ``lora_B`` buffers, saved with it). Why: an update smaller than half a
quantization step rounds away, and a base that already sits on a 4-bit grid (a GGUF model)
rounds back exactly onto it (docs/performance.md measures owl-small).

The kernels are fast with bfloat16 activations on CPUs with avx512_bf16 (faster than the float32
product of the same shape) and slow with float32 ones (slower than float32). Which way runs is
measured once per process on this machine (:func:`compute_path`): the kernel with bfloat16
activations, the kernel with float32 activations, or the weights dequantized to float32 and a
plain product; the fastest wins. docs/performance.md has the figures.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn
from torch.nn import functional as F

from owlkit.errors import CheckpointError, ConfigError, first_line
from owlkit.memory import release_free_memory

BITS = {"int8": 8, "int4": 4}
DEFAULT_GROUP_SIZE = 128
GROUP_SIZES = (32, 64, 128, 256)  # what aten._weight_int4pack_mm_for_cpu accepts
#: in config.json: {"bits": 4, "group_size": 128, "kept": [in float], "in_int8": [int4 asked, int8 held], "low_rank": {layer: r}}
CONFIG_KEY = "owlkit_quantization"
LOW_RANK_FILE = "low_rank.safetensors"


def parse_quantize(value) -> int | None:
    """``None`` / ``"int8"`` / ``"int4"`` (also 8 / 4) -> bits."""
    if value in (None, "", "none"):
        return None
    key = f"int{value}" if isinstance(value, int) else str(value).lower()
    if key not in BITS:
        raise ConfigError(f"unknown quantize value {value!r}; use int8 or int4")
    return BITS[key]


def group_size_for(config, asked: int | None, where: str = "config.json") -> int:
    """The int4 group size to use: ``asked``, else ``config``'s ``int4_group_size`` (the size that
    model quantizes best in; owl-small's base sits on a grid of 32), else 128; checked against
    what the kernel takes. ``config`` None: no model preference (int8, which has no groups)."""
    preferred = getattr(config, "int4_group_size", None)
    if asked is None and preferred is not None and preferred not in GROUP_SIZES:
        raise CheckpointError(f"{where}: int4_group_size must be one of {', '.join(map(str, GROUP_SIZES))}, "
                              f"got {preferred!r}; fix or remove it")
    size = int(asked or preferred or DEFAULT_GROUP_SIZE)
    if size not in GROUP_SIZES:
        raise CheckpointError(f"group_size must be one of {', '.join(map(str, GROUP_SIZES))} "
                              f"(what PyTorch's int4 kernel takes), got {size}")
    return size


# ---------------------------------------------------------------------------------------------
# The arithmetic
# ---------------------------------------------------------------------------------------------


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    w = weight.float()
    scales = (w.abs().amax(dim=1) / 127).clamp(min=1e-10)
    q = (w / scales[:, None]).round().clamp(-128, 127).to(torch.int8)
    return q, scales


def quantize_int4(weight: torch.Tensor, group_size: int, refine: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(packed uint8 [N, K/2], scales [N, K/G], zeros [N, K/G]).

    Starts from each group's min-max range, then ``refine`` rounds of: codes for the current
    (scale, zero), then the least-squares (scale, zero) for those codes. One round lowers the
    weights' squared error by about 9% over min-max alone, three by 15% (Gaussian and uniform
    weights alike) but cost twice the time (docs/performance.md has the figures).
    """
    w = weight.float()
    n, k = w.shape
    groups = w.reshape(n, k // group_size, group_size)
    low, high = groups.amin(dim=-1), groups.amax(dim=-1)
    scales = ((high - low) / 15).clamp(min=1e-6)
    zeros = low + 8 * scales

    def codes(scales, zeros):
        return ((groups - zeros[..., None]) / scales[..., None] + 8).round().clamp(0, 15)

    for _ in range(refine):
        centred = codes(scales, zeros) - 8
        q_mean, w_mean = centred.mean(dim=-1), groups.mean(dim=-1)
        dq = centred - q_mean[..., None]
        var = (dq * dq).sum(dim=-1)
        fitted = (dq * (groups - w_mean[..., None])).sum(dim=-1) / var.clamp(min=1e-12)
        scales = torch.where(var > 0, fitted, scales).clamp(min=1e-6)
        zeros = w_mean - scales * q_mean
    q = codes(scales, zeros).to(torch.uint8).reshape(n, k)
    return (q[:, ::2] << 4) | q[:, 1::2], scales, zeros


# quantize about this many weights at a time: the float32 temporaries of a chunk (five or six of
# its size at once) stay near 100 MB; chunks of 16 M held 340 MB and were no faster
CHUNK_ELEMENTS = 4 * 2**20


def quantize_rows(weight: torch.Tensor, bits: int, group_size: int) -> tuple[torch.Tensor, ...]:
    """:func:`quantize_int8` / :func:`quantize_int4` over row chunks (same result, bounded memory).

    Each chunk's results are written into outputs allocated once: joining the chunks afterwards
    would hold the quantized matrix twice for a moment (the 7B shapes' int8 LM head: 125 MB more
    at the peak, when the rest of the model is already resident)."""
    rows = max(1, CHUNK_ELEMENTS // max(1, weight.shape[1]))
    out: tuple[torch.Tensor, ...] = ()
    for start in range(0, weight.shape[0], rows):
        chunk = weight[start:start + rows]
        parts = quantize_int8(chunk) if bits == 8 else quantize_int4(chunk, group_size)
        if not out:
            out = tuple(part.new_empty((weight.shape[0], *part.shape[1:])) for part in parts)
        for whole, part in zip(out, parts):
            whole[start:start + part.shape[0]] = part
    return out


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """uint8 [N, K/2] -> int32 [N, K] with values 0..15."""
    return torch.stack([packed >> 4, packed & 0xF], dim=-1).reshape(packed.shape[0], -1).to(torch.int32)


REPACK_ROWS = 1024  # a multiple of the kernel's row tile (64 with AVX-512, 32 with AVX2)


def repack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Portable uint8 [N, K/2] -> the int4 kernel's layout, in row chunks (the kernel tiles rows,
    so chunks of whole tiles give the same bytes as one call; the int32 input stays small)."""
    out = None
    for start in range(0, packed.shape[0], REPACK_ROWS):
        part = torch.ops.aten._convert_weight_to_int4pack_for_cpu(unpack_int4(packed[start:start + REPACK_ROWS]), 2)
        if out is None:
            out = torch.empty((packed.shape[0], *part.shape[1:]), dtype=part.dtype)
        out[start:start + part.shape[0]] = part
    return out


def dequantize(layer: "QuantizedLinear") -> torch.Tensor:
    """The float32 weight the quantized one stands for (int4: before the kernel repacked it)."""
    if layer.bits == 8:
        return layer.qweight.float() * layer.scales.float()[:, None]
    q = unpack_int4(layer.qweight).float()
    n, k = q.shape
    g = layer.group_size
    w = (q.reshape(n, k // g, g) - 8) * layer.scales.float()[..., None] + layer.zeros.float()[..., None]
    return w.reshape(n, k)


# ---------------------------------------------------------------------------------------------
# The layer
# ---------------------------------------------------------------------------------------------


class QuantizedLinear(nn.Module):
    """``nn.Linear`` with an int8 or int4 weight (inference only)."""

    def __init__(self, in_features: int, out_features: int, bits: int, group_size: int = DEFAULT_GROUP_SIZE,
                 bias: bool = False, device=None, dtype=None):
        super().__init__()
        self.in_features, self.out_features, self.bits, self.group_size = in_features, out_features, bits, group_size
        factory = {"device": device}
        if bits == 8:
            self.register_buffer("qweight", torch.empty(out_features, in_features, dtype=torch.int8, **factory))
            self.register_buffer("scales", torch.empty(out_features, dtype=torch.float32, **factory))
            self.zeros = None
        else:
            groups = in_features // group_size
            self.register_buffer("qweight", torch.empty(out_features, in_features // 2, dtype=torch.uint8, **factory))
            self.register_buffer("scales", torch.empty(out_features, groups, dtype=torch.float32, **factory))
            self.register_buffer("zeros", torch.empty(out_features, groups, dtype=torch.float32, **factory))
        self.bias = nn.Parameter(torch.empty(out_features, dtype=dtype, **factory)) if bias else None
        self.register_buffer("lora_A", None)  # a low-rank update kept in float (set_low_rank)
        self.register_buffer("lora_B", None)
        self._kernel: dict = {}  # the kernel's layout per activation dtype, built on first use

    def nbytes(self) -> int:
        """Bytes this layer holds: its buffers and the kernel's own layout (int4)."""
        tensors = [*self.buffers(recurse=False), *self.parameters(recurse=False)]
        tensors += [t for key, t in self._kernel.items() if key == "packed"]
        seen = {id(t) for t in tensors}
        tensors += [pair[1] for key, pair in self._kernel.items() if isinstance(key, torch.dtype) and id(pair[1]) not in seen]
        return sum(t.numel() * t.element_size() for t in tensors)

    def extra_repr(self) -> str:
        g = f", group_size={self.group_size}" if self.bits == 4 else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, int{self.bits}{g}"

    @classmethod
    def from_weight(cls, weight: torch.Tensor, bits: int, group_size: int, bias: torch.Tensor | None = None,
                    device=None) -> "QuantizedLinear":
        out_features, in_features = weight.shape
        with torch.device("meta"):
            layer = cls(in_features, out_features, bits, group_size, bias=bias is not None)
        layer.set_weight(weight, device)
        if bias is not None:
            layer.bias = nn.Parameter(bias.to(device or bias.device), requires_grad=False)
        return layer

    def set_weight(self, weight: torch.Tensor, device=None, prepare: bool = False) -> None:
        """Quantize ``weight`` (any float dtype) into this layer's buffers.

        ``prepare``: build the kernel's layout now and keep no portable copy (int4 on a kernel
        path: a model loaded to run, not to be saved).
        """
        device = device or weight.device
        if self.bits == 8:
            q, scales = quantize_rows(weight, 8, self.group_size)
            self._buffers.update(qweight=q.to(device), scales=scales.to(device))
        else:
            q, scales, zeros = quantize_rows(weight, 4, self.group_size)
            self._buffers.update(qweight=q.to(device), scales=scales.to(device), zeros=zeros.to(device))
        self._kernel = {}
        if prepare:
            self.prepare()
        release_free_memory()

    def set_low_rank(self, lora_a: torch.Tensor, lora_b: torch.Tensor) -> None:
        """Add ``x @ lora_a.T @ lora_b.T`` to every product: a fine-tuning's update, kept in float
        beside the quantized weight (which must then hold the weight without it)."""
        rank = lora_a.shape[0]
        if lora_a.shape != (rank, self.in_features) or lora_b.shape != (self.out_features, rank):
            raise ConfigError(f"low-rank factors of shapes {list(lora_a.shape)} and {list(lora_b.shape)} do not fit a "
                              f"{self.out_features} x {self.in_features} layer")
        self._buffers.update(lora_A=lora_a, lora_B=lora_b)

    def prepare(self) -> None:
        """Repack for the kernel now (int4: dropping the portable copy), not at the first product."""
        path = compute_path(self.bits) if self.qweight.device.type == "cpu" else "dequantize"
        if path != "dequantize":
            self._prepared(torch.bfloat16 if path == "kernel-bf16" else torch.float32)

    def _load_from_state_dict(self, *args, **kwargs):
        self._kernel = {}
        return super()._load_from_state_dict(*args, **kwargs)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        if self.bits == 4 and "packed" in self._kernel:
            raise RuntimeError(
                "this int4 model has run, so its weights are held in this CPU's kernel layout only and "
                "cannot be saved; save a quantized model right after loading it (owl quantize does)"
            )
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _prepared(self, dtype: torch.dtype):
        """(weight, scales) in the kernel's layout for activations of ``dtype``.

        int4: the kernel's layout depends on the CPU's vector width, so files keep the portable
        one; the first product repacks it and drops the portable copy (holding both would double
        the weights' memory).
        """
        if dtype not in self._kernel:
            if self.bits == 8:
                self._kernel[dtype] = (self.qweight, self.scales.to(dtype))
            else:
                if "packed" not in self._kernel:
                    self._kernel["packed"] = repack_int4(self.qweight)
                    self._kernel["scales_zeros"] = torch.stack([self.scales.T, self.zeros.T], dim=-1).contiguous().to(dtype)
                    # The portable tensors are no longer needed (nor can this layer be saved).
                    for name in ("qweight", "scales", "zeros"):
                        self._buffers[name] = torch.empty(0, dtype=self._buffers[name].dtype)
                self._kernel[dtype] = (self._kernel["packed"], self._kernel["scales_zeros"].to(dtype))
        return self._kernel[dtype]

    def _product(self, flat: torch.Tensor, path: str) -> torch.Tensor:
        """``flat [M, K] @ weight.T`` the way ``path`` says, in ``flat``'s dtype."""
        if path == "dequantize":
            return F.linear(flat, dequantize(self).to(flat.dtype))
        act = torch.bfloat16 if path == "kernel-bf16" else torch.float32
        weight, scales = self._kernel[act] if act in self._kernel else self._prepared(act)
        a = flat if flat.dtype == act and flat.is_contiguous() else flat.to(act).contiguous()
        if self.bits == 8:
            out = torch.ops.aten._weight_int8pack_mm(a, weight, scales)
        else:
            out = torch.ops.aten._weight_int4pack_mm_for_cpu(a, weight, self.group_size, scales)
        return out if out.dtype == flat.dtype else out.to(flat.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Lean on purpose: at decoding, small layers take microseconds (docs/performance.md),
        # so Python work here shows.
        flat = x if x.dim() == 2 else x.reshape(-1, self.in_features)
        if flat.shape[0] == 0:  # e.g. no visual token for a modality branch; the kernels crash on 0 rows
            out = flat.new_zeros(0, self.out_features)
        else:
            out = self._product(flat, compute_path(self.bits) if x.device.type == "cpu" else "dequantize")
        if self.lora_A is not None:
            out = out + (flat @ self.lora_A.to(flat.dtype).T) @ self.lora_B.to(flat.dtype).T
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out if x.dim() == 2 else out.reshape(*x.shape[:-1], self.out_features)


@functools.lru_cache(maxsize=None)
def compute_path(bits: int) -> str:
    """The fastest of ``kernel-bf16``, ``kernel-fp32`` and ``dequantize`` on this CPU, measured
    once per process on a 2048 x 2048 layer at one row (a decoding step's shape)."""
    torch.manual_seed(0)
    layer = QuantizedLinear.from_weight(torch.randn(2048, 2048), bits, DEFAULT_GROUP_SIZE)
    x = torch.randn(1, 2048)
    timings = {}
    for path in ("dequantize", "kernel-bf16", "kernel-fp32"):  # dequantize first: int4 kernels drop the portable copy
        try:
            timings[path] = _time_path(layer, x, path)
        except RuntimeError:  # a kernel this build lacks
            continue
    return min(timings, key=timings.get) if timings else "dequantize"


def _time_path(layer: QuantizedLinear, x: torch.Tensor, path: str) -> float:
    def run():
        return layer._product(x, path)

    run()
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def read_low_rank(folder) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Layer name -> (lora_A, lora_B) from the folder's :data:`LOW_RANK_FILE` ({} without one)."""
    path = Path(folder) / LOW_RANK_FILE
    if not path.is_file():
        return {}
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ConfigError(f"{path} cannot be read ({first_line(exc)}); delete it to quantize the merged "
                          "weights instead") from None
    layers = sorted({name.rsplit(".", 1)[0] for name in tensors})
    for layer in layers:
        if f"{layer}.lora_A" not in tensors or f"{layer}.lora_B" not in tensors:
            raise ConfigError(f"{path}: {layer} needs exactly a lora_A and a lora_B tensor")
    return {layer: (tensors[f"{layer}.lora_A"], tensors[f"{layer}.lora_B"]) for layer in layers}


# ---------------------------------------------------------------------------------------------
# Which layers
# ---------------------------------------------------------------------------------------------


def quantizable(model) -> dict[str, nn.Linear]:
    """Name -> linear layer of every layer that is quantized (decoder linears and the LM head)."""
    found = {f"language_model.{n}": m for n, m in model.language_model.named_modules() if isinstance(m, nn.Linear)}
    if isinstance(model.lm_head, nn.Linear):
        found["lm_head"] = model.lm_head
    return found


#: In int4 mode these layers get int8 (as llama.cpp keeps its Q4_0 models' output matrix in 6 bits):
#: the LM head's error goes straight into the logits, and it is one layer of many.
INT8_IN_INT4 = ("lm_head",)


def replace_linears(model, bits: int, group_size: int, skip: set[str] | None = None) -> tuple[list[str], list[str]]:
    """Swap the quantizable linears of a (meta) model for empty :class:`QuantizedLinear` shells.

    Returns (the names kept in float: those named in ``skip``; the names in int8 although int4
    was asked for). In int4 mode the LM head is int8, and so are the layers with a name component
    the config lists in ``int8_in_int4``, and any layer int4 cannot hold: its input width not a
    multiple of ``group_size`` or its output width not a multiple of 16 (the kernel's tiles). Such
    a layer was kept in float before; int8 holds it in a quarter of the bytes, closer to float than
    int4, and runs PyTorch's int8 kernel (as llama.cpp falls back to another block type for a
    tensor whose rows its type cannot hold). Folders written then list it in ``kept``: ``skip``.
    """
    kept, fallback = [], []
    int8 = {*INT8_IN_INT4, *(getattr(model.config, "int8_in_int4", None) or ())}
    for name, linear in quantizable(model).items():
        if name in (skip or set()):
            kept.append(name)
            continue
        layer_bits = 8 if bits == 4 and int8.intersection(name.split(".")) else bits
        if layer_bits == 4 and (linear.in_features % group_size or linear.out_features % 16):
            layer_bits = 8
            fallback.append(name)
        shell = QuantizedLinear(linear.in_features, linear.out_features, layer_bits, group_size,
                                bias=linear.bias is not None, device=linear.weight.device, dtype=linear.weight.dtype)
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, shell)
    return kept, fallback
