"""MMLU (text only, zero-shot): ``test/<subject>_test.csv``, the README letter prompt without
an image, answered by the log-likelihood of each option letter (``kind="loglik"``) and scored
by option-letter accuracy."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from owlkit.errors import InputError
from owlkit.evaluation.benchmarks import Benchmark
from owlkit.evaluation.choice import choice_accuracy
from owlkit.evaluation.prompts import LETTER_ANSWER, README_SUFFIX, TaskPrompt
from owlkit.evaluation.readers import expand
from owlkit.evaluation.references import LOGLIK_LETTER
from owlkit.evaluation.samples import EvalSample

__all__ = ["read_mmlu", "MMLU_PROMPT", "BENCHMARK"]

MMLU_PROMPT = TaskPrompt("USER: {question}\n{options}\n" + LETTER_ANSWER + " ASSISTANT: ", 10,
                         official=False, source=README_SUFFIX + " (zero-shot, text only)")

_MMLU_LAYOUT = "test/<subject>_test.csv files with rows question,A,B,C,D,answer and no header"


def read_mmlu(path: str | Path, *, subjects: Sequence[str] | None = None) -> list[EvalSample]:
    """MMLU test split: ``path`` is the data folder (holding ``test/``) or ``test/`` itself.
    Ids are ``"<subject>/<row>"``; ``answers`` = [gold letter]; no images."""
    path = expand(path)
    folder = path / "test" if (path / "test").is_dir() else path
    if not folder.is_dir():
        raise InputError(f"{path}: not a folder; expected {_MMLU_LAYOUT}")
    files = sorted(folder.glob("*_test.csv"))
    if subjects:
        files = [folder / f"{s}_test.csv" for s in subjects]
    if not files:
        raise InputError(f"{folder}: no <subject>_test.csv; expected {_MMLU_LAYOUT}")
    samples = []
    for f in files:
        if not f.is_file():
            raise InputError(f"{f}: file not found; expected {_MMLU_LAYOUT}")
        subject = f.name[: -len("_test.csv")]
        with open(f, encoding="utf-8", newline="") as fh:
            reader = csv.reader(fh)
            n = 0
            for row in reader:
                if not row:
                    continue
                where = f"{f}:{reader.line_num}"
                if len(row) != 6:
                    raise InputError(f"{where}: malformed row: {len(row)} columns, expected question,A,B,C,D,answer")
                if row[5].strip() not in ("A", "B", "C", "D"):
                    raise InputError(f"{where}: malformed row: answer {row[5]!r} must be A, B, C or D")
                samples.append(EvalSample(id=f"{subject}/{n}", images=[], question=row[0], choices=row[1:5],
                                          answers=[row[5].strip()], metadata={"subject": subject}))
                n += 1
    return samples


BENCHMARK = Benchmark("mmlu", read_mmlu, MMLU_PROMPT, metric=choice_accuracy, reference=LOGLIK_LETTER, kind="loglik",
                      order=140,
                      layout="the MMLU data folder (test/<subject>_test.csv)")
