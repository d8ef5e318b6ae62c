"""Training recipes: a YAML file of nested keys, defaults for every key, ``key=value`` overrides.

A recipe is read in three layers: :data:`DEFAULTS` (every valid key, with its default), the YAML
file, then command-line overrides ``a.b.c=value`` (values parsed as YAML scalars, so ``1e-4``,
``true``, ``null`` and ``[q_proj, v_proj]`` mean what they look like; a number in a dotted path
indexes a list: ``data.sources.0.path=...``). A key that is not in :data:`DEFAULTS` is a
:class:`~owlkit.errors.ConfigError` naming the nearest valid key. The result is a :class:`Recipe`:
a plain nested dict with attribute access (``recipe.optim.lr``).

Keys whose value is free-form (``data.sources`` entries, ``lora``) are checked by the code that
uses them. See docs/training.md for the meaning of every key.
"""

from __future__ import annotations

import copy
import difflib
import math
import os
import re
from pathlib import Path
from typing import Any

import yaml

from owlkit.data.records import SOURCE_KEYS
from owlkit.errors import ConfigError

STAGES = ("owl2_stage1", "owl2_stage2", "owl1_stage1", "owl1_stage2")
TOP_MODULES = ("vision", "abstractor", "language_model", "lm_head")
#: The recipes shipped in the package, addressable by name (``owl train owl2_stage2``).
RECIPE_DIR = Path(__file__).resolve().parents[1] / "recipes"

#: Every recipe key and its default. ``None`` leaves a choice to the code (documented there).
DEFAULTS: dict[str, Any] = {
    "model": {
        "init": None,  # model folder: official mPLUG-Owl / mPLUG-Owl2 or owlkit
        "preset": None,  # or a named preset (random init from train.seed); see OwlConfig.from_preset
        "components": None,  # or {llama: DIR, clip: DIR, ...}: owlkit.build_from_components arguments
        "dtype": "float32",  # dtype of the weights the optimiser updates
    },
    "stage": "owl2_stage2",
    # next_token: the LM loss; words: a "words" projector learns each picture's caption as its word
    # tokens (query i = the caption's i-th token), no decoder forward (owlkit.training.loss)
    "objective": "next_token",
    "also_train": [],  # top-level modules trained on top of the stage's policy, e.g. [vision]
    "freeze": [],  # top-level modules held frozen whatever the stage's policy, e.g. [vision]
    "lora": None,  # {r, alpha, dropout, target_modules, modules_to_save}; see LORA_DEFAULTS
    "data": {
        "sources": [],  # [{type: llava|owl_jsonl|captions|wds|text|random, path, image_root, weight, tasks, distill}]
        "tokenizer": None,  # folder with tokenizer/preprocessor files (default: the model folder)
        "max_length": 2048,
        "augment": False,
        "on_bad_image": "skip",  # skip | stop
        "max_dropped": 0.1,  # largest share of read samples that may be dropped before the run stops
        "num_workers": 0,
        "shuffle": True,
        "group_by_length": 0,  # N > 0: batches of similar length, sorted within N global batches
        "sort_micro_batches": False,  # sort each step's samples by length into its micro-batches
    },
    "optim": {
        "lr": 1e-4,
        "betas": [0.9, 0.98],
        "eps": 1e-6,
        "weight_decay": 0.05,
        "layer_decay": 1.0,  # vision encoder layer-wise LR decay factor (1 = off)
        "lr_scales": {},  # {parameter name prefix: LR multiplier}, e.g. {vision: 0.3}
        "schedule": "cosine",  # cosine | linear | constant (all after linear warmup)
        "min_lr_ratio": 0.0,
        "warmup_steps": None,  # wins over warmup_ratio when set
        "warmup_ratio": 0.0,
        "grad_clip": 1.0,  # max global grad norm; 0 or null = no clipping
    },
    "train": {
        "steps": None,  # optimiser steps; or
        "epochs": None,  # passes over the data (steps = ceil(epochs * samples / global batch))
        "micro_batch_size": 1,
        "grad_accum": None,  # micro-batches per optimiser step and rank; or
        "global_batch_size": None,  # samples per optimiser step over all ranks (sets grad_accum)
        "seed": 42,
        "gradient_checkpointing": False,
        "precision": "auto",  # auto | fp32 | bf16 (autocast; auto = bf16 where the device supports it)
        "distributed": "auto",  # auto | none | ddp | fsdp2 (auto = ddp when launched on >1 process)
        "device": "auto",  # auto | cpu | cuda
        "threads": None,  # torch.set_num_threads on CPU
    },
    "checkpoint": {
        "every": 500,  # optimiser steps between checkpoints (0 = only at the end)
        "keep": 2,  # how many recent checkpoints to keep
    },
    "log": {
        "every": 10,  # a text line every N steps (the progress bar updates every step)
        "progress": True,  # tqdm progress bar
        "tensorboard": False,
    },
    "output_dir": "runs/train",
}

LORA_DEFAULTS: dict[str, Any] = {
    "r": 8,
    "alpha": 32,
    "dropout": 0.05,
    "target_modules": ["q_proj", "v_proj"],  # decoder projections (language model only)
    "modules_to_save": ["abstractor"],  # whole modules trained next to the adapters
}

#: The keys of a ``random`` data source (random tensors for tests and benchmarks).
RANDOM_SOURCE_KEYS = ("type", "num_samples", "text_tokens", "images_per_sample", "fixed_length", "answer_fraction", "seed")


def check_source_keys(source: dict) -> None:
    """An unknown key in one ``data.sources`` entry is an error naming the nearest valid key."""
    valid = RANDOM_SOURCE_KEYS if source.get("type") == "random" else SOURCE_KEYS
    unknown = sorted(set(source) - set(valid))
    if unknown:
        key = unknown[0]
        near = difflib.get_close_matches(key, list(valid), n=1)
        hint = f"; did you mean {near[0]!r}?" if near else f"; valid: {', '.join(valid)}"
        kind = f"a {source['type']!r} data source" if source.get("type") else "a data source"
        raise ConfigError(f"unknown key {key!r} in {kind}{hint}")


#: Keys whose value is a free-form mapping or list (no key checking below them here).
_FREE = {"lora", "data.sources", "model.components", "optim.betas", "also_train", "freeze", "optim.lr_scales"}

_CHOICES = {
    "stage": STAGES,
    "objective": ("next_token", "words"),
    "data.on_bad_image": ("skip", "stop"),
    "optim.schedule": ("cosine", "linear", "constant"),
    "train.precision": ("auto", "fp32", "bf16"),
    "train.distributed": ("auto", "none", "ddp", "fsdp2"),
    "train.device": ("auto", "cpu", "cuda"),
    "model.dtype": ("float32", "bfloat16", "float16"),
}


class Recipe(dict):
    """A nested dict with attribute access; ``recipe.get_path("optim.lr")``."""

    def __getattr__(self, name: str) -> Any:
        try:
            value = self[name]
        except KeyError:
            raise AttributeError(name) from None
        return Recipe(value) if isinstance(value, dict) and not isinstance(value, Recipe) else value

    def get_path(self, dotted: str) -> Any:
        node: Any = self
        for part in dotted.split("."):
            node = node[int(part)] if isinstance(node, list) else node[part]
        return node

    def to_dict(self) -> dict:
        return copy.deepcopy(dict(self))


def _all_keys(tree: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in tree.items():
        path = f"{prefix}{key}"
        out.append(path)
        if path == "lora":
            out.extend(f"lora.{k}" for k in LORA_DEFAULTS)
        elif isinstance(value, dict) and path not in _FREE:
            out.extend(_all_keys(value, path + "."))
    return out


def _unknown(path: str, siblings: list[str]) -> ConfigError:
    everything = _all_keys(DEFAULTS)
    leaf = path.rsplit(".", 1)[-1]
    near = difflib.get_close_matches(path, everything, n=1, cutoff=0.5)
    if not near:
        candidates = {k.rsplit(".", 1)[-1]: k for k in everything}
        best = difflib.get_close_matches(leaf, list(candidates), n=1, cutoff=0.5)
        near = [candidates[best[0]]] if best else []
    hint = f"; did you mean {near[0]!r}?" if near else f"; valid keys here: {', '.join(siblings)}"
    return ConfigError(f"unknown recipe key {path!r}{hint}")


def _merge(base: dict, update: dict, prefix: str = "") -> dict:
    for key, value in update.items():
        path = f"{prefix}{key}"
        if key not in base:
            raise _unknown(path, sorted(base))
        if isinstance(base[key], dict) and path not in _FREE:
            if not isinstance(value, dict):
                raise ConfigError(f"recipe key {path!r} is a section; give it a mapping, got {value!r}")
            _merge(base[key], value, path + ".")
        else:
            base[key] = copy.deepcopy(value)
    return base


_LOADER = None


def _yaml_load(text: str):
    """``yaml.safe_load`` that also reads ``2e-5`` as a number (YAML 1.1 wants ``2.0e-5``)."""
    global _LOADER
    if _LOADER is None:
        class Loader(yaml.SafeLoader):
            pass

        Loader.add_implicit_resolver(
            "tag:yaml.org,2002:float",
            re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
            list("-+0123456789"),
        )
        _LOADER = Loader
    return yaml.load(text, Loader=_LOADER)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optim.lr=2e-5"`` -> (["optim", "lr"], 2e-05)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not key=value (for example optim.lr=2e-5)")
    key, _, raw = text.partition("=")
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = _yaml_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_override(tree: dict, parts: list[str], value: Any) -> None:
    """Set ``tree[a][b]...`` = value, checking every key against :data:`DEFAULTS`."""
    node: Any = tree
    defaults: Any = DEFAULTS
    free = False
    for i, part in enumerate(parts):
        path = ".".join(parts[: i + 1])
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.lstrip("-").isdigit() or not -len(node) <= int(part) < len(node):
                raise ConfigError(f"{'.'.join(parts[:i])} has {len(node)} entries; {path!r} is out of range")
            if last:
                node[int(part)] = value
                return
            node = node[int(part)]
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set {path!r}: {'.'.join(parts[:i])} is {node!r}, not a section")
        if not free:
            if not isinstance(defaults, dict) or part not in defaults:
                raise _unknown(path, sorted(defaults) if isinstance(defaults, dict) else [])
            defaults = defaults[part]
            free = path in _FREE
        if last:
            node[part] = value
            return
        if node.get(part) is None:
            if path == "lora":
                node[part] = dict(LORA_DEFAULTS)
            else:
                node[part] = {}
        node = node[part]


def load_recipe(source: str | Path | dict | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Defaults <- YAML file (or dict) <- ``key=value`` overrides, validated."""
    tree = copy.deepcopy(DEFAULTS)
    if source is not None:
        if isinstance(source, dict):
            data = copy.deepcopy(source)
        else:
            path = resolve_recipe_path(source)
            try:
                data = _yaml_load(path.read_text()) or {}
            except yaml.YAMLError as exc:
                mark = getattr(exc, "problem_mark", None)
                where = f" at line {mark.line + 1}" if mark else ""
                raise ConfigError(f"{path} is not valid YAML{where}") from None
            except OSError as exc:
                raise ConfigError(f"cannot read recipe {path}: {exc.strerror}") from None
            if not isinstance(data, dict):
                raise ConfigError(f"{path} must hold a mapping of recipe keys at the top level")
        _merge(tree, data)
    for text in overrides:
        parts, value = parse_override(text)
        apply_override(tree, parts, value)
    return validate(Recipe(tree))


def packaged_recipes() -> list[str]:
    """Names of the recipes shipped in the package (``owl train NAME``)."""
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


def resolve_recipe_path(source: str | Path) -> Path:
    """A recipe file: a bare name (no ``/``, no ``.yaml``) is a packaged recipe
    (``owl2_stage1`` -> ``owlkit/recipes/owl2_stage1.yaml``), anything else a path."""
    text = str(source)
    bare = "/" not in text and os.sep not in text and not text.endswith((".yaml", ".yml"))
    if bare and (RECIPE_DIR / f"{text}.yaml").is_file():
        return RECIPE_DIR / f"{text}.yaml"
    path = Path(source)
    if path.exists():
        return path
    if not bare:
        raise ConfigError(f"recipe file {source} not found")
    names = packaged_recipes()
    near = difflib.get_close_matches(text, names, n=1)
    hint = f"did you mean {near[0]!r}? " if near else ""
    raise ConfigError(f"no packaged recipe named {text!r}; {hint}available: {', '.join(names)}")


def _number(recipe: Recipe, path: str, *, minimum: float | None = None, integer: bool = False,
            allow_none: bool = False, strict_min: bool = False) -> None:
    value = recipe.get_path(path)
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"recipe key {path!r} must be {kind}, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"recipe key {path!r} must be finite, got {value!r}")
    if minimum is not None and (value <= minimum if strict_min else value < minimum):
        raise ConfigError(f"recipe key {path!r} must be {'>' if strict_min else '>='} {minimum}, got {value!r}")


def validate(recipe: Recipe) -> Recipe:
    """Types and ranges of every key; LoRA defaults filled in."""
    for path, choices in _CHOICES.items():
        value = recipe.get_path(path)
        if value not in choices:
            near = difflib.get_close_matches(str(value), choices, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise ConfigError(f"recipe key {path!r} is {value!r}; choose one of {', '.join(choices)}{hint}")
    model = recipe["model"]
    given = [k for k in ("init", "preset", "components") if model.get(k)]
    if len(given) != 1:
        raise ConfigError(
            "set exactly one of model.init (a model folder), model.preset (a named size, random init) "
            f"and model.components (LLaMA + CLIP folders); got {', '.join(given) or 'none'}"
        )
    if model.get("components") is not None:
        comp = model["components"]
        if not isinstance(comp, dict) or not comp.get("llama") or not comp.get("clip"):
            raise ConfigError("model.components needs 'llama' and 'clip' folders (owlkit.build_from_components)")
    for path in ("optim.lr", "optim.eps"):
        _number(recipe, path, minimum=0, strict_min=True)
    for path in ("optim.weight_decay", "optim.min_lr_ratio", "optim.warmup_ratio"):
        _number(recipe, path, minimum=0)
    _number(recipe, "optim.layer_decay", minimum=0, strict_min=True)
    scales = recipe["optim"]["lr_scales"]
    if scales is None:
        recipe["optim"]["lr_scales"] = scales = {}
    if not isinstance(scales, dict) or not all(
            isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
            for k, v in scales.items()):
        raise ConfigError(f"optim.lr_scales must map parameter name prefixes to positive numbers "
                          f"(e.g. {{vision: 0.3}}), got {scales!r}")
    _number(recipe, "optim.grad_clip", minimum=0, allow_none=True)
    _number(recipe, "optim.warmup_steps", minimum=0, integer=True, allow_none=True)
    if recipe["optim"]["min_lr_ratio"] > 1 or recipe["optim"]["warmup_ratio"] > 1:
        raise ConfigError("optim.min_lr_ratio and optim.warmup_ratio must lie in [0, 1]")
    betas = recipe["optim"]["betas"]
    if (not isinstance(betas, (list, tuple)) or len(betas) != 2
            or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas)):
        raise ConfigError(f"optim.betas must be two numbers in [0, 1), got {betas!r}")
    for path in ("train.micro_batch_size",):
        _number(recipe, path, minimum=1, integer=True)
    for path in ("train.grad_accum", "train.global_batch_size", "train.steps", "train.threads"):
        _number(recipe, path, minimum=1, integer=True, allow_none=True)
    _number(recipe, "train.epochs", minimum=0, strict_min=True, allow_none=True)
    _number(recipe, "train.seed", minimum=0, integer=True)
    if recipe["train"]["grad_accum"] is not None and recipe["train"]["global_batch_size"] is not None:
        raise ConfigError("set train.grad_accum or train.global_batch_size, not both")
    if (recipe["train"]["steps"] is None) == (recipe["train"]["epochs"] is None):
        raise ConfigError("set exactly one of train.steps and train.epochs")
    _number(recipe, "checkpoint.every", minimum=0, integer=True)
    _number(recipe, "checkpoint.keep", minimum=1, integer=True)
    _number(recipe, "log.every", minimum=1, integer=True)
    _number(recipe, "data.max_length", minimum=2, integer=True)
    _number(recipe, "data.num_workers", minimum=0, integer=True)
    _number(recipe, "data.group_by_length", minimum=0, integer=True)
    _number(recipe, "data.max_dropped", minimum=0)
    if recipe["data"]["max_dropped"] > 1:
        raise ConfigError(f"data.max_dropped is a share of the samples read, in [0, 1]; got {recipe['data']['max_dropped']!r}")
    for path in ("train.gradient_checkpointing", "data.augment", "data.shuffle", "data.sort_micro_batches", "log.tensorboard", "log.progress"):
        if not isinstance(recipe.get_path(path), bool):
            raise ConfigError(f"recipe key {path!r} must be true or false, got {recipe.get_path(path)!r}")
    sources = recipe["data"]["sources"]
    if not isinstance(sources, list) or not sources or not all(isinstance(s, dict) and s.get("type") for s in sources):
        raise ConfigError("data.sources must be a non-empty list of mappings, each with a 'type' (llava, captions, random, ...)")
    for source in sources:
        check_source_keys(source)
        weight = source.get("weight", 1)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
            raise ConfigError(f"data source {source.get('path')}: 'weight' must be a number >= 0 (0 drops the source), "
                              f"got {weight!r}")
    if all(source.get("weight", 1) == 0 for source in sources):
        raise ConfigError("every data source has weight 0; nothing would be read")
    if not isinstance(recipe["output_dir"], str) or not recipe["output_dir"]:
        raise ConfigError("output_dir must be a folder path")
    lora = recipe["lora"]
    if lora is not None:
        if lora is True:
            lora = {}
        if not isinstance(lora, dict):
            raise ConfigError(f"lora must be a mapping of {', '.join(LORA_DEFAULTS)} (or null), got {lora!r}")
        for key in lora:
            if key not in LORA_DEFAULTS:
                raise _unknown(f"lora.{key}", sorted(LORA_DEFAULTS))
        lora = {**LORA_DEFAULTS, **lora}
        recipe["lora"] = lora
        _number(recipe, "lora.r", minimum=1, integer=True)
        _number(recipe, "lora.alpha", minimum=0, strict_min=True)
        _number(recipe, "lora.dropout", minimum=0)
        for key in ("target_modules", "modules_to_save"):
            value = lora[key] if lora[key] is not None else []
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                raise ConfigError(f"lora.{key} must be a list of module names, got {lora[key]!r}")
            lora[key] = value
        if not lora["target_modules"]:
            raise ConfigError("lora.target_modules is empty; name the decoder projections to adapt (e.g. [q_proj, v_proj])")
        if recipe["stage"] not in ("owl1_stage2", "owl2_stage2"):
            raise ConfigError(f"LoRA is for instruction tuning (stage owl1_stage2 or owl2_stage2), not {recipe['stage']}")
    for source in sources:
        if "distill" in source and not isinstance(source["distill"], bool):
            raise ConfigError(f"data source {source.get('path')}: 'distill' must be true or false, got {source['distill']!r}")
        if source.get("distill") and lora is None:
            raise ConfigError(f"data source {source.get('path')}: 'distill' learns its replies as the base model's "
                              "distributions (the model without its LoRA adapters), so it needs a lora section; "
                              "add one (e.g. lora.r=8) or drop distill")
    also, freeze = _module_list(recipe, "also_train"), _module_list(recipe, "freeze")
    if also and lora is not None:
        raise ConfigError("also_train cannot be combined with lora (peft decides what trains); use lora.modules_to_save")
    if freeze and lora is not None:
        raise ConfigError("freeze cannot be combined with lora (peft already freezes the base weights); "
                          "leave the module out of lora.modules_to_save instead")
    both = sorted(set(freeze) & set(also))
    if both:
        raise ConfigError(f"{', '.join(both)} is both in also_train and in freeze; keep it in one of them")
    recipe["also_train"], recipe["freeze"] = also, freeze
    if lora is None and recipe["stage"] == "owl1_stage2":
        raise ConfigError("stage owl1_stage2 tunes the language model through LoRA; set lora (e.g. lora.r=8) "
                          "or use stage owl2_stage2 for full tuning")
    return recipe


def _module_list(recipe: dict, key: str) -> list[str]:
    """``recipe[key]`` (``also_train`` / ``freeze``) as a list of top-level module names."""
    value = recipe.get(key) or []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or any(m not in TOP_MODULES for m in value):
        raise ConfigError(f"{key} must be a list of {', '.join(TOP_MODULES)}, got {recipe.get(key)!r}")
    return value


def dump_recipe(recipe: dict) -> str:
    return yaml.safe_dump(dict(recipe), sort_keys=False, default_flow_style=None)
