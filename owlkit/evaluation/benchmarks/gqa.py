"""GQA: a questions JSON ``{qid: {imageId, question, answer, types}}`` with ``images/``, the
README short-answer prompt, and exact match of the normalised answers
(:func:`~owlkit.evaluation.vqa.gqa_accuracy`)."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from owlkit.errors import InputError
from owlkit.evaluation.benchmarks import Benchmark
from owlkit.evaluation.prompts import README_SUFFIX, SHORT_ANSWER_PROMPT, TaskPrompt
from owlkit.evaluation.readers import ImageFinder, expand, file_or_find, first_dir, load_json, need
from owlkit.evaluation.references import GQA_EVAL
from owlkit.evaluation.samples import EvalSample
from owlkit.evaluation.vqa import gqa_accuracy

__all__ = ["read_gqa", "BENCHMARK"]

_GQA_LAYOUT = ("<split>_questions.json ({qid: {imageId, question, answer}}, e.g. "
               "testdev_balanced_questions.json) with images <imageId>.jpg in images/")


def read_gqa(path: str | Path, *, images: str | Path | None = None,
             check_images: bool = True) -> list[EvalSample]:
    """GQA: a questions JSON dict ``{qid: {imageId, question, answer, types?}}`` plus
    ``images/<imageId>.jpg``. ``path`` is the JSON or a folder holding exactly one."""
    path = expand(path)
    jfile = file_or_find(path, lambda p: p.suffix == ".json" and "question" in p.name.lower(), "GQA questions JSON",
                         _GQA_LAYOUT)
    data = load_json(jfile)
    if not isinstance(data, dict):
        raise InputError(f"{jfile}: not a GQA questions file; expected {_GQA_LAYOUT}")
    folder = jfile.parent
    image_dir = expand(images) if images else first_dir([folder / "images", folder.parent / "images", folder])
    imgs = ImageFinder(check_images)
    samples = []
    for qid, rec in data.items():
        where = f"{jfile}: question {qid!r}"
        need(rec, ("imageId", "question"), where, "question")
        image = imgs.get([image_dir / f"{rec['imageId']}.jpg"], where)
        meta: dict[str, Any] = {"image_id": rec["imageId"]}
        types = rec.get("types") or {}
        if isinstance(types, dict):
            for k in ("structural", "semantic", "detailed"):
                if k in types:
                    meta[k] = types[k]
        answers = [str(rec["answer"])] if rec.get("answer") is not None else []
        samples.append(EvalSample(id=str(qid), images=[image], question=str(rec["question"]),
                                  answers=answers, metadata=meta))
    return samples


BENCHMARK = Benchmark("gqa", read_gqa, TaskPrompt(SHORT_ANSWER_PROMPT, 10, official=False, source=README_SUFFIX),
                      metric=gqa_accuracy, lenient=partial(gqa_accuracy, lenient=True),
                      reference=GQA_EVAL, options={"images": "images"}, order=50,
                      layout="the GQA folder (testdev_balanced_questions.json, images/)")
