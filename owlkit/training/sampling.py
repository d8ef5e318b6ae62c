"""Which samples each rank reads at each optimiser step, and the loader that reads them.

:class:`StepSampler` maps optimiser steps to stream positions (see its docstring), so the data of
a step does not depend on how it is split over ranks and accumulation, and a resume recomputes
its position from the step. :func:`make_loader` wraps it in a DataLoader whose collate step is
seeded per batch, so augmentation is reproducible across workers, ranks and resumes; a record
or batch that cannot be read becomes a one-line ``{"__error__": ...}`` marker the loop reports.
"""

from __future__ import annotations

import random
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from owlkit.errors import ConfigError, OwlError, first_line
from owlkit.training.sources import BatchSource


# ---------------------------------------------------------------------------------------------
# Which sample each rank reads at each step
# ---------------------------------------------------------------------------------------------


class StepSampler(torch.utils.data.Sampler):
    """Micro-batches of stream positions for one rank, from ``start_step`` to ``total_steps``.

    The data is read as an endless stream: epoch ``e`` is a permutation of the dataset seeded by
    ``(seed, e)`` (identity when not shuffling), epochs follow each other. Optimiser step ``s``
    consumes stream positions ``[s*G, (s+1)*G)`` with ``G = micro * accum * world``; rank ``r``
    takes the contiguous slice ``[s*G + r*micro*accum, s*G + (r+1)*micro*accum)`` cut into
    ``accum`` micro-batches. So the data of a step does not depend on how it is split over
    ranks and accumulation, and the position is recomputed from the step on resume.

    With ``group_window = W > 0`` (``data.group_by_length``) each epoch's order is cut into
    windows of ``W`` global batches; inside a window the samples are sorted by ``lengths(epoch)``
    (approximate token counts), cut into global batches and those batches shuffled. Every batch
    then holds samples of similar length, so little of it is padding, while an epoch still shows
    each sample once and neighbouring steps still come from anywhere in the window.

    With ``sort_micro_batches`` (``data.sort_micro_batches``) a rank's samples of a step are
    sorted by length before being cut into its ``accum`` micro-batches: the step reads the same
    samples and, the loss being normalised over the whole global batch, computes the same
    gradient, but each micro-batch is padded only to its own longest sample.
    """

    def __init__(self, num_samples: int, micro: int, accum: int, rank: int, world: int, seed: int,
                 shuffle: bool, start_step: int, total_steps: int, *, group_window: int = 0,
                 lengths: Callable[[int], Any] | None = None, sort_micro_batches: bool = False):
        self.n, self.micro, self.accum, self.rank, self.world = num_samples, micro, accum, rank, world
        self.seed, self.shuffle, self.start, self.total = seed, shuffle, start_step, total_steps
        if (group_window or sort_micro_batches) and lengths is None:
            raise ValueError("group_window and sort_micro_batches need lengths")
        self.group_window, self.lengths, self.sort_micro_batches = int(group_window), lengths, sort_micro_batches
        self._perm: tuple[int, torch.Tensor] | None = None
        self._lengths: tuple[int, Any] | None = None

    @property
    def global_batch(self) -> int:
        return self.micro * self.accum * self.world

    def index(self, position: int) -> int:
        epoch, offset = divmod(position, self.n)
        if not self.shuffle and not self.group_window:
            return offset
        if self._perm is None or self._perm[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 7919 + epoch)
            perm = torch.randperm(self.n, generator=g) if self.shuffle else torch.arange(self.n)
            if self.group_window:
                perm = self._grouped(perm, epoch)
            self._perm = (epoch, perm)
        return int(self._perm[1][offset])

    def length(self, position: int) -> int:
        """Approximate length of the sample at stream ``position``."""
        return int(self._epoch_lengths(position // self.n)[self.index(position)])

    def _epoch_lengths(self, epoch: int) -> torch.Tensor:
        if self._lengths is None or self._lengths[0] != epoch:
            lengths = torch.as_tensor(self.lengths(epoch), dtype=torch.long)
            if lengths.shape != (self.n,):
                raise ValueError(f"lengths({epoch}) has shape {tuple(lengths.shape)}, expected ({self.n},)")
            self._lengths = (epoch, lengths)
        return self._lengths[1]

    def _grouped(self, perm: torch.Tensor, epoch: int) -> torch.Tensor:
        lengths = self._epoch_lengths(epoch)
        g = torch.Generator().manual_seed(self.seed * 7919 + epoch + 104729)
        size, window = self.global_batch, self.global_batch * self.group_window
        parts = []
        for start in range(0, self.n, window):
            chunk = perm[start:start + window]
            chunk = chunk[torch.argsort(lengths[chunk], descending=True, stable=True)]
            batches = list(chunk.split(size))
            tail = [batches.pop()] if len(batches[-1]) < size else []  # a partial batch stays last
            parts += [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()] + tail
        return torch.cat(parts)

    def __len__(self) -> int:
        return (self.total - self.start) * self.accum

    def __iter__(self) -> Iterator[list[int]]:
        per_rank = self.micro * self.accum
        for step in range(self.start, self.total):
            base = step * self.global_batch + self.rank * per_rank
            positions = list(range(base, base + per_rank))
            if self.sort_micro_batches and self.accum > 1:
                positions.sort(key=self.length, reverse=True)
            for a in range(self.accum):
                yield positions[a * self.micro:(a + 1) * self.micro]


def length_grouping(source: BatchSource, data: dict, model_config) -> dict:
    """:class:`StepSampler` arguments for the recipe's ``data.group_by_length`` and
    ``data.sort_micro_batches`` (``{}`` when both are off)."""
    window, sort_micro = int(data["group_by_length"]), bool(data["sort_micro_batches"])
    if not window and not sort_micro:
        return {}
    dataset = source.dataset
    if not hasattr(dataset, "length_hints"):
        raise ConfigError("data.group_by_length and data.sort_micro_batches need file data sources "
                          "(llava, captions, wds, text, ...); turn them off with a 'random' source")
    tokens_per_image = int(model_config.tokens_per_image)
    return {"group_window": window, "sort_micro_batches": sort_micro,
            "lengths": lambda epoch: dataset.length_hints(epoch, tokens_per_image)}


class _StreamView(torch.utils.data.Dataset):
    """Stream position -> (position, record); errors become one-line markers."""

    def __init__(self, dataset: Sequence, sampler: StepSampler):
        self.dataset, self.sampler = dataset, sampler

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, position: int):
        index = self.sampler.index(position)
        epoch = position // max(1, len(self.dataset))
        if hasattr(self.dataset, "set_epoch") and getattr(self.dataset, "epoch", epoch) != epoch:
            self.dataset.set_epoch(epoch)  # weighted mixtures draw their subsets per epoch
        try:
            return position, self.dataset[index]
        except OwlError as exc:
            return position, {"__error__": str(exc)}
        except Exception as exc:  # a reader bug or unexpected file: report which sample
            first = first_line(exc, empty="")
            return position, {"__error__": f"reading sample {index} failed: {type(exc).__name__}: {first}"}


def _reseed(collate, seed: int) -> None:
    """Seed a collator's own augmentation RNG for this batch (``OwlCollator.reseed``; collators
    without one, such as the random-tensor source's, have nothing to seed)."""
    if hasattr(collate, "reseed"):
        collate.reseed(seed)


class _SeededCollate:
    """Collate with python/numpy/torch RNGs seeded from (seed, rank, first position).

    The caller's RNG state is restored afterwards, so batches drawn in the main process leave the
    training RNG (dropout) untouched.
    """

    def __init__(self, collate: Callable[[list], dict], seed: int, rank: int):
        self.collate, self.seed, self.rank = collate, seed, rank

    def __call__(self, items: list) -> dict:
        positions = [p for p, _ in items]
        records = [r for _, r in items]
        for r in records:
            if isinstance(r, dict) and "__error__" in r:
                return {"__error__": r["__error__"]}
        py_state, np_state = random.getstate(), np.random.get_state()
        seed = (self.seed * 1_000_003 + positions[0] * 31 + self.rank) % (2**31)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed)
            _reseed(self.collate, seed)
            try:
                batch = self.collate(records)
            except OwlError as exc:
                batch = {"__error__": str(exc)}
            except Exception as exc:
                first = first_line(exc, empty="")
                batch = {"__error__": f"collating samples at stream positions {positions[0]}..{positions[-1]} "
                                      f"failed: {type(exc).__name__}: {first}"}
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)
        batch["positions"] = positions
        return batch


def make_loader(source: BatchSource, sampler: StepSampler, num_workers: int, seed: int, rank: int):
    """A DataLoader yielding this rank's micro-batches in step order."""
    return torch.utils.data.DataLoader(
        _StreamView(source.dataset, sampler),
        batch_sampler=sampler,
        collate_fn=_SeededCollate(source.collate, seed, rank),
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(seed),  # never draws from the global RNG
        persistent_workers=False,
    )
