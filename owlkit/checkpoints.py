"""Model folders: official mPLUG-Owl / mPLUG-Owl2 and owlkit's own, loaded exactly.

``load_model`` recognises the folder by ``config.json``'s ``model_type``:

* ``mplug_owl2``: the official mPLUG-Owl2 (LLaMA-2) release;
* ``mplug-owl``: the official mPLUG-Owl (v1) release;
* ``owlkit``: folders written by owlkit (``save_pretrained`` / ``owl convert``).

Weights may be ``model.safetensors``, ``pytorch_model.bin`` (read with
``torch.load(weights_only=True)``: no arbitrary unpickling) or sharded ``*.index.json`` of
either kind. Every parameter must be found with its exact shape: a missing, unexpected or
mis-shaped tensor is a :class:`~owlkit.errors.CheckpointError` listing the names. Nothing is ever
left at random initialisation.

The official key names are spelled out in one explicit table per generation
(:func:`official_names`), from which both directions of ``owl convert`` are derived.
Deterministic buffers of the official checkpoints: LLaMA ``rotary_emb.inv_freq`` is
recomputed (and checked when present); the abstractor's sin-cos tables, when a checkpoint
carries them, are checked against the computed ones and then kept as they are (buffers of the
model, saved with it), so ``owl convert`` round trips are bit-identical whatever numpy computes.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Iterable

import torch

from owlkit.config import OwlAbstractorConfig, OwlConfig, OwlVisionConfig
from owlkit.errors import CheckpointError
from owlkit.weight_files import TensorInfo, find_weights, read_json, read_state_dict, stream_tensors, weight_index

OFFICIAL_V2 = "mplug_owl2"
OFFICIAL_V1 = "mplug-owl"
OWLKIT = "owlkit"
FORMATS = {OFFICIAL_V2: "official mPLUG-Owl2", OFFICIAL_V1: "official mPLUG-Owl", OWLKIT: "owlkit"}



# ---------------------------------------------------------------------------------------------
# Name tables
# ---------------------------------------------------------------------------------------------

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
    from owlkit.models.abstractor import sincos_tables

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


# ---------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------
# Weight files
# ---------------------------------------------------------------------------------------------


def detect_format(folder: str | Path) -> str:
    """``mplug_owl2``, ``mplug-owl`` or ``owlkit`` for a model folder (raises otherwise)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is not a folder; pass a model folder holding config.json and weights")
    cfg = folder / "config.json"
    if not cfg.exists():
        raise CheckpointError(f"no config.json in {folder}; expected an official mPLUG-Owl/mPLUG-Owl2 or owlkit model folder")
    model_type = read_json(cfg).get("model_type")
    if model_type not in FORMATS:
        raise CheckpointError(
            f"{cfg} has model_type {model_type!r}; owlkit loads {', '.join(repr(k) for k in FORMATS)} folders"
        )
    return model_type


def _summarise(names: Iterable[str], limit: int = 6) -> str:
    names = sorted(names)
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def carried_names(config: OwlConfig) -> dict[str, str]:
    """owlkit name -> official name of the sin-cos tables a checkpoint may carry (v2)."""
    from owlkit.models.abstractor import CARRIED_TABLES

    if config.owl_version != 2 or config.abstractor_config.pos_embed != "sincos":
        return {}
    return {
        f"abstractor.layers.{i}.attention.{t}": f"model.visual_abstractor.encoder.layers.{i}.crossattention.attention.{t}"
        for i in range(config.abstractor_config.num_hidden_layers) for t in CARRIED_TABLES
    }


def _check_table(name: str, got: torch.Tensor, expected: torch.Tensor, folder: Path) -> None:
    if tuple(got.shape) != tuple(expected.shape) or not torch.allclose(got.float(), expected, atol=1e-3, rtol=1e-3):
        raise CheckpointError(
            f"{name} in {folder} differs from the deterministic table this config implies; "
            "the config does not match the weights"
        )


def read_config(folder: Path, kind: str) -> OwlConfig:
    raw = read_json(folder / "config.json")
    if kind != OWLKIT:
        return config_from_official(raw)
    try:
        return OwlConfig(**{k: v for k, v in raw.items() if k != "model_type"})
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{folder / 'config.json'} is not a valid owlkit config: {exc}") from None


def _plan(index: dict[str, TensorInfo], config: OwlConfig, kind: str, expected: dict[str, torch.Size],
          folder: Path) -> dict[str, str | None]:
    """File tensor name -> model name (None: a deterministic buffer that is only checked).

    Every check that needs no tensor data happens here, before anything is read: official
    names, missing and unexpected tensors, shapes.
    """
    carried = carried_names(config)
    if kind == OWLKIT:
        plan: dict[str, str | None] = {name: name for name in index}
    else:
        inverse = {official: ours for ours, official in official_names(config).items()}
        inverse.update({official: ours for ours, official in carried.items()})
        buffers = official_buffers(config)
        optional = set(carried.values())  # third-party conversions may lack the tables
        missing = [official for official in inverse if official not in index and official not in optional]
        unexpected = [k for k in index if k not in inverse and k not in buffers]
        _raise_mismatch(f"weights in {folder} do not match config.json", missing, unexpected)
        plan = {name: inverse.get(name) for name in index}
        for name, table in buffers.items():  # shapes of the deterministic tables, before reading
            if name in index and index[name].shape != tuple(table.shape):
                raise CheckpointError(f"{name} in {folder} has shape {list(index[name].shape)}, the config implies "
                                      f"{list(table.shape)}; the config does not match the weights")
    shapes = {ours: index[name].shape for name, ours in plan.items() if ours is not None and ours not in carried}
    missing = [k for k in expected if k not in shapes]
    unexpected = [k for k in shapes if k not in expected]
    wrong = [f"{k} {list(shapes[k])} vs {list(expected[k])}" for k in expected
             if k in shapes and tuple(shapes[k]) != tuple(expected[k])]
    _raise_mismatch(f"weights in {folder} do not match its config", missing, unexpected, wrong)
    return plan


def _raise_mismatch(what: str, missing: list[str], unexpected: list[str], wrong: list[str] = ()) -> None:
    parts = []
    if missing:
        parts.append(f"missing {len(missing)} tensor(s): {_summarise(missing)}")
    if unexpected:
        parts.append(f"unexpected {len(unexpected)} tensor(s): {_summarise(unexpected)}")
    if wrong:
        parts.append(f"{len(wrong)} tensor(s) of the wrong shape (file vs config): {_summarise(wrong, 3)}")
    if parts:
        raise CheckpointError(f"{what}: " + "; ".join(parts))


def _assign(model, name: str, tensor: torch.Tensor) -> None:
    """Put ``tensor`` in the (meta) model as its parameter or buffer ``name``."""
    module_name, _, attr = name.rpartition(".")
    module = model.get_submodule(module_name)
    if attr in module._parameters:
        module._parameters[attr] = torch.nn.Parameter(tensor, requires_grad=module._parameters[attr].requires_grad)
    else:
        module._buffers[attr] = tensor


def load_model(path: str | Path, dtype: torch.dtype | str | None = None, device: str | torch.device | None = None,
               *, device_map: str | dict | None = None, max_memory: int | str | None = None,
               quantize: str | int | None = None, group_size: int | None = None, keep_portable: bool = False):
    """Load an official mPLUG-Owl / mPLUG-Owl2 folder or an owlkit folder, exactly.

    ``dtype=None`` follows :mod:`owlkit.memory`'s rule (CPU: float32 when it fits comfortably,
    else bfloat16; a GPU: the stored dtype); a dtype that cannot fit is refused before anything
    is read. ``device`` (default CPU) receives each tensor as it is read, so nothing of the
    model's size is ever held twice (a GPU load keeps no CPU copy). ``device_map="auto"`` (or
    a dict of module prefixes to devices) spreads the layers over the GPUs and the CPU with
    accelerate, as transformers does. ``max_memory`` caps the memory the model may use (bytes
    or ``"8GB"``; also ``OWLKIT_MAX_MEMORY``). ``quantize="int8" | "int4"`` quantizes the
    decoder's linear layers and the LM head as each weight is read (:mod:`owlkit.quantization`;
    ``group_size`` for int4, default 128), so the float model is never held; a folder written
    quantized (``owl quantize``) loads as it is. int4 layers are repacked into the kernel's
    layout as they load and keep no portable copy, unless ``keep_portable`` (to save the model).
    """
    from owlkit import quantization as Q
    from owlkit.memory import choose_dtype, parse_dtype
    from owlkit.models.owl import OwlForCausalLM

    folder = Path(path)
    kind = detect_format(folder)
    config = read_config(folder, kind)
    index = weight_index(folder)
    bits = Q.parse_quantize(quantize)
    stored_q = getattr(config, Q.CONFIG_KEY, None)
    with torch.device("meta"):
        model = OwlForCausalLM(config)
    if stored_q:
        if bits is not None and bits != stored_q["bits"]:
            raise CheckpointError(f"{folder} is already quantized to int{stored_q['bits']}; load it without quantize "
                                  "(or quantize its float original)")
        Q.replace_linears(model, stored_q["bits"], stored_q["group_size"], set(stored_q.get("kept", [])))
        bits = None  # nothing to quantize while loading: the file holds the quantized tensors
    expected = {k: v.shape for k, v in model.state_dict().items()}
    tied = bool(config.tie_word_embeddings)
    if tied:  # the file holds the embeddings once (an LLM with tied embeddings, e.g. SmolLM2)
        expected.pop("lm_head.weight", None)
    plan = _plan(index, config, kind, expected, folder)
    kept: list[str] = []
    if bits is not None:
        group_size = int(group_size or Q.DEFAULT_GROUP_SIZE)
        if group_size not in Q.GROUP_SIZES:
            raise CheckpointError(f"group_size must be one of {', '.join(map(str, Q.GROUP_SIZES))} "
                                  f"(what PyTorch's int4 kernel takes), got {group_size}")
        if device_map is not None or (device is not None and torch.device(device).type != "cpu"):
            raise CheckpointError("quantized models run on the CPU (PyTorch's int8/int4 CPU kernels); "
                                  "drop device / device_map, or load unquantized on the GPU")
        kept = Q.replace_linears(model, bits, group_size)
    if device_map is not None and not isinstance(device_map, dict) and str(device_map) != "auto":
        device, device_map = device_map, None  # transformers-style device_map="cuda:0": one device
    try:
        device = torch.device(device or "cpu")
    except RuntimeError:
        raise CheckpointError(f"unknown device {device!r}; use cpu, cuda, cuda:N (or device_map='auto')") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CheckpointError(f"device {device} was asked for but this machine has no usable CUDA GPU; use cpu")
    floats = [info.dtype for info in index.values() if info.dtype.is_floating_point]
    stored = max(set(floats), key=floats.count) if floats else torch.float32
    num_params = sum(p.numel() for p in model.parameters())
    quantized_bytes = sum(b.numel() * b.element_size() for m in model.modules() if isinstance(m, Q.QuantizedLinear)
                          for b in m.buffers())
    requested = parse_dtype(dtype)
    if device_map is None:
        dtype = choose_dtype(num_params, stored, device, requested, max_memory, what=str(folder),
                             fixed_bytes=quantized_bytes)
    else:
        dtype = requested or (stored if torch.cuda.is_available() else torch.float32)
    model = model.to(dtype)
    place = _placement(model, device_map, device, dtype, max_memory)
    buffers = official_buffers(config) if kind != OWLKIT else {}
    for name, tensor, mapped in stream_tensors(index):
        ours = plan[name]
        if name in buffers:
            _check_table(name, tensor, buffers[name], folder)
        if ours is None:
            continue
        module_name, _, attr = ours.rpartition(".")
        module = model.get_submodule(module_name) if module_name else model
        if isinstance(module, Q.QuantizedLinear) and attr == "weight":  # quantized as it is read
            module.set_weight(tensor, place(ours), prepare=not keep_portable)
            continue
        quantized_buffer = isinstance(module, Q.QuantizedLinear) and attr != "bias"
        target = dtype if tensor.is_floating_point() and not quantized_buffer else tensor.dtype
        moved = tensor.to(device=place(ours), dtype=target)
        if moved.device.type == "cpu" and moved.data_ptr() == tensor.data_ptr() and (mapped or moved.data_ptr() % 64):
            # Own, aligned memory: a mapped file's pages are handed back next, and safetensors'
            # buffers may sit at any address, which PyTorch's int8 kernel does not survive.
            moved = moved.clone()
        _assign(model, ours, moved)
    if tied:
        embeddings = model.language_model.embed_tokens.weight
        if isinstance(model.lm_head, Q.QuantizedLinear):
            model.lm_head.set_weight(embeddings.detach(), place("lm_head.weight"), prepare=not keep_portable)
        else:
            model.lm_head.weight = embeddings
    # Non-persistent buffers were created on the meta device: rebuild them for real.
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    model.language_model.rotary_emb = LlamaRotaryEmbedding(config.text_config).to(place("language_model.rotary_emb"))
    left = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.device.type == "meta"]
    if left:  # every tensor of the model must come from the file (never a random fill)
        raise CheckpointError(f"weights in {folder} left {len(left)} tensor(s) unset: {_summarise(left)}")
    if stored_q and not keep_portable:
        for module in model.modules():
            if isinstance(module, Q.QuantizedLinear):
                module.prepare()
    _set_generation_config(model, folder, kind)
    if bits is not None:
        setattr(model.config, Q.CONFIG_KEY, {"bits": bits, "group_size": group_size, "kept": kept})
    if device_map is not None:
        from accelerate import dispatch_model

        model = dispatch_model(model, device_map=place.device_map)
    return model.eval()


def _placement(model, device_map, device: torch.device, dtype: torch.dtype, max_memory):
    """name -> device for each tensor; with a device map, the longest matching module prefix."""
    if device_map is None:
        def place(name: str) -> torch.device:
            return device

        place.device_map = None
        return place
    try:
        from accelerate import infer_auto_device_map
    except ImportError:
        raise CheckpointError("device_map needs the accelerate package: pip install accelerate") from None
    if device_map == "auto":
        device_map = infer_auto_device_map(
            model, max_memory=max_memory if isinstance(max_memory, dict) else None, dtype=dtype,
            no_split_module_classes=["DecoderLayer", "VisionLayer", "AbstractorLayer"],
        )
    if "disk" in set(map(str, device_map.values())):
        raise CheckpointError("the model does not fit in the GPUs and the CPU together (device_map wants disk "
                              "offloading, which owlkit does not do); free memory or use a smaller dtype")
    prefixes = sorted(device_map, key=len, reverse=True)

    def place(name: str) -> torch.device:
        for prefix in prefixes:
            if prefix == "" or name == prefix or name.startswith(prefix + "."):
                value = device_map[prefix]
                return torch.device(f"cuda:{value}" if isinstance(value, int) else value)
        raise CheckpointError(f"device_map places no module holding {name}; give every module a device")

    place.device_map = device_map
    return place


def _set_generation_config(model, folder: Path, kind: str) -> None:
    from transformers import GenerationConfig

    text = model.config.text_config
    if kind == OWLKIT and (folder / "generation_config.json").exists():
        model.generation_config = GenerationConfig.from_pretrained(str(folder))
        return
    # The official v1 outer GenerationConfig (sampling, top_k 3) is never used by the official
    # code either; both generations decode greedily unless asked otherwise.
    model.generation_config = GenerationConfig(
        bos_token_id=text.bos_token_id, eos_token_id=text.eos_token_id, pad_token_id=text.pad_token_id or 0,
    )


# ---------------------------------------------------------------------------------------------
# Saving and conversion
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def quiet_saving():
    """No transformers "Writing model shards" bar inside owlkit's own output."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def save_model(model, path: str | Path, format: str = "owlkit", max_shard_size: str = "5GB") -> Path:
    """Write ``model`` as an owlkit folder (``format="owlkit"``) or in the official layout."""
    from safetensors.torch import save_file

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    if format == "owlkit":
        with quiet_saving():
            model.save_pretrained(str(out), max_shard_size=max_shard_size)
        return out
    if format != "official":
        raise CheckpointError(f"unknown format {format!r}; use 'owlkit' or 'official'")
    config = model.config
    table = official_names(config) | carried_names(config)
    state = {table[k]: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    for name, tensor in official_buffers(config).items():
        state.setdefault(name, tensor)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config_to_official(config), indent=2) + "\n")
    gen = {"bos_token_id": config.text_config.bos_token_id, "eos_token_id": config.text_config.eos_token_id,
           "pad_token_id": config.text_config.pad_token_id or 0}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    return out


def convert(src: str | Path, dst: str | Path, format: str = "owlkit", dtype: torch.dtype | str | None = None) -> Path:
    """Convert a model folder; tensors are copied bit for bit (dtype kept unless ``dtype`` is given).

    The model is read one tensor at a time (as :func:`load_model` does), so a conversion needs
    about the model's size in memory, not twice it.
    """
    src = Path(src)
    if dtype is None:
        floats = [i.dtype for i in weight_index(src).values() if i.dtype.is_floating_point]
        dtype = max(set(floats), key=floats.count) if floats else torch.float32
    model = load_model(src, dtype=dtype)
    out = save_model(model, dst, format=format)
    _copy_side_files(src, out)
    return out


def _copy_side_files(src: Path, dst: Path) -> None:
    """Tokenizer and preprocessing files travel with the weights."""
    import shutil

    for name in ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                 "preprocessor_config.json", "added_tokens.json"):
        if (src / name).exists() and not (dst / name).exists():
            shutil.copy2(src / name, dst / name)
