"""SEED-Bench (image part): the ``data_type == "image"`` questions of ``SEED-Bench.json`` with
``SEED-Bench-image/``, the README letter prompt, and option-letter accuracy."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from owlkit.errors import InputError
from owlkit.evaluation.benchmarks import Benchmark
from owlkit.evaluation.choice import choice_accuracy, exact_letter
from owlkit.evaluation.prompts import CHOICE_PROMPT, README_SUFFIX, TaskPrompt
from owlkit.evaluation.readers import ImageFinder, expand, file_or_find, first_dir, load_json, need
from owlkit.evaluation.references import SEED_EVAL
from owlkit.evaluation.samples import EvalSample

__all__ = ["read_seedbench", "BENCHMARK"]


def _str_id(value: Any) -> Any:
    """Keep ints as ints, everything else as str."""
    return value if isinstance(value, int) else str(value)


_SEED_LAYOUT = ("SEED-Bench.json ({\"questions\": [{question_id, question, choice_a..choice_d, answer, "
                "data_id, data_type}]}) with images SEED-Bench-image/<data_id>")


def read_seedbench(path: str | Path, *, images: str | Path | None = None,
                   check_images: bool = True) -> list[EvalSample]:
    """SEED-Bench: the ``data_type == "image"`` questions; ``answers`` = [gold letter]."""
    path = expand(path)
    jfile = file_or_find(path, lambda p: p.suffix == ".json" and "seed" in p.name.lower(), "SEED-Bench JSON",
                         _SEED_LAYOUT)
    data = load_json(jfile)
    if not isinstance(data, dict) or not isinstance(data.get("questions"), list):
        raise InputError(f"{jfile}: not a SEED-Bench file; expected {_SEED_LAYOUT}")
    type_names = {}
    if isinstance(data.get("question_type"), dict):
        type_names = {v: k for k, v in data["question_type"].items()}
    folder = jfile.parent
    image_dir = expand(images) if images else first_dir(
        [folder / "SEED-Bench-image", folder / "images", folder])
    imgs = ImageFinder(check_images)
    samples = []
    keys = ("question_id", "question", "choice_a", "choice_b", "choice_c", "choice_d", "data_id")
    for i, rec in enumerate(data["questions"]):
        where = f"{jfile}: questions[{i}]"
        need(rec, keys, where, "question")
        if rec.get("data_type", "image") != "image":
            continue
        image = imgs.get([image_dir / str(rec["data_id"])], where)
        answers = []
        if rec.get("answer") is not None:
            if str(rec["answer"]) not in "ABCD" or not str(rec["answer"]):
                raise InputError(f"{where}: malformed question: 'answer' must be one of A, B, C, D")
            answers = [str(rec["answer"])]
        meta: dict[str, Any] = {"data_id": rec["data_id"]}
        if "question_type_id" in rec:
            meta["question_type_id"] = rec["question_type_id"]
            if rec["question_type_id"] in type_names:
                meta["category"] = type_names[rec["question_type_id"]]
        samples.append(EvalSample(id=_str_id(rec["question_id"]), images=[image], question=str(rec["question"]),
                                  choices=[str(rec[k]) for k in keys[2:6]], answers=answers, metadata=meta))
    return samples


BENCHMARK = Benchmark("seedbench", read_seedbench, TaskPrompt(CHOICE_PROMPT, 10, official=False, source=README_SUFFIX),
                      metric=partial(choice_accuracy, parse=exact_letter), lenient=choice_accuracy,
                      reference=SEED_EVAL, options={"images": "images"}, order=70,
                      layout="the SEED-Bench folder (SEED-Bench.json, SEED-Bench-image/)")
