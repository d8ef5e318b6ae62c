"""Datasets of :class:`~owlkit.data.records.Record` and weighted mixtures of them.

``build_dataset(sources, seed)`` is what training calls::

    build_dataset([
        {"type": "captions", "path": "world/captions.jsonl", "weight": 0.5},
        {"type": "wds", "path": "world/shards", "prompt": "Describe the image."},
        {"type": "llava", "path": "llava_v1_5_mix665k.json", "image_root": "data/", "weight": 2},
        {"type": "text", "path": "sharegpt.json"},
    ], seed=0)

Source keys: ``path`` (a file, a list of files; for ``wds`` also a folder, glob or
``{00000..00009}`` range), ``type`` (one of :data:`~owlkit.data.records.SOURCE_TYPES`; guessed
when absent), ``image_root`` (default: each data file's folder), ``weight`` (default 1),
``prompt`` (caption prompt for ``captions``/``wds``), ``on_error`` (``"raise"``, the default,
stops at the first malformed row with its ``file:line``; ``"skip"`` drops malformed rows with a
warning), ``name`` (a label for :meth:`MixtureDataset.summary`), ``tasks`` (keep only the rows
whose ``task`` field is one of these, e.g. to give one task of a mixed file a weight of its own:
the same file once whole and once with ``tasks: [read]`` and another weight), ``distill``
(``true``: the rows' replies are learned as the frozen base model's next-token distributions
instead of as labels, a distillation that keeps what a LoRA run's base knows; needs ``lora``).

Weights are sampling proportions of an epoch: a source of ``N`` records contributes
``round(weight * N)`` samples per epoch: every record ``floor(weight)`` times, plus a random
subset (without repetition) for the fractional part. Weight 2 shows every record twice, 0.5 a
random half, 0 drops the source. The subset and the order of the epoch (one shuffle over all
sources) are drawn from ``seed`` and the epoch number (:meth:`MixtureDataset.set_epoch`), so the
same seed gives the same order on every machine, and a fractional source shows a different
subset in every epoch. Items are :class:`Record` objects; :class:`~owlkit.data.collator.OwlCollator`
turns a list of them into a batch.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any, Sequence

import numpy as np
from torch.utils.data import Dataset

from owlkit.data.records import (
    IMAGE_EXTENSIONS,
    SOURCE_KEYS,
    Problem,
    Record,
    RecordError,
    ShardSample,
    check_type,
    detect_type,
    expand_shards,
    index_shard,
    iter_entries,
    shard_record,
)
from owlkit.errors import ConfigError, InputError

logger = logging.getLogger("owlkit.data")

#: Characters per text token assumed by length hints (BPE on English averages about four). Only
#: the order of the hints matters: they sort samples for ``data.sort_micro_batches`` and
#: ``data.group_by_length``.
CHARS_PER_TOKEN = 4

ON_ERROR = ("raise", "skip")


class RecordDataset(Dataset):
    """Records held in memory (JSON / JSONL sources)."""

    def __init__(self, records: Sequence[Record], name: str = "") -> None:
        self.records = list(records)
        self.name = name
        self._hints: tuple[np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Record:
        return self.records[index]

    def size_hints(self) -> tuple[np.ndarray, np.ndarray]:
        """``(text characters, images)`` of every record, without reading any image."""
        if self._hints is None:
            chars = np.array([_text_chars(r) for r in self.records], dtype=np.int64)
            images = np.array([len(r.images) for r in self.records], dtype=np.int64)
            self._hints = (chars, images)
        return self._hints


class ShardDataset(Dataset):
    """Samples of webdataset shards, indexed by tar header scan; each item reads its caption from
    the shard when asked (images stay :class:`~owlkit.data.records.TarMember` references)."""

    def __init__(self, samples: Sequence[ShardSample], prompt: str | None = None, name: str = "",
                 distill: bool = False) -> None:
        self.samples = list(samples)
        self.prompt = prompt
        self.name = name
        self.distill = distill

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Record:
        sample = self.samples[index]
        try:
            record = shard_record(sample, self.prompt)
        except RecordError as exc:
            raise InputError(f"{sample.shard}:{sample.number}: {exc}") from None
        record.distill = self.distill
        return record

    def size_hints(self) -> tuple[np.ndarray, np.ndarray]:
        """``(text characters, images)`` of every sample from the tar index alone: the caption
        member's size in bytes (no member is read), one image each."""
        extra = len(self.prompt or "")
        chars = [extra + (s.members.get("txt") or s.members.get("json") or (0, 0))[1] for s in self.samples]
        return np.array(chars, dtype=np.int64), np.ones(len(self.samples), dtype=np.int64)


def _text_chars(record: Record) -> int:
    return sum(len(part.get("text", "")) for message in record.messages for part in message["content"]
               if isinstance(part, dict) and part.get("type") == "text")


def _fail(problem: Problem, paths: Any) -> InputError:
    shown = " ".join(str(p) for p in (paths if isinstance(paths, (list, tuple)) else [paths]))
    return InputError(
        f"{problem} (run `owl data check {shown}` to list every problem, or set on_error: skip on this source)"
    )


def _report_skipped(name: str, problems: list[Problem]) -> None:
    if problems:
        shown = "; ".join(str(p) for p in problems[:3])
        more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
        logger.warning("%s: skipped %d malformed row(s): %s%s", name, len(problems), shown, more)


def load_source(source: dict) -> Dataset:
    """One source dict (see module doc) -> :class:`RecordDataset` or :class:`ShardDataset`."""
    if not isinstance(source, dict):
        raise ConfigError(f"a data source must be a mapping with at least 'path', got {type(source).__name__}")
    unknown = sorted(set(source) - set(SOURCE_KEYS))
    if unknown:
        raise ConfigError(f"unknown data source key(s) {', '.join(unknown)}; allowed: {', '.join(SOURCE_KEYS)}")
    if not source.get("path"):
        raise ConfigError(f"data source {source!r} has no 'path'")
    paths = source["path"]
    path_list = [os.fspath(p) for p in paths] if isinstance(paths, (list, tuple)) else [os.fspath(paths)]
    kind = check_type(source.get("type") or detect_type(path_list[0]))
    on_error = source.get("on_error", "raise")
    if on_error not in ON_ERROR:
        raise ConfigError(f"on_error must be one of {', '.join(ON_ERROR)}, got {on_error!r}")
    name = str(source.get("name") or (path_list[0] if len(path_list) == 1 else f"{path_list[0]} (+{len(path_list) - 1})"))
    prompt = source.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise ConfigError(f"data source {name}: 'prompt' must be a string")
    tasks = source.get("tasks")
    if tasks is not None:
        tasks = [tasks] if isinstance(tasks, str) else tasks
        if not isinstance(tasks, (list, tuple)) or not tasks or not all(isinstance(t, str) and t for t in tasks):
            raise ConfigError(f"data source {name}: 'tasks' must be a list of task names, got {source['tasks']!r}")
        if kind == "wds":
            raise ConfigError(f"data source {name}: 'tasks' selects rows by their 'task' field, which webdataset "
                              "shards do not have; drop 'tasks' or use a JSON source")
    distill = source.get("distill", False)
    if not isinstance(distill, bool):
        raise ConfigError(f"data source {name}: 'distill' must be true or false, got {distill!r}")
    problems: list[Problem] = []
    if kind == "wds":
        samples: list[ShardSample] = []
        for shard in expand_shards(path_list):
            found, problem = index_shard(shard)
            for sample in found:
                if not any(ext in sample.members for ext in IMAGE_EXTENSIONS):
                    bad = Problem(shard, sample.number, f"sample {sample.key} has no image", "shard")
                elif "txt" not in sample.members and "json" not in sample.members:
                    bad = Problem(shard, sample.number, f"sample {sample.key} has no caption (.txt or .json)", "shard")
                else:
                    samples.append(sample)
                    continue
                if on_error == "raise":
                    raise _fail(bad, shard)
                problems.append(bad)
            if problem is not None:
                if on_error == "raise":
                    raise InputError(f"{problem} (set on_error: skip on this source to use the readable part)")
                problems.append(problem)
        _report_skipped(name, problems)
        return ShardDataset(samples, prompt, name, distill)
    records: list[Record] = []
    root = source.get("image_root")
    for path in path_list:
        for entry in iter_entries(path, kind, root, prompt):
            if isinstance(entry, Problem):
                if on_error == "raise":
                    raise _fail(entry, path)
                problems.append(entry)
            else:
                records.append(entry)
    _report_skipped(name, problems)
    if tasks is not None:
        kept = [r for r in records if r.task in tasks]
        if not kept:
            present = sorted({r.task for r in records if r.task})
            raise ConfigError(f"data source {name}: no row has a task in {', '.join(tasks)}; "
                              f"its tasks are: {', '.join(present) or 'none (no row has a task field)'}")
        records = kept
    for record in records:
        record.distill = distill
    return RecordDataset(records, name)


class MixtureDataset(Dataset):
    """Several datasets mixed by weight, in a seeded order (see module doc).

    ``set_epoch(e)`` draws epoch ``e``'s subsets and order; the length stays the same.
    """

    def __init__(
        self,
        datasets: Sequence[Dataset],
        weights: Sequence[float] | None = None,
        seed: int = 0,
        *,
        shuffle: bool = True,
        names: Sequence[str] | None = None,
        epoch: int = 0,
    ) -> None:
        self.datasets = list(datasets)
        self.weights = [1.0] * len(self.datasets) if weights is None else [float(w) for w in weights]
        if len(self.weights) != len(self.datasets):
            raise ConfigError(f"{len(self.datasets)} datasets but {len(self.weights)} weights")
        for w in self.weights:
            if not math.isfinite(w) or w < 0:
                raise ConfigError(f"source weights must be finite numbers >= 0, got {w}")
        self.names = list(names) if names is not None else [getattr(d, "name", "") or f"source {i}" for i, d in enumerate(self.datasets)]
        self.seed = int(seed)
        self.shuffle = shuffle
        self.sizes = [len(d) for d in self.datasets]
        self.counts = [int(math.floor(w * n + 0.5)) if n else 0 for w, n in zip(self.weights, self.sizes)]
        if sum(self.counts) == 0:
            raise ConfigError("the data mixture is empty: every source has no records or weight 0")
        self.set_epoch(epoch)

    def _rng(self, *parts: int) -> np.random.Generator:
        return np.random.default_rng([self.seed % (1 << 63), *parts])

    def set_epoch(self, epoch: int) -> None:
        """Draw the subsets and order of ``epoch`` (deterministic in ``seed`` and ``epoch``)."""
        self.epoch = int(epoch)
        self._source, self._index = self._draw(self.epoch)

    def _draw(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        sources, indices = [], []
        for k, (n, count) in enumerate(zip(self.sizes, self.counts)):
            if count == 0:
                continue
            full, rest = divmod(count, n)
            parts = [np.tile(np.arange(n, dtype=np.int64), full)]
            if rest:
                parts.append(np.sort(self._rng(epoch, k, 1).choice(n, size=rest, replace=False)))
            idx = np.concatenate(parts)
            sources.append(np.full(len(idx), k, dtype=np.int64))
            indices.append(idx)
        source, index = np.concatenate(sources), np.concatenate(indices)
        if self.shuffle:
            order = self._rng(epoch, 1_000_003).permutation(len(source))
            source, index = source[order], index[order]
        return source, index

    def length_hints(self, epoch: int, tokens_per_image: int) -> np.ndarray:
        """Approximate token length of every item of ``epoch`` (text characters / CHARS_PER_TOKEN
        + images x ``tokens_per_image``), without reading images; the current epoch is kept."""
        source, index = self._draw(epoch)
        out = np.zeros(len(source), dtype=np.int64)
        for k, dataset in enumerate(self.datasets):
            if not hasattr(dataset, "size_hints"):
                raise ConfigError(f"data source {self.names[k]} cannot estimate sample lengths; "
                                  "set data.group_by_length: 0 and data.sort_micro_batches: false")
            chars, images = dataset.size_hints()
            picked = index[source == k]
            out[source == k] = chars[picked] // CHARS_PER_TOKEN + images[picked] * tokens_per_image
        return out

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> Record:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a mixture of {len(self)} samples")
        return self.datasets[int(self._source[index])][int(self._index[index])]

    def source_of(self, index: int) -> tuple[int, int]:
        """``(source number, index inside that source)`` of mixture item ``index``."""
        return int(self._source[index]), int(self._index[index])

    def summary(self) -> str:
        """One line per source: records, weight, samples per epoch."""
        lines = []
        for name, n, w, c in zip(self.names, self.sizes, self.weights, self.counts):
            lines.append(f"{name}: {n} records x weight {w:g} -> {c} samples per epoch")
        lines.append(f"total: {len(self)} samples per epoch")
        return "\n".join(lines)


def build_dataset(sources: Sequence[dict] | dict, seed: int, *, shuffle: bool = True, epoch: int = 0) -> MixtureDataset:
    """A weighted, seeded mixture of data sources (see module doc for the source keys)."""
    if isinstance(sources, dict):
        sources = [sources]
    if not sources:
        raise ConfigError("no data sources given")
    datasets, weights, names = [], [], []
    for source in sources:
        weight = source.get("weight", 1.0) if isinstance(source, dict) else 1.0
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise ConfigError(f"data source {source.get('name') or source.get('path')}: 'weight' must be a number, got {weight!r}")
        if weight == 0:  # dropped: not even read (`data.sources.1.weight=0` on the command line)
            name = str(source.get("name") or source.get("path") or "source")
            dataset = RecordDataset([], f"{name} (weight 0: not read)")
        else:
            dataset = load_source(source)
        if len(dataset) == 0 and weight:
            raise ConfigError(f"data source {dataset.name} has no usable records")
        datasets.append(dataset)
        weights.append(float(weight))
        names.append(dataset.name)
    return MixtureDataset(datasets, weights, seed, shuffle=shuffle, names=names, epoch=epoch)
