"""The training loop: one function, :func:`train`, from a recipe to a model folder.

:class:`Trainer` sets the run up (:mod:`owlkit.training.setup`: model, data, optimiser and
schedule; :mod:`owlkit.training.resume`: the checkpoint to continue from), then runs
:func:`~owlkit.training.step.train_step` once per optimiser step and around it: the dropped-sample
accounting, the metrics row (``metrics.jsonl``), the progress bar, checkpoints every
``checkpoint.every`` steps, and at the end ``final/`` (and ``adapter/`` for LoRA runs).

Per optimiser step each rank reads ``grad_accum`` micro-batches (its slice of the global batch,
see :class:`~owlkit.training.sampling.StepSampler`). The loss of the step is the mean next-token
cross-entropy over *all supervised tokens of the global batch* (see :mod:`owlkit.training.step`),
so the gradient is exactly that of the single-process global-batch loss.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
)
from tqdm import tqdm

from owlkit.checkpoints import quiet_saving, save_model
from owlkit.errors import OwlError
from owlkit.outputs import writable_folder
from owlkit.training import checkpoint as ckpt
from owlkit.training import distributed as D
from owlkit.training.dropped import DroppedSamples
from owlkit.training.lora import ADAPTER_DIR, merge_lora
from owlkit.training.loss import LossModule
from owlkit.training.metrics import MetricsLogger
from owlkit.training.recipe import Recipe, dump_recipe, load_recipe
from owlkit.training.resume import restore_optimizer, restore_weights, resume_point
from owlkit.training.setup import (
    autocast_dtype,
    copy_processing_files,
    say,
    setup_data,
    setup_model,
    setup_optimizer,
    store_frozen_linears,
)
from owlkit.training.sources import BatchSource
from owlkit.training.step import StepFailed, StepStats, TrainState, train_step

FINAL = "final"


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
        trainer = Trainer(recipe, info)
        trainer.setup(source, resume)
        return trainer.run()
    finally:
        torch.set_num_threads(threads)
        D.shutdown(info)


class Trainer:
    """One run of a recipe on this rank: :meth:`setup`, then :meth:`run`."""

    def __init__(self, recipe: Recipe, info: D.DistInfo):
        self.recipe, self.info = recipe, info
        self.out = Path(recipe["output_dir"])
        self.lora = recipe["lora"]

    # -- setup ---------------------------------------------------------------------------------
    def setup(self, source: BatchSource | None = None, resume: bool | str | Path = False) -> None:
        r, info, t = self.recipe, self.info, self.recipe["train"]
        if t["threads"] and info.device.type == "cpu":
            torch.set_num_threads(int(t["threads"]))
        self.mode = D.resolve_mode(t["distributed"], info)
        if info.is_main:
            writable_folder(self.out, "output_dir")
        D.barrier(info)
        start_ckpt = resume_point(self.out, resume, info)
        if info.is_main:
            ckpt.remove_partial(self.out)
            (self.out / "recipe.yaml").write_text(dump_recipe(r))
        model = setup_model(r, info, self.out)
        self.inner, self.config, self.base_dir = model.inner, model.config, model.base_dir
        self.data = setup_data(r, info, self.config, source)
        self.total, self.global_batch = self.data.total_steps, self.data.global_batch
        self.start_step = 0
        self.dropped = DroppedSamples(r["data"]["max_dropped"])
        state = None
        if start_ckpt is not None:  # weights before wrapping: every rank holds the full model here
            state = ckpt.load_torch(start_ckpt / "state.pt")
            restore_weights(self.inner, start_ckpt, self.lora is not None)
            self.start_step = int(state["step"])
            self.dropped = DroppedSamples(
                r["data"]["max_dropped"],
                state.get("dropped") or {"bad_image": int(state.get("skipped_samples", 0))},
                int(state.get("samples_read", 0)),
            )
            if int(state.get("global_batch", self.global_batch)) != self.global_batch:
                say(info, f"warning: the checkpoint was written with a global batch of {state['global_batch']}, "
                          f"this run uses {self.global_batch}; the data order differs from an uninterrupted run")
        self.inner.to(info.device)
        amp = autocast_dtype(t["precision"], info.device)
        if amp is not None and self.lora is not None and self.mode != "fsdp2":
            store_frozen_linears(self.inner, amp)
        self.loss_module = LossModule(self.inner, r["objective"])
        wrapped = D.wrap(self.loss_module, self.mode, info)
        self.optim = setup_optimizer(r, self.loss_module, self.config, self.total, info)
        if state is not None:
            restore_optimizer(wrapped, self.optim, start_ckpt, state, info)
            say(info, f"resumed from {start_ckpt} at step {self.start_step}")
        self.state = TrainState(
            info=info, mode=self.mode, config=self.config, wrapped=wrapped, optimizer=self.optim.optimizer,
            scheduler=self.optim.scheduler, trainable=self.optim.trainable, peak_group=self.optim.peak_group,
            grad_clip=float(r["optim"]["grad_clip"] or 0.0), amp=amp,
            param_dtype=getattr(torch, r["model"]["dtype"]), global_batch=self.global_batch,
            objective=r["objective"],
        )
        self.loader = self.data.loader(r, info, self.config, self.start_step)
        self.logger = MetricsLogger(self.out, info.is_main, bool(r["log"]["tensorboard"]), self.start_step)
        source = self.data.source
        say(info, (
            f"stage {r['stage']}{' + LoRA' if self.lora else ''} | {info.world_size} process(es), {self.mode} | "
            f"global batch {self.global_batch} = {self.data.micro} x {self.data.accum} accum x {info.world_size} | "
            f"steps {self.start_step}->{self.total} | {info.device}, "
            f"{r['model']['dtype']} weights{', bf16 autocast' if amp is not None else ''} | "
            f"data: {source.description or len(source)}"
        ))

    # -- the loop ------------------------------------------------------------------------------
    def _stop(self, message: str) -> None:
        last = ckpt.latest_checkpoint(self.out)
        where = f"the last good checkpoint is {last} (continue with --resume)" if last else "no checkpoint was written yet"
        raise TrainingError(f"{message}; stopped, {where}")

    def _count(self, stats: StepStats) -> None:
        """The step's counts into the run's totals; too many dropped samples stop the run."""
        self.dropped.add(stats.dropped_bad_image, stats.dropped_no_reply, stats.read)
        problem = self.dropped.excess()
        if problem:
            self._stop(problem)

    def _progress_bar(self):
        if not (self.info.is_main and self.recipe["log"]["progress"] and self.start_step < self.total):
            return None
        return tqdm(total=self.total, initial=self.start_step, desc="train", unit="step", dynamic_ncols=True,
                    file=sys.stdout, disable=None)

    def _row(self, step: int, stats: StepStats, seconds: float, elapsed: float) -> dict:
        """The metrics line of a step (``metrics.jsonl``)."""
        dropped = self.dropped.counts
        return {
            "step": step + 1, "loss": stats.loss, "lr": stats.lr, "grad_norm": stats.grad_norm,
            "samples_per_s": stats.samples / seconds if seconds > 0 else None, "tokens": stats.tokens,
            "positions": stats.positions, "supervised_tokens": stats.supervised_tokens, "samples": stats.samples,
            "skipped_samples": self.dropped.total, "dropped_bad_image": dropped["bad_image"],
            "dropped_no_reply": dropped["no_reply"], "time": round(elapsed, 4),
        }

    def _report(self, bar, row: dict) -> None:
        skipped, loss, lr = self.dropped.total, row["loss"], row["lr"]
        if bar is not None:
            extra = {"dropped": skipped} if skipped else {}
            bar.set_postfix(loss=f"{loss:.4f}" if loss is not None else "-", lr=f"{lr:.2e}",
                            sps=f"{row['samples_per_s']:.1f}", **extra, refresh=False)
            bar.update(1)
        if (bar is None or bar.disable) and row["step"] % int(self.recipe["log"]["every"]) == 0:
            say(self.info, f"step {row['step']}/{self.total} loss {loss if loss is None else round(loss, 5)} "
                           f"lr {lr:.3e} grad_norm {row['grad_norm']:.3f} {row['samples_per_s']:.2f} samples/s"
                           + (f" dropped {skipped}" if skipped else ""))

    def run(self) -> TrainResult:
        info = self.info
        every = int(self.recipe["checkpoint"]["every"])
        bar = self._progress_bar()
        history: list[dict] = []
        last_saved: Path | None = None
        row: dict | None = None
        started = time.perf_counter()
        data = iter(self.loader)
        try:
            for step in range(self.start_step, self.total):
                t0 = time.perf_counter()
                micro = [next(data) for _ in range(self.data.accum)]
                try:
                    stats = train_step(self.state, micro, step, on_counts=self._count)
                except StepFailed as exc:
                    self._stop(str(exc))
                now = time.perf_counter()
                row = self._row(step, stats, now - t0, now - started)
                history.append(row)
                self.logger.log(row)
                self._report(bar, row)
                if every and (step + 1) % every == 0 and step + 1 < self.total:
                    last_saved = self.save_checkpoint(step + 1, row)
            problem = self.dropped.excess(final=True)
            if problem:
                self._stop(problem)
            if self.start_step < self.total or ckpt.latest_checkpoint(self.out) is None:
                last_saved = self.save_checkpoint(self.total, row)
            final_dir, adapter_dir = self.save_final()
        finally:
            if bar is not None:
                bar.close()
            self.logger.close()
        if self.dropped.total:
            say(info, f"dropped {self.dropped.total} of {self.dropped.read} sample(s) read: {self.dropped.text()}")
        say(info, f"done: {final_dir}")
        return TrainResult(self.out, self.total, history, final_dir, adapter_dir,
                           last_saved or ckpt.latest_checkpoint(self.out), self.dropped.total,
                           dict(self.dropped.counts))

    # -- checkpoints -----------------------------------------------------------------------------
    def _full_model_state(self) -> dict | None:
        """Full state dict of ``inner`` (names as ``inner.state_dict()``) on the main rank (FSDP2)."""
        sd = get_model_state_dict(self.loss_module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return {k[len("model."):]: v for k, v in sd.items()} if self.info.is_main else None

    def _save_weights(self, folder: Path, full_state: dict | None, final: bool = False) -> None:
        """Main rank: weights as an owlkit folder, or the adapter for LoRA runs."""
        with quiet_saving():
            if self.lora is not None:
                target = folder / ADAPTER_DIR if not final else folder
                if full_state is not None:
                    self.inner.save_pretrained(str(target), state_dict=full_state)
                else:
                    self.inner.save_pretrained(str(target))
            elif full_state is not None:
                folder.mkdir(parents=True, exist_ok=True)
                self.inner.save_pretrained(str(folder), state_dict=full_state)
            else:
                save_model(self.inner, folder)

    def save_checkpoint(self, step: int, last_row: dict | None) -> Path | None:
        full = self._full_model_state() if self.mode == "fsdp2" else None
        osd = get_optimizer_state_dict(self.state.wrapped, self.optim.optimizer,
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
                "scheduler": self.optim.scheduler.state_dict(), "skipped_samples": self.dropped.total,
                "dropped": dict(self.dropped.counts), "samples_read": self.dropped.read,
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
                    adapter_tmp = adapter_dir.with_name(ADAPTER_DIR + ".tmp")
                    shutil.rmtree(adapter_tmp, ignore_errors=True)
                    self._save_weights(adapter_tmp, full, final=True)
                    with quiet_saving():
                        merge_lora(adapter_tmp, final_tmp, base=self.base_dir)
                    ckpt.replace_folder(adapter_tmp, adapter_dir)
                else:
                    self._save_weights(final_tmp, full)
                copy_processing_files(self.recipe, final_tmp)
                ckpt.replace_folder(final_tmp, final_dir)
        D.barrier(info)
        return final_dir, adapter_dir
