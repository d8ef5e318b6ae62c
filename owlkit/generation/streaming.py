"""Replies as they are generated: new token ids in, text deltas out, stop strings honoured.

The whole reply is decoded again at each token (so multi-byte characters and SentencePiece
spacing come out right), cut at the first stop string, stripped of special-token text; what
could still be the start of a stop string (or an incomplete UTF-8 sequence) is held back until
the next token decides (the rules are in :mod:`owlkit.generation.stops`).
"""

from __future__ import annotations

from typing import Callable, Sequence

from owlkit.generation.stops import cut_at_stop, held_back, strip_special


class ReplyText:
    """The text of one reply, fed token by token."""

    def __init__(self, decode: Callable[[list[int]], str], stops: Sequence[str], specials: Sequence[str]):
        self.decode, self.stops, self.specials = decode, list(stops), list(specials)
        self.ids: list[int] = []
        self.text = ""
        self.sent = 0
        self.stopped = False

    def push(self, token: int) -> str:
        """Add a token; returns the text that is now certain (may be empty)."""
        self.ids.append(int(token))
        text, self.stopped = cut_at_stop(self.decode(self.ids), self.stops)
        self.text = strip_special(text, self.specials).lstrip()
        upto = len(self.text) if self.stopped else len(self.text) - held_back(self.text, self.stops)
        delta = self.text[self.sent:upto] if upto > self.sent else ""
        self.sent = max(self.sent, upto)
        return delta

    def flush(self) -> str:
        """At the end: what was held back as a possible stop-string start."""
        if self.stopped:
            return ""
        tail = self.text.rstrip()[self.sent:]
        self.sent += len(tail)
        return tail

    @property
    def final(self) -> str:
        return self.text.strip()
