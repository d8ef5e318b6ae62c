"""OwlEval: 82 open-ended questions on 50 images, some in multi-turn dialogues, answered as
chat conversations (``kind="dialogue"``, ``--limit`` counting dialogues) with no automatic
metric. Written: our answers in the published ``{image, question_id, question, answer,
model_id}`` JSONL and a side-by-side HTML page with the published systems' answers.

``questions.jsonl`` and ``cases/<image>`` hold the questions; ``answer/*.jsonl`` the
published answers (:func:`read_owleval_answers`). :func:`dialogue_prompt` is the chat prompt
of each model generation.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from owlkit.errors import InputError
from owlkit.evaluation.benchmarks import Benchmark, RunFolder
from owlkit.evaluation.prompts import IMAGE_PLACEHOLDER, TaskPrompt
from owlkit.evaluation.readers import ImageFinder, expand, iter_records, need
from owlkit.evaluation.samples import EvalSample, align_predictions, group_dialogues

__all__ = ["read_owleval", "read_owleval_answers", "OWLEVAL_PROMPT", "dialogue_prompt", "write_owleval_answers",
           "owleval_html", "BENCHMARK"]

_OWL1_SYSTEM = ("The following is a conversation between a curious human and AI assistant. The "
                "assistant gives helpful, detailed, and polite answers to the user's questions.")

#: the mPLUG-Owl2 inference chat prompt of one turn (no trailing space); see dialogue_prompt
OWLEVAL_PROMPT = TaskPrompt("USER: <|image|>{question} ASSISTANT:", 512, official=False,
                            source="mPLUG-Owl2 inference chat prompt; see dialogue_prompt")

_OWLEVAL_LAYOUT = ("questions.jsonl ({image, question_id, question, ability, category} per line), "
                   "cases/<image>, answer/*.jsonl ({image, question_id, question, answer, model_id})")


def read_owleval(path: str | Path, *, check_images: bool = True) -> list[EvalSample]:
    """OwlEval: 82 open-ended questions on 50 images. ``metadata``: ``ability`` (list of
    letters a..f), ``category`` (list: single_turn / multi_turn), ``dialogue`` (question_id of
    the dialogue's first turn) and ``turn`` (0-based). A dialogue is a run of consecutive
    question_ids sharing one image."""
    path = expand(path)
    qfile = path / "questions.jsonl" if path.is_dir() else path
    if not qfile.is_file():
        raise InputError(f"{path}: no questions.jsonl; expected {_OWLEVAL_LAYOUT}")
    imgs = ImageFinder(check_images)
    samples = []
    prev: EvalSample | None = None
    for where, rec in iter_records(qfile):
        need(rec, ("image", "question_id", "question"), where)
        try:
            qid = int(rec["question_id"])
        except (TypeError, ValueError):
            raise InputError(f"{where}: malformed row: question_id must be an integer") from None
        image = imgs.get([qfile.parent / "cases" / str(rec["image"])], where)
        ability = rec.get("ability", "")
        ability = [a.strip() for a in ability.split(",") if a.strip()] if isinstance(ability, str) else list(ability)
        category = rec.get("category", [])
        category = [category] if isinstance(category, str) else list(category)
        if prev is not None and prev.metadata["image_name"] == rec["image"] and prev.id == qid - 1:
            dialogue, turn = prev.metadata["dialogue"], prev.metadata["turn"] + 1
        else:
            dialogue, turn = qid, 0
        s = EvalSample(id=qid, images=[image], question=str(rec["question"]),
                       metadata={"image_name": str(rec["image"]), "ability": ability, "category": category,
                                 "dialogue": dialogue, "turn": turn})
        samples.append(s)
        prev = s
    return samples


def read_owleval_answers(path: str | Path) -> dict[str, dict[int, str]]:
    """Published OwlEval answers: ``{model_id: {question_id: answer}}`` from ``answer/*.jsonl``
    (``path`` is the OwlEval folder or its ``answer/`` folder). Rows are matched by
    question_id only: several files name the images ``N.png`` while ``cases/`` holds
    ``N.jpg``."""
    path = expand(path)
    folder = path / "answer" if (path / "answer").is_dir() else path
    files = sorted(folder.glob("*.jsonl")) if folder.is_dir() else []
    if not files:
        raise InputError(f"{path}: no answer/*.jsonl; expected {_OWLEVAL_LAYOUT}")
    out: dict[str, dict[int, str]] = {}
    for f in files:
        answers: dict[int, str] = {}
        model = None
        for where, rec in iter_records(f):
            need(rec, ("question_id", "answer"), where)
            model = model or rec.get("model_id")
            answers[int(rec["question_id"])] = str(rec["answer"])
        out[str(model or f.stem)] = answers
    return out


def dialogue_prompt(turns: Sequence[tuple[str, str | None]], generation: int = 2) -> str:
    """A multi-turn chat prompt with one image, the way the demos of each generation build it.

    ``turns`` = ``[(question, answer), ..., (last question, None)]``.

    * generation 2 (spec B4, inference): ``USER: <|image|>{q1} ASSISTANT: {a1}</s>USER: {q2}
      ASSISTANT:`` (no trailing space);
    * generation 1 (spec A4.3): the system line, ``Human: <|image|>``, then ``Human: {q}`` /
      ``AI: {a}`` lines joined by ``\\n``, ending with ``AI: `` (trailing space). The v1
      checkpoints expect ``<image>``: the v1 processor maps the placeholder.
    """
    if not turns:
        raise ValueError("dialogue_prompt needs at least one turn")
    if generation == 2:
        parts = []
        for i, (q, a) in enumerate(turns):
            q = (IMAGE_PLACEHOLDER + q) if i == 0 else q
            if a is None:
                parts.append(f"USER: {q} ASSISTANT:")
                break
            parts.append(f"USER: {q} ASSISTANT: {a}</s>")
        return "".join(parts)
    if generation == 1:
        lines = [_OWL1_SYSTEM, f"Human: {IMAGE_PLACEHOLDER}"]
        for q, a in turns:
            lines.append(f"Human: {q}")
            if a is None:
                lines.append("AI: ")
                break
            lines.append(f"AI: {a}")
        return "\n".join(lines)
    raise ValueError(f"generation must be 1 or 2, not {generation!r}")


def first_dialogues(samples: list[EvalSample], limit: int | None) -> list[EvalSample]:
    """The turns of the first ``limit`` dialogues."""
    dialogues = group_dialogues(samples)
    return [s for d in (dialogues[:limit] if limit else dialogues) for s in d]


def write_owleval_answers(samples: Sequence[EvalSample], answers: Mapping[Any, str] | Sequence[str],
                          path: str | Path, model_id: str) -> Path:
    """Our OwlEval answers in the published format: one
    ``{image, question_id, question, answer, model_id}`` per line."""
    preds = align_predictions(samples, answers)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        for s in samples:
            row = {"image": s.metadata.get("image_name", s.image.name if s.image else None),
                   "question_id": s.id, "question": s.question, "answer": preds[s.id], "model_id": model_id}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return out


def _image_src(image: Path, out_dir: Path, embed: str, size: int) -> str:
    if embed == "relative":
        rel = os.path.relpath(Path(image).resolve(), out_dir.resolve())
        return quote(rel.replace(os.sep, "/"))
    if embed != "base64":
        raise ValueError(f"embed must be 'relative' or 'base64', not {embed!r}")
    try:
        from PIL import Image  # only for base64 thumbnails: the benchmark modules stay light

        with Image.open(image) as im:
            im = im.convert("RGB")
            im.thumbnail((size, size))
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=85)
        data, mime = buf.getvalue(), "image/jpeg"
    except ImportError:  # pragma: no cover - Pillow is a dependency
        data = Path(image).read_bytes()
        mime = "image/png" if data.startswith(b"\x89PNG") else "image/jpeg"
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; }
table { border-collapse: collapse; width: 100%; table-layout: fixed; }
th, td { border: 1px solid #ccc; padding: 6px; vertical-align: top; font-size: 13px; }
th { background: #f2f2f2; position: sticky; top: 0; }
td.answer { white-space: pre-wrap; }
td.ours { background: #eef6ff; }
td.image img { max-width: 100%; }
td.question { font-weight: 600; white-space: pre-wrap; }
.meta { color: #666; font-weight: normal; font-size: 11px; }
"""


def owleval_html(samples: Sequence[EvalSample], answers: Mapping[Any, str] | Sequence[str],
                 out_path: str | Path, *, published: Mapping[str, Mapping[int, str]] | None = None,
                 model_name: str = "owlkit", embed: str = "relative", thumbnail: int = 320,
                 title: str = "OwlEval") -> Path:
    """A self-contained HTML page: per dialogue the image (relative link or base64
    thumbnail), then per turn the question, our answer and each published system's answer
    (``published`` as read by :func:`read_owleval_answers`)."""
    preds = align_predictions(samples, answers)
    published = dict(published or {})
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    systems = list(published)
    head = ["Image", "Question", model_name] + systems
    rows = []
    for dialogue in group_dialogues(samples):
        first = dialogue[0]
        src = _image_src(first.image, out.parent, embed, thumbnail) if first.image else ""
        for t, s in enumerate(dialogue):
            cells = []
            if t == 0:
                alt = html.escape(first.metadata.get("image_name", ""))
                cells.append(f'<td class="image" rowspan="{len(dialogue)}"><img src="{src}" alt="{alt}" '
                             f'loading="lazy"></td>')
            meta = []
            if s.metadata.get("ability"):
                meta.append("ability " + ",".join(s.metadata["ability"]))
            if len(dialogue) > 1:
                meta.append(f"turn {t + 1}/{len(dialogue)}")
            cells.append(f'<td class="question">#{html.escape(str(s.id))} {html.escape(s.question)}'
                         f'<div class="meta">{html.escape("; ".join(meta))}</div></td>')
            cells.append(f'<td class="answer ours">{html.escape(str(preds[s.id]))}</td>')
            for name in systems:
                ans = published[name].get(s.id, published[name].get(str(s.id), "")) if isinstance(
                    published[name], Mapping) else ""
                cells.append(f'<td class="answer">{html.escape(str(ans))}</td>')
            rows.append("<tr>" + "".join(cells) + "</tr>")
    widths = ["14%", "14%"] + [f"{72 / (1 + len(systems)):.1f}%"] * (1 + len(systems))
    colgroup = "".join(f'<col style="width:{w}">' for w in widths)
    doc = (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p>{len(samples)} questions, {len(systems)} published systems.</p>"
        f"<table><colgroup>{colgroup}</colgroup><thead><tr>"
        + "".join(f"<th>{html.escape(h)}</th>" for h in head)
        + "</tr></thead><tbody>" + "\n".join(rows) + "</tbody></table></body></html>\n"
    )
    out.write_text(doc, encoding="utf-8")
    return out


def _submission(samples: Sequence[EvalSample], preds: dict[Any, str], run: RunFolder) -> list[Path]:
    """Our answers and the HTML page, with the published answers found beside the questions."""
    folder = run.data if run.data.is_dir() else run.data.parent
    published = read_owleval_answers(folder) if any((folder / "answer").glob("*.jsonl")) else {}
    return [write_owleval_answers(samples, preds, run.file("_answers.jsonl"), run.model_id),
            owleval_html(samples, preds, run.file(".html"), published=published, model_name=run.model_id,
                         embed=run.html_embed)]


BENCHMARK = Benchmark("owleval", read_owleval, OWLEVAL_PROMPT, kind="dialogue", submission=_submission,
                      select=first_dialogues, order=150,
                      layout="the OwlEval folder (questions.jsonl, cases/, answer/*.jsonl)")
