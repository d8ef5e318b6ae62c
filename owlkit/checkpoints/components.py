"""Build a fresh mPLUG-Owl model from a pre-trained LLM and a vision encoder.

This is how the papers start pre-training: the vision encoder from CLIP ViT-L/14, the
decoder from LLaMA, a newly initialised abstractor, and (mPLUG-Owl2) the visual branches of
the modality-adaptive module copied from the text branches.

The LLM is any LLaMA-architecture model, as a HF folder or a GGUF file
(:mod:`owlkit.checkpoints.llm`): grouped-query attention, its rope settings and tied embeddings
are kept as they are. The vision encoder is a HF CLIP folder or the encoder of an owlkit model
folder (e.g. a small encoder pre-trained on the synthetic world). :func:`save_built` writes
the model with the LLM's own tokenizer and chat template, so the folder loads like any other.

CLIP stores separate q/k/v projections; our vision attention keeps the official fused,
per-head layout (``[head][q,k,v][head_dim]`` along the output features), so they are fused
here. CLIP's ``post_layernorm`` becomes the encoder's final LayerNorm, which mPLUG-Owl
applies to every token (CLIP applies it to the pooled CLS only).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from transformers import LlamaConfig

from owlkit.checkpoints.loading import detect_format
from owlkit.checkpoints.saving import save_model
from owlkit.config import OwlConfig
from owlkit.errors import CheckpointError
from owlkit.checkpoints.llm import LanguageModel, read_language_model
from owlkit.models.owl import OwlForCausalLM
from owlkit.processing.templates import CHAT_TEMPLATE
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


def _vision_source(path: Path, owl_version: int, image_size: int | None) -> tuple[dict, dict[str, torch.Tensor], Path]:
    """(our vision config, our ``vision.*`` weights, path) from a CLIP folder or an owlkit model folder."""
    raw = _read_config(path, "CLIP vision or owlkit model")
    if raw.get("model_type") == "owlkit":
        if detect_format(path) != "owlkit":
            raise CheckpointError(f"{path}: expected an owlkit model folder")
        cfg = OwlConfig(**{k: v for k, v in raw.items() if k != "model_type"}).vision_config.to_dict()
        if image_size and image_size != cfg["image_size"]:
            raise CheckpointError(f"{path}'s encoder was trained at {cfg['image_size']} px; it cannot be built at "
                                  f"{image_size} (leave image_size unset)")
        state = {k: v for k, v in read_state_dict(path).items() if k.startswith("vision.")}
        return cfg, state, path
    clip_cfg = raw["vision_config"] if raw.get("model_type") == "clip" else raw
    if clip_cfg.get("model_type", "clip_vision_model") != "clip_vision_model":
        raise CheckpointError(f"{path} holds a {raw.get('model_type')!r} model; expected CLIP or an owlkit model folder")
    vision = {
        "hidden_size": clip_cfg["hidden_size"], "intermediate_size": clip_cfg["intermediate_size"],
        "num_hidden_layers": clip_cfg["num_hidden_layers"], "num_attention_heads": clip_cfg["num_attention_heads"],
        "image_size": image_size or clip_cfg["image_size"], "patch_size": clip_cfg["patch_size"],
        "hidden_act": clip_cfg.get("hidden_act", "quick_gelu"), "layer_norm_eps": clip_cfg.get("layer_norm_eps", 1e-5),
        "fp32_layernorm": owl_version == 1,
    }
    return vision, _clip_weights(path, clip_cfg, vision), path


#: The abstractor's tensors that have the LLM's width: a transferred abstractor starts them new.
LLM_WIDTH_TENSORS = ("abstractor.visual_fc.weight", "abstractor.visual_fc.bias", "abstractor.vit_eos")


def _abstractor_source(path: Path, abstractor: dict) -> tuple[dict, dict[str, torch.Tensor]]:
    """(the new abstractor's config, its weights) from an owlkit folder's trained abstractor."""
    raw = _read_config(path, "owlkit model")
    if raw.get("model_type") != "owlkit" or detect_format(path) != "owlkit":
        raise CheckpointError(f"{path}: an abstractor can only be taken from an owlkit model folder")
    source = OwlConfig(**{k: v for k, v in raw.items() if k != "model_type"}).abstractor_config
    if source.projector != "abstractor" or abstractor["projector"] != "abstractor":
        raise CheckpointError(f"{path}: only a query abstractor can be transferred (projector 'abstractor')")
    if (source.encoder_hidden_size, source.grid_size) != (abstractor["encoder_hidden_size"], abstractor["grid_size"]):
        raise CheckpointError(f"{path}'s abstractor reads {source.grid_size}x{source.grid_size} patches of width "
                              f"{source.encoder_hidden_size}; this encoder gives {abstractor['grid_size']}x"
                              f"{abstractor['grid_size']} of width {abstractor['encoder_hidden_size']}")
    shape = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "num_queries", "pos_embed")
    config = {**abstractor, **{key: getattr(source, key) for key in shape}}
    state = {k: v for k, v in read_state_dict(path).items() if k.startswith("abstractor.") and k not in LLM_WIDTH_TENSORS}
    return config, state


def _clip_weights(path: Path, clip_cfg: dict, vision: dict) -> dict[str, torch.Tensor]:
    """CLIP's vision tower in our names (q/k/v fused per head, positions resized if needed)."""
    clip = read_state_dict(path)
    new: dict[str, torch.Tensor] = {}
    # transformers < 5 saves CLIPVisionModel (and CLIPModel) under "vision_model."; 5.x drops it.
    p = "vision_model." if any(k.startswith("vision_model.") for k in clip) else ""
    new["vision.embeddings.cls_token"] = _take(clip, p + "embeddings.class_embedding", path).view(1, 1, -1)
    new["vision.embeddings.patch_embed.weight"] = _take(clip, p + "embeddings.patch_embedding.weight", path)
    pos = _take(clip, p + "embeddings.position_embedding.weight", path).unsqueeze(0)
    clip_grid, grid = clip_cfg["image_size"] // clip_cfg["patch_size"], vision["image_size"] // vision["patch_size"]
    if clip_grid != grid:
        # Another resolution than CLIP's: interpolate CLIP's table once, at build time.
        pos = _resize_positions(pos, clip_grid, grid)
    new["vision.embeddings.position_embedding"] = pos
    for s in ("weight", "bias"):
        new[f"vision.embeddings.pre_layernorm.{s}"] = _take(clip, f"{p}pre_layrnorm.{s}", path)
        new[f"vision.post_layernorm.{s}"] = _take(clip, f"{p}post_layernorm.{s}", path)
    heads = vision["num_attention_heads"]
    for i in range(vision["num_hidden_layers"]):
        src, dst = f"{p}encoder.layers.{i}.", f"vision.layers.{i}."
        for theirs, ours in _CLIP_LAYER.items():
            new[dst + ours] = _take(clip, src + theirs, path)
        for s in ("weight", "bias"):
            q, k, v = (_take(clip, f"{src}self_attn.{n}_proj.{s}", path) for n in "qkv")
            new[f"{dst}self_attn.query_key_value.{s}"] = fuse_qkv(q, k, v, heads)
    return new


def _llm_weights(llm: LanguageModel, layers: int, modality_adaptive: bool) -> dict[str, torch.Tensor]:
    """The LLM in our names; with the MAM the text k/v projections and norms are copied into its visual branch."""
    state, path = llm.state, llm.path
    new = {"language_model.embed_tokens.weight": _take(state, "model.embed_tokens.weight", path),
           "language_model.norm.weight": _take(state, "model.norm.weight", path)}
    new["lm_head.weight"] = state.get("lm_head.weight", new["language_model.embed_tokens.weight"])
    for i in range(layers):
        for s in _LLAMA_LAYER:
            w = _take(state, f"model.layers.{i}.{s}", path)
            module = s.rsplit(".", 1)[0]
            if modality_adaptive and module in ("self_attn.k_proj", "self_attn.v_proj", "input_layernorm", "post_attention_layernorm"):
                # The paper initialises the visual branch of the MAM from the text branch.
                new[f"language_model.layers.{i}.{module}.text.weight"] = w
                new[f"language_model.layers.{i}.{module}.visual.weight"] = w.clone()
            else:
                new[f"language_model.layers.{i}.{s}"] = w
    return new


def build_from_components(
    llm_path: str | Path | LanguageModel,
    vision_path: str | Path,
    owl_version: int = 2,
    num_queries: int = 64,
    abstractor_layers: int = 6,
    abstractor_heads: int | None = None,
    abstractor_intermediate_size: int | None = None,
    image_size: int | None = None,
    seed: int = 0,
    modality_adaptive: bool | None = None,
    projector: str = "abstractor",
    abstractor_from: str | Path | None = None,
    word_ids: list[int] | None = None,
):
    """A new OwlForCausalLM: the LLM's and the encoder's weights, a new abstractor (seeded init).

    ``modality_adaptive`` (default: mPLUG-Owl2 has the module, mPLUG-Owl not) and ``projector``
    (``"abstractor"``, or ``"linear"``: every patch through one linear layer) build the
    variants docs/paper-claims.md compares; ``"words"`` reads the queries as the LLM's words
    (:class:`~owlkit.models.abstractor.WordProjector`), made of the embedding rows ``word_ids``
    (default: the whole vocabulary).

    ``llm_path``: a HF LLaMA folder, a ``.gguf`` file, or a :class:`~owlkit.checkpoints.llm.LanguageModel`
    already read. ``vision_path``: a HF CLIP (vision) folder or an owlkit model folder whose
    encoder is taken. ``abstractor_from``: an owlkit model folder (on the same encoder) whose
    trained abstractor starts the new one, its shape included (``num_queries`` and the other
    abstractor arguments are then not used); only the output projection and ``vit_eos``, which
    have the LLM's width, start new.
    """
    llm = llm_path if isinstance(llm_path, LanguageModel) else read_language_model(llm_path)
    vision, vision_state, vision_path = _vision_source(Path(vision_path), owl_version, image_size)
    text = LlamaConfig(**{k: v for k, v in llm.config.items() if k not in ("model_type", "architectures", "chat_template")})
    width = vision["hidden_size"]
    abstractor = {
        "hidden_size": width, "encoder_hidden_size": width, "num_hidden_layers": abstractor_layers,
        "num_attention_heads": abstractor_heads or vision["num_attention_heads"],
        "intermediate_size": abstractor_intermediate_size or int(2 * 4 * width / 3 + 255) // 256 * 256,
        "num_queries": num_queries, "pos_embed": "sincos" if owl_version == 2 else "none",
        "grid_size": vision["image_size"] // vision["patch_size"], "projector": projector,
    }
    if word_ids is not None:
        if projector != "words":
            raise CheckpointError(f"word_ids belong to a 'words' projector, not {projector!r}")
        abstractor["word_ids"] = [int(w) for w in word_ids]
    transferred = {}
    if abstractor_from is not None:
        abstractor, transferred = _abstractor_source(Path(abstractor_from), abstractor)
    modality_adaptive = owl_version == 2 if modality_adaptive is None else bool(modality_adaptive)
    config = OwlConfig(
        vision_config=vision, abstractor_config=abstractor, text_config=text.to_dict(),
        owl_version=owl_version, modality_adaptive=modality_adaptive,
        image_aspect_ratio="resize" if owl_version == 2 else "stretch",
        tie_word_embeddings=bool(text.tie_word_embeddings),
    )
    torch.manual_seed(seed)
    model = OwlForCausalLM(config)
    state = model.state_dict()
    new = {**vision_state, **transferred, **_llm_weights(llm, text.num_hidden_layers, modality_adaptive)}
    for key, value in new.items():
        if key not in state:
            raise CheckpointError(f"{key}: no such weight in the model being built")
        if state[key].shape != value.shape:
            raise CheckpointError(f"{key}: component tensor of shape {list(value.shape)}, model expects {list(state[key].shape)}")
    missing = model.load_state_dict({k: v.to(state[k].dtype) for k, v in new.items()}, strict=False).missing_keys
    fresh = [k for k in missing if not k.startswith("abstractor.") or (transferred and k not in LLM_WIDTH_TENSORS)]
    if fresh:
        raise CheckpointError(f"no component weights for {', '.join(fresh[:5])}")
    return model.eval()


def save_built(model, llm: LanguageModel | str | Path, vision_path: str | Path, folder: str | Path, *,
               template: str | None = None) -> Path:
    """Write a built model as a loadable owlkit folder, with the LLM's tokenizer and chat template.

    ``template`` names the conversation template the folder's processor uses; by default the
    LLM's own chat template when its tokenizer has one, else the generation's official one.
    The image preprocessing comes from the vision source's ``preprocessor_config.json``.
    """
    llm = llm if isinstance(llm, LanguageModel) else read_language_model(llm)
    if template is None and llm.chat_template:
        template = CHAT_TEMPLATE
    model.config.conversation_template = template
    text = model.config.text_config
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(model.generation_config, key, getattr(text, key, None))
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = text.eos_token_id
    folder = save_model(model, folder)
    llm.save_tokenizer(folder)
    pre = Path(vision_path) / "preprocessor_config.json"
    if pre.is_file():
        shutil.copyfile(pre, folder / "preprocessor_config.json")
    return folder


def _resize_positions(pos: torch.Tensor, src_grid: int, dst_grid: int) -> torch.Tensor:
    cls, patches = pos[:, :1], pos[:, 1:]
    d = pos.shape[-1]
    patches = patches.reshape(1, src_grid, src_grid, d).permute(0, 3, 1, 2).float()
    patches = torch.nn.functional.interpolate(patches, size=(dst_grid, dst_grid), mode="bicubic", align_corners=False)
    return torch.cat([cls, patches.permute(0, 2, 3, 1).reshape(1, dst_grid * dst_grid, d).to(pos.dtype)], dim=1)
