"""VizWiz VQA: ``Annotations/<split>.json`` and the ``<split>/`` images, a LLaVA-1.5-style
prompt (VizWiz's "Unanswerable" wording), VizWiz's accuracy (annotator answers compared as
written) with the answerability average precision and F1, and the ``[{image, answer}]``
submission of the evaluation server."""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

from owlkit.errors import InputError
from owlkit.evaluation.answerability import unanswerability
from owlkit.evaluation.benchmarks import Benchmark, RunFolder
from owlkit.evaluation.prompts import README_SUFFIX, SHORT_ANSWER, TaskPrompt
from owlkit.evaluation.readers import ImageFinder, answers_list, expand, first_dir, first_file, load_json, need
from owlkit.evaluation.references import VIZWIZ_EVAL
from owlkit.evaluation.samples import EvalSample
from owlkit.evaluation.vqa import vizwiz_submission_answer, vqa_accuracy

__all__ = ["read_vizwiz", "VIZWIZ_PROMPT", "BENCHMARK"]

VIZWIZ_PROMPT = TaskPrompt(
    "USER: <|image|>{question}\nWhen the provided information is insufficient, respond with "
    "'Unanswerable'.\n" + SHORT_ANSWER + " ASSISTANT: ",
    10, official=False, source=README_SUFFIX + ", LLaVA-1.5 VizWiz wording")

_VIZWIZ_LAYOUT = ("Annotations/<split>.json ([{image, question, answers: [{answer, "
                  "answer_confidence}], answerable, answer_type}]) with images in <split>/")


def read_vizwiz(path: str | Path, *, split: str = "val", images: str | Path | None = None,
                check_images: bool = True) -> list[EvalSample]:
    """VizWiz VQA: ``Annotations/<split>.json`` and the ``<split>/`` image folder (``path`` is
    the dataset folder or the JSON file). Sample ids are the image file names (VizWiz has no
    question ids; submissions are ``[{image, answer}]``)."""
    path = expand(path)
    if path.is_dir():
        jfile = first_file([path / "Annotations" / f"{split}.json", path / f"{split}.json"])
        if jfile is None:
            raise InputError(f"{path}: no Annotations/{split}.json; expected {_VIZWIZ_LAYOUT}")
    elif path.is_file():
        jfile = path
    else:
        raise InputError(f"{path}: not found; expected {_VIZWIZ_LAYOUT}")
    data = load_json(jfile)
    if not isinstance(data, list):
        raise InputError(f"{jfile}: not a VizWiz annotations file; expected {_VIZWIZ_LAYOUT}")
    stem = jfile.stem
    image_dir = expand(images) if images else first_dir(
        [jfile.parent.parent / stem, jfile.parent / stem, jfile.parent / "images", jfile.parent])
    imgs = ImageFinder(check_images)
    samples = []
    for i, rec in enumerate(data):
        where = f"{jfile}: entry {i}"
        need(rec, ("image", "question"), where)
        image = imgs.get([image_dir / str(rec["image"])], where)
        meta = {k: rec[k] for k in ("answerable", "answer_type") if k in rec}
        samples.append(EvalSample(id=str(rec["image"]), images=[image], question=str(rec["question"]),
                                  answers=answers_list(rec.get("answers"), where), metadata=meta))
    return samples


def vizwiz_scores(samples: Sequence[EvalSample], predictions: dict[Any, str], lenient: bool = False
                  ) -> dict[str, Any]:
    """VizWiz accuracy (``lenient``: the annotators' answers punctuation-processed as in VQA v2)
    and the answerability scores."""
    scores = vqa_accuracy(samples, predictions, process_gt=lenient)
    scores.pop("perQuestionType")
    scores.update(unanswerability(samples, predictions))
    return scores


def _submission(samples: Sequence[EvalSample], preds: dict[Any, str], run: RunFolder) -> list[Path]:
    out = run.file("_submission.json")
    out.write_text(json.dumps([{"image": str(s.id), "answer": vizwiz_submission_answer(preds[s.id])}
                               for s in samples], ensure_ascii=False), encoding="utf-8")
    return [out]


BENCHMARK = Benchmark("vizwiz", read_vizwiz, VIZWIZ_PROMPT, metric=vizwiz_scores,
                      lenient=partial(vizwiz_scores, lenient=True), reference=VIZWIZ_EVAL,
                      options={"images": "images", "split": "split"}, submission=_submission, order=40,
                      layout="the VizWiz folder (Annotations/val.json, val/)")
