"""One decoding step through the decoder's layers as a flat loop of tensor operations.

A batch-1 decoding step of a small model is not all matrix products: on a 2-core CPU (owl-small,
2026-12) the products take ~28 ms of a ~42 ms step, and most of the rest is Python: ~250 module
calls, attribute lookups through ``nn.Module.__getattr__`` and the fused products' checks. When
the decoder's matrices are placed for decoding (:func:`owlkit.models.cpu_decoding.arrange_for_decoding`),
:class:`StepPlan` holds each layer's tensors in plain attributes and runs a step over them with the
very operations the modules run, in the same order, so the numbers are the same bit for bit
(tests/test_model_correctness.py); only the Python around them goes.

It serves only what it was made for, and checks that before every step (:meth:`StepPlan.fits`,
:meth:`StepPlan.hooked`):
one new position per sample, no padding, no visual token, no gradients, evaluation mode, float32,
and every module and weight it read still in place: a LoRA adapter, a quantized or replaced layer,
a cast or a moved model sends the step the ordinary way and the plan lets go of its references
for good; a forward hook on any of its modules sends the step the ordinary way while it is there.
"""

from __future__ import annotations

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
    qkv: FusedProduct
    n_heads: int
    n_qk: int
    head_dim: int
    o: torch.Tensor
    norm2: torch.Tensor
    eps2: float
    gate_up: FusedProduct
    down: torch.Tensor


def _text(module: nn.Module) -> nn.Module:
    return module.text if isinstance(module, ModalitySwitch) else module


def _plain_linear(module: nn.Module) -> bool:
    return type(module) is nn.Linear and module.bias is None and module.weight.dtype == torch.float32


def _weight_address(module: nn.Module) -> int | None:
    weight = module._parameters.get("weight")  # the module's own dict: no nn.Module.__getattr__
    return None if weight is None else weight.data_ptr()


def _norm(module: nn.Module) -> bool:
    return type(module) is DecoderRMSNorm and module.weight.dtype == torch.float32


class StepPlan:
    """The decoder's layers as tensors for one-position steps (module doc)."""

    def __init__(self, layers: list[_Layer], watched: list[tuple[dict, str, object]],
                 weights: list[tuple[nn.Module, int]], modules: list[nn.Module]):
        self.layers = layers
        self._watched = watched    # (a module's _modules, name, the module that was there)
        self._weights = weights    # (a module, the address its weight's data had)
        self._modules = modules    # every module whose forward the plan stands in for (hooks)
        self.stale = False

    @classmethod
    def build(cls, decoder: nn.Module) -> "StepPlan | None":
        """A plan for ``decoder`` (an :class:`~owlkit.models.decoder.OwlDecoder` whose matrices
        are placed), or None when a layer is not of the kind it serves."""
        layers, watched, weights, modules = [], [], [], []
        for index, layer in enumerate(decoder.layers):
            attn, mlp = layer.self_attn, layer.mlp
            norm1, norm2 = _text(layer.input_layernorm), _text(layer.post_attention_layernorm)
            qkv, gate_up = attn.fused_qkv, getattr(mlp, "fused_gate_up", None)
            if (qkv is None or gate_up is None or not qkv.check() or not gate_up.check()
                    or not (_norm(norm1) and _norm(norm2) and _plain_linear(attn.o_proj)
                            and _plain_linear(mlp.down_proj)) or type(mlp.act_fn) not in _SILU):
                return None
            layers.append(_Layer(index, norm1.weight, norm1.variance_epsilon, qkv, attn.num_heads,
                                 attn.num_heads + attn.num_kv_heads, attn.head_dim, attn.o_proj.weight,
                                 norm2.weight, norm2.variance_epsilon, gate_up, mlp.down_proj.weight))
            watched += [(decoder.layers._modules, str(index), layer), (layer._modules, "self_attn", attn),
                        (layer._modules, "mlp", mlp), (attn._modules, "o_proj", attn.o_proj),
                        (mlp._modules, "down_proj", mlp.down_proj), (mlp._modules, "act_fn", mlp.act_fn)]
            for owner, name, norm in ((layer, "input_layernorm", norm1), (layer, "post_attention_layernorm", norm2)):
                switch = owner._modules[name]
                watched.append((owner._modules, name, switch))
                if switch is not norm:
                    watched.append((switch._modules, "text", norm))
            weights += [(m, m.weight.data_ptr()) for m in (norm1, norm2, attn.o_proj, mlp.down_proj)]
            linears = [linear for product in (qkv, gate_up) for _, _, linear, _ in product.parts]
            modules += [layer, attn, mlp, norm1, norm2, attn.o_proj, mlp.down_proj, mlp.act_fn, *linears,
                        *{layer.input_layernorm, layer.post_attention_layernorm, attn.k_proj, attn.v_proj}]
        return cls(layers, watched, weights, modules)

    def fits(self) -> bool:
        """Whether every module and weight the plan read is still in place (a weight is looked up
        through its module: a new parameter counts as a change); a plan that does not fit lets
        its references go, for good (``stale``)."""
        if self.stale:
            return False
        ok = all(owner.get(name) is module for owner, name, module in self._watched)
        ok = ok and all(_weight_address(m) == address for m, address in self._weights)
        ok = ok and all(layer.qkv.check() and layer.gate_up.check() for layer in self.layers)
        if not ok:
            self.stale, self.layers, self._watched, self._weights, self._modules = True, [], [], [], []
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
            heads = F.linear(h, layer.qkv.weight).view(b, 1, -1, layer.head_dim)
            qk = _rotate(heads[:, :, :layer.n_qk].transpose(1, 2), cos, sin)
            k, v = cache.update(qk[:, layer.n_heads:], heads[:, :, layer.n_qk:].transpose(1, 2), layer.index)
            out = F.scaled_dot_product_attention(qk[:, :layer.n_heads], k, v, attn_mask=None, is_causal=False,
                                                 dropout_p=0.0, enable_gqa=layer.n_qk != 2 * layer.n_heads)
            x = x + F.linear(out.transpose(1, 2).reshape(b, -1), layer.o)
            h = F.rms_norm(x, layer.norm2.shape, layer.norm2, layer.eps2)
            gate, up = F.linear(h, layer.gate_up.weight).split(layer.gate_up.sizes, dim=-1)
            x = x + F.linear(F.silu(gate).mul_(up), layer.down)
        return x.view(b, 1, -1)
