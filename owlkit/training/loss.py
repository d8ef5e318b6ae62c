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
from owlkit.errors import ConfigError, InputError
from owlkit.models.splice import Expanded, expand_placeholders


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

    ``distill`` ([B] bool, rows of a data source with ``distill: true``): at those rows'
    supervised positions the target is the base model's next-token distribution (the peft model
    with its adapters disabled, no gradient) instead of the label, and the loss there is the KL
    divergence ``KL(base || model)``, zero where the two agree. Training on a text the base
    wrote itself then keeps the base's uncertainty instead of sharpening it onto its greedy
    choices (owl-small's language check: docs/owl-small.md).
    """

    def __init__(self, model: nn.Module, objective: str = "next_token"):
        super().__init__()
        self.model = model  # OwlForCausalLM or a peft model around it
        self.objective = objective
        if objective == "words" and self.owl.config.abstractor_config.projector != "words":
            raise ConfigError(f"objective 'words' trains a 'words' projector; this model's is "
                              f"{self.owl.config.abstractor_config.projector!r}")

    @property
    def owl(self):
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    def _supervised_logits(self, ex: Expanded, pixel_values) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits at the supervised positions [S, V], selection [B, L'-1]) of an expanded batch."""
        owl = self.owl
        embeds, mask, labels, mm = owl.embed_expanded(ex, pixel_values)
        if mask is not None and _right_padded(mask):
            mask = None
        hidden, _ = owl.language_model(embeds, attention_mask=mask, mm_token_type_ids=mm)
        selected = labels[:, 1:] != IGNORE_INDEX
        return owl.lm_head(hidden[:, :-1][selected]), selected

    def forward(self, input_ids, attention_mask=None, labels=None, pixel_values=None, image_mask=None, distill=None):
        owl = self.owl
        if image_mask is None:
            cfg = owl.config
            ex = expand_placeholders(input_ids, attention_mask, labels, cfg.tokens_per_image, cfg.image_token_id)
        else:
            num_images = int(image_mask.sum()) // owl.config.tokens_per_image
            ex = Expanded(input_ids, image_mask, attention_mask, labels, num_images)
        if self.objective == "words":
            return self._word_loss(ex, pixel_values)
        logits, selected = self._supervised_logits(ex, pixel_values)
        targets = ex.labels[:, 1:][selected]
        if distill is None or not bool(distill.any()):
            return F.cross_entropy(logits.float(), targets, reduction="sum")
        distill = distill.to(selected.device)
        soft = distill[selected.nonzero()[:, 0]]  # [S]: which supervised positions distil
        loss = F.cross_entropy(logits[~soft].float(), targets[~soft], reduction="sum")
        base = self._base_logits(ex, pixel_values, distill)
        log_p = F.log_softmax(logits[soft].float(), dim=-1)
        log_q = F.log_softmax(base.float(), dim=-1)
        return loss + F.kl_div(log_p, log_q, log_target=True, reduction="sum")

    def _word_loss(self, ex: Expanded, pixel_values) -> torch.Tensor:
        """Summed cross-entropy of every word token against its caption token (``objective: words``).

        Each sample is one picture and its caption (the supervised tokens of its reply, e.g. a
        ``captions`` source): query i of the picture's word tokens is scored against the caption's
        i-th token over the projector's words, the positions after the caption against the LLM's
        end-of-sequence token, so all ``num_queries`` positions have a target
        (:func:`word_targets`). The decoder does not run.
        """
        owl = self.owl
        targets, scored = word_targets(ex, owl.config)
        if targets.shape[0] == 0:
            return torch.zeros((), device=ex.input_ids.device)
        pixels = pixel_values[scored.to(pixel_values.device)]
        p = owl.config.vision_config.patch_size
        grid = (pixels.shape[-2] // p, pixels.shape[-1] // p)
        scores = owl.abstractor.scores(owl.vision(pixels), owl.word_rows(), grid)
        return F.cross_entropy(scores.flatten(0, 1).float(), targets.to(scores.device).flatten(), reduction="sum")

    @torch.no_grad()
    def _base_logits(self, ex: Expanded, pixel_values, rows: torch.Tensor) -> torch.Tensor:
        """The base model's logits at the supervised positions of the ``rows`` (bool [B]), in the
        order of :meth:`forward`'s selection: the same rows run once more with the adapters off."""
        if not hasattr(self.model, "disable_adapter"):
            raise ConfigError("a 'distill' data source needs a LoRA run: its target is the model without its adapters")
        per_row = ex.image_mask.sum(-1) // self.owl.config.tokens_per_image
        n_images = int(per_row[rows].sum())
        # the images are in row order: keep those of the chosen rows
        pixel_values = pixel_values[rows.repeat_interleave(per_row).to(pixel_values.device)] if n_images else None
        sub = Expanded(ex.input_ids[rows], ex.image_mask[rows], ex.attention_mask[rows], ex.labels[rows], n_images)
        with self.model.disable_adapter():
            return self._supervised_logits(sub, pixel_values)[0]


def scored_rows(ex: Expanded, config) -> torch.Tensor:
    """[B] bool: the rows the ``words`` objective scores (one picture and a supervised caption;
    the dummy image row of a text-only micro-batch has no caption)."""
    per_row = ex.image_mask.sum(-1) // config.tokens_per_image
    if bool((per_row > 1).any()):
        raise InputError("the 'words' objective learns one picture and its caption per sample; a sample has "
                         f"{int(per_row.max())} images (use a captions source)")
    return (per_row == 1) & (ex.labels != IGNORE_INDEX).any(-1)


def word_targets(ex: Expanded, config) -> tuple[torch.Tensor, torch.Tensor]:
    """([scored rows, num_queries] targets, [images] bool: which images are scored).

    The targets are positions in ``abstractor_config.word_ids`` of each picture's caption (its
    row's supervised tokens, in order, up to the first end-of-sequence token), padded with the end-of-sequence token: what the ``words``
    objective scores each query against (rows: :func:`scored_rows`). A caption longer than the
    queries or a token outside the words is an error that names the fix."""
    a, text = config.abstractor_config, config.text_config
    rows = scored_rows(ex, config)
    queries = a.num_queries
    eos = text.eos_token_id[0] if isinstance(text.eos_token_id, (list, tuple)) else text.eos_token_id
    vocab = a.word_ids if a.word_ids is not None else range(text.vocab_size)
    position = {int(w): i for i, w in enumerate(vocab)}
    if eos not in position:
        raise ConfigError(f"the end-of-sequence token {eos} is not among abstractor_config.word_ids; add it")
    out = torch.full((int(rows.sum()), queries), position[eos], dtype=torch.long)
    for n, labels in enumerate(ex.labels[rows].tolist()):
        caption = [t for t in labels if t != IGNORE_INDEX]
        if eos in caption:  # what a template supervises after the end token (ChatML's newline) is not the caption's
            caption = caption[:caption.index(eos) + 1]
        if len(caption) > queries:
            raise InputError(f"a caption of {len(caption)} tokens does not fit the {queries} word tokens; "
                             "give the projector more queries or shorten the captions")
        missing = [t for t in caption if t not in position]
        if missing:
            raise InputError(f"caption token {missing[0]} is not among the projector's words "
                             "(abstractor_config.word_ids); build the model with the captions' words")
        out[n, :len(caption)] = torch.tensor([position[t] for t in caption], dtype=torch.long)
    with_image = ex.image_mask.any(-1)
    return out, rows[with_image]


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
