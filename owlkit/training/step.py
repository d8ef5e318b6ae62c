"""One optimiser step: this rank's ``grad_accum`` micro-batches in, a :class:`StepStats` out.

Flow of :func:`train_step` (B samples of L ids per micro-batch, one placeholder per image):

1. prepare each micro-batch once: with several processes, one without images gets the dummy
   image row (:func:`~owlkit.training.loss.with_dummy_image`); then
   :func:`~owlkit.models.splice.expand_placeholders` gives the layout the decoder reads
   ([B, L'], every image ``tokens_per_image`` slots), from which supervised tokens, tokens and
   positions are counted;
2. one all-reduce sums the counts of every rank (:meth:`StepStats.all_reduced`): ``N`` supervised
   tokens of the global batch;
3. forward / backward of each micro-batch: summed cross-entropy (for rows of a ``distill``
   source, the KL divergence from the base model's distributions) scaled by ``world_size / N``
   (DDP / FSDP2 average over ranks, so the gradient is that of the global batch's mean loss);
   gradients are synchronised on the last micro-batch only;
4. the loss is all-reduced and checked finite; gradients are clipped and checked finite; the
   optimiser and the schedule step.

A step that cannot be completed raises :class:`StepFailed`; the loop says where to resume from.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from owlkit.config import IGNORE_INDEX, OwlConfig
from owlkit.errors import OwlError
from owlkit.models.splice import Expanded, expand_placeholders
from owlkit.training import distributed as D
from owlkit.training.dropped import dropped_text
from owlkit.training.loss import scored_rows, with_dummy_image


class StepFailed(Exception):
    """The step cannot be completed (bad data, nothing to learn, non-finite loss or gradient)."""


@dataclass
class StepStats:
    """What one optimiser step read and computed, summed over every rank."""

    supervised_tokens: int = 0  # next-token targets: the loss is their mean cross-entropy
    tokens: int = 0  # real positions, placeholders expanded
    positions: int = 0  # tokens + padding: what the decoder computed
    samples: int = 0  # samples that reached the model
    dropped_bad_image: int = 0  # samples dropped for a missing or unreadable image
    dropped_no_reply: int = 0  # samples dropped with no supervised token left within max_length
    data_errors: int = 0  # ranks that read a bad micro-batch: the step stops
    loss: float | None = None  # mean cross-entropy per supervised token
    grad_norm: float = 0.0  # before clipping
    lr: float = 0.0  # of the groups at optim.lr (lr_scale 1)

    #: The fields summed over ranks (the rest is computed once the counts are known).
    COUNTS = ("supervised_tokens", "tokens", "positions", "samples", "dropped_bad_image", "dropped_no_reply",
              "data_errors")

    @property
    def read(self) -> int:
        """Samples read from the data, kept or dropped."""
        return self.samples + self.dropped_bad_image + self.dropped_no_reply

    def all_reduced(self, info: D.DistInfo) -> StepStats:
        """The counts summed over every rank (one all-reduce of a float64 tensor)."""
        packed = torch.tensor([getattr(self, name) for name in self.COUNTS], dtype=torch.float64)
        packed = D.all_reduce_sum(packed.to(info.device), info).cpu()
        return StepStats(**{name: int(value) for name, value in zip(self.COUNTS, packed.tolist())})


@dataclass
class TrainState:
    """The model, optimiser and schedule a step updates, and how it runs them."""

    info: D.DistInfo
    mode: str  # none | ddp | fsdp2
    config: OwlConfig
    wrapped: nn.Module  # the LossModule as DDP / FSDP2 see it
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    trainable: list[nn.Parameter]
    peak_group: int  # index of a group at optim.lr, for the logged learning rate
    grad_clip: float  # 0: no clipping
    amp: torch.dtype | None  # autocast dtype
    param_dtype: torch.dtype
    global_batch: int
    objective: str = "next_token"  # or "words" (recipe ``objective``: owlkit.training.loss)


@dataclass
class _Prepared:
    """A micro-batch ready for the loss module: expanded once, its images, whether it counts."""

    expanded: Expanded | None  # None: nothing to compute (one process, empty micro-batch)
    pixel_values: torch.Tensor | None
    distill: torch.Tensor | None = None  # [B] rows learned as the base's distributions (LossModule)


def _prepare(batch: dict, state: TrainState, counts: StepStats) -> tuple[_Prepared, str | None]:
    """Expand one micro-batch and add its numbers to ``counts``; (prepared, error or None)."""
    counts.dropped_bad_image += int(batch.get("num_skipped", 0) or 0)
    counts.dropped_no_reply += int(batch.get("num_unsupervised", 0) or 0)
    rows = batch["input_ids"].shape[0]
    padded_length = batch["input_ids"].shape[1]
    dummy = state.mode != "none" and batch.get("pixel_values") is None
    if dummy:
        batch = with_dummy_image(batch, state.config)
    elif rows == 0:
        return _Prepared(None, None), None  # one process, nothing read: nothing to compute
    config = state.config
    try:
        ex = expand_placeholders(batch["input_ids"], batch["attention_mask"], batch["labels"],
                                 config.tokens_per_image, config.image_token_id)
    except OwlError as exc:
        return _Prepared(None, None), f"bad batch at stream positions {batch['positions'][0]}..: {exc}"
    if rows and state.objective == "words":  # every query of a scored picture has a target
        try:
            counts.supervised_tokens += int(scored_rows(ex, config)[:rows].sum()) * config.tokens_per_image
        except OwlError as exc:
            return _Prepared(None, None), f"bad batch at stream positions {batch['positions'][0]}..: {exc}"
    elif rows:
        counts.supervised_tokens += int((ex.labels[:rows, 1:] != IGNORE_INDEX).sum())
    if rows:
        counts.tokens += int(ex.attention_mask[:rows].sum())
        counts.samples += rows
        # the rows' own expanded length: with the dummy row they hold no image, so it is theirs
        counts.positions += rows * (padded_length if dummy else ex.attention_mask.shape[1])
    distill = batch.get("distill")
    if distill is not None and distill.shape[0] < ex.input_ids.shape[0]:  # the dummy row learns nothing
        distill = torch.cat([distill, distill.new_zeros(ex.input_ids.shape[0] - distill.shape[0])])
    return _Prepared(ex, batch.get("pixel_values"), distill), None


def _sync_context(state: TrainState, last: bool):
    if state.mode == "ddp" and not last:
        return state.wrapped.no_sync()
    if state.mode == "fsdp2":
        state.wrapped.set_requires_gradient_sync(last)
    return contextlib.nullcontext()


def _forward_backward(state: TrainState, prepared: list[_Prepared], scale: float) -> torch.Tensor:
    """Summed cross-entropy of this rank's micro-batches (float64); gradients accumulated."""
    device = state.info.device
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    for a, p in enumerate(prepared):
        if p.expanded is None:
            continue
        ex = p.expanded
        pixels = p.pixel_values
        if pixels is not None:
            pixels = pixels.to(device, non_blocking=True)
            if state.amp is None:
                pixels = pixels.to(state.param_dtype)
        inputs = {"input_ids": ex.input_ids, "attention_mask": ex.attention_mask, "labels": ex.labels,
                  "image_mask": ex.image_mask}
        if p.distill is not None:
            inputs["distill"] = p.distill
        inputs = {k: v.to(device, non_blocking=True) for k, v in inputs.items()} | {"pixel_values": pixels}
        with _sync_context(state, a == len(prepared) - 1):
            with (torch.autocast(device.type, dtype=state.amp) if state.amp is not None
                  else contextlib.nullcontext()):
                out = state.wrapped(**inputs)
            if out.requires_grad:  # else no trainable parameter took part (e.g. stage 1, text only)
                (out * scale).backward()
        loss_sum += out.detach().double()
    return loss_sum


def train_step(state: TrainState, micro_batches: list[dict], step: int,
               on_counts: Callable[[StepStats], None] | None = None) -> StepStats:
    """Optimiser step ``step`` (0-based) on this rank's micro-batches; every rank calls it.

    ``on_counts`` sees the all-reduced counts before any forward pass (the loop's dropped-sample
    accounting, which may stop the run there).
    """
    info = state.info
    counts, error, prepared = StepStats(), None, []
    for batch in micro_batches:
        if "__error__" in batch:
            error = error or batch["__error__"]
            continue
        p, problem = _prepare(batch, state, counts)
        error = error or problem
        prepared.append(p)
    counts.data_errors = int(error is not None)
    stats = counts.all_reduced(info)
    if stats.data_errors:
        raise StepFailed(f"data error at step {step + 1}: {error}" if error else
                         f"another process hit a data error at step {step + 1} (see its message)")
    n_sup = stats.supervised_tokens
    if n_sup == 0:
        raise StepFailed(f"step {step + 1} has nothing to learn from: no supervised token in its "
                         f"{state.global_batch} sample(s) "
                         f"({dropped_text(stats.dropped_bad_image, stats.dropped_no_reply)})")
    if on_counts is not None:
        on_counts(stats)
    loss_sum = D.all_reduce_sum(_forward_backward(state, prepared, info.world_size / n_sup), info)
    stats.loss = float(loss_sum) / n_sup
    if not math.isfinite(stats.loss):
        raise StepFailed(f"the loss is {stats.loss} at step {step + 1} (data positions "
                         f"{step * state.global_batch}..{(step + 1) * state.global_batch - 1})")
    for p in state.trainable:  # unused this step (e.g. no image): zero, as on every rank
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    clip = state.grad_clip
    grad_norm = torch.nn.utils.clip_grad_norm_(state.trainable, clip if clip > 0 else float("inf"))
    if hasattr(grad_norm, "full_tensor"):
        grad_norm = grad_norm.full_tensor()
    stats.grad_norm = float(grad_norm)
    if not math.isfinite(stats.grad_norm):
        raise StepFailed(f"the gradient norm is {stats.grad_norm} at step {step + 1}")
    stats.lr = state.optimizer.param_groups[state.peak_group]["lr"]
    state.optimizer.step()
    state.scheduler.step()
    state.optimizer.zero_grad(set_to_none=True)
    if info.device.type == "cuda":
        torch.cuda.synchronize(info.device)
    return stats
