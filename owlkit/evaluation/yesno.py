"""Yes/no benchmarks: MME and POPE.

MME (``eval_tool/calculation.py`` of the MME release, copied into mPLUG-Owl2's
``evaluate_mme.py``):

* answer label (:func:`mme_label`): the lowercased answer (stripped: the official script
  strips the decoded text) equal to "yes" or "no" is that label; otherwise the first 4
  characters are searched for "yes", then for "no" ("not sure" -> no, "know" -> no: the
  official substring test, kept); otherwise "other", which counts as wrong;
* per subtask: ``acc`` = fraction of questions answered correctly; ``acc+`` = fraction of
  images whose questions (2 per image) are all correct; score = ``100 * (acc + acc+)``;
  precision / recall over the yes/no answers (``other`` left out), as the official
  ``compute_metric``;
* Perception = sum of the scores of existence, count, position, color, posters, celebrity,
  scene, landmark, artwork, OCR (max 2000); Cognition = sum of commonsense_reasoning,
  numerical_calculation, text_translation, code_reasoning (max 800).

Questions are grouped per image by image name within a subtask, like mPLUG-Owl2's script
(the original ``calculation.py`` pairs consecutive lines of ``Your_Results/<task>.txt``; the
two agree on the official files).

POPE (``evaluate.py`` of RUCAIBox/POPE, also LLaVA's ``eval_pope.py``): the answer is cut at
its first ``.``, commas are deleted, it is split on single spaces, and it counts as "no" when
one of the words is exactly ``No``, ``no`` or ``not`` (case-sensitive: "NO" and "Not" count as
"yes"), "yes" otherwise. Labels: "no" -> negative, anything else positive. Reported:
accuracy, precision, recall, F1 and the yes-ratio (fractions in [0, 1], as the official
script prints them), plus TP/FP/TN/FN. Where the official script would divide by zero
(no positive prediction, ...) the value is 0.0.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from owlkit.evaluation.samples import EvalSample, align_predictions

__all__ = ["MME_PERCEPTION", "MME_COGNITION", "MME_TASKS", "mme_label", "mme_scores", "pope_label", "pope_metrics"]

MME_PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene",
                  "landmark", "artwork", "OCR")
MME_COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation",
                 "code_reasoning")
MME_TASKS = MME_PERCEPTION + MME_COGNITION


def mme_label(answer: str) -> str:
    """``"yes"``, ``"no"`` or ``"other"`` for an MME answer.

    >>> [mme_label(a) for a in ("Yes", "No, it is not.", "yes.", "I think so")]
    ['yes', 'no', 'yes', 'other']
    """
    a = str(answer).lower().strip()
    if a in ("yes", "no"):
        return a
    prefix = a[:4]
    if "yes" in prefix:
        return "yes"
    if "no" in prefix:
        return "no"
    return "other"


def _safe_div(a: float, b: float) -> float:
    return a / b if b else 0.0


def mme_scores(samples: Sequence[EvalSample], predictions: Mapping[Any, str] | Sequence[str]
               ) -> dict[str, Any]:
    """MME scores of raw answers. Samples need ``metadata["task"]``, ``metadata["image_name"]``
    and ``answers[0]`` in Yes/No (what :func:`owlkit.evaluation.benchmarks.mme.read_mme` gives).

    Returns ``{"perception", "cognition", "total", "tasks": {task: {"score", "acc",
    "acc_plus", "TP", "FN", "TN", "FP", "precision", "recall", "other_num", "n", "images"}},
    "missing_tasks"}``.
    """
    preds = align_predictions(samples, predictions)
    by_task: dict[str, dict[str, list[tuple[str, str]]]] = defaultdict(lambda: defaultdict(list))
    for s in samples:
        if not s.answers or s.answers[0].strip().lower() not in ("yes", "no"):
            raise ValueError(f"sample {s.id!r}: MME ground truth must be Yes or No")
        task, image = s.metadata.get("task"), s.metadata.get("image_name")
        if task is None or image is None:
            raise ValueError(f"sample {s.id!r}: MME samples need metadata 'task' and 'image_name'")
        by_task[task][image].append((s.answers[0].strip().lower(), mme_label(preds[s.id])))
    tasks: dict[str, dict[str, Any]] = {}
    for task, images in by_task.items():
        gts, labels = [], []
        plus = 0
        for items in images.values():
            if all(g == p for g, p in items):
                plus += 1
            for g, p in items:
                gts.append(g)
                labels.append(p)
        n = len(gts)
        acc = sum(1 for g, p in zip(gts, labels) if g == p) / n
        acc_plus = plus / len(images)
        clean = [(g, p) for g, p in zip(gts, labels) if p != "other"]
        tp = sum(1 for g, p in clean if g == "yes" and p == "yes")
        fn = sum(1 for g, p in clean if g == "yes" and p == "no")
        fp = sum(1 for g, p in clean if g == "no" and p == "yes")
        tn = sum(1 for g, p in clean if g == "no" and p == "no")
        tasks[task] = {
            "score": 100 * acc + 100 * acc_plus, "acc": acc, "acc_plus": acc_plus,
            "TP": tp, "FN": fn, "TN": tn, "FP": fp,
            "precision": _safe_div(tp, tp + fp), "recall": _safe_div(tp, tp + fn),
            "other_num": n - len(clean), "n": n, "images": len(images),
        }
    perception = sum(tasks[t]["score"] for t in MME_PERCEPTION if t in tasks)
    cognition = sum(tasks[t]["score"] for t in MME_COGNITION if t in tasks)
    return {
        "perception": perception,
        "cognition": cognition,
        "total": perception + cognition,
        "tasks": tasks,
        "missing_tasks": [t for t in MME_PERCEPTION + MME_COGNITION if t not in tasks],
    }


def pope_label(answer: str) -> str:
    """``"yes"`` or ``"no"`` following POPE's official convention.

    >>> [pope_label(a) for a in ("No", "There is no dog.", "Yes, there is not. No", "Not really")]
    ['no', 'no', 'no', 'yes']
    """
    text = str(answer)
    if text.find(".") != -1:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


def _pope_block(pairs: list[tuple[int, int]]) -> dict[str, Any]:
    tp = sum(1 for p, g in pairs if p == 1 and g == 1)
    fp = sum(1 for p, g in pairs if p == 1 and g == 0)
    tn = sum(1 for p, g in pairs if p == 0 and g == 0)
    fn = sum(1 for p, g in pairs if p == 0 and g == 1)
    precision = _safe_div(tp, tp + fp)
    recall = _safe_div(tp, tp + fn)
    return {
        "accuracy": _safe_div(tp + tn, tp + tn + fp + fn),
        "precision": precision,
        "recall": recall,
        "f1": _safe_div(2 * precision * recall, precision + recall),
        "yes_ratio": _safe_div(sum(1 for p, _ in pairs if p == 1), len(pairs)),
        "TP": tp, "FP": fp, "TN": tn, "FN": fn, "n": len(pairs),
    }


def pope_metrics(samples: Sequence[EvalSample], predictions: Mapping[Any, str] | Sequence[str]
                 ) -> dict[str, Any]:
    """POPE metrics over all samples, plus ``per_category`` (random / popular / adversarial,
    from ``metadata["category"]``) when the samples carry it."""
    preds = align_predictions(samples, predictions)
    pairs: list[tuple[int, int]] = []
    by_cat: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for s in samples:
        if not s.answers:
            raise ValueError(f"sample {s.id!r} has no label to score against")
        pair = (0 if pope_label(preds[s.id]) == "no" else 1, 0 if s.answers[0] == "no" else 1)
        pairs.append(pair)
        if s.metadata.get("category") is not None:
            by_cat[str(s.metadata["category"])].append(pair)
    out = _pope_block(pairs)
    out["per_category"] = {k: _pope_block(v) for k, v in sorted(by_cat.items())}
    return out
