"""MMMU: the subjects of the ``MMMU/MMMU`` dataset as downloaded (one parquet file per subject
and split), the prompts of mPLUG-Owl2's ``evaluate_mmmu.py``, its scoring (multiple choice by
exact equality with the gold letter, open questions through MMMU's answer parsing:
:mod:`~owlkit.evaluation.open_answers`) with per-subject accuracy and the overall accuracy
weighted by subject size, and the ``{id: answer}`` file MMMU's evaluation takes.

Layout::

    MMMU/                                   (a snapshot of the MMMU/MMMU dataset)
      Accounting/validation-00000-of-00001.parquet   id, question, options ("['$6', '$7']"),
      Agriculture/validation-...parquet              answer, question_type, subfield,
      ...                                            image_1..image_7 ({bytes, path} or null)

``--data`` is that folder, one subject's folder or one file; ``--split`` picks dev,
validation (default) or test. Parquet needs pyarrow; the same rows as JSON lines
(``<Subject>/<split>.jsonl``, ``image_k`` a path relative to the file) need nothing.

A question's images are the ``<image k>`` references of its prompt (question, then options),
in order, one per reference; every reference becomes ``<|image|>``. The official script
replaces k = 1..5 only, so a reference to a 6th or 7th image stayed text while its image
was still given to the model; a question without any image (the script would crash on it) is
asked as text only.
"""

from __future__ import annotations

import ast
import json
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from owlkit.config import IMAGE_PLACEHOLDER
from owlkit.errors import InputError
from owlkit.evaluation.benchmarks import Benchmark, RunFolder
from owlkit.evaluation.choice import extract_choice, format_options
from owlkit.evaluation.open_answers import choice_answer_correct, open_answer_correct, parse_open_response
from owlkit.evaluation.prompts import LETTER_ANSWER, OFFICIAL_SCRIPTS, SHORT_ANSWER, TaskPrompt, prompt_fields
from owlkit.evaluation.readers import ImageFinder, expand, iter_records, need, save_image_bytes
from owlkit.evaluation.references import MMMU_EVAL
from owlkit.evaluation.samples import LETTERS, EvalSample, align_predictions

__all__ = ["MMMUPrompt", "MMMU_PROMPT", "mmmu_prompt", "read_mmmu", "mmmu_scores", "mmmu_submission",
           "SPLITS", "BENCHMARK"]

SPLITS = ("dev", "validation", "test")
MULTIPLE_CHOICE = "multiple-choice"
_IMAGE_REF = re.compile(r"<image (\d+)>")
_COLUMNS = ("id", "question", "options", "answer", "question_type")
_LAYOUT = ("the MMMU folder (<Subject>/<split>-*.parquet of the MMMU/MMMU dataset: id, question, options, "
           "answer, question_type, image_1..image_7), one subject's folder or file, or the same rows as "
           "<Subject>/<split>.jsonl")


@dataclass(frozen=True)
class MMMUPrompt(TaskPrompt):
    """MMMU's two prompts: ``template`` for multiple-choice questions, ``open_template`` for
    open ones (``metadata["question_type"]``); every ``<image k>`` becomes ``<|image|>``."""

    open_template: str = ""

    def build(self, sample: Any) -> str:
        multiple = sample.metadata.get("question_type", MULTIPLE_CHOICE) == MULTIPLE_CHOICE
        text = (self.template if multiple else self.open_template).format(**prompt_fields(sample))
        return _IMAGE_REF.sub(IMAGE_PLACEHOLDER, text)


MMMU_PROMPT = MMMUPrompt("USER: {question}\n{options}\n" + LETTER_ANSWER + " ASSISTANT: ", 20,
                         source=OFFICIAL_SCRIPTS + "evaluate_mmmu.py (<image k> -> <|image|>)",
                         open_template="USER: {question}\n" + SHORT_ANSWER + " ASSISTANT: ")


def mmmu_prompt(question: str, choices: Sequence[str] = ()) -> str:
    """The MMMU prompt of a question: multiple choice when there are options, open otherwise."""
    kind = MULTIPLE_CHOICE if choices else "open"
    return MMMU_PROMPT.build(EvalSample(id=0, images=[], question=question, choices=list(choices),
                                        metadata={"question_type": kind}))


# ---------------------------------------------------------------------------------------------
# reading


def _read_parquet(path: Path) -> list[dict[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError(f"{path}: reading MMMU's parquet files needs pyarrow: pip install pyarrow") from None
    try:
        return pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow's errors have no common base class
        raise InputError(f"{path}: not a readable parquet file ({str(exc).splitlines()[0]})") from None


def _split_files(path: Path, split: str) -> list[Path]:
    """The files of ``split`` under ``path``: the file itself, a subject folder's, or every
    subject folder's."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise InputError(f"{path}: not found; expected {_LAYOUT}")

    def in_folder(folder: Path) -> list[Path]:
        parquet = sorted(folder.glob(f"{split}-*.parquet"))
        return parquet or sorted(p for p in (folder / f"{split}.jsonl", folder / f"{split}.json") if p.is_file())

    files = in_folder(path) or [f for sub in sorted(p for p in path.iterdir() if p.is_dir()) for f in in_folder(sub)]
    if not files:
        raise InputError(f"{path}: no {split} files; expected {_LAYOUT}")
    return files


def _rows(file: Path) -> list[tuple[str, Any]]:
    if file.suffix == ".parquet":
        return [(f"{file}: row {i}", rec) for i, rec in enumerate(_read_parquet(file))]
    return list(iter_records(file))


def _options(value: Any, where: str) -> list[str]:
    """The options column: a string holding a Python list (the dataset), or a list."""
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value) if value.strip() else []
        except (ValueError, SyntaxError):
            raise InputError(f"{where}: malformed row: 'options' is not a list") from None
    if not isinstance(value, list):
        raise InputError(f"{where}: malformed row: 'options' is not a list")
    if len(value) > len(LETTERS):
        raise InputError(f"{where}: malformed row: more than {len(LETTERS)} options")
    return [str(v) for v in value]


def _subject(sample_id: str, file: Path) -> str:
    """``validation_Art_Theory_12`` -> ``Art_Theory`` (else the folder's name, as the dataset's
    subject configurations are named)."""
    m = re.fullmatch(r"(?:dev|validation|test)_(.+)_\d+", sample_id)
    return m.group(1) if m else file.parent.name


def _image(value: Any, where: str, k: str, save_to: Path, stem: str, file: Path, imgs: ImageFinder) -> Path:
    """``image_k`` of a row: bytes written to ``save_to`` (parquet), or a path (JSON lines)."""
    if isinstance(value, Mapping) and value.get("bytes"):
        return save_image_bytes(save_to, stem, bytes(value["bytes"]))
    if isinstance(value, Mapping) and value.get("path"):
        value = value["path"]
    if isinstance(value, str) and value:
        rel = Path(value)
        return imgs.get([rel] if rel.is_absolute() else [file.parent / rel, save_to / rel], where)
    raise InputError(f"{where}: malformed row: the question refers to <image {k}> but image_{k} is empty")


def read_mmmu(path: str | Path, *, split: str = "validation", image_dir: str | Path | None = None,
              check_images: bool = True) -> list[EvalSample]:
    """MMMU questions of ``split``. ``answers`` = [the gold answer as written] (empty on the
    test split, whose answers are hidden); ``choices`` = the options; ``metadata`` holds
    ``subject``, ``question_type`` (multiple-choice / open), ``subfield``. Embedded images are
    written to ``image_dir`` (default ``<file stem>_images/`` beside each parquet file) as
    ``<id>_<k>.<ext>``."""
    if split not in SPLITS:
        raise InputError(f"unknown MMMU split {split!r}; choose one of: {', '.join(SPLITS)}")
    imgs = ImageFinder(check_images)
    samples = []
    for file in _split_files(expand(path), split):
        save_to = expand(image_dir) if image_dir else file.parent / f"{file.stem}_images"
        for where, rec in _rows(file):
            need(rec, _COLUMNS, where)
            sid = str(rec["id"])
            question, choices = str(rec["question"]), _options(rec["options"], where)
            kind = str(rec["question_type"])
            if kind not in (MULTIPLE_CHOICE, "open"):
                raise InputError(f"{where}: malformed row: question_type {kind!r} is not multiple-choice or open")
            text = question + ("\n" + format_options(choices) if kind == MULTIPLE_CHOICE else "")
            images = [_image(rec.get(f"image_{k}"), where, k, save_to, f"{sid}_{k}", file, imgs)
                      for k in _IMAGE_REF.findall(text)]
            answer = rec["answer"]
            answers = [] if answer is None or str(answer).strip() in ("", "?") else [str(answer)]
            meta = {"subject": _subject(sid, file), "question_type": kind}
            meta.update({k: rec[k] for k in ("subfield", "topic_difficulty", "img_type") if rec.get(k) is not None})
            samples.append(EvalSample(id=sid, images=images, question=question, choices=choices, answers=answers,
                                      metadata=meta))
    return samples


# ---------------------------------------------------------------------------------------------
# scoring and submission


def _judge(sample: EvalSample, answer: str, lenient: bool) -> tuple[bool, Any]:
    """(correct, what was compared): the answer itself (multiple choice; with ``lenient`` the
    letter :func:`~owlkit.evaluation.choice.extract_choice` reads in it) or its parsed
    candidates (open)."""
    if sample.metadata.get("question_type") == MULTIPLE_CHOICE:
        given = extract_choice(answer, sample.choices) if lenient else answer
        return given is not None and choice_answer_correct(sample.answers[0], given), given
    parsed = parse_open_response(answer)
    return open_answer_correct(sample.answers[0], parsed), parsed


def mmmu_scores(samples: Sequence[EvalSample], predictions: Mapping[Any, str] | Sequence[str], *,
                lenient: bool = False, ndigits: int = 2) -> dict[str, Any]:
    """``evaluate_mmmu.py``'s accuracy (×100): ``overall`` (every question counts once, i.e.
    the subjects weighted by size), ``per_subject``, and ``per_question_type``; ``lenient``
    reads the option letter in a multiple-choice answer instead of requiring the bare letter."""
    preds = align_predictions(samples, predictions)
    per_question: dict[Any, float] = {}
    extracted: dict[Any, Any] = {}
    groups: dict[str, dict[str, list[float]]] = {"per_subject": defaultdict(list),
                                                  "per_question_type": defaultdict(list)}
    for s in samples:
        if not s.answers:
            raise ValueError(f"sample {s.id!r} has no gold answer to score against")
        correct, extracted[s.id] = _judge(s, preds[s.id], lenient)
        per_question[s.id] = float(correct)
        groups["per_subject"][s.metadata.get("subject", "")].append(per_question[s.id])
        groups["per_question_type"][s.metadata.get("question_type", "")].append(per_question[s.id])

    def accuracy(values: Sequence[float]) -> float:
        return round(100 * sum(values) / len(values), ndigits) if values else 0.0

    return {"overall": accuracy(list(per_question.values())), "n": len(per_question),
            **{name: {k: accuracy(v) for k, v in sorted(g.items())} for name, g in groups.items()},
            "per_question": per_question, "extracted": extracted}


def mmmu_submission(samples: Sequence[EvalSample], predictions: Mapping[Any, str]) -> dict[str, Any]:
    """``{id: answer}`` as MMMU's evaluation reads predictions: a multiple-choice answer as
    given, an open answer as its parsed candidates (what ``evaluate_mmmu.py`` stores)."""
    preds = align_predictions(samples, predictions)
    return {str(s.id): preds[s.id] if s.metadata.get("question_type") == MULTIPLE_CHOICE
            else parse_open_response(preds[s.id]) for s in samples}


def _submission(samples: Sequence[EvalSample], preds: dict[Any, str], run: RunFolder) -> list[Path]:
    out = run.file("_submission.json")
    out.write_text(json.dumps(mmmu_submission(samples, preds), ensure_ascii=False), encoding="utf-8")
    return [out]


BENCHMARK = Benchmark("mmmu", read_mmmu, MMMU_PROMPT, metric=mmmu_scores, lenient=partial(mmmu_scores, lenient=True),
                      reference=MMMU_EVAL, options={"images": "image_dir", "split": "split"},
                      submission=_submission, order=85, layout=_LAYOUT)
