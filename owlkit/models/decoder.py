"""LLaMA decoder with mPLUG-Owl2's modality-adaptive module (MAM).

With ``modality_adaptive=True`` every layer has two input RMSNorms, two post-attention
RMSNorms and two key/value projections, one for text tokens and one for visual tokens
(``mm_token_type_ids`` = 1); queries, output projection, MLP and final norm are shared.

Routing gathers each modality's rows, applies its module and scatters the results back
(``index_copy``: no Python loop over tokens, and autograd-friendly). When no token of the step
is visual — every decoding step, every text-only batch — routing is skipped entirely and the
text modules run on the whole tensor, so MAM costs nothing there.

Attention uses :func:`torch.nn.functional.scaled_dot_product_attention` with grouped-query
support, rotary embeddings from transformers (``rope_parameters`` of the LLaMA config, so
linear/dynamic/llama3 scaling work) and transformers' cache classes. Padding is honoured:
positions come from the attention mask (``cumsum - 1``) and padded keys are masked at every
step, so left-padded batches give the same numbers as single samples.

At inference, products that read the same input can run as one (:class:`FusedProduct`: the
attention's query and text key/value projections, the MLP's gate and up), when
:func:`owlkit.models.cpu_decoding.arrange_for_decoding` has put their weights side by side in one
storage (``Owl.load``'s default on a CPU), and a step of one new position runs as a flat loop
over those tensors (``step_plan``: :class:`owlkit.models.decode_step.StepPlan`, the same
operations and numbers without the module calls). Training, and any change to those modules or
their weights, takes the ordinary path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache, LlamaConfig
from transformers.models.llama.modeling_llama import (
    LlamaMLP,
    LlamaRMSNorm,
    LlamaRotaryEmbedding,
    apply_rotary_pos_emb,
    rotate_half,
)


class ModalitySwitch(nn.Module):
    """Two copies of a module, ``text`` and ``visual``, chosen per token."""

    def __init__(self, text: nn.Module, visual: nn.Module):
        super().__init__()
        self.text = text
        self.visual = visual

    def forward(self, x: torch.Tensor, visual_mask: torch.Tensor | None) -> torch.Tensor:
        if visual_mask is None:
            return self.text(x)
        flat = x.reshape(-1, x.shape[-1])
        m = visual_mask.reshape(-1)
        idx_v = m.nonzero().squeeze(1)
        idx_t = (~m).nonzero().squeeze(1)
        y_t = self.text(flat.index_select(0, idx_t))
        y_v = self.visual(flat.index_select(0, idx_v))
        out = y_t.new_zeros(flat.shape[0], y_t.shape[-1]).index_copy(0, idx_t, y_t).index_copy(0, idx_v, y_v)
        return out.view(*x.shape[:-1], -1)


@dataclass
class FusedProduct:
    """Several bias-free ``nn.Linear`` of one input whose weights are views of one storage
    (``weight``: ``[sum of outputs, in]``), so that one product computes all of them.

    ``parts`` names each linear by its parent module and attribute, with the address its weight
    had when fused. :meth:`weight_if_current` gives the joint weight only while every part is still
    that linear with that weight (not wrapped by an adapter, not cast or moved, not quantized)
    and no gradient is being recorded (the joint weight is not a parameter); otherwise callers
    take the ordinary path, and a stale product lets its storage go.
    """

    weight: torch.Tensor
    sizes: tuple[int, ...]
    parts: tuple[tuple[nn.Module, str, nn.Linear, int], ...]
    stale: bool = False

    def check(self) -> bool:
        """Whether every part is still the linear and the weight it was made from; a product
        that is not lets its storage go, for good."""
        if not self.stale:  # the modules' own dicts: nn.Module.__getattr__ costs a decoding step ~1 ms
            for parent, name, linear, address in self.parts:
                weight = linear._parameters.get("weight")
                if (parent._modules.get(name) is not linear or weight is None or weight.data_ptr() != address
                        or linear._parameters.get("bias") is not None):
                    self.stale, self.weight, self.parts = True, None, ()
                    break
        return not self.stale

    def weight_if_current(self) -> torch.Tensor | None:
        return None if torch.is_grad_enabled() or not self.check() else self.weight


def _fused(product: FusedProduct | None, x: torch.Tensor, split: bool = True):
    """``product``'s outputs for ``x``, one tensor a part (or side by side: ``split=False``), or
    None when it cannot serve."""
    weight = None if product is None else product.weight_if_current()
    if weight is None:
        return None
    joint = F.linear(x, weight)
    return joint.split(product.sizes, dim=-1) if split else joint


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of ``x`` [B, heads, L, head_dim]: transformers' ``apply_rotary_pos_emb``
    for one tensor (the same operations, so the same numbers)."""
    return x * cos.unsqueeze(1) + rotate_half(x) * sin.unsqueeze(1)


class DecoderRMSNorm(LlamaRMSNorm):
    """LLaMA's RMSNorm; float32 through ``F.rms_norm``: one operation instead of six, and the
    same numbers bit for bit (forward and gradients; tests/test_model_correctness.py)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            return F.rms_norm(x, self.weight.shape, self.weight, self.variance_epsilon)
        return super().forward(x)


class DecoderMLP(LlamaMLP):
    """LLaMA's MLP, with gate and up as one product when fused (module doc)."""

    fused_gate_up: FusedProduct | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = _fused(self.fused_gate_up, x)
        if parts is None:
            return super().forward(x)
        gate, up = parts
        return self.down_proj(self.act_fn(gate).mul_(up))  # in place: inference only (FusedProduct)


def _maybe_modal(make, modality_adaptive: bool) -> nn.Module:
    return ModalitySwitch(make(), make()) if modality_adaptive else make()


def _call(module: nn.Module, x: torch.Tensor, visual_mask):
    if isinstance(module, ModalitySwitch):  # no visual token: the text module, one call fewer
        return module.text(x) if visual_mask is None else module(x, visual_mask)
    return module(x)


class DecoderAttention(nn.Module):
    #: query and text key/value as one product, when fused (module doc)
    fused_qkv: FusedProduct | None = None

    def __init__(self, config: LlamaConfig, layer_idx: int, modality_adaptive: bool):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.dropout = config.attention_dropout or 0.0
        bias = bool(config.attention_bias)
        d, kv = config.hidden_size, self.num_kv_heads * self.head_dim
        self.q_proj = nn.Linear(d, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = _maybe_modal(lambda: nn.Linear(d, kv, bias=bias), modality_adaptive)
        self.v_proj = _maybe_modal(lambda: nn.Linear(d, kv, bias=bias), modality_adaptive)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, d, bias=bias)

    def forward(self, x, shape, position_embeddings, attn_mask, is_causal, visual_mask, past_key_values):
        """``x`` is [B*L, D] (2-D: MKL is many times slower on 3-D inputs of one row per sample)."""
        b, length = shape
        cos, sin = position_embeddings
        joint = _fused(self.fused_qkv, x, split=False) if visual_mask is None else None
        if joint is not None:  # query and key heads side by side: one rotation for both
            heads = joint.view(b, length, -1, self.head_dim)
            n_qk = self.num_heads + self.num_kv_heads
            qk = _rotate(heads[:, :, :n_qk].transpose(1, 2), cos, sin)
            q, k = qk[:, : self.num_heads], qk[:, self.num_heads:]
            v = heads[:, :, n_qk:].transpose(1, 2)
        else:
            q = self.q_proj(x).view(b, length, self.num_heads, self.head_dim).transpose(1, 2)
            k = _call(self.k_proj, x, visual_mask).view(b, length, self.num_kv_heads, self.head_dim).transpose(1, 2)
            v = _call(self.v_proj, x, visual_mask).view(b, length, self.num_kv_heads, self.head_dim).transpose(1, 2)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
        if past_key_values is not None:
            k, v = past_key_values.update(k, v, self.layer_idx)
        out = F.scaled_dot_product_attention(
            q, k, v,
            attn_mask=attn_mask,
            is_causal=is_causal,
            dropout_p=self.dropout if self.training else 0.0,
            enable_gqa=self.num_kv_heads != self.num_heads,
        )
        return self.o_proj(out.transpose(1, 2).reshape(b * length, -1))


class DecoderLayer(nn.Module):
    def __init__(self, config: LlamaConfig, layer_idx: int, modality_adaptive: bool):
        super().__init__()
        eps = config.rms_norm_eps
        self.input_layernorm = _maybe_modal(lambda: DecoderRMSNorm(config.hidden_size, eps), modality_adaptive)
        self.self_attn = DecoderAttention(config, layer_idx, modality_adaptive)
        self.post_attention_layernorm = _maybe_modal(lambda: DecoderRMSNorm(config.hidden_size, eps), modality_adaptive)
        self.mlp = DecoderMLP(config)

    def _apply(self, fn, recurse=True):
        """After ``.to()``, ``.half()`` and the like: a fused product whose weights were cast or
        moved lets its old storage go at once, not at the next forward."""
        out = super()._apply(fn, recurse)
        for product in (self.self_attn.fused_qkv, getattr(self.mlp, "fused_gate_up", None)):
            if product is not None:
                product.check()
        return out

    def forward(self, x, position_embeddings, attn_mask, is_causal, visual_mask, past_key_values):
        shape = x.shape[:2]
        x = x.reshape(-1, x.shape[-1])
        visual_mask = None if visual_mask is None else visual_mask.reshape(-1)
        h = _call(self.input_layernorm, x, visual_mask)
        x = x + self.self_attn(h, shape, position_embeddings, attn_mask, is_causal, visual_mask, past_key_values)
        h = _call(self.post_attention_layernorm, x, visual_mask)
        return (x + self.mlp(h)).view(*shape, -1)


def attention_bias(
    attention_mask: torch.Tensor | None, q_len: int, past_len: int, device
) -> tuple[torch.Tensor | None, bool]:
    """Boolean SDPA mask ([B, 1, q, kv], True = attend) and the ``is_causal`` flag.

    Without padding no mask tensor is built: SDPA's causal kernel handles a prompt, and a
    single decoding step attends to everything. A padded row's query attends at least to
    itself, so it never produces NaN (its output is ignored anyway).
    """
    kv_len = past_len + q_len
    if attention_mask is None or bool(attention_mask[:, -kv_len:].all()):
        if past_len == 0:
            return None, q_len > 1
        if q_len == 1:
            return None, False
        key_valid = None
    else:
        key_valid = attention_mask[:, -kv_len:].bool()[:, None, None, :]
    key_pos = torch.arange(kv_len, device=device)
    query_pos = torch.arange(past_len, kv_len, device=device)
    causal = key_pos[None, :] <= query_pos[:, None]  # [q, kv]
    allowed = causal[None, None] if key_valid is None else causal[None, None] & key_valid
    allowed = allowed | (key_pos[None, :] == query_pos[:, None])[None, None]
    return allowed, False


class OwlDecoder(nn.Module):
    """Embeddings, decoder layers and final norm (the ``LlamaModel`` part)."""

    #: one-position steps as a flat loop over the placed matrices (owlkit.models.decode_step)
    step_plan = None

    def __init__(self, config: LlamaConfig, modality_adaptive: bool):
        super().__init__()
        self.config = config
        self.modality_adaptive = modality_adaptive
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            DecoderLayer(config, i, modality_adaptive) for i in range(config.num_hidden_layers)
        )
        self.norm = DecoderRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = LlamaRotaryEmbedding(config)
        self.gradient_checkpointing = False

    def _apply(self, fn, recurse=True):
        """After a cast or a move, a step plan whose weights changed is dropped at once."""
        out = super()._apply(fn, recurse)
        self._fitting_plan()
        return out

    def _fitting_plan(self):
        """The step plan while it fits the layers; one that no longer does is dropped."""
        if self.step_plan is not None and not self.step_plan.fits():
            self.step_plan = None
        return self.step_plan

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        mm_token_type_ids: torch.Tensor | None = None,
        past_key_values=None,
        use_cache: bool = False,
    ):
        b, q_len, _ = inputs_embeds.shape
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=self.config)
        past_len = past_key_values.get_seq_length() if past_key_values is not None else 0
        if position_ids is None:
            if attention_mask is not None:
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -q_len:]
            else:
                position_ids = torch.arange(past_len, past_len + q_len, device=inputs_embeds.device)[None]
        visual_mask = None
        if self.modality_adaptive and mm_token_type_ids is not None:
            mm = mm_token_type_ids[:, -q_len:].bool()
            if bool(mm.any()):
                visual_mask = mm
        attn_mask, is_causal = attention_bias(attention_mask, q_len, past_len, inputs_embeds.device)
        position_embeddings = self.rotary_emb(inputs_embeds, position_ids)
        if (self.step_plan is not None and q_len == 1 and visual_mask is None and attn_mask is None
                and past_key_values is not None and not self.training and not torch.is_grad_enabled()
                and inputs_embeds.dtype == torch.float32):
            plan = self._fitting_plan()
            if plan is not None and not plan.hooked():
                return self.norm(plan.run(inputs_embeds, position_embeddings, past_key_values)), past_key_values
        x = inputs_embeds
        for layer in self.layers:
            args = (x, position_embeddings, attn_mask, is_causal, visual_mask, past_key_values)
            if self.gradient_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(layer, *args, use_reentrant=False)
            else:
                x = layer(*args)
        return self.norm(x), past_key_values
