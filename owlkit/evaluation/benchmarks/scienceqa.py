"""ScienceQA-IMG: the problems of a split that have an image (``problems.json`` with
``<split>/<pid>/image.png``), the README letter prompt with LLaVA-1.5's context line, and
option-letter accuracy."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from owlkit.errors import InputError
from owlkit.evaluation.benchmarks import Benchmark
from owlkit.evaluation.choice import choice_accuracy, llava_scienceqa_choice
from owlkit.evaluation.prompts import LETTER_ANSWER, README_SUFFIX, TaskPrompt
from owlkit.evaluation.readers import ImageFinder, expand, load_json, need
from owlkit.evaluation.references import SCIENCEQA_EVAL
from owlkit.evaluation.samples import LETTERS, EvalSample

__all__ = ["read_scienceqa", "SCIENCEQA_PROMPT", "BENCHMARK"]

SCIENCEQA_PROMPT = TaskPrompt("USER: <|image|>{context}{question}\n{options}\n" + LETTER_ANSWER + " ASSISTANT: ",
                              10, official=False, source=README_SUFFIX + ", LLaVA-1.5 ScienceQA context line")

_SQA_LAYOUT = ("problems.json ({pid: {question, choices, answer (int), hint, image, split}}) with "
               "images <split>/<pid>/image.png (optionally under images/)")


def read_scienceqa(path: str | Path, *, split: str = "test", images: str | Path | None = None,
                   check_images: bool = True) -> list[EvalSample]:
    """ScienceQA-IMG: the problems of ``split`` that have an image. ``answers`` = [gold letter];
    the context is in ``hint`` (``None`` when empty)."""
    path = expand(path)
    pfile = path / "problems.json" if path.is_dir() else path
    if not pfile.is_file():
        raise InputError(f"{path}: no problems.json; expected {_SQA_LAYOUT}")
    data = load_json(pfile)
    if not isinstance(data, dict):
        raise InputError(f"{pfile}: not a ScienceQA problems file; expected {_SQA_LAYOUT}")
    folder = pfile.parent
    if images:
        root = expand(images)
    elif (folder / "images" / split).is_dir():
        root = folder / "images"
    else:
        root = folder
    imgs = ImageFinder(check_images)
    samples = []
    for pid, rec in data.items():
        where = f"{pfile}: problem {pid!r}"
        need(rec, ("question", "choices", "answer", "split"), where, "problem")
        if rec["split"] != split or not rec.get("image"):
            continue
        choices = rec["choices"]
        if not isinstance(choices, list) or not choices or len(choices) > len(LETTERS):
            raise InputError(f"{where}: malformed problem: 'choices' must be a list of 1..{len(LETTERS)} strings")
        try:
            answer = LETTERS[int(rec["answer"])]
            if int(rec["answer"]) >= len(choices) or int(rec["answer"]) < 0:
                raise IndexError
        except (TypeError, ValueError, IndexError):
            raise InputError(f"{where}: malformed problem: 'answer' must index 'choices'") from None
        image = imgs.get([root / rec["split"] / str(pid) / str(rec["image"])], where)
        meta = {k: rec[k] for k in ("subject", "topic", "category", "grade", "skill", "lecture")
                if k in rec}
        samples.append(EvalSample(id=str(pid), images=[image], question=str(rec["question"]),
                                  choices=[str(c) for c in choices], answers=[answer],
                                  hint=(str(rec.get("hint")).strip() or None) if rec.get("hint") else None,
                                  metadata=meta))
    return samples


BENCHMARK = Benchmark("scienceqa", read_scienceqa, SCIENCEQA_PROMPT, metric=partial(choice_accuracy, parse=llava_scienceqa_choice),
                      lenient=choice_accuracy, reference=SCIENCEQA_EVAL,
                      options={"images": "images", "split": "split"}, order=60,
                      layout="the ScienceQA folder (problems.json, images/test/<pid>/image.png)")
