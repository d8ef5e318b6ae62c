"""The module the DDP / FSDP2 wrappers see: one micro-batch in, its summed cross-entropy out.

A micro-batch reaches :class:`LossModule` already in the expanded layout
(:func:`owlkit.models.splice.expand_placeholders`, done once per micro-batch by the training
step, which also counts its tokens there): ``input_ids`` [B, L'] with every image occupying
``tokens_per_image`` slots flagged in ``image_mask`` [B, L'], ``attention_mask`` and ``labels``
[B, L']. Then: token embeddings, image features scattered into the image slots, the decoder,
logits at the supervised positions only, summed cross-entropy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from owlkit.config import IGNORE_INDEX
from owlkit.models.splice import Expanded


def _right_padded(mask: torch.Tensor) -> bool:
    return bool((mask[:, 1:] <= mask[:, :-1]).all())


class LossModule(nn.Module):
    """Forward = summed next-token cross-entropy over the supervised positions of a batch.

    Same numbers as ``OwlForCausalLM(...).loss * n_supervised``, computed leaner: logits only at
    supervised positions (the LM head is the largest matmul of a small decoder), and no attention
    mask when every row is right-padded (causal attention already ignores the padding after a
    row's tokens, and SDPA's causal kernel is faster than an explicit mask).

    With ``image_mask`` the batch is in the expanded layout (the training step's path); without
    it, placeholders are expanded here (any batch a collator returns).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model  # OwlForCausalLM or a peft model around it

    @property
    def owl(self):
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    def forward(self, input_ids, attention_mask=None, labels=None, pixel_values=None, image_mask=None):
        owl = self.owl
        if image_mask is None:
            embeds, mask, labels, mm = owl.embed_multimodal(input_ids, pixel_values, attention_mask, labels)
        else:
            num_images = int(image_mask.sum()) // owl.config.tokens_per_image
            expanded = Expanded(input_ids, image_mask, attention_mask, labels, num_images)
            embeds, mask, labels, mm = owl.embed_expanded(expanded, pixel_values)
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
    One process needs no such row. A batch whose mask or labels do not match ``input_ids`` is
    returned as it is, for the expansion to report.
    """
    ids = batch["input_ids"]
    if batch["attention_mask"].shape != ids.shape or batch["labels"].shape != ids.shape:
        return batch
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
