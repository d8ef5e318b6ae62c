"""One decoding step through the decoder's layers as a flat loop of tensor operations.

A batch-1 decoding step of a small model is not all matrix products: on a 2-core CPU (owl-small,
2026-12) the products take ~28 ms of a ~42 ms step, and most of the rest is Python: ~250 module
calls, attribute lookups through ``nn.Module.__getattr__`` and the fused products' checks. When
the decoder's matrices are placed for decoding (:func:`owlkit.models.cpu_decoding.arrange_for_decoding`),
:class:`StepPlan` holds each layer's tensors in plain attributes and runs a step over them with the
very operations the modules run, in the same order, so the numbers are the same bit for bit
(tests/test_model_correctness.py); only the Python around them goes.

Each product is a float32 weight (a fused one where the layer's are placed side by side) or a
quantized layer's kernel call (:class:`owlkit.quantization.QuantizedLinear`: int8 or int4, with
its low-rank update and bias), the products that read one input sharing its cast to the
kernel's activation dtype. The smaller a quantized step's products, the more of it the Python
was: on the ``small`` preset int4 went from 1.9x to 2.1-2.2x float32 (docs/performance.md).

It serves only what it was made for, and checks that before every step (:meth:`StepPlan.fits`,
:meth:`StepPlan.hooked`):
one new position per sample, no padding, no visual token, no gradients, evaluation mode, float32
activations, and every module, weight and quantized tensor it read still in place: a LoRA
adapter, a requantized or replaced layer, a cast or a moved model sends the step the ordinary
way and the plan lets go of its references for good; a forward hook on any of its modules sends
the step the ordinary way while it is there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as module_hooks
from transformers.activations import SiLUActivation

from owlkit.models.decoder import DecoderRMSNorm, FusedProduct, ModalitySwitch, _rotate

_SILU = (nn.SiLU, SiLUActivation)  # torch's and transformers' SiLU: both are F.silu


@dataclass
class _Layer:
    index: int
    norm1: torch.Tensor
    eps1: float
    qkv: Callable[[torch.Tensor], torch.Tensor]                       # query, key, value side by side
    n_heads: int
    n_qk: int
    head_dim: int
    o: Callable[[torch.Tensor], torch.Tensor]
    norm2: torch.Tensor
    eps2: float
    gate_up: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    down: Callable[[torch.Tensor], torch.Tensor]


def _text(module: nn.Module) -> nn.Module:
    return module.text if isinstance(module, ModalitySwitch) else module


def _plain_linear(module: nn.Module) -> bool:
    return type(module) is nn.Linear and module.bias is None and module.weight.dtype == torch.float32


def _weight_address(module: nn.Module) -> int | None:
    weight = module._parameters.get("weight")  # the module's own dict: no nn.Module.__getattr__
    return None if weight is None else weight.data_ptr()


def _norm(module: nn.Module) -> bool:
    return type(module) is DecoderRMSNorm and module.weight.dtype == torch.float32


class _Products:
    """What a plan's products read, gathered while it is built: the checks that it is all still
    in place (``watched``: (a dict, key, the object that was there); ``weights``: (a module,
    its weight's address)) and the modules it stands in for (for hooks)."""

    def __init__(self):
        self.watched: list[tuple[dict, str, object]] = []
        self.weights: list[tuple[nn.Module, int]] = []
        self.modules: list[nn.Module] = []

    def one(self, linear: nn.Module) -> Callable | None:
        """``linear``'s product as a function ``f(h, cast=None)`` of a float32 [B, in] input, the
        same operations as its forward; None for a layer of another kind. A quantized layer's
        function has an ``act`` attribute, its kernel's activation dtype, and takes ``cast``, the
        input already cast to it (the same cast it would make), so that products of one input
        share it."""
        self.modules.append(linear)
        if _plain_linear(linear):
            self.weights.append((linear, linear.weight.data_ptr()))
            weight = linear.weight
            return lambda h, cast=None: F.linear(h, weight)
        from owlkit.quantization import QuantizedLinear, compute_path  # at module level, a cycle (through owlkit.memory)

        if type(linear) is not QuantizedLinear:
            return None
        path = compute_path(linear.bits) if linear.scales.device.type == "cpu" else "dequantize"
        lora_a, lora_b, bias = linear._buffers.get("lora_A"), linear._buffers.get("lora_B"), linear._parameters.get("bias")
        self.watched += [(linear._buffers, name, t) for name, t in linear._buffers.items()]
        self.watched.append((linear._parameters, "bias", bias))
        if path == "dequantize" or (bias is not None and bias.dtype != torch.float32) or any(
                t is not None and t.dtype != torch.float32 for t in (lora_a, lora_b)):
            forward = linear.forward  # its own operations, without the module call
            return lambda h, cast=None: forward(h)
        act = torch.bfloat16 if path == "kernel-bf16" else torch.float32
        kernel = linear._prepared(act)
        self.watched.append((linear._kernel, act, kernel))
        weight, scales = kernel
        if linear.bits == 8:
            def product(a):
                return torch.ops.aten._weight_int8pack_mm(a, weight, scales)
        else:
            group = linear.group_size

            def product(a):
                return torch.ops.aten._weight_int4pack_mm_for_cpu(a, weight, group, scales)

        def quantized(h, cast=None):  # QuantizedLinear.forward for a float32, 2-D input
            if act is torch.float32:
                out = product(h.contiguous())
            else:
                out = product(h.to(act).contiguous() if cast is None else cast).to(torch.float32)
            if lora_a is not None:
                out = out + (h @ lora_a.T) @ lora_b.T
            if bias is not None:
                out = out + bias
            return out

        quantized.act = act
        return quantized

    def joint(self, product: FusedProduct | None, linears: list[nn.Module], split: bool):
        """One function of ``h`` for several linears of one input, and the fused product it reads
        (or None): ``product``'s joint weight while it is current, else each linear's product
        (the input cast once for those whose kernel takes bfloat16); the outputs side by side,
        or one tensor a linear (``split``)."""
        if product is not None and product.check():
            self.modules += linears
            weight, sizes = product.weight, product.sizes
            if split:
                return (lambda h: F.linear(h, weight).split(sizes, dim=-1)), product
            return (lambda h: F.linear(h, weight)), product
        parts = [self.one(linear) for linear in linears]
        if any(p is None for p in parts):
            return None, None
        shared = [getattr(p, "act", None) is torch.bfloat16 for p in parts]

        def each(h):
            cast = h.to(torch.bfloat16).contiguous() if any(shared) else None
            outs = [p(h, cast if s else None) for p, s in zip(parts, shared)]
            return outs if split else torch.cat(outs, dim=-1)

        return each, None


class StepPlan:
    """The decoder's layers as tensors for one-position steps (module doc)."""

    def __init__(self, layers: list[_Layer], watched: list[tuple[dict, str, object]],
                 weights: list[tuple[nn.Module, int]], modules: list[nn.Module], fused: list[FusedProduct]):
        self.layers = layers
        self._watched = watched    # (a module's _modules (or a layer's buffers), name, what was there)
        self._weights = weights    # (a module, the address its weight's data had)
        self._modules = modules    # every module whose forward the plan stands in for (hooks)
        self._fused = fused        # fused products it reads
        self.stale = False

    @classmethod
    def build(cls, decoder: nn.Module) -> "StepPlan | None":
        """A plan for ``decoder`` (an :class:`~owlkit.models.decoder.OwlDecoder` in float32, its
        linears placed, plain or quantized), or None when a layer is not of the kind it serves."""
        layers, found, fused = [], _Products(), []
        for index, layer in enumerate(decoder.layers):
            attn, mlp = layer.self_attn, layer.mlp
            norm1, norm2 = _text(layer.input_layernorm), _text(layer.post_attention_layernorm)
            if not (_norm(norm1) and _norm(norm2)) or type(mlp.act_fn) not in _SILU:
                return None
            qkv, q_fused = found.joint(attn.fused_qkv, [attn.q_proj, _text(attn.k_proj), _text(attn.v_proj)],
                                       split=False)
            gate_up, g_fused = found.joint(getattr(mlp, "fused_gate_up", None), [mlp.gate_proj, mlp.up_proj],
                                           split=True)
            o, down = found.one(attn.o_proj), found.one(mlp.down_proj)
            if qkv is None or gate_up is None or o is None or down is None:
                return None
            fused += [p for p in (q_fused, g_fused) if p is not None]
            layers.append(_Layer(index, norm1.weight, norm1.variance_epsilon, qkv, attn.num_heads,
                                 attn.num_heads + attn.num_kv_heads, attn.head_dim, o, norm2.weight,
                                 norm2.variance_epsilon, gate_up, down))
            found.watched += [(decoder.layers._modules, str(index), layer), (layer._modules, "self_attn", attn),
                              (layer._modules, "mlp", mlp), (attn._modules, "o_proj", attn.o_proj),
                              (attn._modules, "q_proj", attn.q_proj), (mlp._modules, "down_proj", mlp.down_proj),
                              (mlp._modules, "gate_proj", mlp.gate_proj), (mlp._modules, "up_proj", mlp.up_proj),
                              (mlp._modules, "act_fn", mlp.act_fn)]
            for name in ("k_proj", "v_proj"):
                switch = attn._modules[name]
                found.watched.append((attn._modules, name, switch))
                if switch is not _text(switch):
                    found.watched.append((switch._modules, "text", _text(switch)))
            for owner, name, norm in ((layer, "input_layernorm", norm1), (layer, "post_attention_layernorm", norm2)):
                switch = owner._modules[name]
                found.watched.append((owner._modules, name, switch))
                if switch is not norm:
                    found.watched.append((switch._modules, "text", norm))
            found.weights += [(m, m.weight.data_ptr()) for m in (norm1, norm2)]
            found.modules += [layer, attn, mlp, norm1, norm2, mlp.act_fn,
                              *{layer.input_layernorm, layer.post_attention_layernorm, attn.k_proj, attn.v_proj}]
        return cls(layers, found.watched, found.weights, found.modules, fused)

    def fits(self) -> bool:
        """Whether every module and weight the plan read is still in place (a weight is looked up
        through its module: a new parameter counts as a change); a plan that does not fit lets
        its references go, for good (``stale``)."""
        if self.stale:
            return False
        ok = all(owner.get(name) is module for owner, name, module in self._watched)
        ok = ok and all(_weight_address(m) == address for m, address in self._weights)
        ok = ok and all(product.check() for product in self._fused)
        if not ok:
            self.stale, self.layers, self._watched, self._weights, self._modules, self._fused = True, [], [], [], [], []
        return ok

    def hooked(self) -> bool:
        """Whether a forward hook is set on any module the plan stands in for (or globally): the
        ordinary path runs those steps, and the plan stays."""
        return bool(module_hooks._global_forward_hooks or module_hooks._global_forward_pre_hooks
                    or any(m._forward_hooks or m._forward_pre_hooks for m in self._modules))

    def run(self, x: torch.Tensor, position_embeddings, cache) -> torch.Tensor:
        """``x`` [B, 1, D] through every layer (no final norm), the cache updated as the layers do."""
        b = x.shape[0]
        cos, sin = position_embeddings
        x = x.reshape(b, -1)
        for layer in self.layers:
            h = F.rms_norm(x, layer.norm1.shape, layer.norm1, layer.eps1)
            heads = layer.qkv(h).view(b, 1, -1, layer.head_dim)
            qk = _rotate(heads[:, :, :layer.n_qk].transpose(1, 2), cos, sin)
            k, v = cache.update(qk[:, layer.n_heads:], heads[:, :, layer.n_qk:].transpose(1, 2), layer.index)
            out = F.scaled_dot_product_attention(qk[:, :layer.n_heads], k, v, attn_mask=None, is_causal=False,
                                                 dropout_p=0.0, enable_gqa=layer.n_qk != 2 * layer.n_heads)
            x = x + layer.o(out.transpose(1, 2).reshape(b, -1))
            h = F.rms_norm(x, layer.norm2.shape, layer.norm2, layer.eps2)
            gate, up = layer.gate_up(h)
            x = x + layer.down(F.silu(gate).mul_(up))
        return x.view(b, 1, -1)
