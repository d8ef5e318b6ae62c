"""Records -> a training batch with the labels right.

:class:`OwlCollator` turns a list of :class:`~owlkit.data.records.Record` (or dicts with
``messages`` and optionally ``id``/``source``/``line``) into::

    {"input_ids": [B, L] long,  one placeholder id per image,
     "attention_mask": [B, L] long, 1 on real tokens, 0 on padding,
     "labels": [B, L] long, the reply tokens (+ their EOS), -100 elsewhere,
     "pixel_values": [N, 3, S, S] float32 (all images of the batch, in order) or None,
     "num_images": [B] long, "num_skipped": int, "num_unsupervised": int}

Rules:

* Tokenisation and masking are :func:`owlkit.processing.labels.build_training_example` with the
  generation's template (``mplug_owl`` / ``mplug_owl2`` unless ``template`` says otherwise): only
  assistant turns are supervised; BOS, system text, user turns, role names, separators and image
  placeholders are ``-100``.
* Right padding to the longest sample (or a multiple of ``pad_to_multiple_of``): ids = the
  tokenizer's pad id (its ``<unk>`` when it has no pad token, as both official trainings do),
  labels ``-100``, attention mask 0. The mask comes from the lengths, not from ``ids != pad``
  (the official v2 collator also masks real ``<unk>`` tokens).
* ``max_length`` counts what the decoder sees: every image is ``tokens_per_image`` positions
  (pass ``config.tokens_per_image``). A sample is cut at ``max_length``; an image that does not
  fit whole is dropped together with everything after it, so no image is ever cut through. A
  sample left with no supervised token (its replies were cut away) is dropped and counted in
  ``num_unsupervised`` (a batch of only such samples would give a NaN loss).
* Images: any number per sample, none included (text-only samples get no dummy image; the model
  needs none). ``augment=True`` applies the papers' pre-training augmentation (random resized
  crop, scale 0.5-1, bicubic, then a horizontal flip with p = 0.5; :mod:`owlkit.data.augment`)
  before normalisation, drawn from a ``random.Random(seed)`` (re-seeded per DataLoader worker
  with ``(seed, worker id)``).
* A missing or unreadable image: ``on_bad_image="skip"`` drops the sample and counts it in
  ``num_skipped``; ``"stop"`` raises :class:`~owlkit.errors.InputError` naming the image and the
  record's ``source:line``. An image inside a damaged shard names the shard file.
* A batch whose samples were all dropped has ``input_ids`` of shape ``[0, 0]``; skip the step.
"""

from __future__ import annotations

import logging
import os
import random
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import get_worker_info

from owlkit.config import IGNORE_INDEX
from owlkit.data.augment import augment_image
from owlkit.data.records import Record, TarMember
from owlkit.errors import InputError, first_line
from owlkit.processing.images import OwlImageProcessor, generation_number, load_image
from owlkit.processing.labels import build_training_example
from owlkit.processing.tokenizer import OwlTokenizer, placeholder_id

logger = logging.getLogger("owlkit.data")

ON_BAD_IMAGE = ("skip", "stop")


class OwlCollator:
    """A ``collate_fn`` for ``torch.utils.data.DataLoader`` over records (see module doc).

    Args:
        tokenizer: an :class:`~owlkit.processing.tokenizer.OwlTokenizer`.
        image_processor: an :class:`~owlkit.processing.images.OwlImageProcessor` (``S``, mode,
            normalisation).
        owl_version: 1 (mPLUG-Owl) or 2 (mPLUG-Owl2): template and label rules.
        max_length: the most decoder positions per sample (images count ``tokens_per_image``);
            ``None``: no limit.
        template: a template name (``mplug_owl``, ``mplug_owl2``, ``vicuna_v1``); default per
            generation.
        augment: apply the pre-training augmentation.
        on_bad_image: ``"skip"`` or ``"stop"``.
        image_token_id: the placeholder id; default the tokenizer's ``<|image|>`` id, else -200.
        tokens_per_image: decoder positions per image (``config.tokens_per_image``; 65 for the
            released models).
        image_separator: text between a turn's images and its text (v2 templates; the official
            v2 training data has ``"\\n"``).
        seed: seed of the augmentation stream.
        pad_token_id: override the padding id.
        pad_to_multiple_of: round the padded length up to a multiple of this.
    """

    def __init__(
        self,
        tokenizer: OwlTokenizer,
        image_processor: OwlImageProcessor,
        owl_version: int | str,
        max_length: int | None,
        template: str | None = None,
        augment: bool = False,
        on_bad_image: str = "skip",
        image_token_id: int | None = None,
        *,
        tokens_per_image: int = 65,
        image_separator: str = "",
        seed: int = 0,
        pad_token_id: int | None = None,
        pad_to_multiple_of: int | None = None,
    ) -> None:
        if on_bad_image not in ON_BAD_IMAGE:
            raise InputError(f"on_bad_image must be one of {', '.join(ON_BAD_IMAGE)}, got {on_bad_image!r}")
        if max_length is not None and int(max_length) <= 0:
            raise InputError(f"max_length must be positive, got {max_length}")
        if int(tokens_per_image) <= 0:
            raise InputError(f"tokens_per_image must be positive, got {tokens_per_image}")
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.owl_version = generation_number(owl_version)
        self.max_length = None if max_length is None else int(max_length)
        self.template = template
        self.augment = bool(augment)
        self.on_bad_image = on_bad_image
        self.image_token_id = placeholder_id(tokenizer) if image_token_id is None else int(image_token_id)
        self.tokens_per_image = int(tokens_per_image)
        self.image_separator = image_separator
        self.seed = int(seed)
        if pad_token_id is None:
            for candidate in (tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.eos_token_id, 0):
                if candidate is not None:
                    pad_token_id = candidate
                    break
        self.pad_token_id = int(pad_token_id)
        self.pad_to_multiple_of = pad_to_multiple_of
        self.rng = random.Random(self.seed)
        self._worker: int | None = None
        self.total_skipped = 0

    def __repr__(self) -> str:
        return (
            f"OwlCollator(owl_version={self.owl_version}, max_length={self.max_length}, template={self.template!r}, "
            f"augment={self.augment}, on_bad_image={self.on_bad_image!r}, tokens_per_image={self.tokens_per_image})"
        )

    # -- one sample ---------------------------------------------------------------------------

    def reseed(self, seed: int | str) -> None:
        """Seed the augmentation RNG for the next batch (the trainer does this per batch, so that
        augmentation is exact whatever the number of workers and across resume)."""
        self._sync_worker_rng()
        self.rng.seed(seed)

    def _sync_worker_rng(self) -> None:
        info = get_worker_info()
        if info is not None and info.id != self._worker:
            self._worker = info.id
            self.rng = random.Random(f"{self.seed}:{info.id}")

    def _pixels(self, image: Any) -> np.ndarray:
        proc = self.image_processor
        source = image.read_bytes() if isinstance(image, TarMember) else image
        if not self.augment:
            return proc.preprocess_one(source)
        rgb = load_image(source, max_pixels=proc.max_pixels, exif=proc.exif)
        return proc.preprocess_one(augment_image(rgb, proc.image_size, self.rng))

    def encode(self, record: Record | dict) -> tuple[list[int], list[int], list]:
        """``(input_ids, labels, images)`` of one record, truncated to ``max_length``."""
        messages = record.messages if isinstance(record, Record) else record["messages"]
        try:
            example = build_training_example(
                messages,
                self.owl_version,
                self.tokenizer,
                template=self.template,
                image_token_id=self.image_token_id,
                max_length=self.max_length,
                tokens_per_image=self.tokens_per_image,
                image_separator=self.image_separator,
            )
        except InputError as exc:
            raise InputError(f"{_where(record)}: {exc}") from None
        return example.input_ids, example.labels, example.images

    # -- the batch ----------------------------------------------------------------------------

    def __call__(self, records: Sequence[Record | dict]) -> dict[str, Any]:
        self._sync_worker_rng()
        rows: list[tuple[list[int], list[int]]] = []
        pixels: list[np.ndarray] = []
        num_images: list[int] = []
        distill: list[bool] = []
        skipped = unsupervised = 0
        for record in records:
            input_ids, labels, images = self.encode(record)
            if all(x == IGNORE_INDEX for x in labels):
                unsupervised += 1
                continue
            arrays = []
            for image in images:
                try:
                    arrays.append(self._pixels(image))
                except (InputError, OSError, ValueError) as exc:
                    if self.on_bad_image == "stop":
                        raise InputError(f"{_where(record)}: bad image ({_message(exc, image)})") from None
                    logger.warning("%s: skipping the sample, bad image (%s)", _where(record), _message(exc, image))
                    arrays = None
                    break
            if arrays is None:
                skipped += 1
                continue
            rows.append((input_ids, labels))
            pixels.extend(arrays)
            num_images.append(len(arrays))
            distill.append(bool(record.distill if isinstance(record, Record) else record.get("distill", False)))
        self.total_skipped += skipped
        batch = self._pad(rows, pixels, num_images, skipped, unsupervised)
        if any(distill):  # rows whose replies are learned as the base's distributions (LossModule)
            batch["distill"] = torch.tensor(distill, dtype=torch.bool)
        return batch

    def _pad(self, rows, pixels, num_images, skipped: int, unsupervised: int) -> dict[str, Any]:
        length = max((len(ids) for ids, _ in rows), default=0)
        if self.pad_to_multiple_of and length % self.pad_to_multiple_of:
            length += self.pad_to_multiple_of - length % self.pad_to_multiple_of
        batch = len(rows)
        input_ids = torch.full((batch, length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((batch, length), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((batch, length), dtype=torch.long)
        for b, (ids, labs) in enumerate(rows):
            n = len(ids)
            input_ids[b, :n] = torch.tensor(ids, dtype=torch.long)
            labels[b, :n] = torch.tensor(labs, dtype=torch.long)
            attention_mask[b, :n] = 1
        pixel_values = torch.from_numpy(np.stack(pixels)) if pixels else None
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "pixel_values": pixel_values,
            "num_images": torch.tensor(num_images, dtype=torch.long),
            "num_skipped": skipped,
            "num_unsupervised": unsupervised,
        }


def _where(record: Record | dict) -> str:
    if isinstance(record, Record):
        where = record.where or "<record>"
        default_id = f"{os.path.basename(record.source)}:{record.line}"
        return f"{where} (id {record.id})" if record.id and record.id != default_id else where
    source, line = record.get("source"), record.get("line")
    where = f"{source}:{line}" if source and line else str(source or "<record>")
    return f"{where} (id {record['id']})" if record.get("id") is not None else where


def _message(exc: BaseException, image: Any) -> str:
    text = first_line(exc)
    name = str(image)
    if isinstance(image, TarMember):
        return text if image.shard in text else f"{name}: {text}"
    return text if name in text or len(name) > 120 else f"{name}: {text}"
