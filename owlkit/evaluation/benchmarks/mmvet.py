"""MM-Vet: ``mm-vet.json`` with ``images/``, the question asked as it is (LLaVA-1.5's MM-Vet
protocol; the mPLUG-Owl2 repository has no script for it), and the ``{id: answer}`` file
MM-Vet's grader takes. The grader is a GPT-4 judge that cannot run offline: ``owl eval mmvet``
writes the submission and reports no score."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from owlkit.errors import InputError
from owlkit.evaluation.benchmarks import Benchmark, RunFolder
from owlkit.evaluation.prompts import TaskPrompt
from owlkit.evaluation.readers import ImageFinder, expand, file_or_find, first_dir, load_json, need
from owlkit.evaluation.samples import EvalSample

__all__ = ["read_mmvet", "MMVET_PROMPT", "NO_METRIC", "BENCHMARK"]

MMVET_PROMPT = TaskPrompt("USER: <|image|>{question} ASSISTANT: ", 1024, official=False,
                          source="not in the official scripts: LLaVA-1.5 MM-Vet (the question as it is, "
                                 "up to 1024 new tokens)")

NO_METRIC = ("MM-Vet is graded by a GPT-4 judge (MM-Vet's mm-vet_evaluator), which cannot run offline: "
             "give it mmvet_submission.json")

_LAYOUT = ('mm-vet.json ({"v1_0": {imagename, question, answer, capability: [...]}, ...}) with the '
           "images in images/")


def read_mmvet(path: str | Path, *, images: str | Path | None = None, check_images: bool = True) -> list[EvalSample]:
    """MM-Vet: one sample per entry of ``mm-vet.json``, id = its key (``v1_0``...);
    ``answers`` = [the reference answer] (the grader's, unused here); ``metadata["capability"]``
    = the capabilities it tests (rec, ocr, know, gen, spat, math)."""
    path = expand(path)
    jfile = file_or_find(path, lambda p: p.name == "mm-vet.json", "mm-vet.json", _LAYOUT)
    data = load_json(jfile)
    if not isinstance(data, dict):
        raise InputError(f"{jfile}: not an MM-Vet file; expected {_LAYOUT}")
    image_dir = expand(images) if images else first_dir([jfile.parent / "images", jfile.parent])
    imgs = ImageFinder(check_images)
    samples = []
    for key, rec in data.items():
        where = f"{jfile}: entry {key!r}"
        need(rec, ("imagename", "question"), where, "entry")
        image = imgs.get([image_dir / str(rec["imagename"])], where)
        answers = [str(rec["answer"])] if rec.get("answer") is not None else []
        capability = rec.get("capability", [])
        samples.append(EvalSample(id=str(key), images=[image], question=str(rec["question"]), answers=answers,
                                  metadata={"capability": list(capability) if isinstance(capability, list)
                                            else [str(capability)]}))
    return samples


def _submission(samples: Sequence[EvalSample], preds: dict[Any, str], run: RunFolder) -> list[Path]:
    out = run.file("_submission.json")
    out.write_text(json.dumps({str(s.id): preds[s.id] for s in samples}, ensure_ascii=False, indent=1),
                   encoding="utf-8")
    return [out]


BENCHMARK = Benchmark("mmvet", read_mmvet, MMVET_PROMPT, no_metric=NO_METRIC, options={"images": "images"},
                      submission=_submission, order=105,
                      layout="the MM-Vet folder (mm-vet.json, images/)")
