"""MMMU's answer matching, as mPLUG-Owl2's ``evaluate_mmmu.py`` scores it.

A multiple-choice answer is right when it *equals* the gold letter (the script has a letter
parser but never calls it: "A." or "(A)" are wrong). An open answer is parsed first
(:func:`parse_open_response`): the key phrases after indicators such as "is", "so",
"therefore", "answer" (and "=" in the last line), every number found in them, each
normalised (:func:`normalize_answer`: numbers as floats rounded to 2 decimals, text
lowercased, a one-character text padded with a space on either side). It is right
(:func:`open_answer_correct`) when a normalised gold text occurs in a parsed text, or a
parsed number equals a gold number. Nothing here imports torch.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["is_number", "normalize_answer", "extract_numbers", "key_phrases", "parse_open_response",
           "open_answer_correct", "choice_answer_correct"]

Normalized = str | float

# the phrases after which an answer's key part follows; "=" counts in the last line only
_INDICATORS = ("could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result ")
_TRIVIAL = {":", ",", ".", "!", "?", ";", "'"}

_WITH_COMMAS = re.compile(r"-?\b\d{1,3}(?:,\d{3})+\b")
_SCIENTIFIC = re.compile(r"-?\d+(?:\.\d+)?[eE][+-]?\d+")
_SIMPLE = re.compile(r"-?(?:\d+\.\d+|\.\d+|\d+\b)(?![eE][+-]?\d+)(?![,\d])")


def is_number(text: str) -> bool:
    """Whether ``float`` reads ``text`` once its commas are removed ("1,000", "3e5", "nan")."""
    try:
        float(text.replace(",", ""))
    except ValueError:
        return False
    return True


def normalize_answer(text: str) -> list[Normalized]:
    """One answer string as the script compares it: ``[float rounded to 2 decimals]`` for a
    number, else ``[lowercased text]``, or ``[" x", "x "]`` for a single character (so that
    it only matches as a word edge)."""
    text = text.strip()
    if is_number(text):
        return [round(float(text.replace(",", "")), 2)]
    text = text.lower()
    return [" " + text, text + " "] if len(text) == 1 else [text]


def extract_numbers(text: str) -> list[str]:
    """The numbers written in ``text``: with thousands commas, in scientific notation, then
    plain ones (in that order, as strings)."""
    return _WITH_COMMAS.findall(text) + _SCIENTIFIC.findall(text) + _SIMPLE.findall(text)


def key_phrases(response: str) -> list[str]:
    """The parts of a (lowercased) response that may hold the answer: per line, the shortest
    tail after an indicator phrase; the whole response when no line has one."""
    response = response.strip().strip(".").lower()
    # the script also splits at ". " before a capital letter, which never occurs once lowercased
    lines = re.split(r"\.\s(?=[A-Z])|\n", response)
    found = []
    for k, line in enumerate(lines):
        indicators = _INDICATORS + (("=",) if k == len(lines) - 1 else ())
        shortest = None
        for indicator in indicators:
            if indicator in line:
                tail = line.split(indicator)[-1].strip()
                if not shortest or len(tail) < len(shortest):  # an empty tail is replaced, as in the script
                    shortest = tail
        if shortest and shortest.strip() not in _TRIVIAL:
            found.append(shortest)
    return found or [response]


def parse_open_response(response: str) -> list[Normalized]:
    """The normalised candidates of an open answer: its key phrases and the numbers in them,
    each through :func:`normalize_answer`, without repeats (first-seen order; the script
    keeps them in a set, whose order does not matter to the match)."""
    phrases = key_phrases(response)
    candidates = phrases + [n for p in phrases for n in extract_numbers(p)]
    return list(dict.fromkeys(x for c in candidates for x in normalize_answer(c)))


def open_answer_correct(gold: str | Sequence[str], parsed: Sequence[Normalized]) -> bool:
    """Whether parsed candidates match the gold answer(s): a gold text inside a candidate
    text, or a candidate number equal to a gold number."""
    golds = [gold] if isinstance(gold, str) else list(gold)
    norm = [x for g in golds for x in normalize_answer(g)]
    for candidate in parsed:
        if isinstance(candidate, str):
            if any(isinstance(g, str) and g in candidate for g in norm):
                return True
        elif candidate in norm:
            return True
    return False


def choice_answer_correct(gold: str | Sequence[str], answer: str) -> bool:
    """The script's multiple-choice rule: the answer equals the gold letter (or one of them)."""
    return answer in gold if not isinstance(gold, str) else answer == gold
