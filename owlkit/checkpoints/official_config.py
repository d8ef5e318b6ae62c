"""Official ``config.json`` files (either generation) <-> :class:`~owlkit.config.OwlConfig`."""

from __future__ import annotations

from owlkit.checkpoints.names import OFFICIAL_V1, OFFICIAL_V2
from owlkit.config import OwlAbstractorConfig, OwlConfig, OwlVisionConfig
from owlkit.errors import CheckpointError

_LLAMA_KEYS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "hidden_act", "max_position_embeddings", "rms_norm_eps", "initializer_range",
    "bos_token_id", "eos_token_id", "pad_token_id", "tie_word_embeddings", "attention_bias",
)
_VISION_KEYS = (
    "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_channels",
    "image_size", "patch_size", "hidden_act", "layer_norm_eps", "use_cls_token", "use_post_layernorm",
)


def _text_config(d: dict) -> dict:
    text = {k: d[k] for k in _LLAMA_KEYS if d.get(k) is not None}
    rope = {"rope_type": "default", "rope_theta": float(d.get("rope_theta") or 10000.0)}
    scaling = d.get("rope_scaling")
    if scaling:
        rope.update(scaling)
        rope["rope_type"] = scaling.get("rope_type", scaling.get("type", "default"))
        rope.pop("type", None)
    text["rope_parameters"] = rope
    return text


def config_from_official(d: dict) -> OwlConfig:
    """An OwlConfig from an official ``config.json`` (either generation)."""
    model_type = d.get("model_type")
    try:
        if model_type == OFFICIAL_V2:
            vis_d = d["visual_config"]["visual_model"]
            abs_d = d["visual_config"]["visual_abstractor"]
            text = _text_config(d)
            version = 2
        elif model_type == OFFICIAL_V1:
            vis_d = d["vision_config"]
            abs_d = d["visual_abstractor_config"]
            text_d = d.get("text_config") or {"pad_token_id": 2}
            if text_d.get("model_type", "llama") != "llama":
                raise CheckpointError(
                    f"mPLUG-Owl with a {text_d.get('model_type')!r} language model is not supported; "
                    "only LLaMA-based releases load"
                )
            text = _text_config(text_d)
            version = 1
        else:
            raise CheckpointError(f"not an official mPLUG-Owl config (model_type={model_type!r})")
    except KeyError as exc:
        raise CheckpointError(f"official config.json lacks the key {exc}; the file is incomplete") from None
    vision = {k: vis_d[k] for k in _VISION_KEYS if vis_d.get(k) is not None}
    if version == 1:  # v1 hard-wires QuickGELU and fp32 LayerNorms whatever the config says
        vision.update(hidden_act="quick_gelu", fp32_layernorm=True, use_cls_token=True, use_post_layernorm=True)
    vision_cfg = OwlVisionConfig(**vision)
    queries = abs_d.get("num_learnable_queries") if version == 2 else d.get("num_query_tokens", 64)
    grid = abs_d.get("grid_size") or 32 if version == 2 else vision_cfg.grid_size
    abstractor = OwlAbstractorConfig(
        hidden_size=abs_d.get("hidden_size", 1024),
        num_hidden_layers=abs_d.get("num_hidden_layers", 6),
        num_attention_heads=abs_d.get("num_attention_heads", 16),
        intermediate_size=abs_d.get("intermediate_size", 2816),
        num_queries=queries or 64,
        encoder_hidden_size=abs_d.get("encoder_hidden_size", vision_cfg.hidden_size),
        layer_norm_eps=abs_d.get("layer_norm_eps", 1e-6),
        attention_probs_dropout_prob=abs_d.get("attention_probs_dropout_prob", 0.0),
        pos_embed="sincos" if version == 2 else "none",
        grid_size=grid,
        use_cls_token=abs_d.get("use_cls_token", True),
    )
    if version == 2 and abstractor.grid_size != vision_cfg.grid_size:
        raise CheckpointError(
            f"visual_abstractor.grid_size {abstractor.grid_size} does not match image_size/patch_size "
            f"{vision_cfg.grid_size}; the official model cannot run with this config"
        )
    return OwlConfig(
        vision_config=vision_cfg.to_dict(),
        abstractor_config=abstractor.to_dict(),
        text_config=text,
        owl_version=version,
        modality_adaptive=version == 2,
        image_aspect_ratio=d.get("image_aspect_ratio") or ("resize" if version == 2 else "stretch"),
    )


def config_to_official(config: OwlConfig) -> dict:
    """The official ``config.json`` dict for ``config`` (inverse of config_from_official)."""
    official = f"the official mPLUG-Owl{'2' if config.owl_version == 2 else ''} format"
    if config.abstractor_config.projector != "abstractor":
        raise CheckpointError(f"a model with a {config.abstractor_config.projector} projector has no place in {official}; "
                              "save it in owlkit's own format")
    if config.modality_adaptive != (config.owl_version == 2):
        raise CheckpointError(f"{official} {'always' if config.owl_version == 2 else 'never'} has the modality-adaptive module; "
                              "save this model in owlkit's own format")
    text = config.text_config
    rope = dict(text.rope_parameters or {})
    theta = rope.pop("rope_theta", 10000.0)
    rope_type = rope.pop("rope_type", "default")
    scaling = None if rope_type == "default" else {"type": rope_type, **rope}
    llama = {k: getattr(text, k) for k in _LLAMA_KEYS}
    vision = {k: getattr(config.vision_config, k) for k in _VISION_KEYS}
    vision.update(model_type="mplug_owl_vision_model", projection_dim=768, attention_dropout=0.0, use_flash_attn=False)
    a = config.abstractor_config
    abstractor = {
        "model_type": "mplug_owl_visual_abstract",
        "hidden_size": a.hidden_size,
        "num_hidden_layers": a.num_hidden_layers,
        "num_attention_heads": a.num_attention_heads,
        "intermediate_size": a.intermediate_size,
        "attention_probs_dropout_prob": a.attention_probs_dropout_prob,
        "initializer_range": 0.02,
        "layer_norm_eps": a.layer_norm_eps,
        "encoder_hidden_size": a.encoder_hidden_size,
    }
    if config.owl_version == 2:
        abstractor.update(num_learnable_queries=a.num_queries, grid_size=a.grid_size, use_cls_token=a.use_cls_token,
                          add_v2t_pos_emb=False)
        out = {
            "architectures": ["MPLUGOwl2LlamaForCausalLM"],
            "model_type": OFFICIAL_V2,
            **llama,
            "rope_theta": theta,
            "rope_scaling": scaling,
            "pretraining_tp": 1,
            "use_cache": True,
            "visual_config": {"visual_model": vision, "visual_abstractor": abstractor},
            "torch_dtype": "float32",
        }
        if config.image_aspect_ratio:
            out["image_aspect_ratio"] = config.image_aspect_ratio
        return out
    llama_cfg = {"model_type": "llama", **llama}
    return {
        "architectures": ["MplugOwlForConditionalGeneration"],
        "model_type": OFFICIAL_V1,
        "vision_config": vision,
        "visual_abstractor_config": abstractor,
        "text_config": llama_cfg,
        "num_query_tokens": a.num_queries,
        "use_decoder_only_language_model": True,
        "tie_word_embeddings": False,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "torch_dtype": "float32",
    }
