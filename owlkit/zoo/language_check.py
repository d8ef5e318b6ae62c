"""Does a model still speak its LLM's language? General questions and a held-out perplexity.

A model built on a pre-trained LLM (owl-small) must keep what the LLM knew. Two measures,
both on text only (no image), both comparable between the model and its base LLM:

* **general questions**: the short-answer general-knowledge questions of
  ``zoo/data/general_questions.json`` (capitals, planets, animals, numbers...), asked one per
  conversation with the model's own chat template, greedy. A reply counts when it contains
  one of the accepted answers as whole words, case and punctuation ignored, so "The capital
  of France is Paris." answers "Paris". The questions were written for this check and are in
  no build's training data.
* **perplexity** of ``zoo/data/heldout_story.txt``, an English story written for this check
  (no build trains on it): ``exp`` of the mean negative log-likelihood of its tokens,
  teacher-forced in one sequence (BOS first when the tokenizer adds one).
"""

from __future__ import annotations

import json
import math
import string
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"
_PUNCT = str.maketrans({c: " " for c in string.punctuation})


def general_questions() -> list[dict]:
    """``[{"question": ..., "answers": [...]}]``."""
    return json.loads((DATA / "general_questions.json").read_text())


def heldout_text() -> str:
    return (DATA / "heldout_story.txt").read_text()


def _words(text: str) -> str:
    return " " + " ".join(str(text).lower().translate(_PUNCT).split()) + " "


def answered(reply: str, answers: list[str]) -> bool:
    """Whether ``reply`` contains one of ``answers`` as whole words (case, punctuation ignored)."""
    return any(_words(a) in _words(reply) for a in answers)


def ask_general(owl, *, batch_size: int = 16, max_new_tokens: int = 48) -> dict:
    """The general questions, each alone and without an image: how many were answered."""
    questions = general_questions()
    replies = owl.generate_batch([[{"role": "user", "content": q["question"]}] for q in questions],
                                 batch_size=batch_size, max_new_tokens=max_new_tokens)
    rows = [{"question": q["question"], "reply": r, "correct": answered(r, q["answers"])}
            for q, r in zip(questions, replies)]
    return {"correct": sum(r["correct"] for r in rows), "total": len(rows), "rows": rows}


def perplexity(owl, text: str | None = None) -> float:
    """Perplexity of ``text`` (default: the held-out story) under ``owl``'s language model."""
    import torch

    tokenizer = owl.processor.tokenizer
    ids = tokenizer.encode(heldout_text() if text is None else text)
    if tokenizer.add_bos_token and tokenizer.bos_token_id is not None:
        ids = [tokenizer.bos_token_id] + ids
    model = owl.model
    x = torch.tensor([ids], device=model.device)
    with torch.no_grad():
        logits = model(input_ids=x).logits[0, :-1].float()
    nll = torch.nn.functional.cross_entropy(logits, x[0, 1:])
    return math.exp(nll.item())


def language_summary(owl) -> dict:
    """Both measures in one record: ``general_correct``, ``general_total``, ``perplexity``."""
    general = ask_general(owl)
    return {"general_correct": general["correct"], "general_total": general["total"], "perplexity": perplexity(owl)}
