"""The official parameter names, one explicit table per generation, and the format names.

:func:`official_names` maps every owlkit parameter name to its name in the official
mPLUG-Owl2 (``mplug_owl2``) or mPLUG-Owl (``mplug-owl``) release; both directions of
``owl convert`` are derived from it. :func:`official_buffers` computes, bit-identically, the
deterministic buffers official checkpoints carry (LLaMA ``rotary_emb.inv_freq``, the
abstractor's sin-cos tables), and :func:`carried_names` names the sin-cos tables a v2
checkpoint may carry as tensors of its own.
"""

from __future__ import annotations

import torch

from owlkit.config import OwlConfig
from owlkit.models.abstractor import CARRIED_TABLES, sincos_tables

OFFICIAL_V2 = "mplug_owl2"
OFFICIAL_V1 = "mplug-owl"
OWLKIT = "owlkit"
FORMATS = {OFFICIAL_V2: "official mPLUG-Owl2", OFFICIAL_V1: "official mPLUG-Owl", OWLKIT: "owlkit"}

_VISION_LAYER = [
    "input_layernorm.weight", "input_layernorm.bias",
    "self_attn.query_key_value.weight", "self_attn.query_key_value.bias",
    "self_attn.dense.weight", "self_attn.dense.bias",
    "post_attention_layernorm.weight", "post_attention_layernorm.bias",
    "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias",
]
_VISION_EMBED = [
    "cls_token", "patch_embed.weight", "position_embedding", "pre_layernorm.weight", "pre_layernorm.bias",
]
# (owlkit suffix, official suffix below "...encoder.layers.{a}.crossattention.")
_ABSTRACTOR_LAYER = [
    ("norm1.weight", "norm1.weight"), ("norm1.bias", "norm1.bias"),
    ("normk.weight", "normk.weight"), ("normk.bias", "normk.bias"),
    ("attention.query.weight", "attention.query.weight"), ("attention.query.bias", "attention.query.bias"),
    ("attention.key.weight", "attention.key.weight"), ("attention.key.bias", "attention.key.bias"),
    ("attention.value.weight", "attention.value.weight"), ("attention.value.bias", "attention.value.bias"),
    ("out_proj.weight", "output.out_proj.weight"), ("out_proj.bias", "output.out_proj.bias"),
    ("norm2.weight", "output.norm2.weight"), ("norm2.bias", "output.norm2.bias"),
    ("mlp.w1.weight", "output.mlp.w1.weight"), ("mlp.w1.bias", "output.mlp.w1.bias"),
    ("mlp.w3.weight", "output.mlp.w3.weight"), ("mlp.w3.bias", "output.mlp.w3.bias"),
    ("mlp.ffn_ln.weight", "output.mlp.ffn_ln.weight"), ("mlp.ffn_ln.bias", "output.mlp.ffn_ln.bias"),
    ("mlp.w2.weight", "output.mlp.w2.weight"), ("mlp.w2.bias", "output.mlp.w2.bias"),
]
_DECODER_SHARED = [
    "self_attn.q_proj.weight", "self_attn.o_proj.weight",
    "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight",
]
_DECODER_MODAL = [
    "self_attn.k_proj", "self_attn.v_proj", "input_layernorm", "post_attention_layernorm",
]


def official_names(config: OwlConfig) -> dict[str, str]:
    """owlkit parameter name -> official name, for every parameter of ``config``'s model."""
    v2 = config.owl_version == 2
    vis = "model.vision_model." if v2 else "vision_model."
    abst = "model.visual_abstractor." if v2 else "abstractor."
    lm = "model." if v2 else "language_model.model."
    table: dict[str, str] = {}
    for s in _VISION_EMBED:
        table[f"vision.embeddings.{s}"] = f"{vis}embeddings.{s}"
    for i in range(config.vision_config.num_hidden_layers):
        for s in _VISION_LAYER:
            table[f"vision.layers.{i}.{s}"] = f"{vis}encoder.layers.{i}.{s}"
    if config.vision_config.use_post_layernorm:
        for s in ("weight", "bias"):
            table[f"vision.post_layernorm.{s}"] = f"{vis}post_layernorm.{s}"
    table["abstractor.query_embeds"] = f"{abst}query_embeds" if v2 else "query_tokens"
    for i in range(config.abstractor_config.num_hidden_layers):
        for ours, theirs in _ABSTRACTOR_LAYER:
            table[f"abstractor.layers.{i}.{ours}"] = f"{abst}encoder.layers.{i}.crossattention.{theirs}"
    for s in ("visual_fc.weight", "visual_fc.bias", "vit_eos"):
        table[f"abstractor.{s}"] = f"{abst}{s}"
    table["language_model.embed_tokens.weight"] = f"{lm}embed_tokens.weight"
    for i in range(config.text_config.num_hidden_layers):
        ours, theirs = f"language_model.layers.{i}.", f"{lm}layers.{i}."
        for s in _DECODER_SHARED:
            table[ours + s] = theirs + s
        for m in _DECODER_MODAL:
            if config.modality_adaptive:
                table[f"{ours}{m}.text.weight"] = f"{theirs}{m}.multiway.0.weight"
                table[f"{ours}{m}.visual.weight"] = f"{theirs}{m}.multiway.1.weight"
            else:
                table[f"{ours}{m}.weight"] = f"{theirs}{m}.weight"
    table["language_model.norm.weight"] = f"{lm}norm.weight"
    table["lm_head.weight"] = "lm_head.weight" if v2 else "language_model.lm_head.weight"
    return table


def official_buffers(config: OwlConfig) -> dict[str, torch.Tensor]:
    """Deterministic buffers that official checkpoints carry, computed bit-identically."""
    v2 = config.owl_version == 2
    text = config.text_config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    base = text.rope_parameters.get("rope_theta", 10000.0) if text.rope_parameters else 10000.0
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2).float() / head_dim))
    lm = "model." if v2 else "language_model.model."
    out = {f"{lm}layers.{i}.self_attn.rotary_emb.inv_freq": inv_freq.clone() for i in range(text.num_hidden_layers)}
    if v2 and config.abstractor_config.pos_embed == "sincos":
        q_pos, k_pos = sincos_tables(config.abstractor_config)
        for i in range(config.abstractor_config.num_hidden_layers):
            prefix = f"model.visual_abstractor.encoder.layers.{i}.crossattention.attention."
            out[prefix + "q_pos_embed"] = q_pos.clone()
            out[prefix + "k_pos_embed"] = k_pos.clone()
    return out


def carried_names(config: OwlConfig) -> dict[str, str]:
    """owlkit name -> official name of the sin-cos tables a checkpoint may carry (v2)."""
    if config.owl_version != 2 or config.abstractor_config.pos_embed != "sincos":
        return {}
    return {
        f"abstractor.layers.{i}.attention.{t}": f"model.visual_abstractor.encoder.layers.{i}.crossattention.attention.{t}"
        for i in range(config.abstractor_config.num_hidden_layers) for t in CARRIED_TABLES
    }
