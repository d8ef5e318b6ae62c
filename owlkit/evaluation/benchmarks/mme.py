"""MME (14 yes/no subtasks): the benchmark folder (or its ``eval_tool/Your_Results``
templates), the official prompt of mPLUG-Owl2's ``evaluate_mme.py``, the MME scores
(:func:`~owlkit.evaluation.yesno.mme_scores`), and the ``Your_Results/<task>.txt`` files the
official ``eval_tool/calculation.py`` reads."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from owlkit.errors import InputError
from owlkit.evaluation.benchmarks import Benchmark, RunFolder
from owlkit.evaluation.prompts import OFFICIAL_SCRIPTS, SHORT_ANSWER_PROMPT, TaskPrompt
from owlkit.evaluation.readers import ImageFinder, expand
from owlkit.evaluation.references import MME_EVAL
from owlkit.evaluation.samples import EvalSample, align_predictions
from owlkit.evaluation.yesno import MME_COGNITION, MME_PERCEPTION, MME_TASKS, mme_scores

__all__ = ["read_mme", "MME_PROMPT", "write_mme_results", "BENCHMARK"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG", ".bmp", ".gif", ".webp")

#: the short-answer prompt, then "Please answer yes or no." deleted from the whole prompt
MME_PROMPT = TaskPrompt(SHORT_ANSWER_PROMPT, 10, source=OFFICIAL_SCRIPTS + "evaluate_mme.py",
                        remove="Please answer yes or no.")

_MME_LAYOUT = ("MME_Benchmark_release_version/ with one folder per subtask (existence, count, ..., "
               "code_reasoning), each holding either images/ + questions_answers_YN/<name>.txt or "
               "<name>.jpg|png beside <name>.txt, every .txt holding 'question<TAB>Yes|No' lines; "
               "optionally eval_tool/Your_Results/<task>.txt with 'image<TAB>question<TAB>gt' lines")


def _mme_image(task_dir: Path, name: str) -> list[Path]:
    return [task_dir / name, task_dir / "images" / name]


def _tab_lines(tfile: Path, encoding: str, columns: int, expected: str) -> Iterator[tuple[str, list[str]]]:
    """(``file:line``, cells) of the non-empty lines of a tab-separated ``.txt``."""
    for lineno, line in enumerate(tfile.read_text(encoding=encoding).splitlines(), 1):
        if not line.strip():
            continue
        where = f"{tfile}:{lineno}"
        parts = line.split("\t")
        if len(parts) < columns:
            raise InputError(f"{where}: malformed line: expected {expected}")
        yield where, parts


def _mme_gt(value: str, where: str) -> str:
    gt = value.strip()
    if gt.lower() not in ("yes", "no"):
        raise InputError(f"{where}: malformed line: answer {gt!r} must be Yes or No")
    return gt


def read_mme(path: str | Path, *, tasks: Sequence[str] | None = None, images: str | Path | None = None,
             check_images: bool = True) -> list[EvalSample]:
    """MME (14 subtasks).

    ``path`` is the benchmark folder (``MME_Benchmark_release_version``) or a
    ``Your_Results`` folder (then ``images`` defaults to the folder two levels up). When the
    benchmark folder holds ``eval_tool/Your_Results``, those templates fix the questions, as
    in the official mPLUG-Owl2 script; otherwise the per-image ``.txt`` files are read.
    ``answers`` = ["Yes"] or ["No"]; ``metadata`` has ``task``, ``image_name`` and
    ``category`` (Perception / Cognition). The question keeps "Please answer yes or no.";
    the MME prompt removes it.
    """
    path = expand(path)
    if not path.is_dir():
        raise InputError(f"{path}: not a folder; expected {_MME_LAYOUT}")
    imgs = ImageFinder(check_images)
    templates = None
    if (path / "eval_tool" / "Your_Results").is_dir():
        templates, root = path / "eval_tool" / "Your_Results", expand(images) if images else path
    elif any(p.suffix == ".txt" and p.stem in MME_TASKS for p in path.iterdir()):
        templates, root = path, expand(images) if images else path.parent.parent
    else:
        root = expand(images) if images else path
    wanted = list(tasks) if tasks else list(MME_TASKS)
    samples: list[EvalSample] = []
    found = []
    for task in wanted:
        category = "Perception" if task in MME_PERCEPTION else "Cognition" if task in MME_COGNITION else "Other"
        if templates is not None:
            tfile = templates / f"{task}.txt"
            if not tfile.is_file():
                if tasks:
                    raise InputError(f"{templates}: no {task}.txt; expected {_MME_LAYOUT}")
                continue
            found.append(task)
            for where, parts in _tab_lines(tfile, "utf-8", 3, "image<TAB>question<TAB>gt"):
                name, question, gt = parts[0], parts[1], _mme_gt(parts[2], where)
                image = imgs.get(_mme_image(root / task, name), where)
                samples.append(_mme_sample(task, category, name, question, gt, image, len(samples)))
            continue
        task_dir = root / task
        if not task_dir.is_dir():
            if tasks:
                raise InputError(f"{root}: no {task}/ folder; expected {_MME_LAYOUT}")
            continue
        found.append(task)
        if (task_dir / "questions_answers_YN").is_dir():
            qdir, idir = task_dir / "questions_answers_YN", task_dir / "images"
        else:
            qdir, idir = task_dir, task_dir
        txts = sorted(qdir.glob("*.txt"))
        if not txts:
            raise InputError(f"{task_dir}: no question .txt files; expected {_MME_LAYOUT}")
        for tfile in txts:
            cands = [idir / (tfile.stem + ext) for ext in IMAGE_EXTENSIONS]
            image = imgs.get(cands, f"{tfile}:1")
            for where, parts in _tab_lines(tfile, "utf-8-sig", 2, "question<TAB>Yes|No"):
                samples.append(_mme_sample(task, category, image.name, parts[0], _mme_gt(parts[1], where),
                                           image, len(samples)))
    if not found:
        raise InputError(f"{path}: no MME subtask found; expected {_MME_LAYOUT}")
    return samples


def _mme_sample(task: str, category: str, name: str, question: str, gt: str, image: Path,
                n: int) -> EvalSample:
    return EvalSample(id=f"{task}/{name}/{n}", images=[image], question=question, answers=[gt],
                      metadata={"task": task, "image_name": name, "category": category})


def write_mme_results(samples: Sequence[EvalSample], predictions: Mapping[Any, str] | Sequence[str],
                      folder: str | Path) -> list[Path]:
    """``<folder>/<task>.txt`` with ``image\\tquestion\\tgt\\tprediction`` lines, the input of
    MME's ``eval_tool/calculation.py`` (tabs and newlines in predictions become spaces)."""
    preds = align_predictions(samples, predictions)
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    lines: dict[str, list[str]] = {}
    for s in samples:
        pred = " ".join(preds[s.id].replace("\t", " ").splitlines())
        lines.setdefault(s.metadata["task"], []).append(
            f"{s.metadata['image_name']}\t{s.question}\t{s.answers[0]}\t{pred}")
    written = []
    for task, ls in lines.items():
        p = out / f"{task}.txt"
        p.write_text("\n".join(ls) + "\n", encoding="utf-8")
        written.append(p)
    return written


def _submission(samples: Sequence[EvalSample], preds: dict[Any, str], run: RunFolder) -> list[Path]:
    return write_mme_results(samples, preds, run.path / "mme_results")


BENCHMARK = Benchmark("mme", read_mme, MME_PROMPT, metric=mme_scores, reference=MME_EVAL, options={"images": "images"},
                      submission=_submission, order=90,
                      layout="MME_Benchmark_release_version/ (one folder per subtask)")
