"""VizWiz answerability: average precision and F1 of "unanswerable", as the VizWiz challenge
reports them (``evaluate_unanswerability`` of VizWiz's ``vqaEval.py``).

A prediction counts as "answerable" unless its VQA-normalised text
(:func:`~owlkit.evaluation.vqa.normalize_answer`) is exactly ``unanswerable``. The positive
class is *unanswerable*: ``y = 1 - answerable`` (annotation) and ``score = 1 - answerable``
(prediction); average precision is scikit-learn's ``average_precision_score(y, score)`` and
F1 is ``f1_score(y, score > 0.5)``, both ×100 rounded to 2 decimals. With binary scores AP
is ``R1 * P1 + (1 - R1) * P0``: precision and recall of the "unanswerable" predictions, then
precision when everything is called unanswerable.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from owlkit.evaluation.samples import EvalSample, align_predictions
from owlkit.evaluation.vqa import normalize_answer

__all__ = ["average_precision", "f1", "predicted_answerable", "unanswerability"]


def average_precision(y_true: Sequence[int], scores: Sequence[float]) -> float:
    """scikit-learn's ``average_precision_score`` for binary labels: ``sum (R_n - R_{n-1}) P_n``
    over the distinct score thresholds, highest first (0.0 when there is no positive label)."""
    positives = sum(y_true)
    if positives == 0:
        return 0.0
    pairs = sorted(zip(scores, y_true), key=lambda p: -p[0])
    ap, tp, seen, last_recall = 0.0, 0, 0, 0.0
    for i, (score, label) in enumerate(pairs):
        tp += label
        seen += 1
        if i + 1 < len(pairs) and pairs[i + 1][0] == score:
            continue  # one threshold per distinct score
        recall = tp / positives
        ap += (recall - last_recall) * (tp / seen)
        last_recall = recall
    return ap


def f1(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    """F1 of the positive class (0.0 when it is never predicted nor present)."""
    tp = sum(1 for t, p in zip(y_true, y_pred) if t and p)
    predicted, actual = sum(y_pred), sum(y_true)
    return 2 * tp / (predicted + actual) if predicted + actual else 0.0


def predicted_answerable(prediction: str) -> int:
    """1 unless the normalised prediction is ``unanswerable``."""
    return int(normalize_answer(prediction) != "unanswerable")


def unanswerability(samples: Sequence[EvalSample], predictions: Mapping[Any, str] | Sequence[str],
                    ndigits: int = 2) -> dict[str, float]:
    """``{"unanswerable_average_precision", "unanswerable_f1"}`` (×100) over the samples whose
    ``metadata["answerable"]`` is given; empty when none is."""
    preds = align_predictions(samples, predictions)
    rated = [s for s in samples if s.metadata.get("answerable") is not None]
    if not rated:
        return {}
    y = [1 - int(s.metadata["answerable"]) for s in rated]
    score = [1 - predicted_answerable(preds[s.id]) for s in rated]
    return {"unanswerable_average_precision": round(100 * average_precision(y, score), ndigits),
            "unanswerable_f1": round(100 * f1(y, [int(v > 0.5) for v in score]), ndigits)}
