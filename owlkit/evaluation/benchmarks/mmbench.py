"""MMBench (and CCBench): the ``.tsv`` with base64 images (or the converted ``.jsonl``), the
official prompt of mPLUG-Owl2's ``evaluate_mmbench.py``, CircularEval (every question asked
once per rotation of its options, ``--limit`` counting questions;
:func:`~owlkit.evaluation.choice.circular_accuracy`), and the ``.xlsx`` the MMBench server
takes (a ``.tsv`` of the same columns without pandas / openpyxl)."""

from __future__ import annotations

import base64
import binascii
import csv
import re
import sys
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from owlkit.errors import InputError
from owlkit.evaluation.benchmarks import Benchmark, RunFolder
from owlkit.evaluation.choice import (MMBENCH_CIRCULAR_STRIDE, circular_accuracy, circular_samples,
                                      vlmevalkit_choice)
from owlkit.evaluation.prompts import LETTER_ANSWER, OFFICIAL_SCRIPTS, TaskPrompt
from owlkit.evaluation.readers import ImageFinder, expand, iter_records, need, save_image_bytes
from owlkit.evaluation.references import VLMEVALKIT_MATCHING
from owlkit.evaluation.samples import LETTERS, EvalSample, align_predictions

__all__ = ["read_mmbench", "MMBENCH_PROMPT", "write_mmbench_submission", "BENCHMARK"]

MMBENCH_PROMPT = TaskPrompt("USER: <|image|>{hint}\n{question}\n{options}\n" + LETTER_ANSWER + " ASSISTANT: ",
                            10, source=OFFICIAL_SCRIPTS + "evaluate_mmbench.py")

_MMB_LAYOUT = ("an MMBench .tsv (columns index, question, hint, A, B, C, D, answer, category, "
               "l2-category, image (base64)) or the converted .jsonl ({index, image, hint, question, "
               "choices, answer (int)})")

def _nonempty(value: Any) -> bool:
    return value is not None and str(value).strip() != "" and str(value).strip().lower() != "nan"


def read_mmbench(path: str | Path, *, image_dir: str | Path | None = None,
                 check_images: bool = True) -> list[EvalSample]:
    """MMBench / CCBench.

    A ``.tsv`` is read with its base64 images decoded into ``image_dir`` (default: a folder
    ``<tsv stem>_images/`` beside the TSV) as ``<index>.<ext>``; files already there with the
    same size are not rewritten. As in VLMEvalKit, an ``image`` cell of at most 64 characters
    is the index of the row holding the image (the two rows then share one file). Circular
    copies share ``index % 1_000_000``: ``metadata["group"]`` holds it and
    ``metadata["circular_copy"]`` is ``index // 1_000_000``.
    ``answers`` = [gold letter] when the split has answers. A missing hint stays ``None``
    (the prompt writes "N/A").
    """
    path = expand(path)
    if not path.is_file():
        raise InputError(f"{path}: not found; expected {_MMB_LAYOUT}")
    if path.suffix.lower() in (".jsonl", ".json"):
        return _read_mmbench_jsonl(path, check_images)
    if path.suffix.lower() != ".tsv":
        raise InputError(f"{path}: unknown MMBench file type; expected {_MMB_LAYOUT}")
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t")
        try:
            header = next(reader)
        except StopIteration:
            raise InputError(f"{path}: empty file; expected {_MMB_LAYOUT}") from None
        required = ("index", "question", "A", "B")
        missing = [c for c in required if c not in header]
        if missing:
            raise InputError(f"{path}:1: missing column(s) {', '.join(missing)}; expected {_MMB_LAYOUT}")
        col = {name: i for i, name in enumerate(header)}
        rows = []
        for row in reader:
            if not row or all(not c for c in row):
                continue
            if len(row) != len(header):
                raise InputError(f"{path}:{reader.line_num}: malformed row: {len(row)} columns, "
                                 f"header has {len(header)}")
            rows.append((reader.line_num, row))
    out_dir = expand(image_dir) if image_dir else path.parent / f"{path.stem}_images"
    images_by_index: dict[str, str] = {}
    if "image" in col:
        images_by_index = {row[col["index"]]: row[col["image"]] for _, row in rows}
    letters = [c for c in LETTERS if c in col]
    samples = []
    for lineno, row in rows:
        where = f"{path}:{lineno}"
        try:
            index = int(float(row[col["index"]]))
        except ValueError:
            raise InputError(f"{where}: malformed row: index {row[col['index']]!r} is not an integer") from None
        choices = []
        for c in letters:
            if _nonempty(row[col[c]]):
                if len(choices) != LETTERS.index(c):
                    raise InputError(f"{where}: malformed row: option {c} given after an empty option")
                choices.append(row[col[c]])
        if len(choices) < 2:
            raise InputError(f"{where}: malformed row: fewer than 2 options")
        answers = []
        if "answer" in col and _nonempty(row[col["answer"]]):
            ans = row[col["answer"]].strip()
            if ans not in LETTERS[:len(choices)]:
                raise InputError(f"{where}: malformed row: answer {ans!r} is not one of the options")
            answers = [ans]
        images: list[Path] = []
        if "image" in col:
            b64, owner = row[col["image"]], index
            if len(b64) <= 64:  # a reference to the row holding the image: share its file
                ref = images_by_index.get(b64)
                if ref is None or len(ref) <= 64 or not re.fullmatch(r"\d+(\.0*)?", b64.strip()):
                    raise InputError(f"{where}: malformed row: image refers to index {b64!r} which holds no image")
                b64, owner = ref, int(float(b64))
            try:
                raw = base64.b64decode(b64, validate=False)
            except (binascii.Error, ValueError):
                raise InputError(f"{where}: malformed row: the image is not valid base64") from None
            if not raw:
                raise InputError(f"{where}: malformed row: empty image")
            images.append(save_image_bytes(out_dir, str(owner), raw))
        elif "image_path" in col:
            p = expand(row[col["image_path"]])
            p = p if p.is_absolute() else path.parent / p
            if check_images and not p.is_file():
                raise InputError(f"{where}: image not found: {p}")
            images.append(p)
        meta: dict[str, Any] = {"index": index, "group": index % MMBENCH_CIRCULAR_STRIDE,
                                "circular_copy": index // MMBENCH_CIRCULAR_STRIDE}
        for k in ("category", "l2-category", "split", "source", "comment"):
            if k in col and _nonempty(row[col[k]]):
                meta[k] = row[col[k]]
        hint = row[col["hint"]] if "hint" in col and _nonempty(row[col["hint"]]) else None
        samples.append(EvalSample(id=index, images=images, question=row[col["question"]], choices=choices,
                                  answers=answers, hint=hint, metadata=meta))
    return samples


def _read_mmbench_jsonl(path: Path, check_images: bool) -> list[EvalSample]:
    imgs = ImageFinder(check_images)
    samples = []
    for where, rec in iter_records(path):
        need(rec, ("index", "image", "question", "choices"), where)
        choices = rec["choices"]
        if not isinstance(choices, list) or len(choices) < 2:
            raise InputError(f"{where}: malformed row: 'choices' must be a list of at least 2 options")
        rel = Path(str(rec["image"]))
        image = imgs.get([rel] if rel.is_absolute() else [path.parent / rel, Path.cwd() / rel,
                                                           path.parent / rel.name], where)
        answers = []
        if rec.get("answer") is not None:
            a = rec["answer"]
            if isinstance(a, int) and 0 <= a < len(choices):
                answers = [LETTERS[a]]
            elif isinstance(a, str) and a in LETTERS[:len(choices)]:
                answers = [a]
            else:
                raise InputError(f"{where}: malformed row: answer {a!r} does not name an option")
        index = int(rec["index"])
        hint = rec.get("hint")
        hint = None if not _nonempty(hint) or hint == "N/A" else str(hint)
        meta = {"index": index, "group": index % MMBENCH_CIRCULAR_STRIDE,
                "circular_copy": index // MMBENCH_CIRCULAR_STRIDE}
        for k in ("category", "l2-category"):
            if k in rec:
                meta[k] = rec[k]
        samples.append(EvalSample(id=index, images=[image], question=str(rec["question"]),
                                  choices=[str(c) for c in choices], answers=answers, hint=hint, metadata=meta))
    return samples


def circular_questions(samples: list[EvalSample], limit: int | None) -> list[EvalSample]:
    """The first ``limit`` questions (main copies), each expanded into its circular copies."""
    main = [s for s in samples if not s.metadata.get("circular_copy", 0)]
    return circular_samples(main[:limit] if limit else main)


def write_mmbench_submission(samples: Sequence[EvalSample], predictions: Mapping[Any, str] | Sequence[str],
                             path: str | Path) -> Path:
    """The ``.xlsx`` the MMBench server takes: ``index, question, prediction, A, B, C, D``
    (one row per TSV row, raw predictions, as mPLUG-Owl2's ``evaluate_mmbench.py``)."""
    try:
        import pandas as pd
        import openpyxl  # noqa: F401  (pandas' xlsx writer)
    except ImportError:
        raise InputError("writing the MMBench .xlsx needs pandas and openpyxl: pip install openpyxl") from None
    preds = align_predictions(samples, predictions)
    rows = []
    for s in samples:
        row = {"index": s.metadata.get("index", s.id), "question": s.question, "prediction": preds[s.id]}
        for i, letter in enumerate(LETTERS[:4]):
            row[letter] = s.choices[i] if i < len(s.choices) else None
        rows.append(row)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_excel(out, index=False)
    return out


def _submission(samples: Sequence[EvalSample], preds: dict[Any, str], run: RunFolder) -> list[Path]:
    """The ``.xlsx``, or the same columns as a ``.tsv`` when pandas / openpyxl are missing."""
    try:
        import openpyxl  # noqa: F401
        import pandas  # noqa: F401
    except ImportError:
        out = run.file("_submission.tsv")
        lines = ["\t".join(["index", "question", "prediction", "A", "B", "C", "D"])]
        for s in samples:
            cells = [str(s.metadata.get("index", s.id)), s.question, preds[s.id]]
            cells += [s.choices[i] if i < len(s.choices) else "" for i in range(4)]
            lines.append("\t".join(" ".join(str(c).replace("\t", " ").splitlines()) for c in cells))
        out.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return [out]
    return [write_mmbench_submission(samples, preds, run.file("_submission.xlsx"))]


BENCHMARK = Benchmark("mmbench", read_mmbench, MMBENCH_PROMPT, metric=partial(circular_accuracy, parse=vlmevalkit_choice),
                      lenient=circular_accuracy, reference=VLMEVALKIT_MATCHING,
                      options={"images": "image_dir"}, submission=_submission, select=circular_questions,
                      data_file=("*.tsv", "*.jsonl"), order=80, layout="an MMBench .tsv (or a folder holding one)")
