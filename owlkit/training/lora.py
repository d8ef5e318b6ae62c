"""LoRA through peft: adapters on the language model, merged back into a plain owlkit folder.

``lora.target_modules`` names decoder projections (``q_proj``, ``v_proj``, ``k_proj``, ``o_proj``,
``gate_proj``, ``up_proj``, ``down_proj``); only the language model's layers are adapted. With
mPLUG-Owl2's modality-adaptive module, ``k_proj`` / ``v_proj`` are pairs (``.text``, ``.visual``):
both get adapters. ``lora.modules_to_save`` (default ``[abstractor]``, the paper's choice) are
trained in full next to the adapters and saved with them (peft ``modules_to_save``). The name
``visual`` there means the modality-adaptive module's visual branches (every layer's visual
norms and key/value projections, mPLUG-Owl2's visual side of the decoder): they then train in
full and only the ``.text`` projections get adapters.
"""

from __future__ import annotations

import difflib
import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from owlkit.checkpoints import copy_side_files, load_model, save_model
from owlkit.errors import ConfigError, OwlError
from owlkit.quantization import LOW_RANK_FILE

ADAPTER_DIR = "adapter"
_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
#: ``lora.modules_to_save`` name of the modality-adaptive module's visual branches (peft matches
#: module names by suffix: ``...k_proj.visual``, ``...input_layernorm.visual``...).
VISUAL_BRANCHES = "visual"


def target_regex(model, targets: list[str], visual_whole: bool = False) -> str:
    """A peft ``target_modules`` regex matching exactly the ``nn.Linear`` modules to adapt
    (``visual_whole``: the visual branches train in full, so only the ``.text`` ones)."""
    unknown = [t for t in targets if t not in _PROJECTIONS]
    if unknown:
        near = difflib.get_close_matches(unknown[0], _PROJECTIONS, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else f"; choose from {', '.join(_PROJECTIONS)}"
        raise ConfigError(f"lora.target_modules: {unknown[0]!r} is not a decoder projection{hint}")
    names = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    alternatives = []
    for t in targets:
        if any(re.fullmatch(rf"language_model\.layers\.\d+\.\w+\.{t}\.text", n) for n in names):
            alternatives.append(rf"{t}\.text" if visual_whole else rf"{t}\.(?:text|visual)")
        else:
            alternatives.append(t)
    return rf"language_model\.layers\.\d+\.(?:self_attn|mlp)\.(?:{'|'.join(alternatives)})"


def apply_lora(model, lora: dict, base_path: str | None = None):
    """Wrap an OwlForCausalLM with peft LoRA; every base parameter is frozen by peft."""
    from peft import LoraConfig, get_peft_model

    saved = list(lora["modules_to_save"])
    for name in saved:
        if name == VISUAL_BRANCHES:
            if not getattr(model.config, "modality_adaptive", False):
                raise ConfigError("lora.modules_to_save: 'visual' names the modality-adaptive module's visual branches, "
                                  "and this model has none (modality_adaptive is off); leave it out")
        elif not hasattr(model, name):
            raise ConfigError(f"lora.modules_to_save: the model has no module {name!r} "
                              "(vision, abstractor, lm_head, or visual for the decoder's visual branches)")
    config = LoraConfig(
        r=int(lora["r"]), lora_alpha=lora["alpha"], lora_dropout=float(lora["dropout"]), bias="none",
        target_modules=target_regex(model, list(lora["target_modules"]), VISUAL_BRANCHES in saved),
        modules_to_save=saved or None,
    )
    peft_model = get_peft_model(model, config)
    if base_path is not None:
        peft_model.peft_config["default"].base_model_name_or_path = str(base_path)
    return peft_model


def load_adapter_state(peft_model, adapter_dir: str | Path) -> None:
    """Load adapter weights (and modules_to_save) saved by ``save_pretrained`` into ``peft_model``."""
    from peft import set_peft_model_state_dict

    file = Path(adapter_dir) / "adapter_model.safetensors"
    if not file.exists():
        raise OwlError(f"{adapter_dir} holds no adapter_model.safetensors")
    result = set_peft_model_state_dict(peft_model, load_file(str(file)))
    missing = [k for k in getattr(result, "unexpected_keys", [])]
    if missing:
        raise OwlError(f"{file} holds tensors the model does not have: {', '.join(missing[:4])}")


# ---------------------------------------------------------------------------------------------
# Merging
# ---------------------------------------------------------------------------------------------


def find_adapter(path: str | Path) -> Path:
    """An adapter folder from a run folder, a checkpoint folder or the adapter folder itself."""
    path = Path(path)
    if (path / "adapter_config.json").exists():
        return path
    if (path / ADAPTER_DIR / "adapter_config.json").exists():
        return path / ADAPTER_DIR
    checkpoints = sorted((path / "checkpoints").glob("step-*[0-9]")) if (path / "checkpoints").is_dir() else []
    for ckpt in reversed(checkpoints):
        if (ckpt / ADAPTER_DIR / "adapter_config.json").exists():
            return ckpt / ADAPTER_DIR
    raise OwlError(f"no LoRA adapter in {path}: expected adapter_config.json, {ADAPTER_DIR}/ or checkpoints/step-*/{ADAPTER_DIR}/")


def find_base(adapter: Path, base: str | Path | None = None) -> Path:
    """The base model folder of an adapter: ``base``, a ``base/`` folder of the run, or the
    folder named in adapter_config.json."""
    if base is not None:
        return Path(base)
    for parent in list(adapter.resolve().parents)[:4]:
        if (parent / "base" / "config.json").exists():
            return parent / "base"
    try:
        named = json.loads((adapter / "adapter_config.json").read_text()).get("base_model_name_or_path")
    except (OSError, json.JSONDecodeError) as exc:
        raise OwlError(f"cannot read {adapter / 'adapter_config.json'}: {exc}") from None
    if named:
        candidate = Path(named)
        if not candidate.is_absolute():
            candidate = (adapter / candidate).resolve()
        if (candidate / "config.json").exists():
            return candidate
    raise OwlError(f"cannot find the base model of {adapter}; pass it with --base MODEL_DIR")


def lora_factors(adapter: Path) -> dict[str, torch.Tensor]:
    """``{layer}.lora_A`` / ``{layer}.lora_B`` of a saved adapter (its scale folded into B), in
    the model's layer names; {} for an adapter whose update is not ``B @ A`` alone (DoRA, or
    ranks and alphas that vary by layer)."""
    config = json.loads((adapter / "adapter_config.json").read_text())
    if config.get("use_dora") or config.get("rank_pattern") or config.get("alpha_pattern"):
        return {}
    r = float(config["r"])
    scale = float(config["lora_alpha"]) / (r**0.5 if config.get("use_rslora") else r)
    state = load_file(str(adapter / "adapter_model.safetensors"))
    factors = {}
    for key, a in state.items():
        if key.endswith(".lora_A.weight"):
            layer = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
            factors[f"{layer}.lora_A"] = a.contiguous()
            factors[f"{layer}.lora_B"] = (state[key.replace(".lora_A.", ".lora_B.")] * scale).contiguous()
    return factors


def merge_lora(source: str | Path, out: str | Path, base: str | Path | None = None) -> Path:
    """Fold a LoRA adapter into its base model and write a plain owlkit folder at ``out``, with
    the factors beside it (``low_rank.safetensors``: quantized loading keeps the update in float
    instead of rounding it, :mod:`owlkit.quantization`)."""
    from peft import PeftModel

    adapter = find_adapter(source)
    base_dir = find_base(adapter, base)
    model = load_model(base_dir)
    peft_model = PeftModel.from_pretrained(model, str(adapter))
    merged = peft_model.merge_and_unload()
    out = save_model(merged, out)
    copy_side_files(base_dir, out)
    factors = lora_factors(adapter)
    if factors:
        save_file(factors, str(Path(out) / LOW_RANK_FILE))
    return out
