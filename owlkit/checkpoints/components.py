"""Build a fresh mPLUG-Owl model from a HF LLaMA folder and a HF CLIP vision folder.

This is how the papers start pre-training: the vision encoder from CLIP ViT-L/14, the
decoder from LLaMA, a newly initialised abstractor, and (mPLUG-Owl2) the visual branches of
the modality-adaptive module copied from the text branches.

CLIP stores separate q/k/v projections; our vision attention keeps the official fused,
per-head layout (``[head][q,k,v][head_dim]`` along the output features), so they are fused
here. CLIP's ``post_layernorm`` becomes the encoder's final LayerNorm, which mPLUG-Owl
applies to every token (CLIP applies it to the pooled CLS only).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import LlamaConfig

from owlkit.config import OwlConfig
from owlkit.errors import CheckpointError
from owlkit.models.owl import OwlForCausalLM
from owlkit.weight_files import read_state_dict

_CLIP_LAYER = {
    "layer_norm1.weight": "input_layernorm.weight", "layer_norm1.bias": "input_layernorm.bias",
    "layer_norm2.weight": "post_attention_layernorm.weight", "layer_norm2.bias": "post_attention_layernorm.bias",
    "self_attn.out_proj.weight": "self_attn.dense.weight", "self_attn.out_proj.bias": "self_attn.dense.bias",
    "mlp.fc1.weight": "mlp.fc1.weight", "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.weight": "mlp.fc2.weight", "mlp.fc2.bias": "mlp.fc2.bias",
}
_LLAMA_LAYER = [
    "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight",
    "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight",
    "input_layernorm.weight", "post_attention_layernorm.weight",
]


def fuse_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Separate q/k/v weights (or biases) -> the per-head interleaved fused layout."""
    stacked = torch.stack([q, k, v])  # [3, D, ...]
    d = q.shape[0]
    rest = q.shape[1:]
    return stacked.view(3, num_heads, d // num_heads, *rest).transpose(0, 1).reshape(3 * d, *rest)


def _read_config(folder: Path, what: str) -> dict:
    path = folder / "config.json"
    if not path.exists():
        raise CheckpointError(f"no config.json in {folder}; expected a HF {what} folder")
    return json.loads(path.read_text())


def _take(state: dict, key: str, folder: Path) -> torch.Tensor:
    if key not in state:
        raise CheckpointError(f"{folder} lacks the tensor {key}; is it a complete HF checkpoint?")
    return state[key]


def build_from_components(
    llama_path: str | Path,
    clip_path: str | Path,
    owl_version: int = 2,
    num_queries: int = 64,
    abstractor_layers: int = 6,
    abstractor_heads: int | None = None,
    abstractor_intermediate_size: int | None = None,
    image_size: int | None = None,
    seed: int = 0,
):
    """A new OwlForCausalLM: LLaMA + CLIP weights, new abstractor (seeded init)."""
    llama_path, clip_path = Path(llama_path), Path(clip_path)
    llama_cfg = _read_config(llama_path, "LLaMA")
    if llama_cfg.get("model_type") != "llama":
        raise CheckpointError(f"{llama_path} holds a {llama_cfg.get('model_type')!r} model; expected 'llama'")
    clip_cfg = _read_config(clip_path, "CLIP")
    if clip_cfg.get("model_type") == "clip":
        clip_cfg = clip_cfg["vision_config"]
    elif clip_cfg.get("model_type") != "clip_vision_model":
        raise CheckpointError(f"{clip_path} holds a {clip_cfg.get('model_type')!r} model; expected CLIP")

    text = LlamaConfig(**{k: v for k, v in llama_cfg.items() if k not in ("model_type", "architectures")})
    vision = {
        "hidden_size": clip_cfg["hidden_size"], "intermediate_size": clip_cfg["intermediate_size"],
        "num_hidden_layers": clip_cfg["num_hidden_layers"], "num_attention_heads": clip_cfg["num_attention_heads"],
        "image_size": image_size or clip_cfg["image_size"], "patch_size": clip_cfg["patch_size"],
        "hidden_act": clip_cfg.get("hidden_act", "quick_gelu"), "layer_norm_eps": clip_cfg.get("layer_norm_eps", 1e-5),
        "fp32_layernorm": owl_version == 1,
    }
    grid = vision["image_size"] // vision["patch_size"]
    width = vision["hidden_size"]
    abstractor = {
        "hidden_size": width, "encoder_hidden_size": width, "num_hidden_layers": abstractor_layers,
        "num_attention_heads": abstractor_heads or vision["num_attention_heads"],
        "intermediate_size": abstractor_intermediate_size or int(2 * 4 * width / 3 + 255) // 256 * 256,
        "num_queries": num_queries, "pos_embed": "sincos" if owl_version == 2 else "none", "grid_size": grid,
    }
    config = OwlConfig(
        vision_config=vision, abstractor_config=abstractor, text_config=text.to_dict(),
        owl_version=owl_version, modality_adaptive=owl_version == 2,
        image_aspect_ratio="resize" if owl_version == 2 else "stretch",
    )
    torch.manual_seed(seed)
    model = OwlForCausalLM(config)
    state = model.state_dict()
    new: dict[str, torch.Tensor] = {}

    clip = read_state_dict(clip_path)
    # transformers < 5 saves CLIPVisionModel (and CLIPModel) under "vision_model."; 5.x drops it.
    p = "vision_model." if any(k.startswith("vision_model.") for k in clip) else ""
    new["vision.embeddings.cls_token"] = _take(clip, p + "embeddings.class_embedding", clip_path).view(1, 1, -1)
    new["vision.embeddings.patch_embed.weight"] = _take(clip, p + "embeddings.patch_embedding.weight", clip_path)
    pos = _take(clip, p + "embeddings.position_embedding.weight", clip_path).unsqueeze(0)
    if pos.shape != state["vision.embeddings.position_embedding"].shape:
        # Another resolution than CLIP's: interpolate CLIP's table once, at build time.
        clip_grid = clip_cfg["image_size"] // clip_cfg["patch_size"]
        pos = _resize_positions(pos, clip_grid, grid)
    new["vision.embeddings.position_embedding"] = pos
    for s in ("weight", "bias"):
        new[f"vision.embeddings.pre_layernorm.{s}"] = _take(clip, f"{p}pre_layrnorm.{s}", clip_path)
        new[f"vision.post_layernorm.{s}"] = _take(clip, f"{p}post_layernorm.{s}", clip_path)
    heads = vision["num_attention_heads"]
    for i in range(vision["num_hidden_layers"]):
        src, dst = f"{p}encoder.layers.{i}.", f"vision.layers.{i}."
        for theirs, ours in _CLIP_LAYER.items():
            new[dst + ours] = _take(clip, src + theirs, clip_path)
        for s in ("weight", "bias"):
            q, k, v = (_take(clip, f"{src}self_attn.{n}_proj.{s}", clip_path) for n in "qkv")
            new[f"{dst}self_attn.query_key_value.{s}"] = fuse_qkv(q, k, v, heads)

    llama = read_state_dict(llama_path)
    new["language_model.embed_tokens.weight"] = _take(llama, "model.embed_tokens.weight", llama_path)
    new["language_model.norm.weight"] = _take(llama, "model.norm.weight", llama_path)
    new["lm_head.weight"] = llama.get("lm_head.weight", new["language_model.embed_tokens.weight"])
    for i in range(text.num_hidden_layers):
        for s in _LLAMA_LAYER:
            w = _take(llama, f"model.layers.{i}.{s}", llama_path)
            module = s.rsplit(".", 1)[0]
            if owl_version == 2 and module in ("self_attn.k_proj", "self_attn.v_proj", "input_layernorm", "post_attention_layernorm"):
                # The paper initialises the visual branch of the MAM from the text branch.
                new[f"language_model.layers.{i}.{module}.text.weight"] = w
                new[f"language_model.layers.{i}.{module}.visual.weight"] = w.clone()
            else:
                new[f"language_model.layers.{i}.{s}"] = w

    for key, value in new.items():
        if state[key].shape != value.shape:
            raise CheckpointError(f"{key}: component tensor of shape {list(value.shape)}, model expects {list(state[key].shape)}")
    missing = model.load_state_dict(new, strict=False).missing_keys
    fresh = [k for k in missing if not k.startswith("abstractor.")]
    if fresh:
        raise CheckpointError(f"no component weights for {', '.join(fresh[:5])}")
    return model.eval()


def _resize_positions(pos: torch.Tensor, src_grid: int, dst_grid: int) -> torch.Tensor:
    cls, patches = pos[:, :1], pos[:, 1:]
    d = pos.shape[-1]
    patches = patches.reshape(1, src_grid, src_grid, d).permute(0, 3, 1, 2).float()
    patches = torch.nn.functional.interpolate(patches, size=(dst_grid, dst_grid), mode="bicubic", align_corners=False)
    return torch.cat([cls, patches.permute(0, 2, 3, 1).reshape(1, dst_grid * dst_grid, d).to(pos.dtype)], dim=1)
