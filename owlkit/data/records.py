"""Training data in the formats people have, as uniform :class:`Record` objects.

Readers (``type`` of a source; see docs/data.md for the exact layouts):

``llava``      LLaVA JSON (a list) or JSONL: ``{"id", "image": str | [str] (optional),
               "conversations": [{"from": "human"|"gpt"|"user"|"assistant"|"system", "value"}]}``
               with ``<image>`` or ``<|image|>`` placeholders (OpenAI-style ``"messages"`` with
               ``role``/``content`` are read too). A sample with images but no placeholder gets
               its images at the start of the first human turn, as LLaVA does.
``owl_jsonl``  mPLUG-Owl's own JSONL: ``{"text": "<system>\\nHuman: <image>\\nHuman: q\\nAI: a...",
               "image": [paths], "task_type": "llava_sft"}``.
``captions``   JSONL ``{"image", "caption"}``: an instruction-free caption sample (the papers'
               stage 1): the user turn is the image (plus an optional configurable ``prompt``), the
               reply is the caption.
``wds``        img2dataset webdataset shards (``00000.tar`` holding ``KEY.jpg|png|...``, ``KEY.txt``,
               ``KEY.json`` per sample), read with :mod:`tarfile` (random access by member offset;
               the ``webdataset`` package is not needed); rendered like ``captions``.
``text``       text-only conversations: ShareGPT/Vicuna (``conversations``), OpenAI ``messages``,
               Alpaca (``instruction``, ``input``, ``output``). A row with an image is a problem.

Every row becomes a :class:`Record` whose ``messages`` are OpenAI-style (``role`` +
``content`` list of ``{"type": "text", "text"}`` / ``{"type": "image", "image": path}``), ready for
:func:`owlkit.processing.labels.build_training_example`. Relative image paths are resolved against
``image_root`` (default: the data file's folder). Images inside shards are :class:`TarMember`
references, read lazily.

Malformed rows: :func:`iter_entries` yields a :class:`Problem` (``source:line: message``) in place
of a record, so ``owl data check`` can list them all and datasets can stop or skip.
:func:`record_problems` checks the conversation structure (alternating user/assistant turns
starting with the user and ending with the assistant, no empty turn);
:func:`image_problems` checks that image files exist (and optionally decode).
"""

from __future__ import annotations

import glob
import json
import os
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from owlkit.config import IMAGE_PLACEHOLDERS
from owlkit.errors import ConfigError, InputError, first_line

SOURCE_TYPES = ("llava", "owl_jsonl", "captions", "wds", "text")
#: The keys of one data source of a recipe (owlkit.data.datasets explains each).
SOURCE_KEYS = ("type", "path", "image_root", "weight", "prompt", "on_error", "name", "tasks", "distill")
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")

_PLACEHOLDER_RE = re.compile("(" + "|".join(map(re.escape, IMAGE_PLACEHOLDERS)) + ")")
_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "bing": "assistant",
    "model": "assistant",
    "system": "system",
}
#: The canonical mPLUG-Owl (v1) system line; it is what the v1 template emits by default, so a
#: record carrying it gets no explicit system message (and renders identically with v1).
V1_SYSTEM = (
    "The following is a conversation between a curious human and AI assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


# -- records, problems -------------------------------------------------------------------------


@dataclass(frozen=True)
class TarMember:
    """An image (or any member) inside a tar shard, read by offset: ``shard#name``."""

    shard: str
    name: str
    offset: int
    size: int

    def read_bytes(self) -> bytes:
        """The member's bytes; an :class:`InputError` naming the shard if they cannot be read."""
        try:
            with open(self.shard, "rb") as f:
                f.seek(self.offset)
                data = f.read(self.size)
        except OSError as exc:
            raise InputError(f"{self.shard}: cannot read webdataset shard ({first_line(exc)})") from None
        if len(data) != self.size:
            raise InputError(
                f"{self.shard}: corrupt webdataset shard: member {self.name} is cut short "
                f"({len(data)} of {self.size} bytes); re-create or re-download the shard"
            )
        return data

    def __str__(self) -> str:
        return f"{self.shard}#{self.name}"


@dataclass
class Record:
    """One training sample in a uniform shape.

    ``messages``: OpenAI-style ``[{"role": "system"|"user"|"assistant", "content": [parts]}]``
    with parts ``{"type": "text", "text"}`` and ``{"type": "image", "image": path}``;
    ``images``: the image paths (or :class:`TarMember`) in order of appearance;
    ``source``/``line``: where the row is (1-based line of a JSONL row or of the start of a JSON
    array element; 1-based sample number inside a shard); ``task``: the row's task label if any;
    ``distill``: its replies are learned as the frozen base model's distributions rather than as
    labels (the source's ``distill`` key; :class:`owlkit.training.loss.LossModule`).
    """

    id: str
    messages: list[dict]
    images: list = field(default_factory=list)
    source: str = ""
    line: int = 0
    task: str | None = None
    distill: bool = False

    @property
    def where(self) -> str:
        """``source:line`` for messages."""
        return f"{self.source}:{self.line}" if self.line else self.source


@dataclass(frozen=True)
class Problem:
    """A malformed row (or file): ``source:line: message``; ``kind`` groups problems in summaries."""

    source: str
    line: int | None
    message: str
    kind: str = "malformed"

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.message}" if self.line else f"{self.source}: {self.message}"


class RecordError(InputError):
    """A row that cannot become a :class:`Record`."""

    def __init__(self, message: str, kind: str = "malformed") -> None:
        super().__init__(message)
        self.kind = kind


# -- message helpers ---------------------------------------------------------------------------


def _text(text: str) -> dict:
    return {"type": "text", "text": text}


def _image(path: Any) -> dict:
    return {"type": "image", "image": path}


def _resolve(path: Any, root: str, where: str) -> str:
    if not isinstance(path, str) or not path:
        raise RecordError(f"{where} must be a non-empty string path, got {path!r}")
    if path.startswith("file://"):
        path = path[len("file://"):]
    if path.startswith(("http://", "https://", "data:")) or os.path.isabs(path):
        return path
    return os.path.join(root, path)


def _image_list(value: Any, root: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise RecordError(f"'image' must be a path or a list of paths, got {type(value).__name__}")
    return [_resolve(v, root, "'image'") for v in value]


def _split_placeholders(text: str) -> list[dict]:
    """Text with placeholders -> content parts (image parts without a path yet).

    When the text holds a placeholder, the text pieces around it are stripped (LLaVA writes
    ``"<image>\\nWhat..."``); the templates put a message's images first anyway.
    """
    pieces = _PLACEHOLDER_RE.split(text)
    if len(pieces) == 1:
        return [_text(text)]
    parts: list[dict] = []
    for piece in pieces:
        if piece in IMAGE_PLACEHOLDERS:
            parts.append({"type": "image"})
        elif piece.strip():
            parts.append(_text(piece.strip()))
    return parts


def _attach_images(messages: list[dict], images: list[str]) -> None:
    """Bind paths to the placeholder parts in order, or put the images at the start of the first
    user turn when there is no placeholder (LLaVA)."""
    slots = [p for m in messages for p in m["content"] if p["type"] == "image"]
    if not slots:
        if images:
            first_user = next((m for m in messages if m["role"] == "user"), None)
            if first_user is None:
                raise RecordError("the sample has images but no human turn to put them in", "placeholder")
            first_user["content"][:0] = [_image(p) for p in images]
        return
    if len(slots) != len(images):
        raise RecordError(
            f"{len(slots)} image placeholder(s) but {len(images)} image(s); "
            "write one <image> (or <|image|>) per image, or none to put all images first",
            "placeholder",
        )
    for part, path in zip(slots, images):
        part["image"] = path


def _conversation_messages(turns: Any, key: str) -> list[dict]:
    if not isinstance(turns, list):
        raise RecordError(f"'{key}' must be a list of turns, got {type(turns).__name__}")
    messages = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise RecordError(f"turn {i + 1} must be an object, got {type(turn).__name__}")
        raw_role = turn.get("from", turn.get("role"))
        role = _ROLES.get(str(raw_role).lower()) if raw_role is not None else None
        if role is None:
            raise RecordError(
                f"turn {i + 1}: unknown role {raw_role!r}; use human/gpt (or user/assistant, system)"
            )
        if "value" not in turn and "content" not in turn:
            raise RecordError(f"turn {i + 1} ({raw_role}) has no 'value' field (LLaVA: "
                              "{'from': 'human', 'value': TEXT}; or 'content')")
        value = turn.get("value", turn.get("content"))
        if value is None:
            value = ""
        if isinstance(value, list):  # OpenAI-style content parts
            parts = []
            for part in value:
                if isinstance(part, str):
                    parts.extend(_split_placeholders(part))
                elif isinstance(part, dict) and part.get("type") in ("text", "input_text"):
                    parts.extend(_split_placeholders(str(part.get("text", ""))))
                elif isinstance(part, dict) and part.get("type") in ("image", "image_url", "input_image"):
                    path = part.get("image", part.get("image_url", part.get("path")))
                    if isinstance(path, dict):
                        path = path.get("url")
                    parts.append({"type": "image", "image": path} if path else {"type": "image"})
                else:
                    raise RecordError(f"turn {i + 1}: unsupported content part {part!r}")
        elif isinstance(value, str):
            parts = _split_placeholders(value)
        else:
            raise RecordError(f"turn {i + 1}: 'value' must be a string, got {type(value).__name__}")
        if role != "user" and any(p["type"] == "image" for p in parts):
            raise RecordError(f"turn {i + 1} ({raw_role}) holds an image; images belong in human turns", "placeholder")
        messages.append({"role": role, "content": parts})
    return messages


def _row_id(row: dict, source: str, line: int) -> str:
    value = row.get("id", row.get("key"))
    return str(value) if value is not None else f"{Path(source).name}:{line}"


def _require_object(row: Any) -> dict:
    if not isinstance(row, dict):
        raise RecordError(f"a row must be a JSON object, got {type(row).__name__}")
    return row


# -- row parsers -------------------------------------------------------------------------------


def parse_llava(row: Any, *, source: str, line: int, image_root: str) -> Record:
    """A LLaVA-style row (``conversations`` or ``messages``) -> :class:`Record`."""
    row = _require_object(row)
    key = "conversations" if "conversations" in row else "messages" if "messages" in row else None
    if key is None:
        raise RecordError("no 'conversations' list (LLaVA format: {'id', 'image', 'conversations': [...]})")
    messages = _conversation_messages(row[key], key)
    images = _image_list(row.get("image", row.get("images")), image_root)
    inline = [p for m in messages for p in m["content"] if p["type"] == "image" and p.get("image") is not None]
    if inline and not images:  # OpenAI-style parts carrying their own paths
        images = _image_list([p.pop("image") for p in inline], image_root)
    _attach_images(messages, images)
    task = row.get("task", row.get("task_type"))
    return Record(_row_id(row, source, line), messages, images, source, line, None if task is None else str(task))


_OWL_SPLIT = re.compile(r"(?:^|\n)(Human|AI): ")


def parse_owl(row: Any, *, source: str, line: int, image_root: str) -> Record:
    """An mPLUG-Owl JSONL row (``text`` = whole conversation) -> :class:`Record`.

    ``"<system>\\nHuman: <image>\\nHuman: q\\nAI: a\\nHuman: q2\\nAI: a2"``: consecutive
    ``Human:`` lines form one user turn; the canonical system line is dropped (the v1 template
    emits it by default), any other one becomes a system message.
    """
    row = _require_object(row)
    text = row.get("text")
    if not isinstance(text, str):
        raise RecordError("no 'text' string (mPLUG-Owl format: {'text': 'Human: ...\\nAI: ...', 'image': [...]})")
    pieces = _OWL_SPLIT.split(text.rstrip("\n"))
    if len(pieces) == 1:
        raise RecordError("'text' has no 'Human: ' / 'AI: ' turns")
    system = pieces[0].strip()
    messages: list[dict] = []
    if system and system != V1_SYSTEM:
        messages.append({"role": "system", "content": [_text(system)]})
    for speaker, body in zip(pieces[1::2], pieces[2::2]):
        role = "user" if speaker == "Human" else "assistant"
        parts = _split_placeholders(body) if role == "user" else [_text(body)]
        if role == "assistant" and _PLACEHOLDER_RE.search(body):
            raise RecordError("an AI turn holds an image placeholder", "placeholder")
        if messages and messages[-1]["role"] == role == "user":
            messages[-1]["content"].extend(p for p in parts if p["type"] == "image" or p["text"])
        else:
            messages.append({"role": role, "content": parts})
    images = _image_list(row.get("image"), image_root)
    _attach_images(messages, images)
    task = row.get("task_type", row.get("task"))
    return Record(_row_id(row, source, line), messages, images, source, line, None if task is None else str(task))


def caption_messages(images: Sequence[Any], caption: str, prompt: str | None = None) -> list[dict]:
    """The caption sample: user = the images (+ ``prompt``), assistant = the caption."""
    user = [_image(p) for p in images]
    if prompt:
        user.append(_text(prompt))
    return [{"role": "user", "content": user}, {"role": "assistant", "content": [_text(caption)]}]


def parse_caption(row: Any, *, source: str, line: int, image_root: str, prompt: str | None = None) -> Record:
    """A ``{"image", "caption"}`` row -> a caption :class:`Record` (see :func:`caption_messages`)."""
    row = _require_object(row)
    caption = row.get("caption", row.get("text"))
    if not isinstance(caption, str):
        raise RecordError("no 'caption' string (caption format: {'image': path, 'caption': text})")
    images = _image_list(row.get("image"), image_root)
    if not images:
        raise RecordError("no 'image' (caption format: {'image': path, 'caption': text})")
    task = row.get("task")
    return Record(
        _row_id(row, source, line), caption_messages(images, caption, prompt), images, source, line,
        "caption" if task is None else str(task),
    )


def parse_text(row: Any, *, source: str, line: int, image_root: str = "") -> Record:
    """A text-only row: ShareGPT ``conversations``, OpenAI ``messages`` or Alpaca fields."""
    row = _require_object(row)
    if row.get("image") or row.get("images"):
        raise RecordError("the row has an image but the source type is 'text'; use type 'llava'", "placeholder")
    if "instruction" in row or "output" in row:
        instruction, extra, output = row.get("instruction", ""), row.get("input", ""), row.get("output")
        if not isinstance(instruction, str) or not isinstance(extra, str) or not isinstance(output, str):
            raise RecordError("Alpaca rows need string 'instruction', 'input' (optional) and 'output'")
        prompt = instruction + ("\n\n" + extra if extra.strip() else "")
        messages = [{"role": "user", "content": [_text(prompt)]}, {"role": "assistant", "content": [_text(output)]}]
        if isinstance(row.get("system"), str) and row["system"].strip():
            messages.insert(0, {"role": "system", "content": [_text(row["system"])]})
    else:
        key = "conversations" if "conversations" in row else "messages" if "messages" in row else None
        if key is None:
            raise RecordError("no 'conversations', 'messages' or Alpaca 'instruction'/'output' fields")
        messages = _conversation_messages(row[key], key)
        if any(p["type"] == "image" for m in messages for p in m["content"]):
            raise RecordError("a turn holds an image placeholder but the source type is 'text'", "placeholder")
    task = row.get("task", row.get("task_type"))
    return Record(_row_id(row, source, line), messages, [], source, line, "text" if task is None else str(task))


# -- checks ------------------------------------------------------------------------------------


def record_problems(record: Record) -> list[str]:
    """Conversation-structure problems: turns must alternate user/assistant, start with the user
    (after optional system messages), end with the assistant's reply, and none may be empty."""
    problems = []
    turns = list(record.messages)
    while turns and turns[0]["role"] == "system":
        turns.pop(0)
    if not turns:
        return ["no human/gpt turns"]
    expected = "user"
    for i, message in enumerate(turns):
        role = message["role"]
        n = i + 1
        name = "human" if role == "user" else "gpt" if role == "assistant" else role
        if role == "system":
            problems.append(f"turn {n}: a system turn after the conversation started")
            continue
        if role != expected:
            what = "start with a human turn" if i == 0 else "alternate human/gpt"
            problems.append(f"turn {n} ({name}): turns must {what}")
        expected = "assistant" if role == "user" else "user"
        has_text = any(p["type"] == "text" and p["text"].strip() for p in message["content"])
        has_image = any(p["type"] == "image" for p in message["content"])
        if not has_text and not (role == "user" and has_image):
            problems.append(f"turn {n} ({name}) is empty")
    if turns[-1]["role"] != "assistant":
        problems.append("the conversation ends with a human turn (no reply to learn)")
    return problems


def image_problems(record: Record, decode: bool = False) -> list[str]:
    """Images that are missing (or, with ``decode``, cannot be decoded)."""
    problems = []
    for image in record.images:
        if isinstance(image, TarMember):
            if decode:
                problems.extend(_decode_problem(image))
            continue
        if isinstance(image, str) and image.startswith(("http://", "https://")):
            problems.append(f"remote image URL {image}: download the images and give local paths")
        elif not os.path.isfile(image):
            problems.append(f"image file not found: {image}")
        elif os.path.getsize(image) == 0:
            problems.append(f"image file is empty: {image}")
        elif decode:
            problems.extend(_decode_problem(image))
    return problems


def _decode_problem(image: Any) -> list[str]:
    from owlkit.processing.images import load_image  # PIL + numpy, for decoding only: the readers stay light

    try:
        load_image(image.read_bytes() if isinstance(image, TarMember) else image)
    except InputError as exc:
        text = str(exc)
        return [f"unreadable image {text}" if text.startswith(str(image)) else f"unreadable image {image}: {text}"]
    return []


# -- files -------------------------------------------------------------------------------------

_WS = re.compile(r"[ \t\n\r]*")


#: Bytes that are not UTF-8 decode to these lone surrogates (``surrogateescape``); valid UTF-8
#: text never holds them, so a row containing one had a bad byte.
_BAD_BYTES = re.compile("[\udc80-\udcff]")


def _read_text(path: Path) -> str:
    """The file as text; bytes that are not UTF-8 become lone surrogates (see :func:`_bad_bytes`)."""
    try:
        return path.read_bytes().decode("utf-8", errors="surrogateescape")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({first_line(exc)})") from None


def _bad_bytes(text: str) -> RecordError | None:
    """A row error naming the first byte that is not UTF-8, or None."""
    found = _BAD_BYTES.search(text)
    if found is None:
        return None
    byte = ord(found.group()) - 0xDC00
    return RecordError(f"not UTF-8 text (byte 0x{byte:02x} at column {found.start() + 1}); "
                       "re-save the file as UTF-8", "encoding")


def iter_json_rows(path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """``(line, row)`` of a JSON array file or a JSONL file (chosen by the first character).

    ``row`` is a :class:`RecordError` for a line that is not valid JSON; a JSON array that stops
    parsing yields one error and ends (the rest cannot be located).
    """
    path = Path(path)
    text = _read_text(path)
    start = _WS.match(text, 0).end()
    if start < len(text) and text[start] == "[":
        yield from _iter_json_array(text, start)
        return
    for n, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        bad = _bad_bytes(raw)
        if bad is not None:
            yield n, bad
            continue
        try:
            yield n, json.loads(raw)
        except ValueError as exc:
            yield n, RecordError(f"invalid JSON ({first_line(exc)})", "json")


def _iter_json_array(text: str, start: int) -> Iterator[tuple[int, Any]]:
    decoder = json.JSONDecoder()
    line, pos = 1, 0

    def line_at(i: int) -> int:
        nonlocal line, pos
        line += text.count("\n", pos, i)
        pos = i
        return line

    i = _WS.match(text, start + 1).end()
    if i < len(text) and text[i] == "]":
        return
    while True:
        try:
            row, end = decoder.raw_decode(text, i)
        except ValueError as exc:
            at = getattr(exc, "pos", i)
            yield line_at(max(i, at)), RecordError(f"invalid JSON ({first_line(exc)}); the rest of the file is not read", "json")
            return
        bad = _bad_bytes(text[i:end])
        yield line_at(i), row if bad is None else bad
        i = _WS.match(text, end).end()
        if i < len(text) and text[i] == ",":
            i = _WS.match(text, i + 1).end()
            continue
        if i < len(text) and text[i] == "]":
            return
        yield line_at(i), RecordError("invalid JSON (expected ',' or ']' after an array element)", "json")
        return


def detect_type(path: str | os.PathLike) -> str:
    """Guess a source type: folders and ``.tar`` -> ``wds``; JSON/JSONL by the first row's keys."""
    text = str(path)
    if os.path.isdir(text) or text.endswith(".tar") or any(c in text for c in "*?{"):
        return "wds"
    for _, row in iter_json_rows(path):
        if isinstance(row, RecordError):
            continue  # judge by the first readable row
        if not isinstance(row, dict):
            break
        if "conversations" in row or "messages" in row:
            return "llava"  # reads text-only conversations too
        if "text" in row and ("Human: " in str(row["text"]) or "task_type" in row):
            return "owl_jsonl"
        if "caption" in row:
            return "captions"
        if "instruction" in row or "output" in row:
            return "text"
        break
    raise InputError(f"{path}: cannot tell the data format; pass its type ({', '.join(SOURCE_TYPES)})")


_PARSERS = {"llava": parse_llava, "owl_jsonl": parse_owl, "text": parse_text}


def check_type(kind: str) -> str:
    if kind not in SOURCE_TYPES:
        raise ConfigError(f"unknown data source type {kind!r}; choose one of: {', '.join(SOURCE_TYPES)}")
    return kind


def iter_entries(
    path: str | os.PathLike,
    kind: str | None = None,
    image_root: str | os.PathLike | None = None,
    prompt: str | None = None,
    *,
    validate: bool = True,
) -> Iterator[Record | Problem]:
    """Every row of one data file (or shard set) as a :class:`Record`, or a :class:`Problem`.

    ``kind``: one of :data:`SOURCE_TYPES` (guessed when ``None``); ``image_root``: where relative
    image paths start (default: the file's folder); ``prompt``: the caption prompt of
    ``captions``/``wds``; ``validate``: also turn :func:`record_problems` into problems.
    """
    kind = check_type(kind or detect_type(path))
    if kind == "wds":
        yield from _iter_wds_entries(path, prompt, validate)
        return
    source = str(path)
    root = str(image_root) if image_root is not None else (os.path.dirname(source) or ".")
    for line, row in iter_json_rows(path):
        if isinstance(row, RecordError):
            yield Problem(source, line, str(row), row.kind)
            continue
        try:
            if kind == "captions":
                record = parse_caption(row, source=source, line=line, image_root=root, prompt=prompt)
            else:
                record = _PARSERS[kind](row, source=source, line=line, image_root=root)
        except RecordError as exc:
            yield Problem(source, line, str(exc), exc.kind)
            continue
        if validate:
            found = record_problems(record)
            if found:
                yield Problem(source, line, "; ".join(found), "turns")
                continue
        yield record


# -- webdataset shards -------------------------------------------------------------------------

_BRACE = re.compile(r"\{(\d+)\.\.(\d+)\}")


def expand_shards(spec: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Shard paths from a folder (every ``*.tar``, sorted), a file, a glob, a ``{00000..00009}``
    range, or a list of these."""
    if isinstance(spec, (list, tuple)):
        return [p for item in spec for p in expand_shards(item)]
    text = str(spec)
    m = _BRACE.search(text)
    if m:
        lo, hi = m.group(1), m.group(2)
        width = len(lo)
        return [p for i in range(int(lo), int(hi) + 1) for p in expand_shards(text[: m.start()] + str(i).zfill(width) + text[m.end():])]
    if os.path.isdir(text):
        found = sorted(glob.glob(os.path.join(glob.escape(text), "*.tar")))
        if not found:
            raise InputError(f"{text}: no .tar shards in this folder")
        return found
    if any(c in text for c in "*?["):
        found = sorted(glob.glob(text))
        if not found:
            raise InputError(f"{text}: no shard matches this pattern")
        return found
    if not os.path.isfile(text):
        raise InputError(f"{text}: no such shard file")
    return [text]


def _split_key(name: str) -> tuple[str, str]:
    """webdataset's key/extension rule: the key ends at the first dot of the base name."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


@dataclass
class ShardSample:
    """One sample of a shard: its key, 1-based number and members ``{ext: (offset, size)}``."""

    shard: str
    key: str
    number: int
    members: dict[str, tuple[int, int]]


def index_shard(shard: str) -> tuple[list[ShardSample], Problem | None]:
    """The samples of one tar shard by header scan, and a problem if the shard is corrupt.

    Samples before the damage are returned; the problem names the shard file.
    """
    samples: dict[str, ShardSample] = {}
    problem: Problem | None = None
    end = 0
    try:
        size = os.path.getsize(shard)
        with tarfile.open(shard, "r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                end = member.offset_data + member.size
                key, ext = _split_key(member.name)
                if not ext or key.startswith(".") or "/." in key:
                    continue
                sample = samples.get(key)
                if sample is None:
                    sample = samples[key] = ShardSample(shard, key, len(samples) + 1, {})
                sample.members[ext] = (member.offset_data, member.size)
            end = tar.offset
        if end > size:
            problem = Problem(shard, None, "corrupt webdataset shard: cut short inside a member", "shard")
        elif not _zeros_after(shard, end):
            problem = Problem(shard, None, f"corrupt webdataset shard: unreadable data after byte {end}", "shard")
        elif size - end < 1024 and samples:
            problem = Problem(shard, None, "corrupt webdataset shard: no end-of-archive marker (truncated file?)", "shard")
    except FileNotFoundError:
        problem = Problem(shard, None, "no such shard file", "shard")
    except (tarfile.TarError, OSError, EOFError) as exc:
        problem = Problem(shard, None, f"corrupt webdataset shard ({first_line(exc)})", "shard")
    return list(samples.values()), problem


def _zeros_after(path: str, offset: int) -> bool:
    with open(path, "rb") as f:
        f.seek(offset)
        while True:
            chunk = f.read(1 << 16)
            if not chunk:
                return True
            if chunk.count(0) != len(chunk):
                return False


def _read_member(sample: "ShardSample", ext: str) -> bytes:
    offset, size = sample.members[ext]
    return TarMember(sample.shard, f"{sample.key}.{ext}", offset, size).read_bytes()


def shard_record(sample: ShardSample, prompt: str | None = None) -> Record:
    """A caption :class:`Record` from one shard sample (caption from ``.txt``, else ``.json``)."""
    images = [ext for ext in IMAGE_EXTENSIONS if ext in sample.members]
    if not images:
        raise RecordError(f"sample {sample.key} has no image ({', '.join('.' + e for e in IMAGE_EXTENSIONS[:3])}, ...)")
    ext = images[0]
    offset, size = sample.members[ext]
    image = TarMember(sample.shard, f"{sample.key}.{ext}", offset, size)
    caption = None
    if "txt" in sample.members:
        caption = _read_member(sample, "txt").decode("utf-8", errors="replace")
    elif "json" in sample.members:
        try:
            meta = json.loads(_read_member(sample, "json"))
        except ValueError as exc:
            raise RecordError(f"sample {sample.key}: invalid .json ({first_line(exc)})") from None
        if isinstance(meta, dict) and isinstance(meta.get("caption"), str):
            caption = meta["caption"]
    if caption is None:
        raise RecordError(f"sample {sample.key} has no caption (.txt, or 'caption' in .json)")
    return Record(sample.key, caption_messages([image], caption, prompt), [image], sample.shard, sample.number, "caption")


def _iter_wds_entries(spec: Any, prompt: str | None, validate: bool) -> Iterator[Record | Problem]:
    for shard in expand_shards(spec):
        samples, problem = index_shard(shard)
        for sample in samples:
            try:
                record = shard_record(sample, prompt)
            except (RecordError, InputError) as exc:
                yield Problem(shard, sample.number, str(exc), getattr(exc, "kind", "shard"))
                continue
            if validate:
                found = record_problems(record)
                if found:
                    yield Problem(shard, sample.number, "; ".join(found), "turns")
                    continue
            yield record
        if problem is not None:
            yield problem
