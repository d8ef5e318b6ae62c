"""Scoring answers: exact match after the world's normalisation."""

from __future__ import annotations

import string

from owlkit.zoo.world.vocabulary import NUMBER_WORDS


_SYNONYMS = {"color": "colour", "centre": "center", "middle": "center", "gray": "grey"}
_NUMBERS = {w: str(i) for i, w in enumerate(NUMBER_WORDS)}
_PUNCT = str.maketrans({c: " " for c in string.punctuation})


def normalize_answer(text: str) -> str:
    """Lower-case, punctuation to spaces, number words to digits, a leading article dropped.

    ``"The first."`` -> ``"first"``, ``"Seven"`` -> ``"7"``, ``"C-A-T"`` -> ``"c a t"``.
    """
    tokens = str(text).lower().translate(_PUNCT).split()
    tokens = [_NUMBERS.get(t, _SYNONYMS.get(t, t)) for t in tokens]
    spelled = len(tokens) > 1 and all(len(t) == 1 for t in tokens)
    if not spelled and len(tokens) > 1 and tokens[0] in ("a", "an", "the"):
        tokens = tokens[1:]
    return " ".join(tokens)


def exact_match(prediction: str, answer: str) -> bool:
    """Whether ``prediction`` and ``answer`` are the same after :func:`normalize_answer`."""
    return normalize_answer(prediction) == normalize_answer(answer)
