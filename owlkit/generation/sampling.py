"""The next token of every running row, each row with its own settings.

``logits [rows, vocab]`` (the last position of each row) -> ``tokens [rows]``, in the order
transformers' ``generate`` applies its processors, so that a row gets the ids ``generate``
would give it:

1. repetition penalty (rows with ``repetition_penalty != 1``): the logits of every id in the
   row's prompt text (placeholders excluded) and in its new tokens are divided by the penalty
   (multiplied when negative), as ``RepetitionPenaltyLogitsProcessor`` does with the prompt in
   front;
2. ``min_new_tokens``: EOS is excluded while a row has fewer new tokens;
3. greedy rows take their arg-max; sampling rows (``temperature > 0``) draw from their own
   temperature / top-k / top-p distribution, with their own ``torch.Generator`` when they
   have a ``seed`` (so a seeded answer does not depend on its neighbours).
"""

from __future__ import annotations

from typing import Sequence

import torch


def apply_repetition_penalty(rows: Sequence, scores: torch.Tensor) -> None:
    """Penalise, in place, each penalised row's prompt text ids and new ids (see module doc)."""
    for i, row in enumerate(rows):
        if row.repetition_penalty == 1.0:
            continue
        ids = torch.tensor(row.penalty_prompt + row.token_ids, dtype=torch.long, device=scores.device)
        if not len(ids):
            continue
        seen = scores[i].gather(0, ids)
        scores[i].scatter_(0, ids, torch.where(seen < 0, seen * row.repetition_penalty, seen / row.repetition_penalty))


def ban_early_eos(rows: Sequence, scores: torch.Tensor, eos_id: int | None) -> None:
    """EOS excluded, in place, for rows that have fewer than their ``min_new_tokens``."""
    if eos_id is None:
        return
    for i, row in enumerate(rows):
        if row.completion_tokens < row.min_new_tokens:
            scores[i, eos_id] = float("-inf")


def row_distributions(rows: Sequence, scores: torch.Tensor) -> torch.Tensor:
    """Each row's temperature, top-k and top-p applied to its logits (``-inf`` = excluded)."""
    scores = scores.float()
    vocab = scores.shape[-1]
    temperature = torch.tensor([max(r.temperature, 1e-4) for r in rows], dtype=torch.float32)
    top_p = torch.tensor([r.top_p for r in rows], dtype=torch.float32)
    top_k = torch.tensor([r.top_k if r.top_k > 0 else vocab for r in rows], dtype=torch.long).clamp(1, vocab)
    out = scores / temperature[:, None]
    if bool((top_k < vocab).any()):
        kth = out.sort(dim=-1, descending=True).values.gather(1, (top_k - 1)[:, None])
        out = out.masked_fill(out < kth, float("-inf"))
    if bool((top_p < 1).any()):
        sorted_logits, order = out.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        before = probs.cumsum(-1) - probs  # the probability of the better tokens
        drop = torch.zeros_like(before, dtype=torch.bool).scatter(1, order, before > top_p[:, None])
        out = out.masked_fill(drop, float("-inf"))  # never drops a row's best token
    return out


def choose_tokens(rows: Sequence, logits: torch.Tensor, eos_id: int | None = None) -> torch.Tensor:
    """The next token of every row (see module doc); ``rows[i]`` holds row ``i``'s settings."""
    if any(r.repetition_penalty != 1.0 or r.completion_tokens < r.min_new_tokens for r in rows):
        logits = logits.float().clone()  # generate scores in float32 too
        apply_repetition_penalty(rows, logits)
        ban_early_eos(rows, logits, eos_id)
    chosen = logits.argmax(-1)
    sampling = [i for i, r in enumerate(rows) if r.sampling]
    if sampling:
        index = torch.tensor(sampling, dtype=torch.long, device=logits.device)
        probs = row_distributions([rows[i] for i in sampling], logits.index_select(0, index)).softmax(-1)
        for k, i in enumerate(sampling):
            chosen[i] = torch.multinomial(probs[k], 1, generator=rows[i].generator())[0]
    return chosen
