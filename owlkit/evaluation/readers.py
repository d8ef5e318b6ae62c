"""What every benchmark reader shares: paths, JSON / JSONL reading, row checks, image lookup.

A reader turns a benchmark laid out on disk the way its official download (or the official
mPLUG-Owl2 scripts) leaves it into :class:`~owlkit.evaluation.samples.EvalSample` records.
Anything wrong with the input (a missing image, a malformed row, a folder that is not the
expected layout) raises :class:`owlkit.errors.InputError` with a one-line message naming the
file and line (JSONL, TSV, CSV, TXT), the entry (JSON arrays/dicts) or the expected layout;
the helpers here word those messages the same way for every benchmark. Nothing here imports
torch or transformers; Pillow is not needed either.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Callable

from owlkit.errors import InputError

__all__ = ["expand", "load_json", "iter_records", "need", "ImageFinder", "first_dir", "first_file",
           "find_file", "file_or_find", "answers_list", "image_suffix", "save_image_bytes"]


def expand(p: str | Path) -> Path:
    return Path(p).expanduser()


def load_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a folder, not a JSON file") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a UTF-8 text file") from None


def iter_records(path: Path) -> Iterator[tuple[str, Any]]:
    """(location, record) for a JSONL file, or for a JSON array (some official files named
    ``.jsonl`` are arrays: mPLUG-Owl2 reads its VQA ``.jsonl`` files with ``json.load``)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a UTF-8 text file") from None
    if text.lstrip().startswith("["):
        data = load_json(path)
        for i, rec in enumerate(data):
            yield f"{path}: entry {i}", rec
        return
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}:{lineno}: invalid JSON line ({e.msg})") from None
        yield f"{path}:{lineno}", rec


def need(rec: Any, keys: Sequence[str], where: str, what: str = "row") -> None:
    """Raise "``where``: malformed ``what``: missing ..." unless ``rec`` is an object holding ``keys``."""
    if not isinstance(rec, dict):
        raise InputError(f"{where}: malformed {what}: expected an object with {', '.join(keys)}")
    missing = [k for k in keys if k not in rec]
    if missing:
        raise InputError(f"{where}: malformed {what}: missing {', '.join(repr(k) for k in missing)}"
                         f" (expected {', '.join(keys)})")


class ImageFinder:
    """Resolves and checks image paths; checks each path once."""

    def __init__(self, check: bool) -> None:
        self.check = check
        self._seen: set[Path] = set()

    def get(self, candidates: Sequence[Path], where: str) -> Path:
        for c in candidates:
            if c in self._seen:
                return c
        if not self.check:
            return candidates[0]
        for c in candidates:
            if c.is_file():
                self._seen.add(c)
                return c
        raise InputError(f"{where}: image not found: {candidates[0]}")


_MAGIC = ((b"\x89PNG", ".png"), (b"\xff\xd8", ".jpg"), (b"GIF8", ".gif"), (b"BM", ".bmp"))


def image_suffix(data: bytes) -> str:
    """The file suffix of encoded image bytes, from their magic number (``.jpg`` when unknown)."""
    for magic, ext in _MAGIC:
        if data.startswith(magic):
            return ext
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    return ".jpg"


def save_image_bytes(folder: Path, stem: str, data: bytes) -> Path:
    """Encoded image bytes embedded in a benchmark file (MMBench's base64, MMMU's parquet) as
    ``folder/<stem><suffix>``; a file already there with the same size is not rewritten."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{stem}{image_suffix(data)}"
    if not (target.is_file() and target.stat().st_size == len(data)):
        target.write_bytes(data)
    return target


def first_dir(candidates: Sequence[Path]) -> Path | None:
    for c in candidates:
        if c.is_dir():
            return c
    return None


def first_file(candidates: Sequence[Path]) -> Path | None:
    for c in candidates:
        if c.is_file():
            return c
    return None


def find_file(folder: Path, predicate: Callable[[Path], bool], what: str, layout: str) -> Path:
    """The one file of ``folder`` that ``predicate`` accepts ("no ... found" / "several ..." otherwise)."""
    found = sorted(p for p in folder.iterdir() if p.is_file() and predicate(p))
    if not found:
        raise InputError(f"{folder}: no {what} found; expected {layout}")
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise InputError(f"{folder}: several {what} ({names}); pass the file itself")
    return found[0]


def file_or_find(path: Path, predicate: Callable[[Path], bool], what: str, layout: str) -> Path:
    """``path`` when it is a file, else the one file of the folder ``path`` that ``predicate``
    accepts (:func:`find_file`); "not found" when it is neither."""
    if path.is_dir():
        return find_file(path, predicate, what, layout)
    if path.is_file():
        return path
    raise InputError(f"{path}: not found; expected {layout}")


def answers_list(value: Any, where: str) -> list[str]:
    """Answers given as a string, a list of strings or a list of ``{"answer": ...}``."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        out = []
        for a in value:
            if isinstance(a, dict):
                if "answer" not in a:
                    raise InputError(f"{where}: malformed answers: objects need an 'answer' field")
                out.append(str(a["answer"]))
            else:
                out.append(str(a))
        return out
    raise InputError(f"{where}: malformed answers: expected a string or a list")
