"""What the training loop reads from: a :class:`BatchSource`, built from the recipe's data.

A :class:`BatchSource` is a map-style dataset (``len`` and ``[i]``) and a
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

Which samples each rank reads at each step is :mod:`owlkit.training.sampling`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from owlkit.config import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from owlkit.data.collator import OwlCollator
from owlkit.data.datasets import build_dataset
from owlkit.errors import ConfigError
from owlkit.processing import OwlImageProcessor, load_tokenizer
from owlkit.processing.processor import folder_template
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
    tokenizer, image_processor = load_processing(folder, model_config)
    dataset = build_dataset(sources, seed=seed, shuffle=bool(data["shuffle"]))
    # The conversation template the model folder names (e.g. its LLM's own chat template), as at inference.
    template = folder_template(folder, getattr(model_config, "conversation_template", None), tokenizer)
    collator = OwlCollator(
        tokenizer, image_processor, model_config.owl_version, int(data["max_length"]), template=template,
        augment=bool(data["augment"]), on_bad_image=data["on_bad_image"], image_token_id=model_config.placeholder_id,
        tokens_per_image=model_config.tokens_per_image, seed=seed,
    )
    return BatchSource(dataset, collator, f"{len(dataset)} samples per epoch from {len(sources)} source(s)")
