"""The training loop: one function, :func:`train`, from a recipe to a model folder.

Per optimiser step each rank reads ``grad_accum`` micro-batches (its slice of the global batch,
see :class:`~owlkit.training.data.StepSampler`). The loss of the step is the mean next-token
cross-entropy over *all supervised tokens of the global batch*: every micro-batch contributes its
summed cross-entropy, scaled by ``world_size / N`` where ``N`` (supervised tokens of the global
batch) is all-reduced before the forward passes; DDP / FSDP2 average gradients over ranks, so the
gradient is exactly that of the single-process global-batch loss. Then: non-finite check,
gradient clipping, AdamW step, schedule step, metrics, checkpoint.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from owlkit.config import IGNORE_INDEX
from owlkit.errors import ConfigError, OwlError
from owlkit.outputs import writable_folder
from owlkit.checkpoints import quiet_saving
from owlkit.training import checkpoint as ckpt
from owlkit.training import distributed as D
from owlkit.training.data import (
    BatchSource,
    StepSampler,
    build_batch_source,
    length_grouping,
    make_loader,
    processing_folder,
)
from owlkit.training.lora import ADAPTER_DIR, apply_lora, load_adapter_state
from owlkit.training.metrics import MetricsLogger
from owlkit.training.optim import build_optimizer, build_scheduler, warmup_steps
from owlkit.training.params import apply_stage, param_groups, parameter_table
from owlkit.training.recipe import Recipe, dump_recipe, load_recipe

FINAL = "final"
BASE = "base"

#: Why a sample read from the data never reaches the model, in the words the run reports.
DROP_REASONS = {
    "bad_image": "a missing or unreadable image (data.on_bad_image=skip)",
    "no_reply": "no reply left within data.max_length (every supervised token cut away)",
}
#: The dropped share is judged once this many samples were read (or at the end of the run).
MIN_SAMPLES_FOR_SHARE = 20


class TrainingError(OwlError):
    """The run cannot go on (non-finite loss, bad data with on_bad_image=stop, ...)."""


@dataclass
class TrainResult:
    output_dir: Path
    steps: int  # optimiser steps done in total (including those before a resume)
    history: list[dict] = field(default_factory=list)  # metrics rows of the steps run by this call
    final_dir: Path | None = None
    adapter_dir: Path | None = None
    checkpoint: Path | None = None
    skipped_samples: int = 0  # samples dropped in total, every reason (see dropped)
    dropped: dict = field(default_factory=dict)  # reason -> samples dropped (DROP_REASONS)


# ---------------------------------------------------------------------------------------------
# The module the wrappers see
# ---------------------------------------------------------------------------------------------


def _right_padded(mask: torch.Tensor) -> bool:
    return bool((mask[:, 1:] <= mask[:, :-1]).all())


class LossModule(nn.Module):
    """Forward = summed next-token cross-entropy over the supervised positions of a batch.

    Same numbers as ``OwlForCausalLM(...).loss * n_supervised``, computed leaner: logits only at
    supervised positions (the LM head is the largest matmul of a small decoder), and no attention
    mask when every row is right-padded (causal attention already ignores the padding after a
    row's tokens, and SDPA's causal kernel is faster than an explicit mask).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model  # OwlForCausalLM or a peft model around it

    @property
    def owl(self):
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    def forward(self, input_ids, attention_mask=None, labels=None, pixel_values=None):
        owl = self.owl
        embeds, mask, labels, mm = owl.embed_multimodal(input_ids, pixel_values, attention_mask, labels)
        if mask is not None and _right_padded(mask):
            mask = None
        hidden, _ = owl.language_model(embeds, attention_mask=mask, mm_token_type_ids=mm)
        targets = labels[:, 1:]
        selected = targets != IGNORE_INDEX
        logits = owl.lm_head(hidden[:, :-1][selected])
        return F.cross_entropy(logits.float(), targets[selected], reduction="sum")


def with_dummy_image(batch: dict, config) -> dict:
    """``batch`` plus one unsupervised row ``[BOS, <image>]`` with an all-zero image.

    With several processes every rank must take part in the same collectives: FSDP2 all-gathers
    and reduce-scatters per sharded layer, DDP all-reduces gradients during backward (and a
    stage-1 text-only micro-batch touches no trainable parameter, so it would have no backward).
    So a micro-batch without images (or empty: all samples skipped) gets this row: it exercises
    the vision encoder, the abstractor and the visual branches of the modality-adaptive module,
    and adds nothing to the loss or the gradients (no supervised position, rows are independent).
    One process needs no such row.
    """
    ids = batch["input_ids"]
    rows, length = ids.shape
    length = max(length, 2)
    text = config.text_config
    pad, bos = text.pad_token_id or 0, text.bos_token_id if text.bos_token_id is not None else 1
    placeholder = config.placeholder_id
    new_ids = torch.full((rows + 1, length), pad, dtype=torch.long)
    new_mask = torch.zeros((rows + 1, length), dtype=torch.long)
    new_labels = torch.full((rows + 1, length), IGNORE_INDEX, dtype=torch.long)
    if rows:
        new_ids[:rows, : ids.shape[1]] = ids
        new_mask[:rows, : ids.shape[1]] = batch["attention_mask"]
        new_labels[:rows, : ids.shape[1]] = batch["labels"]
    new_ids[rows, :2] = torch.tensor([bos, placeholder])
    new_mask[rows, :2] = 1
    size = config.vision_config.image_size
    dummy = torch.zeros(1, config.vision_config.num_channels, size, size)
    pixels = batch.get("pixel_values")
    pixels = dummy if pixels is None else torch.cat([pixels, dummy.to(pixels.dtype)])
    return {**batch, "input_ids": new_ids, "attention_mask": new_mask, "labels": new_labels, "pixel_values": pixels}


# ---------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------


def build_model(recipe: Recipe, seed: int):
    """The model to train, in ``model.dtype``, on CPU."""
    spec = recipe["model"]
    dtype = getattr(torch, spec["dtype"])
    torch.manual_seed(seed)
    if spec.get("init"):
        from owlkit.checkpoints import load_model

        return load_model(spec["init"], dtype=dtype)
    if spec.get("preset"):
        from owlkit.config import OwlConfig
        from owlkit.models import registry  # noqa: F401
        from owlkit.models.owl import OwlForCausalLM

        return OwlForCausalLM(OwlConfig.from_preset(spec["preset"])).to(dtype)
    from owlkit.checkpoints import build_from_components

    comp = dict(spec["components"])
    return build_from_components(comp.pop("llama"), comp.pop("clip"), seed=seed, **comp).to(dtype)


def _seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None  # CPU: bf16 matmuls are 10-100x slower than fp32 here


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


def _total_steps(recipe: Recipe, num_samples: int, global_batch: int) -> int:
    t = recipe["train"]
    if t["steps"] is not None:
        return int(t["steps"])
    return max(1, math.ceil(float(t["epochs"]) * num_samples / global_batch))


def _say(info: D.DistInfo, text: str) -> None:
    if info.is_main:
        try:
            from tqdm import tqdm

            tqdm.write(text, file=sys.stdout)
        except ImportError:  # pragma: no cover
            print(text, flush=True)


def _side_files(recipe: Recipe, out: Path) -> None:
    from owlkit.checkpoints import _copy_side_files

    folder = processing_folder(recipe)
    if folder is not None and folder.is_dir():
        _copy_side_files(folder, out)


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


def train(
    recipe: Recipe | dict | str | Path,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    source: BatchSource | None = None,
    resume: bool | str | Path = False,
) -> TrainResult:
    """Run a recipe. ``source`` replaces the recipe's data (tests, custom pipelines);
    ``resume=True`` continues from the newest checkpoint of ``output_dir`` (a path: from that
    checkpoint)."""
    if not isinstance(recipe, Recipe) or overrides:
        recipe = load_recipe(recipe, overrides)
    info = D.init_distributed(recipe["train"]["device"])
    threads = torch.get_num_threads()
    try:
        return _Run(recipe, info, source, resume).run()
    finally:
        torch.set_num_threads(threads)
        D.shutdown(info)


class _Run:
    def __init__(self, recipe: Recipe, info: D.DistInfo, source: BatchSource | None, resume):
        self.recipe, self.info, self.source, self.resume = recipe, info, source, resume
        self.out = Path(recipe["output_dir"])
        self.t = recipe["train"]
        self.lora = recipe["lora"]

    # -- setup ---------------------------------------------------------------------------------
    def _resume_point(self) -> Path | None:
        if not self.resume:
            if ckpt.list_checkpoints(self.out):  # every rank sees the same folder: all stop
                raise ConfigError(
                    f"{self.out} already holds checkpoints; pass --resume to continue that run or choose another output_dir"
                )
            return None
        if isinstance(self.resume, (str, Path)) and str(self.resume) not in ("latest", "True"):
            path = Path(self.resume)
            if not (path / "state.pt").exists():
                raise ConfigError(f"{path} is not a complete checkpoint folder (no state.pt)")
            return path
        path = ckpt.latest_checkpoint(self.out)
        if path is None:
            _say(self.info, f"no checkpoint in {self.out / ckpt.CHECKPOINTS}; starting from the beginning")
        return path

    def setup(self) -> None:
        r, info, t = self.recipe, self.info, self.t
        if t["threads"] and info.device.type == "cpu":
            torch.set_num_threads(int(t["threads"]))
        self.mode = D.resolve_mode(t["distributed"], info)
        if info.is_main:
            writable_folder(self.out, "output_dir")
        D.barrier(info)
        self.start_ckpt = self._resume_point()
        if info.is_main:
            ckpt.remove_partial(self.out)
            (self.out / "recipe.yaml").write_text(dump_recipe(r))
        seed = int(t["seed"])
        model = build_model(r, seed)
        self.config = model.config
        apply_stage(model, r["stage"], r.get("also_train") or (), r.get("freeze") or ())
        if t["gradient_checkpointing"]:
            model.gradient_checkpointing_enable()
            for part in (model.vision, model.abstractor):
                if not any(p.requires_grad for p in part.parameters()):
                    part.gradient_checkpointing = False  # frozen and first: nothing to recompute for
        self.base_dir: Path | None = None
        if self.lora is not None:
            if r["model"].get("init"):
                self.base_dir = Path(r["model"]["init"]).resolve()
            else:
                self.base_dir = (self.out / BASE).resolve()
                if info.is_main and not (self.base_dir / "config.json").exists():
                    from owlkit.checkpoints import save_model

                    with quiet_saving():
                        save_model(model, self.base_dir)
                    _side_files(r, self.base_dir)
            model = apply_lora(model, self.lora, self.base_dir)
        self.inner = model
        self.inner.train()
        # Weights are identical on every rank (same seed); from here each rank draws its own
        # stream (dropout), reproducible per (seed, rank).
        _seed_everything(seed * 1000 + info.rank)
        table, _ = parameter_table(self.inner.named_parameters())
        _say(info, table)
        # Data.
        if self.source is None:
            self.source = build_batch_source(r, self.config)
        self.micro, self.accum = _batch_size_plan(r, info.world_size)
        self.global_batch = self.micro * self.accum * info.world_size
        self.total = _total_steps(r, len(self.source), self.global_batch)
        # Resume: weights before wrapping (every rank holds the full model here).
        self.start_step, self.read = 0, 0
        self.dropped = dict.fromkeys(DROP_REASONS, 0)
        state = None
        if self.start_ckpt is not None:
            state = ckpt.load_torch(self.start_ckpt / "state.pt")
            self._load_weights(self.start_ckpt)
            self.start_step = int(state["step"])
            self.dropped.update(state.get("dropped") or {"bad_image": int(state.get("skipped_samples", 0))})
            self.read = int(state.get("samples_read", 0))
            if int(state.get("global_batch", self.global_batch)) != self.global_batch:
                _say(info, f"warning: the checkpoint was written with a global batch of {state['global_batch']}, "
                           f"this run uses {self.global_batch}; the data order differs from an uninterrupted run")
        self.inner.to(info.device)
        self.loss_module = LossModule(self.inner)
        self.wrapped = D.wrap(self.loss_module, self.mode, info)
        named = list(self.loss_module.named_parameters())
        self.groups = param_groups(
            named, lr=float(r["optim"]["lr"]), weight_decay=float(r["optim"]["weight_decay"]),
            layer_decay=float(r["optim"]["layer_decay"]), num_vision_layers=self.config.vision_config.num_hidden_layers,
            lr_scales=r["optim"]["lr_scales"],
        )
        self.trainable = [p for g in self.groups for p in g["params"]]
        self.optimizer = build_optimizer(self.groups, r["optim"])
        self.scheduler = build_scheduler(self.optimizer, r["optim"], self.total)
        warm = warmup_steps(r["optim"], self.total)
        if warm > self.total:
            _say(info, f"warning: the warmup ({warm} steps) is longer than the run ({self.total} steps): the learning "
                       f"rate never reaches optim.lr; shorten optim.warmup_steps")
        self.peak_group = next((i for i, g in enumerate(self.groups) if g["lr_scale"] == 1.0), 0)
        if state is not None:
            self._load_optimizer(self.start_ckpt)
            self.scheduler.load_state_dict(state["scheduler"])
            # The schedule of *this* recipe at the restored step (same numbers unless steps changed).
            factor = self.scheduler.lr_lambdas[0](self.scheduler.last_epoch)
            for g, base in zip(self.optimizer.param_groups, self.scheduler.base_lrs):
                g["lr"] = base * factor
            self.scheduler._last_lr = [g["lr"] for g in self.optimizer.param_groups]
            rng_file = self.start_ckpt / f"rng-rank{info.rank}.pt"
            if rng_file.exists():
                ckpt.set_rng_state(ckpt.load_torch(rng_file))
            else:
                _say(info, f"warning: {rng_file.name} missing (different number of processes?); RNG not restored")
            _say(info, f"resumed from {self.start_ckpt} at step {self.start_step}")
        self.amp = autocast_dtype(t["precision"], info.device)
        self.param_dtype = getattr(torch, r["model"]["dtype"])
        self.sampler = StepSampler(len(self.source), self.micro, self.accum, info.rank, info.world_size,
                                   int(t["seed"]), bool(r["data"]["shuffle"]), self.start_step, self.total,
                                   **length_grouping(self.source, r["data"], self.config))
        self.loader = make_loader(self.source, self.sampler, int(r["data"]["num_workers"]), int(t["seed"]), info.rank)
        self.logger = MetricsLogger(self.out, info.is_main, bool(r["log"]["tensorboard"]), self.start_step)
        _say(info, (
            f"stage {r['stage']}{' + LoRA' if self.lora else ''} | {info.world_size} process(es), {self.mode} | "
            f"global batch {self.global_batch} = {self.micro} x {self.accum} accum x {info.world_size} | "
            f"steps {self.start_step}->{self.total} | {info.device}, "
            f"{r['model']['dtype']} weights{', bf16 autocast' if self.amp is not None else ''} | "
            f"data: {self.source.description or len(self.source)}"
        ))

    def _load_weights(self, path: Path) -> None:
        if self.lora is not None:
            load_adapter_state(self.inner, path / ADAPTER_DIR)
            return
        from owlkit.weight_files import read_state_dict

        state = read_state_dict(path / "model")
        own = self.inner.state_dict()
        missing = [k for k in own if k not in state]
        if missing:
            raise OwlError(f"checkpoint {path} does not match the model: missing {', '.join(missing[:4])}")
        self.inner.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True)

    def _load_optimizer(self, path: Path) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        osd = ckpt.load_torch(path / "optimizer.pt")
        saved = [g.get("name") for g in osd.get("param_groups", [])]
        wanted = [g["name"] for g in self.groups]
        if saved != wanted:
            only_saved = [str(n) for n in saved if n not in wanted] or ["none"]
            only_wanted = [n for n in wanted if n not in saved] or ["none"]
            raise ConfigError(
                f"the checkpoint {path} was written with other optimiser groups (only there: "
                f"{', '.join(only_saved)}; only in this recipe: {', '.join(only_wanted)}): the trainable "
                "parameters or optim.lr_scales changed; resume with the recipe that wrote it, or start a "
                "new run from its weights (model.init)"
            )
        set_optimizer_state_dict(self.wrapped, self.optimizer, optim_state_dict=osd,
                                 options=StateDictOptions(full_state_dict=True))

    # -- checkpoints -----------------------------------------------------------------------------
    def _full_model_state(self) -> dict | None:
        """Full state dict of ``inner`` (names as ``inner.state_dict()``) on the main rank (FSDP2)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        sd = get_model_state_dict(self.loss_module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return {k[len("model."):]: v for k, v in sd.items()} if self.info.is_main else None

    def _save_weights(self, folder: Path, full_state: dict | None, final: bool = False) -> None:
        """Main rank: weights as an owlkit folder, or the adapter for LoRA runs."""
        with quiet_saving():
            self._save_weights_now(folder, full_state, final)

    def _save_weights_now(self, folder: Path, full_state: dict | None, final: bool) -> None:
        if self.lora is not None:
            target = folder / ADAPTER_DIR if not final else folder
            if full_state is not None:
                self.inner.save_pretrained(str(target), state_dict=full_state)
            else:
                self.inner.save_pretrained(str(target))
            return
        from owlkit.checkpoints import save_model

        if full_state is not None:
            folder.mkdir(parents=True, exist_ok=True)
            self.inner.save_pretrained(str(folder), state_dict=full_state)
        else:
            save_model(self.inner, folder)

    def save_checkpoint(self, step: int, last_row: dict | None) -> Path | None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        info = self.info
        full = self._full_model_state() if self.mode == "fsdp2" else None
        osd = get_optimizer_state_dict(self.wrapped, self.optimizer,
                                       options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        with self._writing(f"the checkpoint of step {step}", ckpt.checkpoint_dir(self.out, step)):
            return self._write_checkpoint(step, last_row, full, osd)

    @contextlib.contextmanager
    def _writing(self, what: str, target: Path):
        """A failed write (full disk, lost permissions) stops the run with one line naming the
        last good checkpoint; the partial folder is removed (the rename never happened)."""
        try:
            yield
        except ckpt.WRITE_ERRORS as exc:
            if self.info.is_main:
                ckpt.remove_partial(self.out)
                shutil.rmtree(target.with_name(target.name + ".tmp"), ignore_errors=True)
            self._stop(f"cannot write {what} to {target} ({ckpt.os_reason(exc)})")

    def _write_checkpoint(self, step: int, last_row: dict | None, full: dict | None, osd: dict) -> Path | None:
        info = self.info
        tmp = ckpt.begin(self.out, step) if info.is_main else None
        tmp = Path(D.broadcast_object(str(tmp) if tmp else None, info))
        ckpt.save_torch(ckpt.rng_state(), tmp / f"rng-rank{info.rank}.pt")
        final = None
        if info.is_main:
            self._save_weights(tmp if self.lora is not None else tmp / "model", full)
            ckpt.save_torch(osd, tmp / "optimizer.pt")
            state = {
                "format_version": ckpt.FORMAT_VERSION, "step": step, "samples_seen": step * self.global_batch,
                "global_batch": self.global_batch, "world_size": info.world_size,
                "scheduler": self.scheduler.state_dict(), "skipped_samples": self.skipped,
                "dropped": dict(self.dropped), "samples_read": self.read,
            }
            ckpt.save_torch(state, tmp / "state.pt")
            ckpt.write_json({k: v for k, v in state.items() if k != "scheduler"} | {"metrics": last_row},
                            tmp / "trainer_state.json")
        D.barrier(info)  # every rank's RNG file is in place
        if info.is_main:
            final = ckpt.commit(tmp, int(self.recipe["checkpoint"]["keep"]))
        D.barrier(info)
        return final

    def save_final(self) -> tuple[Path | None, Path | None]:
        """``final/`` (and ``adapter/``), written beside as ``*.tmp`` and renamed when complete."""
        info = self.info
        full = self._full_model_state() if self.mode == "fsdp2" else None
        final_dir = self.out / FINAL
        adapter_dir = self.out / ADAPTER_DIR if self.lora is not None else None
        if info.is_main:
            with self._writing("the final model", final_dir):
                final_tmp = final_dir.with_name(FINAL + ".tmp")
                shutil.rmtree(final_tmp, ignore_errors=True)
                if adapter_dir is not None:
                    from owlkit.training.lora import merge_lora

                    adapter_tmp = adapter_dir.with_name(ADAPTER_DIR + ".tmp")
                    shutil.rmtree(adapter_tmp, ignore_errors=True)
                    self._save_weights(adapter_tmp, full, final=True)
                    with quiet_saving():
                        merge_lora(adapter_tmp, final_tmp, base=self.base_dir)
                    ckpt.replace_folder(adapter_tmp, adapter_dir)
                else:
                    self._save_weights(final_tmp, full)
                _side_files(self.recipe, final_tmp)
                ckpt.replace_folder(final_tmp, final_dir)
        D.barrier(info)
        return final_dir, adapter_dir

    # -- the loop ------------------------------------------------------------------------------
    def _stop(self, message: str) -> None:
        last = ckpt.latest_checkpoint(self.out)
        where = f"the last good checkpoint is {last} (continue with --resume)" if last else "no checkpoint was written yet"
        raise TrainingError(f"{message}; stopped, {where}")

    def _sync_context(self, last: bool):
        if self.mode == "ddp" and not last:
            return self.wrapped.no_sync()
        if self.mode == "fsdp2":
            self.wrapped.set_requires_gradient_sync(last)
        return contextlib.nullcontext()

    def run(self) -> TrainResult:
        self.setup()
        info, r = self.info, self.recipe
        from owlkit.models.splice import expand_placeholders

        tpi, image_token_id = self.config.tokens_per_image, self.config.image_token_id
        clip = float(r["optim"]["grad_clip"] or 0.0)
        every = int(r["checkpoint"]["every"])
        delay = float(os.environ.get("OWLKIT_TRAIN_STEP_DELAY", "0") or 0)  # tests: widen the kill window
        bar = None
        if info.is_main and r["log"]["progress"] and self.start_step < self.total:
            from tqdm import tqdm

            bar = tqdm(total=self.total, initial=self.start_step, desc="train", unit="step", dynamic_ncols=True,
                       file=sys.stdout, disable=None)
        history: list[dict] = []
        last_saved: Path | None = None
        row: dict | None = None
        started = time.perf_counter()
        data = iter(self.loader)
        try:
            for step in range(self.start_step, self.total):
                t0 = time.perf_counter()
                micro = [next(data) for _ in range(self.accum)]
                # supervised tokens, tokens, samples kept, dropped: bad image, error flag, positions,
                # dropped: no reply left
                stats = torch.zeros(7, dtype=torch.float64)
                error = None
                for b in micro:
                    if "__error__" in b:
                        error = error or b["__error__"]
                        continue
                    stats[3] += int(b.get("num_skipped", 0) or 0)
                    stats[6] += int(b.get("num_unsupervised", 0) or 0)
                    if b["input_ids"].shape[0] == 0:
                        continue
                    try:
                        ex = expand_placeholders(b["input_ids"], b["attention_mask"], b["labels"], tpi, image_token_id)
                    except OwlError as exc:
                        error = error or f"bad batch at stream positions {b['positions'][0]}..: {exc}"
                        continue
                    n = int((ex.labels[:, 1:] != IGNORE_INDEX).sum())
                    stats[:3] += torch.tensor([n, int(ex.attention_mask.sum()), b["input_ids"].shape[0]],
                                              dtype=torch.float64)
                    stats[5] += ex.attention_mask.numel()
                if error is not None:
                    stats[4] = 1
                stats = D.all_reduce_sum(stats.to(info.device), info).cpu()
                if stats[4] > 0:
                    self._stop(f"data error at step {step + 1}: {error}" if error else
                               f"another process hit a data error at step {step + 1} (see its message)")
                n_sup, tokens, samples = (int(x) for x in stats[:3])
                positions = int(stats[5])  # tokens + padding: what the decoder computed
                self.dropped["bad_image"] += int(stats[3])
                self.dropped["no_reply"] += int(stats[6])
                self.read += samples + int(stats[3]) + int(stats[6])
                if n_sup == 0:
                    self._stop(f"step {step + 1} has nothing to learn from: no supervised token in its "
                               f"{self.global_batch} sample(s) ({self._dropped_text(int(stats[3]), int(stats[6]))})")
                if self.read >= MIN_SAMPLES_FOR_SHARE:
                    self._check_dropped_share()
                scale = info.world_size / max(n_sup, 1)
                loss_sum = torch.zeros((), dtype=torch.float64, device=info.device)
                for a, b in enumerate(micro):
                    empty = b["input_ids"].shape[0] == 0
                    if self.mode != "none" and b.get("pixel_values") is None:
                        b = with_dummy_image(b, self.config)
                    elif empty:
                        continue  # one process, nothing read: nothing to compute
                    inputs = {k: (v.to(info.device, non_blocking=True) if isinstance(v, torch.Tensor) else v)
                              for k, v in b.items() if k in ("input_ids", "attention_mask", "labels", "pixel_values")}
                    if inputs.get("pixel_values") is not None and self.amp is None:
                        inputs["pixel_values"] = inputs["pixel_values"].to(self.param_dtype)
                    with self._sync_context(a == len(micro) - 1):
                        with (torch.autocast(info.device.type, dtype=self.amp) if self.amp is not None
                              else contextlib.nullcontext()):
                            out = self.wrapped(**inputs)
                        if out.requires_grad:  # else no trainable parameter took part (e.g. stage 1, text only)
                            (out * scale).backward()
                    loss_sum += out.detach().double()
                loss_sum = D.all_reduce_sum(loss_sum, info)
                loss = float(loss_sum) / n_sup if n_sup else None
                if loss is not None and not math.isfinite(loss):
                    self._stop(f"the loss is {loss} at step {step + 1} (data positions "
                               f"{step * self.global_batch}..{(step + 1) * self.global_batch - 1})")
                for p in self.trainable:  # unused this step (e.g. no image): zero, as on every rank
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable, clip if clip > 0 else float("inf"))
                if hasattr(grad_norm, "full_tensor"):
                    grad_norm = grad_norm.full_tensor()
                grad_norm = float(grad_norm)
                if not math.isfinite(grad_norm):
                    self._stop(f"the gradient norm is {grad_norm} at step {step + 1}")
                lr = self.optimizer.param_groups[self.peak_group]["lr"]
                if n_sup:
                    self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                if info.device.type == "cuda":
                    torch.cuda.synchronize(info.device)
                dt = time.perf_counter() - t0
                row = {
                    "step": step + 1, "loss": loss, "lr": lr, "grad_norm": grad_norm,
                    "samples_per_s": samples / dt if dt > 0 else None, "tokens": tokens, "positions": positions,
                    "supervised_tokens": n_sup, "samples": samples, "skipped_samples": self.skipped,
                    "dropped_bad_image": self.dropped["bad_image"], "dropped_no_reply": self.dropped["no_reply"],
                    "time": round(time.perf_counter() - started, 4),
                }
                history.append(row)
                self.logger.log(row)
                if bar is not None:
                    extra = {"dropped": self.skipped} if self.skipped else {}
                    bar.set_postfix(loss=f"{loss:.4f}" if loss is not None else "-", lr=f"{lr:.2e}",
                                    sps=f"{row['samples_per_s']:.1f}", **extra, refresh=False)
                    bar.update(1)
                if (bar is None or bar.disable) and (step + 1) % int(r["log"]["every"]) == 0:
                    _say(info, f"step {step + 1}/{self.total} loss {loss if loss is None else round(loss, 5)} "
                               f"lr {lr:.3e} grad_norm {grad_norm:.3f} {row['samples_per_s']:.2f} samples/s"
                               + (f" dropped {self.skipped}" if self.skipped else ""))
                if every and (step + 1) % every == 0 and step + 1 < self.total:
                    last_saved = self.save_checkpoint(step + 1, row)
                if delay:
                    time.sleep(delay)
            if 0 < self.read < MIN_SAMPLES_FOR_SHARE:
                self._check_dropped_share()
            if self.start_step < self.total or ckpt.latest_checkpoint(self.out) is None:
                last_saved = self.save_checkpoint(self.total, row)
            final_dir, adapter_dir = self.save_final()
        finally:
            if bar is not None:
                bar.close()
            self.logger.close()
        if self.skipped:
            _say(info, f"dropped {self.skipped} of {self.read} sample(s) read: "
                       f"{self._dropped_text(self.dropped['bad_image'], self.dropped['no_reply'])}")
        _say(info, f"done: {final_dir}")
        return TrainResult(self.out, self.total, history, final_dir, adapter_dir,
                           last_saved or ckpt.latest_checkpoint(self.out), self.skipped, dict(self.dropped))

    # -- dropped samples ---------------------------------------------------------------------------
    @property
    def skipped(self) -> int:
        return sum(self.dropped.values())

    @staticmethod
    def _dropped_text(bad_image: int, no_reply: int) -> str:
        counts = {"bad_image": bad_image, "no_reply": no_reply}
        parts = [f"{n} with {DROP_REASONS[k]}" for k, n in counts.items() if n]
        return "; ".join(parts) if parts else "none dropped: the replies hold no token to predict"

    def _check_dropped_share(self) -> None:
        limit = float(self.recipe["data"]["max_dropped"])
        if self.skipped > limit * self.read:
            self._stop(
                f"{self.skipped} of the {self.read} sample(s) read so far were dropped "
                f"({self.skipped / self.read:.0%}, more than data.max_dropped={limit:g}): "
                f"{self._dropped_text(self.dropped['bad_image'], self.dropped['no_reply'])}; "
                "check image_root and data.max_length (`owl data check` lists the problems), or raise data.max_dropped"
            )
