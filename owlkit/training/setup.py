"""Setting a run up from its recipe: the model, the data plan, the optimiser and its schedule.

Each function builds one part; :mod:`owlkit.training.loop` calls them in order (model, data,
resume of the weights, wrapping for DDP / FSDP2, optimiser, resume of the optimiser) and hands
the parts to :func:`~owlkit.training.step.train_step`.
"""

from __future__ import annotations

import math
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from owlkit.checkpoints import build_from_components, copy_side_files, load_model, quiet_saving, save_model
from owlkit.config import OwlConfig
from owlkit.errors import ConfigError
from owlkit.models.owl import OwlForCausalLM
from owlkit.training import distributed as D
from owlkit.training.lora import apply_lora
from owlkit.training.optim import build_optimizer, build_scheduler, warmup_steps
from owlkit.training.params import apply_stage, param_groups, parameter_table
from owlkit.training.recipe import Recipe
from owlkit.training.sampling import StepSampler, length_grouping, make_loader
from owlkit.training.sources import BatchSource, build_batch_source, processing_folder

#: Where a LoRA run without ``model.init`` writes the random base its adapter refers to.
BASE = "base"


def say(info: D.DistInfo, text: str) -> None:
    """Print on the main rank, above the progress bar."""
    if info.is_main:
        try:
            from tqdm import tqdm

            tqdm.write(text, file=sys.stdout)
        except ImportError:  # pragma: no cover
            print(text, flush=True)


def copy_processing_files(recipe: Recipe, out: Path) -> None:
    """The tokenizer / preprocessor files of the recipe's processing folder, into ``out``."""
    folder = processing_folder(recipe)
    if folder is not None and folder.is_dir():
        copy_side_files(folder, out)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware (avx512_bf16 or AMX tiles).

    There bf16 products run about 4x fp32's rate (a 2-core AVX-512 machine: 810-930 against
    200-220 GFLOP/s) and an owl-small training step about 2x faster; without them PyTorch emulates
    bf16 and is 10-100x slower than fp32 (docs/training.md). Read from PyTorch's own CPU probes,
    which are private: a PyTorch without them counts as no."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast or none (fp32) for ``train.precision``: ``auto`` is bf16 on a GPU that has it
    and on a CPU with native bf16 (:func:`cpu_has_native_bf16`), fp32 elsewhere."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if device.type == "cpu" and cpu_has_native_bf16() else None


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------


def store_frozen_linears(model: nn.Module, dtype: torch.dtype) -> int:
    """Keep every frozen ``nn.Linear`` of a LoRA run in the autocast dtype; returns how many.

    Under autocast each product casts its fp32 weight to bf16 on every forward (a copy of the
    whole frozen model per micro-batch); a weight stored in bf16 gives the product the very
    tensor that cast would have made, so every number is the same and the copies are gone. Only
    for LoRA runs: their final model is merged into the base read back from disk, so the fp32
    weights are never saved from memory. A weight shared with another module (tied
    embeddings) keeps its dtype."""
    shared: dict[int, int] = {}
    for module in model.modules():
        for param in module.parameters(recurse=False):
            shared[id(param)] = shared.get(id(param), 0) + 1
    count = 0
    for module in model.modules():
        if type(module) is not nn.Linear:
            continue
        params = list(module.parameters(recurse=False))
        if any(p.requires_grad or shared[id(p)] > 1 or p.dtype == dtype for p in params):
            continue
        module.to(dtype)
        count += 1
    return count


def build_model(recipe: Recipe, seed: int):
    """The model to train, in ``model.dtype``, on CPU."""
    spec = recipe["model"]
    dtype = getattr(torch, spec["dtype"])
    torch.manual_seed(seed)
    if spec.get("init"):
        return load_model(spec["init"], dtype=dtype)
    if spec.get("preset"):
        return OwlForCausalLM(OwlConfig.from_preset(spec["preset"])).to(dtype)
    comp = dict(spec["components"])
    return build_from_components(comp.pop("llama"), comp.pop("clip"), seed=seed, **comp).to(dtype)


@dataclass
class ModelParts:
    inner: nn.Module  # OwlForCausalLM, or the peft model around it for LoRA runs
    config: OwlConfig
    base_dir: Path | None  # LoRA runs: the base model folder the adapter refers to


def setup_model(recipe: Recipe, info: D.DistInfo, out: Path) -> ModelParts:
    """Built, frozen per stage, gradient checkpointing and LoRA applied, in train mode; then each
    rank's own RNG stream (dropout), reproducible per (seed, rank)."""
    seed = int(recipe["train"]["seed"])
    model = build_model(recipe, seed)
    config = model.config
    apply_stage(model, recipe["stage"], recipe.get("also_train") or (), recipe.get("freeze") or ())
    if recipe["objective"] == "words":
        # no decoder forward: nothing outside the projector would get a gradient, and AdamW's
        # weight decay would still move it
        outside = sorted({n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad
                          and not n.startswith("abstractor.")})
        if outside or recipe["lora"] is not None:
            raise ConfigError("objective 'words' trains the projector only; add freeze: ["
                              f"{', '.join(outside or ['language_model'])}] and no lora")
    if recipe["train"]["gradient_checkpointing"]:
        model.gradient_checkpointing_enable()
        for part in (model.vision, model.abstractor):
            if not any(p.requires_grad for p in part.parameters()):
                part.gradient_checkpointing = False  # frozen and first: nothing to recompute for
    base_dir: Path | None = None
    lora = recipe["lora"]
    if lora is not None:
        if recipe["model"].get("init"):
            base_dir = Path(recipe["model"]["init"]).resolve()
        else:
            base_dir = (out / BASE).resolve()
            if info.is_main and not (base_dir / "config.json").exists():
                with quiet_saving():
                    save_model(model, base_dir)
                copy_processing_files(recipe, base_dir)
        model = apply_lora(model, lora, base_dir)
    model.train()
    # Weights are identical on every rank (same seed); from here each rank draws its own stream.
    seed_everything(seed * 1000 + info.rank)
    table, _ = parameter_table(model.named_parameters())
    say(info, table)
    return ModelParts(model, config, base_dir)


# ---------------------------------------------------------------------------------------------
# The data
# ---------------------------------------------------------------------------------------------


@dataclass
class DataPlan:
    """The batch source and how it is cut: ``micro`` x ``accum`` x ``world`` samples per step."""

    source: BatchSource
    micro: int
    accum: int
    world: int
    total_steps: int

    @property
    def global_batch(self) -> int:
        return self.micro * self.accum * self.world

    def loader(self, recipe: Recipe, info: D.DistInfo, config, start_step: int):
        """This rank's micro-batches from ``start_step`` on, in step order."""
        seed, data = int(recipe["train"]["seed"]), recipe["data"]
        sampler = StepSampler(len(self.source), self.micro, self.accum, info.rank, info.world_size, seed,
                              bool(data["shuffle"]), start_step, self.total_steps,
                              **length_grouping(self.source, data, config))
        return make_loader(self.source, sampler, int(data["num_workers"]), seed, info.rank)


def _batch_size_plan(recipe: Recipe, world: int) -> tuple[int, int]:
    t = recipe["train"]
    micro = int(t["micro_batch_size"])
    if t["global_batch_size"] is not None:
        gbs = int(t["global_batch_size"])
        if gbs % (micro * world):
            raise ConfigError(
                f"train.global_batch_size {gbs} is not a multiple of micro_batch_size x processes = {micro} x {world}"
            )
        return micro, gbs // (micro * world)
    return micro, int(t["grad_accum"] or 1)


def setup_data(recipe: Recipe, info: D.DistInfo, config, source: BatchSource | None = None) -> DataPlan:
    """The recipe's data (or ``source``), the batch sizes and the number of optimiser steps."""
    if source is None:
        source = build_batch_source(recipe, config)
    micro, accum = _batch_size_plan(recipe, info.world_size)
    t = recipe["train"]
    if t["steps"] is not None:
        total = int(t["steps"])
    else:
        total = max(1, math.ceil(float(t["epochs"]) * len(source) / (micro * accum * info.world_size)))
    return DataPlan(source, micro, accum, info.world_size, total)


# ---------------------------------------------------------------------------------------------
# The optimiser and its schedule
# ---------------------------------------------------------------------------------------------


@dataclass
class OptimizerParts:
    groups: list[dict]  # param_groups(): named groups with their lr_scale
    trainable: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    peak_group: int  # a group at optim.lr (lr_scale 1): the learning rate the run reports


def setup_optimizer(recipe: Recipe, loss_module: nn.Module, config, total_steps: int,
                    info: D.DistInfo) -> OptimizerParts:
    """AdamW over the parameter groups (layer decay, lr scales, no decay on norms and biases),
    and the warmup + decay schedule over ``total_steps``."""
    optim = recipe["optim"]
    groups = param_groups(
        list(loss_module.named_parameters()), lr=float(optim["lr"]), weight_decay=float(optim["weight_decay"]),
        layer_decay=float(optim["layer_decay"]), num_vision_layers=config.vision_config.num_hidden_layers,
        lr_scales=optim["lr_scales"],
    )
    optimizer = build_optimizer(groups, optim)
    scheduler = build_scheduler(optimizer, optim, total_steps)
    warm = warmup_steps(optim, total_steps)
    if warm > total_steps:
        say(info, f"warning: the warmup ({warm} steps) is longer than the run ({total_steps} steps): the learning "
                  f"rate never reaches optim.lr; shorten optim.warmup_steps")
    peak = next((i for i, g in enumerate(groups) if g["lr_scale"] == 1.0), 0)
    return OptimizerParts(groups, [p for g in groups for p in g["params"]], optimizer, scheduler, peak)
