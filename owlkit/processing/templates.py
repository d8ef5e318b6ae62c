"""Conversation templates of both mPLUG-Owl generations, byte-exact.

Three templates are defined (names as in the official code):

``mplug_owl`` (mPLUG-Owl v1; README, training data)::

    The following is a conversation between a curious human and AI assistant. The assistant gives helpful, detailed, and polite answers to the user's questions.
    Human: <image>
    Human: {question}
    AI: {answer}
    Human: {question2}
    AI: ␣

  Lines joined by ``"\\n"``; every image is its own ``Human: <image>`` line; the generation
  prompt is ``"AI: "`` with a trailing space.

``mplug_owl2`` (mPLUG-Owl2 default, style ``TWO_NO_SYS``)::

    USER: <|image|>{q1} ASSISTANT: {a1}</s>USER: {q2} ASSISTANT:

  Turn ``i`` renders as ``ROLE + ": " + message + (" " if i is even else "</s>")``; the pending
  assistant turn as ``"ASSISTANT:"`` (no trailing space). The system prompt is defined but not
  emitted.

``vicuna_v1`` (mPLUG-Owl2 ``v1``, used by the official fine-tuning scripts, style ``TWO``): the
  same with ``system + " "`` in front.

``chat_template`` (a model built on another LLM, e.g. ChatML): the LLM's own Jinja chat
  template, read from its tokenizer files (:func:`chat_template`). Each user message's images
  go to its front as ``<|image|>`` placeholders, then the template renders the messages as
  the LLM was trained to see them (rendered with transformers' chat-template renderer).

A model folder names its template (``conversation_template`` in its config, see
:func:`folder_template`); the processor, training labels, ``owl chat``, the server and
``owl eval`` all use that one.

:func:`render` takes OpenAI-style messages and returns the prompt (placeholder ``<image>`` for
v1, ``<|image|>`` for v2) plus the images in order of appearance.

What the official code does, and where we extend it:

* Official v2 inference (``conversation.get_prompt``) supports an image only in the first user
  message: the placeholder is removed from the text, which is stripped, and ``<|image|>`` is put
  at the very front. Official v2 training moves every ``<|image|>`` of every message to the
  front of its message (followed by ``"\\n"``). **We** apply the inference rule to every
  message: all images of a message go to its front, in order, directly followed by the text
  (no ``"\\n"``), so a multi-turn prompt with an image in a later turn reads
  ``...</s>USER: <|image|>{q2} ASSISTANT:``.
* Official v1 puts each image on its own ``Human: <image>`` line before the question (README,
  web demo). **We** do the same for every user message, images first.
* Text and image parts of one message are not interleaved: the images go first (as above),
  the text parts follow, joined by ``"\\n"``. A message's text is stripped when it had images
  (as the official code does), left untouched otherwise.
* A ``system`` message replaces the v1 system line and the ``vicuna_v1`` system prompt; with
  ``mplug_owl2`` (which emits none officially) it is emitted as ``system + " "`` in front, like
  ``vicuna_v1``.
* Consecutive messages of the same role are merged into one turn (text joined by ``"\\n"``).
* Literal placeholders (``<image>`` or ``<|image|>``) inside text are treated as image parts
  without an image object (``None`` in the returned list), so official-style prompt strings
  keep working.
* LLaVA-style ``{"from": "human"|"gpt", "value": ...}`` messages are accepted too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, NamedTuple, Sequence

from owlkit.config import V1_IMAGE_PLACEHOLDER, V2_IMAGE_PLACEHOLDER
from owlkit.errors import InputError
from owlkit.processing.images import generation_number

V1_SYSTEM = (
    "The following is a conversation between a curious human and AI assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
#: Defined by the official ``mplug_owl2`` template but never emitted by it.
MPLUG_OWL2_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
VICUNA_V1_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)

_PLACEHOLDER_RE = re.compile(f"({re.escape(V2_IMAGE_PLACEHOLDER)}|{re.escape(V1_IMAGE_PLACEHOLDER)})")


@dataclass(frozen=True)
class Template:
    """One conversation format (see module doc)."""

    name: str
    generation: int
    style: str  # "human_ai" (v1 lines) or "two" (v2 TWO / TWO_NO_SYS)
    image_placeholder: str
    roles: tuple[str, str]
    system: str
    emit_system: bool
    sep: str
    sep2: str
    stops: tuple[str, ...]  # text that ends an assistant turn, besides EOS (owlkit/generation/stops.py)
    jinja: str = ""  # style "jinja": the LLM's chat template
    variables: tuple[tuple[str, str], ...] = ()  # style "jinja": bos_token, eos_token... for the template

    @property
    def generation_prompt(self) -> str:
        """What ends a prompt awaiting the assistant's reply."""
        return f"{self.roles[1]}: " if self.style == "human_ai" else f"{self.roles[1]}:"


TEMPLATES: dict[str, Template] = {
    "mplug_owl": Template(
        name="mplug_owl",
        generation=1,
        style="human_ai",
        image_placeholder=V1_IMAGE_PLACEHOLDER,
        roles=("Human", "AI"),
        system=V1_SYSTEM,
        emit_system=True,
        sep="\n",
        sep2="\n",
        stops=("\nHuman:",),
    ),
    "mplug_owl2": Template(
        name="mplug_owl2",
        generation=2,
        style="two",
        image_placeholder=V2_IMAGE_PLACEHOLDER,
        roles=("USER", "ASSISTANT"),
        system=MPLUG_OWL2_SYSTEM,
        emit_system=False,
        sep=" ",
        sep2="</s>",
        stops=("</s>", "USER:"),
    ),
    "vicuna_v1": Template(
        name="vicuna_v1",
        generation=2,
        style="two",
        image_placeholder=V2_IMAGE_PLACEHOLDER,
        roles=("USER", "ASSISTANT"),
        system=VICUNA_V1_SYSTEM,
        emit_system=True,
        sep=" ",
        sep2="</s>",
        stops=("</s>", "USER:"),
    ),
}
_ALIASES = {"owl1": "mplug_owl", "mplug-owl": "mplug_owl", "owl2": "mplug_owl2", "mplug-owl2": "mplug_owl2",
            "vicuna": "vicuna_v1"}


#: The name a model folder gives to use its tokenizer's own chat template.
CHAT_TEMPLATE = "chat_template"


def chat_template(jinja: str, variables: dict[str, str] | None = None) -> Template:
    """A :class:`Template` that renders with an LLM's own Jinja chat template (v2 placeholders)."""
    if not jinja:
        raise InputError("the tokenizer has no chat template; name one of the official templates "
                         f"({', '.join(sorted(TEMPLATES))}) instead")
    return Template(name=CHAT_TEMPLATE, generation=2, style="jinja", image_placeholder=V2_IMAGE_PLACEHOLDER,
                    roles=("user", "assistant"), system="", emit_system=False, sep="", sep2="",
                    stops=tuple(v for k, v in sorted((variables or {}).items()) if k == "eos_token"), jinja=jinja,
                    variables=tuple(sorted((variables or {}).items())))


def get_template(template: str | Template) -> Template:
    """A :class:`Template` by name (``mplug_owl``, ``mplug_owl2``, ``vicuna_v1``) or as given."""
    if isinstance(template, Template):
        return template
    name = _ALIASES.get(template, template)
    if name not in TEMPLATES:
        raise InputError(f"unknown conversation template {template!r}; choose one of: {', '.join(sorted(TEMPLATES))}")
    return TEMPLATES[name]


def default_template(generation: int | str) -> str:
    """The official inference template: ``mplug_owl`` for v1, ``mplug_owl2`` for v2."""
    return "mplug_owl" if generation_number(generation) == 1 else "mplug_owl2"


class RenderedPrompt(NamedTuple):
    """``prompt`` with one placeholder per image, and the images in order of appearance."""

    prompt: str
    images: list


@dataclass
class Turn:
    """One merged conversation turn: role ``system``/``user``/``assistant``, text and images."""

    role: str
    text: str
    images: list
    pending: bool = False  # an assistant message with empty content: the reply to generate


_ROLES = {"system": "system", "user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant"}


def _split_text(text: str) -> tuple[list[str], int]:
    """Text without placeholders (as pieces) and the number of placeholders removed."""
    pieces = _PLACEHOLDER_RE.split(text)
    images = sum(1 for p in pieces if p in (V1_IMAGE_PLACEHOLDER, V2_IMAGE_PLACEHOLDER))
    return [p for p in pieces if p not in (V1_IMAGE_PLACEHOLDER, V2_IMAGE_PLACEHOLDER)], images


def _image_object(part: dict) -> Any:
    kind = part.get("type")
    if kind in ("image_url", "input_image"):
        value = part.get("image_url", part.get("url"))
        if isinstance(value, dict):
            value = value.get("url")
        return value
    for key in ("image", "url", "path"):
        if part.get(key) is not None:
            return part[key]
    return None


def _parse_message(index: int, message: Any) -> Turn:
    if not isinstance(message, dict):
        raise InputError(f"message {index} must be a dict with 'role' and 'content', got {type(message).__name__}")
    raw_role = message.get("role", message.get("from"))
    role = _ROLES.get(str(raw_role).lower()) if raw_role is not None else None
    if role is None:
        raise InputError(f"message {index}: unknown role {raw_role!r}; use 'system', 'user' or 'assistant'")
    content = message["content"] if "content" in message else message.get("value", "")
    texts: list[str] = []
    images: list = []
    if content is None:
        content = ""
    if isinstance(content, str):
        content = [{"type": "text", "text": content}]
    if not isinstance(content, (list, tuple)):
        raise InputError(f"message {index}: content must be a string or a list of parts, got {type(content).__name__}")
    for j, part in enumerate(content):
        if isinstance(part, str):
            part = {"type": "text", "text": part}
        if not isinstance(part, dict):
            raise InputError(f"message {index}, part {j}: expected a dict, got {type(part).__name__}")
        kind = part.get("type", "text" if "text" in part else None)
        if kind in ("text", "input_text"):
            text = part.get("text", "")
            if not isinstance(text, str):
                raise InputError(f"message {index}, part {j}: text must be a string")
            pieces, found = _split_text(text)
            images.extend([None] * found)
            texts.append("".join(pieces))
        elif kind in ("image", "image_url", "input_image"):
            images.append(_image_object(part))
        else:
            raise InputError(f"message {index}, part {j}: unsupported content type {kind!r} (use 'text' or 'image')")
    text = "\n".join(t for t in texts if t)
    if images:
        text = text.strip()
    if role in ("system", "assistant") and images:
        raise InputError(f"message {index}: a {role} message cannot hold images; put images in user messages")
    return Turn(role, text, images, pending=(role == "assistant" and text == "" and not images))


def parse_messages(messages: Sequence[Any]) -> tuple[str | None, list[Turn]]:
    """Messages -> (system text or None, alternating user/assistant turns starting with user)."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise InputError("messages must be a list of {'role': ..., 'content': ...} dicts")
    turns = [_parse_message(i, m) for i, m in enumerate(messages)]
    system_parts: list[str] = []
    while turns and turns[0].role == "system":
        system_parts.append(turns.pop(0).text)
    if any(t.role == "system" for t in turns):
        raise InputError("system messages must come before every user and assistant message")
    merged: list[Turn] = []
    for turn in turns:
        if merged and merged[-1].role == turn.role:
            prev = merged[-1]
            prev.text = "\n".join(t for t in (prev.text, turn.text) if t)
            prev.images.extend(turn.images)
            prev.pending = prev.pending and turn.pending
        else:
            merged.append(Turn(turn.role, turn.text, list(turn.images), turn.pending))
    if not merged:
        raise InputError("the conversation has no user message")
    if merged[0].role != "user":
        raise InputError("the conversation must start with a user message (after any system message)")
    for turn in merged[:-1]:
        if turn.pending:
            raise InputError("an assistant message is empty in the middle of the conversation")
    system = "\n".join(system_parts) if system_parts else None
    return system, merged


def render(
    messages: Sequence[Any],
    template: str | Template = "mplug_owl2",
    add_generation_prompt: bool = True,
    image_separator: str = "",
) -> RenderedPrompt:
    """Render OpenAI-style ``messages`` with an official template.

    ``messages``: ``[{"role": "system"|"user"|"assistant", "content": str | [parts]}]`` where a
    part is ``{"type": "text", "text": ...}``, ``{"type": "image"}`` (image supplied elsewhere),
    ``{"type": "image", "image": <path|PIL|bytes|array>}`` or ``{"type": "image_url",
    "image_url": {"url": ...}}``. Any number of images anywhere, any number of turns.

    ``add_generation_prompt``: end with the assistant's prompt (``"AI: "`` / ``"ASSISTANT:"``)
    when the last message is the user's. A last assistant message with empty content is the
    pending reply and always renders as that prompt. A conversation ending with a non-empty
    assistant message renders complete (``...AI: {a}`` / ``...ASSISTANT: {a}</s>``).

    ``image_separator``: text between a message's images and its text in the v2 templates
    (``""`` as official inference; the official v2 training data has ``"\\n"``).

    Returns :class:`RenderedPrompt` ``(prompt, images)``; ``images`` holds the image objects
    (``None`` for parts without one) in the order their placeholders appear in ``prompt``.
    """
    tpl = get_template(template)
    system, turns = parse_messages(messages)
    images: list = []
    for turn in turns:
        images.extend(turn.images)
    if tpl.style == "human_ai":
        prompt = _render_human_ai(tpl, system, turns, add_generation_prompt)
    elif tpl.style == "jinja":
        prompt = render_jinja(tpl, system, turns, add_generation_prompt, image_separator)
    else:
        prompt = _render_two(tpl, system, turns, add_generation_prompt, image_separator)
    return RenderedPrompt(prompt, images)


def _render_human_ai(tpl: Template, system: str | None, turns: list[Turn], add_generation_prompt: bool) -> str:
    human, ai = tpl.roles
    lines = [tpl.system if system is None else system]
    pending = False
    for turn in turns:
        if turn.role == "user":
            lines.extend(f"{human}: {tpl.image_placeholder}" for _ in turn.images)
            if turn.text or not turn.images:
                lines.append(f"{human}: {turn.text}")
        elif turn.pending:
            pending = True
        else:
            lines.append(f"{ai}: {turn.text}")
    prompt = tpl.sep.join(lines)
    if pending or (add_generation_prompt and turns[-1].role == "user"):
        prompt += tpl.sep + tpl.generation_prompt
    return prompt


def _render_two(
    tpl: Template, system: str | None, turns: list[Turn], add_generation_prompt: bool, image_separator: str = ""
) -> str:
    seps = (tpl.sep, tpl.sep2)
    if system is not None:
        prompt = system + tpl.sep
    elif tpl.emit_system:
        prompt = tpl.system + tpl.sep
    else:
        prompt = ""
    entries: list[tuple[str, str | None]] = []
    for turn in turns:
        if turn.role == "user":
            head = tpl.image_placeholder * len(turn.images)
            if head and turn.text:
                head += image_separator
            entries.append((tpl.roles[0], head + turn.text))
        else:
            entries.append((tpl.roles[1], None if turn.pending else turn.text))
    if add_generation_prompt and turns[-1].role == "user":
        entries.append((tpl.roles[1], None))
    for i, (role, message) in enumerate(entries):
        if message:
            prompt += f"{role}: {message}{seps[i % 2]}"
        else:
            prompt += f"{role}:"
    return prompt


def render_jinja(tpl: Template, system: str | None, turns: Sequence[Turn], add_generation_prompt: bool,
                 image_separator: str = "") -> str:
    """Turns rendered by an LLM's own chat template (images as placeholders at each message's front)."""
    from transformers.utils.chat_template_utils import render_jinja_template  # processing imports no transformers

    messages = [{"role": "system", "content": system}] if system is not None else []
    for turn in turns:
        if turn.role == "user":
            head = tpl.image_placeholder * len(turn.images)
            messages.append({"role": "user", "content": head + (image_separator if head and turn.text else "") + turn.text})
        elif not turn.pending:
            messages.append({"role": "assistant", "content": turn.text})
    pending = bool(turns) and turns[-1].pending
    generate = pending or (add_generation_prompt and bool(turns) and turns[-1].role == "user")
    try:
        rendered, _ = render_jinja_template([messages], chat_template=tpl.jinja, add_generation_prompt=generate,
                                            **dict(tpl.variables))
    except Exception as e:  # jinja2 errors, or the template's own raise_exception
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise InputError(f"the model's chat template cannot render this conversation: {first}") from None
    return rendered[0]
