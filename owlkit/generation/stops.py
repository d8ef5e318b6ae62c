"""Stop strings: which apply to a reply, and how a reply's text is cut at them.

A reply ends at EOS, or at the first *stop string* in its decoded text: the template's own turn
separators (``Template.stops``: ``"</s>"`` and ``"USER:"`` for mPLUG-Owl2, ``"\\nHuman:"`` for
mPLUG-Owl) plus the caller's. The text is cut before the stop string, and special-token text
(``</s>``, ``<unk>``...) is removed. While a reply streams, the end of the text that could still
be the beginning of a stop string is held back (:func:`held_back`) until the next token decides.

The official evaluation protocol (``owl eval``'s generation tasks) is stricter: it generates to
EOS and cuts the answer afterwards only for mPLUG-Owl (v1), at its turn separator
(:func:`official_stops`).
"""

from __future__ import annotations

from typing import Sequence

from owlkit.processing.templates import get_template

#: The template whose turn separator ends an mPLUG-Owl (v1) answer in the official evaluation.
V1_TEMPLATE = "mplug_owl"


def reply_stops(template: str, extra: str | Sequence[str] | None = None) -> list[str]:
    """The stop strings of a reply: the template's, then the caller's (empty ones dropped)."""
    extra = [extra] if isinstance(extra, str) else list(extra or [])
    return list(get_template(template).stops) + [s for s in extra if s]


def official_stops(owl_version: int) -> list[str]:
    """Where the official evaluation cuts a generated answer: v1 at its turn separator, v2 nowhere."""
    return list(get_template(V1_TEMPLATE).stops) if int(owl_version) == 1 else []


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """Text up to the first stop string, and whether one was found."""
    cut = min((text.find(s) for s in stops if s and s in text), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def held_back(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters might be the start of a stop string (not to send yet)."""
    hold = 1 if text.endswith("\ufffd") else 0  # an incomplete UTF-8 sequence
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                hold = max(hold, k)
                break
    return hold


def special_strings(tokenizer) -> list[str]:
    """The text of the tokenizer's special tokens (``</s>``, ``<unk>``...)."""
    return [tokenizer.id_to_token(i) for i in tokenizer.special_ids]


def strip_special(text: str, specials: Sequence[str]) -> str:
    """Remove special-token strings (``</s>``, ``<unk>``...) from decoded text."""
    for token in specials:
        if token:
            text = text.replace(token, "")
    return text
