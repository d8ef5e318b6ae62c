"""Which parameters train (per stage), and the optimiser's parameter groups.

Freezing policies follow the papers (see docs/training.md):

=============  =========================================================================
stage          trainable
=============  =========================================================================
owl2_stage1    vision encoder, abstractor, and the visual branches of the decoder's
               modality-adaptive module (every ``language_model.*.visual.*`` parameter)
owl2_stage2    everything except the vision encoder
owl1_stage1    vision encoder and abstractor (language model frozen)
owl1_stage2    LoRA adapters on the language model + ``lora.modules_to_save`` (abstractor)
=============  =========================================================================

The recipe's ``also_train`` adds whole top-level modules to a stage's policy (e.g. a stage 2 that
keeps tuning a vision encoder: ``also_train: [vision]``); its ``freeze`` takes them out (e.g. a
stage 1 that keeps a pre-trained vision encoder as it is: ``freeze: [vision]``).

With ``lora`` set (instruction stages only) every base parameter is frozen and peft trains the
adapters plus the modules named in ``lora.modules_to_save``.

Parameter groups (:func:`param_groups`): layer-wise LR decay on the vision encoder in the BEiT
convention (spec B5, ``lr_i = lr * d**(L + 1 - i)``): the embeddings (patch, CLS, positions,
``pre_layernorm``) are ``i = 0`` -> ``lr * d**(L+1)``; block ``j`` (0-based) is ``i = j + 1`` ->
``lr * d**(L - j)``; ``post_layernorm`` is ``i = L + 1`` -> ``lr``; everything outside the vision
encoder gets ``lr``. No weight decay on 1-D parameters (norms, biases) and on embeddings
(``cls_token``, ``position_embedding``, ``query_embeds``, ``vit_eos``, ``embed_tokens``).
"""

from __future__ import annotations

import re
from typing import Iterable, Mapping

import torch

from owlkit.errors import ConfigError

#: Names (last component) of parameters that never get weight decay although not 1-D.
NO_DECAY_NAMES = ("cls_token", "position_embedding", "query_embeds", "vit_eos")
NO_DECAY_MODULES = ("embed_tokens",)
VISION_EMBEDDINGS = "vision.embeddings."

_PEFT_PARTS = (".base_layer", ".modules_to_save.default", ".original_module")
_TOP = ("vision", "abstractor", "language_model", "lm_head")
_WRAPPERS = ("module", "_orig_mod", "model", "base_model", "_fsdp_wrapped_module", "_checkpoint_wrapped_module")


def canonical_name(name: str) -> str:
    """The owlkit parameter name behind wrapper prefixes (DDP, FSDP, peft, the loss module).

    ``module.``, ``model.``, ``_orig_mod.``, ``base_model.model.`` prefixes are dropped, and peft's
    ``.base_layer`` / ``.modules_to_save.default`` / ``.original_module`` parts removed; LoRA
    parameters keep their ``lora_A`` / ``lora_B`` parts.
    """
    parts = name.split(".")
    while len(parts) > 1 and parts[0] not in _TOP and parts[0] in _WRAPPERS:
        parts = parts[1:]
    name = ".".join(parts)
    for part in _PEFT_PARTS:
        name = name.replace(part, "")
    return name


def is_lora(name: str) -> bool:
    return ".lora_" in name


def stage_trainable(stage: str, name: str) -> bool:
    """Whether ``name`` (a canonical owlkit parameter name) trains in ``stage`` without LoRA."""
    top = name.split(".", 1)[0]
    if stage == "owl2_stage1":
        return top in ("vision", "abstractor") or (top == "language_model" and ".visual." in name)
    if stage == "owl2_stage2":
        return top != "vision"
    if stage == "owl1_stage1":
        return top in ("vision", "abstractor")
    if stage == "owl1_stage2":
        return top == "abstractor"
    raise ConfigError(f"unknown stage {stage!r}")


def apply_stage(model: torch.nn.Module, stage: str, also_train: Iterable[str] = (), freeze: Iterable[str] = ()) -> None:
    """Set ``requires_grad`` of every parameter of an (unwrapped) OwlForCausalLM for ``stage``;
    the top-level modules in ``also_train`` (recipe key ``also_train``) train as well, those in
    ``freeze`` (recipe key ``freeze``) do not train whatever the stage says."""
    also, frozen = set(also_train), set(freeze)
    for name, p in model.named_parameters():
        canonical = canonical_name(name)
        top = canonical.split(".", 1)[0]
        p.requires_grad_(top not in frozen and (stage_trainable(stage, canonical) or top in also))


# ---------------------------------------------------------------------------------------------
# The table printed at start
# ---------------------------------------------------------------------------------------------


def module_of(name: str) -> str:
    original = ".original_module." in name
    name = canonical_name(name)
    if is_lora(name):
        return "lora adapters"
    top = name.split(".", 1)[0]
    if original:
        return f"{top} (peft's original copy)"
    if top == "language_model" and ".visual." in name:
        return "language_model (visual)"
    return top


def parameter_table(named: Iterable[tuple[str, torch.nn.Parameter]]) -> tuple[str, dict[str, tuple[int, int]]]:
    """(printable table, {module: (trainable, frozen)}) of parameter counts per module."""
    order = ["vision", "abstractor", "language_model", "language_model (visual)", "lm_head", "lora adapters"]
    counts: dict[str, list[int]] = {}
    seen = set()
    for name, p in named:
        if id(p) in seen:
            continue
        seen.add(id(p))
        row = counts.setdefault(module_of(name), [0, 0])
        row[0 if p.requires_grad else 1] += p.numel()  # DTensor: the global count
    keys = [k for k in order if k in counts] + sorted(k for k in counts if k not in order)
    width = max(len(k) for k in keys + ["total"])
    lines = [f"{'module':<{width}}  {'trainable':>14}  {'frozen':>14}"]
    total = [0, 0]
    for k in keys:
        t, f = counts[k]
        total[0] += t
        total[1] += f
        lines.append(f"{k:<{width}}  {t:>14,d}  {f:>14,d}")
    lines.append(f"{'total':<{width}}  {total[0]:>14,d}  {total[1]:>14,d}")
    return "\n".join(lines), {k: tuple(v) for k, v in counts.items()}


# ---------------------------------------------------------------------------------------------
# Parameter groups
# ---------------------------------------------------------------------------------------------

_LAYER = re.compile(r"^vision\.layers\.(\d+)\.")


def lr_scale(name: str, num_vision_layers: int, layer_decay: float) -> tuple[str, float]:
    """(group label, LR multiplier) of a canonical parameter name."""
    L = num_vision_layers
    if name.startswith(VISION_EMBEDDINGS):
        return "vision.embeddings", layer_decay ** (L + 1)
    m = _LAYER.match(name)
    if m:
        j = int(m.group(1))
        return f"vision.layers.{j}", layer_decay ** (L - j)
    if name.startswith("vision."):
        return "vision.post_layernorm", 1.0
    return "default", 1.0


def uses_weight_decay(name: str, param: torch.Tensor) -> bool:
    last = name.rsplit(".", 1)[-1]
    if param.ndim < 2 or last in NO_DECAY_NAMES:
        return False
    if any(f"{m}." in name or name.startswith(m) for m in NO_DECAY_MODULES):
        return False
    return True


def _under(name: str, prefix: str) -> bool:
    """Whether ``prefix`` is ``name`` or its leading dotted components."""
    return name == prefix or name.startswith(prefix + ".")


def _module_scale(name: str, lr_scales: Mapping[str, float]) -> tuple[str, float] | None:
    """The longest ``lr_scales`` prefix of ``name`` and its multiplier."""
    matches = [prefix for prefix in lr_scales if _under(name, prefix)]
    if not matches:
        return None
    prefix = max(matches, key=len)
    return prefix, float(lr_scales[prefix])


def param_groups(
    named: Iterable[tuple[str, torch.nn.Parameter]],
    lr: float,
    weight_decay: float,
    layer_decay: float = 1.0,
    num_vision_layers: int = 0,
    lr_scales: Mapping[str, float] | None = None,
) -> list[dict]:
    """Optimiser groups of the trainable parameters, named ``"<label>/decay|no_decay"``.

    Every group carries ``name``, ``params``, ``param_names`` (canonical), ``lr`` (peak),
    ``lr_scale`` and ``weight_decay``; the order is deterministic (first appearance).
    ``lr_scales`` (recipe key ``optim.lr_scales``) multiplies the LR of every parameter under a
    canonical name prefix (``vision``, ``abstractor``, ``language_model.layers.0``, ...; the
    longest matching prefix wins), on top of the vision encoder's layer-wise decay.
    """
    named = list(named)
    lr_scales = dict(lr_scales or {})
    names = [canonical_name(raw) for raw, _ in named]
    for prefix in lr_scales:
        if not any(_under(n, prefix) for n in names):
            tops = sorted({n.split(".", 1)[0] for n in names})
            raise ConfigError(f"optim.lr_scales: no parameter is named {prefix!r} or below it; "
                              f"use a parameter name prefix such as {', '.join(tops)}")
    groups: dict[str, dict] = {}
    for (raw, p), name in zip(named, names):
        if not p.requires_grad:
            continue
        label, scale = lr_scale(name, num_vision_layers, layer_decay)
        module = _module_scale(name, lr_scales)
        if module is not None:
            label, scale = f"{label}@{module[0]}", scale * module[1]
        decay = uses_weight_decay(name, p)
        key = f"{label}/{'decay' if decay else 'no_decay'}"
        g = groups.get(key)
        if g is None:
            g = groups[key] = {
                "name": key, "params": [], "param_names": [], "lr": lr * scale, "lr_scale": scale,
                "weight_decay": weight_decay if decay else 0.0,
            }
        g["params"].append(p)
        g["param_names"].append(name)
    if not groups:
        raise ConfigError("no parameter is trainable with this stage / LoRA setting; nothing to optimise")
    return list(groups.values())
