"""VQA v2: the official questions / annotations JSON pair (or the JSONL the mPLUG-Owl2 scripts
read), the official VQA prompt, VQA accuracy, and the EvalAI test-dev submission.

:func:`read_vqa` also reads OK-VQA (the same format) and TextVQA's JSONL layout.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from owlkit.errors import InputError
from owlkit.evaluation.benchmarks import Benchmark, RunFolder
from owlkit.evaluation.prompts import OFFICIAL_SCRIPTS, SHORT_ANSWER, TaskPrompt
from owlkit.evaluation.readers import (ImageFinder, answers_list, expand, find_file, first_dir, iter_records,
                                       load_json, need)
from owlkit.evaluation.references import VQA_EVAL
from owlkit.evaluation.samples import EvalSample, align_predictions
from owlkit.evaluation.vqa import evalai_normalize, vqa_accuracy

__all__ = ["read_vqa", "VQA_PROMPT", "write_vqa_submission", "BENCHMARK"]

#: the prompt of mPLUG-Owl2's evaluate_vqa.py: a space, not a newline, before the suffix
VQA_PROMPT = TaskPrompt("USER: <|image|>{question} " + SHORT_ANSWER + " ASSISTANT: ", 10,
                        source=OFFICIAL_SCRIPTS + "evaluate_vqa.py")

_VQA_LAYOUT = ("a folder with <name>questions<name>.json ({\"questions\": [{image_id, question, "
               "question_id}]}), optionally <name>annotations<name>.json ({\"annotations\": "
               "[{question_id, answers: [{answer}], ...}]}) and an image folder (val2014/ or images/) "
               "of COCO_<subtype>_<image_id:012d>.jpg; or a .jsonl of {image, question, question_id, "
               "answer|answers}")


def _vqa_annotations(path: Path) -> dict[Any, dict[str, Any]]:
    data = load_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise InputError(f"{path}: not a VQA annotations file: expected {{\"annotations\": [...]}}")
    out = {}
    for i, ann in enumerate(data["annotations"]):
        where = f"{path}: annotations[{i}]"
        need(ann, ("question_id", "answers"), where, "annotation")
        out[ann["question_id"]] = {
            "answers": answers_list(ann["answers"], where),
            "question_type": ann.get("question_type"),
            "answer_type": ann.get("answer_type"),
            "multiple_choice_answer": ann.get("multiple_choice_answer"),
        }
    return out


def _coco_subtype(data: dict[str, Any], qfile: Path) -> str:
    sub = data.get("data_subtype")
    if isinstance(sub, str) and sub:
        return sub
    m = re.search(r"(train|val|test-dev|test)(20\d\d)", qfile.name)
    if m:
        return ("test" if m.group(1) == "test-dev" else m.group(1)) + m.group(2)
    return "val2014"


def read_vqa(path: str | Path, *, images: str | Path | None = None,
             questions: str | Path | None = None, annotations: str | Path | None = None,
             check_images: bool = True) -> list[EvalSample]:
    """VQA v2 / OK-VQA.

    ``path`` is either a folder (official layout), the official questions ``.json`` or a
    ``.jsonl`` of ``{image, question, question_id, answer | answers}`` rows (the files the
    mPLUG-Owl2 scripts read; relative ``image`` paths are tried against ``images``, the
    file's folder and the current folder). ``annotations`` (official annotations JSON) adds
    the 10 annotators' answers, question type and answer type; for a folder it is found
    automatically when present.
    """
    path = expand(path)
    imgs = ImageFinder(check_images)
    if path.is_file() and _is_record_file(path, "image"):
        return _read_vqa_jsonl(path, images, annotations, imgs)
    if path.is_dir():
        folder = path
        qfile = expand(questions) if questions else find_file(
            folder, lambda p: p.suffix == ".json" and "question" in p.name.lower(),
            "questions JSON", _VQA_LAYOUT)
        if annotations is None:
            cands = sorted(p for p in folder.iterdir()
                           if p.is_file() and p.suffix == ".json" and "annotation" in p.name.lower())
            if len(cands) > 1:
                raise InputError(f"{folder}: several annotation files ({', '.join(p.name for p in cands)}); "
                                 "pass annotations=")
            annotations = cands[0] if cands else None
    elif path.is_file():
        qfile, folder = path, path.parent
    else:
        raise InputError(f"{path}: not found; expected {_VQA_LAYOUT}")
    data = load_json(qfile)
    if not isinstance(data, dict) or not isinstance(data.get("questions"), list):
        raise InputError(f"{qfile}: not a VQA questions file; expected {_VQA_LAYOUT}")
    subtype = _coco_subtype(data, qfile)
    image_dir = expand(images) if images else first_dir([folder / subtype, folder / "images", folder])
    anns = _vqa_annotations(expand(annotations)) if annotations else {}
    samples = []
    for i, q in enumerate(data["questions"]):
        where = f"{qfile}: questions[{i}]"
        need(q, ("image_id", "question", "question_id"), where, "question")
        try:
            name = f"COCO_{subtype}_{int(q['image_id']):012d}.jpg"
        except (TypeError, ValueError):
            raise InputError(f"{where}: malformed question: image_id must be an integer") from None
        image = imgs.get([image_dir / name], where)
        ann = anns.get(q["question_id"], {})
        meta = {"image_id": q["image_id"]}
        meta.update({k: v for k, v in ann.items() if k != "answers" and v is not None})
        samples.append(EvalSample(id=q["question_id"], images=[image], question=str(q["question"]),
                                  answers=list(ann.get("answers", [])), metadata=meta))
    if anns:
        missing = [s.id for s in samples if s.id not in anns]
        if missing:
            raise InputError(f"{annotations}: no annotation for question_id {missing[0]} "
                             f"({len(missing)} questions unannotated)")
    return samples


def _is_record_file(path: Path, key: str) -> bool:
    """True for a JSONL file (first line an object holding ``key``) or a JSON array."""
    if path.suffix == ".jsonl":
        return True
    with open(path, encoding="utf-8", errors="replace") as f:
        head = f.read(4096)
    if head.lstrip().startswith("["):
        return True
    first = head.lstrip().split("\n", 1)[0]
    try:
        rec = json.loads(first)
    except json.JSONDecodeError:
        return False
    return isinstance(rec, dict) and key in rec


def _read_vqa_jsonl(path: Path, images: str | Path | None, annotations: str | Path | None,
                    imgs: ImageFinder) -> list[EvalSample]:
    anns = _vqa_annotations(expand(annotations)) if annotations else {}
    roots = ([expand(images)] if images else []) + [path.parent, Path.cwd()]
    samples = []
    for where, rec in iter_records(path):
        need(rec, ("image", "question", "question_id"), where)
        rel = Path(str(rec["image"]))
        cands = [rel] if rel.is_absolute() else [r / rel for r in roots] + [r / rel.name for r in roots]
        image = imgs.get(cands, where)
        meta: dict[str, Any] = {}
        if rec["question_id"] in anns:
            ann = anns[rec["question_id"]]
            answers = list(ann["answers"])
            meta.update({k: v for k, v in ann.items() if k != "answers" and v is not None})
        else:
            answers = answers_list(rec.get("answers", rec.get("answer")), where)
        samples.append(EvalSample(id=rec["question_id"], images=[image], question=str(rec["question"]),
                                  answers=answers, metadata=meta))
    return samples


def write_vqa_submission(samples: Sequence[EvalSample], predictions: Mapping[Any, str] | Sequence[str],
                         path: str | Path, normalize: bool = True) -> Path:
    """VQA v2 test-dev/test-std (EvalAI) result file ``[{question_id, answer}]``; answers go
    through the EvalAI processor unless ``normalize`` is false."""
    preds = align_predictions(samples, predictions)
    rows = [{"question_id": s.id, "answer": evalai_normalize(preds[s.id]) if normalize else preds[s.id]}
            for s in samples]
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    return out


def _submission(samples: Sequence[EvalSample], preds: dict[Any, str], run: RunFolder) -> list[Path]:
    return [write_vqa_submission(samples, preds, run.file("_submission.json"))]


BENCHMARK = Benchmark(
    "vqav2", read_vqa, VQA_PROMPT, metric=vqa_accuracy, reference=VQA_EVAL, options={"images": "images", "annotations": "annotations"},
    submission=_submission, order=10,
    layout="the VQA v2 folder (questions JSON, annotations JSON, val2014/) or an mPLUG-Owl2 .jsonl")
