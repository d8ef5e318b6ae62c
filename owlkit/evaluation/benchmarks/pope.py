"""POPE: ``coco_pope_<random|popular|adversarial>.json`` rows with the COCO val2014 images,
the README short-answer prompt, and POPE's accuracy / precision / recall / F1
(:func:`~owlkit.evaluation.yesno.pope_metrics`)."""

from __future__ import annotations

import re
from pathlib import Path

from owlkit.errors import InputError
from owlkit.evaluation.benchmarks import Benchmark
from owlkit.evaluation.prompts import README_SUFFIX, SHORT_ANSWER_PROMPT, TaskPrompt
from owlkit.evaluation.readers import ImageFinder, expand, first_dir, iter_records, need
from owlkit.evaluation.references import POPE_EVAL
from owlkit.evaluation.samples import EvalSample
from owlkit.evaluation.yesno import pope_metrics

__all__ = ["read_pope", "BENCHMARK"]

_POPE_LAYOUT = ("coco_pope_<random|popular|adversarial>.json(l) with one {question_id, image, text, "
                "label} per line, and the COCO val2014 images")


def read_pope(path: str | Path, *, images: str | Path | None = None,
              check_images: bool = True) -> list[EvalSample]:
    """POPE: JSONL rows ``{question_id, image, text, label}`` (the official files are named
    ``.json`` but hold one object per line). ``path`` may be a folder of such files; then ids
    are ``"<file stem>:<question_id>"``. ``metadata["category"]`` is random / popular /
    adversarial when the file name says so."""
    path = expand(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in (".json", ".jsonl")
                       and "pope" in p.name.lower())
        if not files:
            raise InputError(f"{path}: no POPE file; expected {_POPE_LAYOUT}")
        prefix = True
    elif path.is_file():
        files, prefix = [path], False
    else:
        raise InputError(f"{path}: not found; expected {_POPE_LAYOUT}")
    imgs = ImageFinder(check_images)
    samples = []
    for f in files:
        image_dir = expand(images) if images else first_dir([f.parent / "val2014", f.parent / "images", f.parent])
        m = re.search(r"(random|popular|adversarial)", f.name)
        for where, rec in iter_records(f):
            need(rec, ("question_id", "image", "text"), where)
            label = rec.get("label")
            answers = []
            if label is not None:
                if str(label).lower() not in ("yes", "no"):
                    raise InputError(f"{where}: malformed row: label {label!r} must be yes or no")
                answers = [str(label).lower()]
            image = imgs.get([image_dir / str(rec["image"])], where)
            meta = {"category": m.group(1)} if m else {}
            sid = f"{f.stem}:{rec['question_id']}" if prefix else rec["question_id"]
            samples.append(EvalSample(id=sid, images=[image], question=str(rec["text"]), answers=answers,
                                      metadata=meta))
    return samples


BENCHMARK = Benchmark("pope", read_pope, TaskPrompt(SHORT_ANSWER_PROMPT, 10, official=False, source=README_SUFFIX),
                      metric=pope_metrics, reference=POPE_EVAL, options={"images": "images"}, order=100,
                      layout="a coco_pope_*.json file or a folder of them, with val2014/")
