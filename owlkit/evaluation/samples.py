"""The evaluation record: :class:`EvalSample`, one item of any benchmark, and the helpers
that match predictions and dialogues to samples.

Every benchmark reader (:mod:`owlkit.evaluation.benchmarks`) returns a list of samples; the
metrics take the samples and ``{sample.id: prediction}``. Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from owlkit.errors import InputError

__all__ = ["LETTERS", "EvalSample", "align_predictions", "group_dialogues"]

LETTERS = "ABCDEFGHIJ"


@dataclass
class EvalSample:
    """One evaluation item, whatever the benchmark.

    ``answers`` holds the references: the annotators' answers (VQA), the reference captions
    (captioning), the gold option letter (multiple choice), "Yes"/"No" (MME, POPE), or nothing
    (test splits, OwlEval). ``choices`` holds option texts in letter order (A, B, ...).
    """

    id: Any
    images: list[Path]
    question: str = ""
    choices: list[str] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)
    hint: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def image(self) -> Path | None:
        return self.images[0] if self.images else None

    @property
    def answer(self) -> str | None:
        """The first reference answer (the gold letter for multiple choice)."""
        return self.answers[0] if self.answers else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "images": [str(p) for p in self.images], "question": self.question,
            "choices": list(self.choices), "answers": list(self.answers), "hint": self.hint,
            "metadata": dict(self.metadata),
        }


def align_predictions(samples: Sequence[EvalSample],
                      predictions: Mapping[Any, str] | Sequence[str]) -> dict[Any, str]:
    """``{sample.id: prediction}`` from a mapping (keys may be the ids or their ``str``) or
    from a list aligned with ``samples``. A missing prediction raises :class:`InputError`."""
    if isinstance(predictions, Mapping):
        out = {}
        for s in samples:
            if s.id in predictions:
                out[s.id] = predictions[s.id]
            elif str(s.id) in predictions:
                out[s.id] = predictions[str(s.id)]
            else:
                raise InputError(f"no prediction for sample {s.id!r} ({len(predictions)} predictions given)")
        return out
    preds = list(predictions)
    if len(preds) != len(samples):
        raise InputError(f"{len(preds)} predictions for {len(samples)} samples: give one per sample")
    return {s.id: p for s, p in zip(samples, preds)}


def group_dialogues(samples: Sequence[EvalSample]) -> list[list[EvalSample]]:
    """OwlEval samples grouped into dialogues (lists of turns, in order)."""
    groups: dict[Any, list[EvalSample]] = {}
    for s in samples:
        groups.setdefault(s.metadata.get("dialogue", s.id), []).append(s)
    return [sorted(g, key=lambda s: s.metadata.get("turn", 0)) for g in groups.values()]
