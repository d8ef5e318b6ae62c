"""Everything the training loop knows about data, in one place.

The loop reads batches from a :class:`BatchSource`: a map-style dataset (``len`` and ``[i]``) and a
``collate(records) -> batch`` function. A batch is a dict with ``input_ids`` [B, L] (image
placeholders ``-200``, one per image), ``attention_mask`` [B, L], ``labels`` [B, L] (``-100`` where
not supervised), ``pixel_values`` ([images, 3, H, W], all images of the batch in order, or
``None``) and optionally ``num_skipped`` (images that could not be read and were skipped).

* :func:`build_batch_source` turns the recipe's ``data`` section into a source: ``type: random``
  sources give random tensor records (tests, benchmarks, smoke runs); every other type goes to
  ``owlkit.data.datasets.build_dataset`` and ``owlkit.data.collator.OwlCollator`` (imported
  lazily, only then).
* :func:`load_processing` is the one place where the tokenizer and image processor are read
  (from ``data.tokenizer`` or the model folder).
* :class:`StepSampler` decides which samples each rank reads at each optimiser step (see its
  docstring); :func:`make_loader` wraps it in a DataLoader whose collate step is seeded per batch,
  so augmentation is reproducible across workers, ranks and resumes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from owlkit.config import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from owlkit.errors import ConfigError, OwlError, first_line
from owlkit.training.recipe import check_source_keys

RANDOM = "random"


@dataclass
class BatchSource:
    """A map-style dataset of records and the function that collates a list of them."""

    dataset: Sequence
    collate: Callable[[list], dict]
    description: str = ""

    def __len__(self) -> int:
        return len(self.dataset)


# ---------------------------------------------------------------------------------------------
# Random tensor records (tests, benchmarks, smoke runs)
# ---------------------------------------------------------------------------------------------


class RandomDataset(torch.utils.data.Dataset):
    """Deterministic random samples: ``[BOS] <image>*k prompt answer``, answer supervised.

    Sample ``i`` depends only on ``(seed, i)``. ``text_tokens`` is the text length (varied down to
    half of it per sample unless ``fixed_length``); the last ``answer_fraction`` of the text is
    supervised. ``pixel_values`` of each record are ``[k, 3, S, S]``; ``images_per_sample`` may be a
    list, cycled over the samples (``[1, 0]``: every other sample is text-only).
    """

    def __init__(self, num_samples: int, vocab_size: int, image_size: int, text_tokens: int = 32,
                 images_per_sample: int = 1, seed: int = 0, fixed_length: bool = False,
                 answer_fraction: float = 0.5, bos_id: int = 1):
        if num_samples < 1 or text_tokens < 2:
            raise ConfigError("random data needs num_samples >= 1 and text_tokens >= 2")
        self.num_samples, self.vocab_size, self.image_size = num_samples, vocab_size, image_size
        images = list(images_per_sample) if isinstance(images_per_sample, (list, tuple)) else [images_per_sample]
        if not images or any(int(k) < 0 for k in images):
            raise ConfigError("images_per_sample must be a count >= 0 or a non-empty list of them")
        self.text_tokens, self.images, self.seed = text_tokens, [int(k) for k in images], seed
        self.fixed_length, self.answer_fraction, self.bos_id = fixed_length, answer_fraction, bos_id

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.num_samples:
            raise IndexError(i)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        n = self.text_tokens
        if not self.fixed_length:
            n = int(torch.randint(max(2, n // 2), n + 1, (1,), generator=g))
        text = torch.randint(3, self.vocab_size, (n,), generator=g)
        k = self.images[i % len(self.images)]
        ids = torch.cat([torch.tensor([self.bos_id]), torch.full((k,), IMAGE_TOKEN_INDEX), text])
        labels = torch.full_like(ids, IGNORE_INDEX)
        answer = max(1, int(round(n * self.answer_fraction)))
        labels[-answer:] = ids[-answer:]
        pixels = torch.randn(k, 3, self.image_size, self.image_size, generator=g) if k else None
        return {"input_ids": ids, "labels": labels, "pixel_values": pixels}


def tensor_collate(records: list[dict], pad_id: int = 0, max_length: int | None = None) -> dict:
    """Right-pad tensor records (``input_ids``, ``labels``, ``pixel_values``) into a batch."""
    if max_length is not None:
        records = [{**r, "input_ids": r["input_ids"][:max_length], "labels": r["labels"][:max_length]} for r in records]
    length = max(int(r["input_ids"].shape[0]) for r in records)
    ids = torch.full((len(records), length), pad_id, dtype=torch.long)
    labels = torch.full((len(records), length), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(records), length), dtype=torch.long)
    pixels = []
    for row, r in enumerate(records):
        n = int(r["input_ids"].shape[0])
        ids[row, :n] = r["input_ids"]
        labels[row, :n] = r["labels"]
        mask[row, :n] = 1
        kept = int((r["input_ids"] == IMAGE_TOKEN_INDEX).sum())
        if r.get("pixel_values") is not None and kept:
            pixels.append(r["pixel_values"][:kept])
    return {
        "input_ids": ids, "attention_mask": mask, "labels": labels,
        "pixel_values": torch.cat(pixels) if pixels else None,
        "num_skipped": sum(int(r.get("num_skipped", 0)) for r in records),
    }


def _random_source(spec: dict, model_config, seed: int, max_length: int) -> BatchSource:
    check_source_keys(spec)
    text = model_config.text_config
    dataset = RandomDataset(
        num_samples=int(spec.get("num_samples", 256)),
        vocab_size=text.vocab_size,
        image_size=model_config.vision_config.image_size,
        text_tokens=int(spec.get("text_tokens", 32)),
        images_per_sample=spec.get("images_per_sample", 1),
        seed=int(spec.get("seed", seed)),
        fixed_length=bool(spec.get("fixed_length", False)),
        answer_fraction=float(spec.get("answer_fraction", 0.5)),
        bos_id=text.bos_token_id if text.bos_token_id is not None else 1,
    )
    pad = text.pad_token_id or 0

    def collate(records):
        return tensor_collate(records, pad_id=pad, max_length=max_length)

    return BatchSource(dataset, collate, f"random tensors ({len(dataset)} samples)")


# ---------------------------------------------------------------------------------------------
# Real data (owlkit.data, owlkit.processing): wired here only
# ---------------------------------------------------------------------------------------------


def processing_folder(recipe: dict) -> Path | None:
    """Where the tokenizer / preprocessor files are read from."""
    data, model = recipe["data"], recipe["model"]
    if data.get("tokenizer"):
        return Path(data["tokenizer"])
    if model.get("init"):
        return Path(model["init"])
    if model.get("components"):
        return Path(model["components"]["llama"])
    return None


def load_processing(folder: str | Path, model_config) -> tuple[Any, Any]:
    """(tokenizer, image processor) for training, read from ``folder``."""
    from owlkit.processing import OwlImageProcessor, load_tokenizer

    tokenizer = load_tokenizer(folder)
    image_processor = OwlImageProcessor.from_pretrained(
        folder, generation=model_config.owl_version, image_size=model_config.vision_config.image_size
    )
    return tokenizer, image_processor


def build_batch_source(recipe: dict, model_config) -> BatchSource:
    """The recipe's ``data`` section -> a :class:`BatchSource`."""
    data = recipe["data"]
    seed = int(recipe["train"]["seed"])
    sources = data["sources"]
    kinds = {s["type"] for s in sources}
    if RANDOM in kinds:
        if len(sources) != 1:
            raise ConfigError("a 'random' data source cannot be mixed with other sources; use it alone")
        return _random_source(sources[0], model_config, seed, int(data["max_length"]))
    folder = processing_folder(recipe)
    if folder is None:
        raise ConfigError("model.preset has no tokenizer; set data.tokenizer to a folder holding tokenizer files")
    from owlkit.data.collator import OwlCollator  # noqa: PLC0415 (lazy: written separately)
    from owlkit.data.datasets import build_dataset

    tokenizer, image_processor = load_processing(folder, model_config)
    dataset = build_dataset(sources, seed=seed, shuffle=bool(data["shuffle"]))
    collator = OwlCollator(
        tokenizer, image_processor, model_config.owl_version, int(data["max_length"]),
        augment=bool(data["augment"]), on_bad_image=data["on_bad_image"], image_token_id=model_config.placeholder_id,
        tokens_per_image=model_config.tokens_per_image, seed=seed,
    )
    return BatchSource(dataset, collator, f"{len(dataset)} samples per epoch from {len(sources)} source(s)")


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
        import numpy as np

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
