"""Multiple choice: answer parsers, accuracy and MMBench CircularEval.

Used for MMBench, SEED-Bench, ScienceQA-IMG and MMLU. Each benchmark scores with the parser
of the script behind its published numbers (``docs/evaluation.md`` names repository, file
and commit):

* :func:`vlmevalkit_choice` (MMBench without a judge model): VLMEvalKit's ``can_infer``
  (``vlmeval/utils/matching_util.py``): ``.()[],:;!*#{}`` become spaces, and when exactly one
  option letter stands among the words it is the answer ("A dog" is option A), a refusal
  phrase or a lone ``Z`` is ``Z`` (wrong); otherwise the one option whose lowercased text
  occurs in the lowercased answer; otherwise unparsed;
* :func:`llava_scienceqa_choice` (ScienceQA-IMG): LLaVA's ``eval_science_qa.py``: the
  answer is a bare letter, starts with ``"X. "``, or holds exactly one ``"The answer is X"``
  followed by any character; a letter beyond the options is wrong;
* :func:`exact_letter` (SEED-Bench, MMLU's log-likelihood letter): LLaVA's
  ``convert_seed_for_submission.py`` compares ``text == answer``.

:func:`extract_choice` is owlkit's forgiving parser, used by ``owl eval --lenient`` only
(its numbers are reported under ``*_lenient`` names):

1. the whole answer is a letter: ``B``, ``(B)``, ``B.``, ``[B]``, ``B)``;
2. the answer starts with a letter and a delimiter: ``B. dog``, ``(C) dog``, ``C) dog``, ``B: cat``;
3. an indicator phrase: ``The answer is B``, ``Answer: C) dog``, ``the correct option is (D)``;
4. exactly one valid capital letter stands alone among the words (``A`` followed by a
   lower-case word other than is/and/or is read as the article);
5. the option texts: the one option equal to the normalised answer, else the one option
   whose text appears in it as whole words (when several appear and one contains all the
   others, that one: "hot dog" beats "dog").

CircularEval (MMBench): an N-option question is asked N times with the options shifted
cyclically (copy k shows options ``k, k+1, ...`` of the original; MMBench TSVs store copy k
under ``index + k * 1_000_000``, VLMEvalKit groups them by ``index % 1e6``); the question is
correct only when every copy is. :func:`rotate_choices` makes the copies,
:func:`circular_samples` expands samples into them, :func:`circular_accuracy` scores them.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, Callable

from owlkit.evaluation.samples import LETTERS, EvalSample, align_predictions

__all__ = [
    "format_options",
    "extract_choice",
    "vlmevalkit_choice",
    "llava_scienceqa_choice",
    "exact_letter",
    "choice_accuracy",
    "rotate_choices",
    "circular_samples",
    "circular_accuracy",
    "MMBENCH_CIRCULAR_STRIDE",
]

# MMBench: the circular copies of question `i` have index i + k * 1_000_000 (k = 1..N-1);
# VLMEvalKit groups them with g_index = int(index % 1e6) and the main copy is index == g_index.
MMBENCH_CIRCULAR_STRIDE = 1_000_000

_ARTICLE_FOLLOWERS_AS_LETTER = {"is", "and", "or", "because", "since", "seems", "looks"}

#: a parser: (answer text, option texts or their number) -> option letter or None
ChoiceParser = Callable[[str, "Sequence[str] | int"], "str | None"]

# VLMEvalKit can_infer_option: answers that are refusals count as option Z (always wrong)
_VLMEVALKIT_REFUSALS = ("Sorry, I can't help with images of people yet.", "I can't process this file.",
                        "I'm sorry, but without the image provided", "Cannot determine the answer")
_SQA_ANSWER_IS = re.compile(r"The answer is ([A-Z]).")


def format_options(choices: Sequence[str]) -> str:
    """``"A. first\\nB. second"``: the option block of the mPLUG-Owl2 MMBench prompt."""
    return "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices))


def _norm(text: str) -> str:
    text = text.lower().replace("\u2019", "'")
    text = re.sub(r"[^\w\s']", " ", text)
    return " ".join(text.split())


def extract_choice(text: str, choices: Sequence[str] | int) -> str | None:
    """The option letter a free-text answer designates, or ``None``.

    ``choices`` is the list of option texts (letter order) or just their number.

    >>> extract_choice("The answer is B", 4)
    'B'
    >>> extract_choice("Answer: C) dog", ["cat", "bird", "dog"])
    'C'
    >>> extract_choice("a dog", ["a cat", "a dog"])
    'B'
    """
    n = choices if isinstance(choices, int) else len(choices)
    texts = [] if isinstance(choices, int) else [str(c) for c in choices]
    letters = LETTERS[:n]
    if n == 0:
        return None
    s = str(text).strip()
    if not s:
        return None
    cls = f"[{letters}]"
    # 1. only a letter
    m = re.fullmatch(rf"[\(\[]?\s*({cls})\s*[\)\]]?\s*[.:,;)]?", s)
    if m:
        return m.group(1)
    # 2. leading letter with a delimiter
    m = re.match(rf"[\(\[]\s*({cls})\s*[\)\]]|({cls})(?:[\)\]]|[.:](?=\s|$))", s)
    if m:
        return m.group(1) or m.group(2)
    # 3. indicator phrase
    m = re.search(
        rf"(?i:\b(?:answer|option|choice)\b(?:\s+(?:is|would\s+be|should\s+be|will\s+be))?)"
        rf"\s*[:\uff1a]?\s*[\(\[]?\s*({cls})(?![A-Za-z0-9])", s)
    if m:
        return m.group(1)
    # 4. a single letter standing alone
    words = re.findall(r"[A-Za-z0-9']+", s)
    found = set()
    for i, w in enumerate(words):
        if len(w) == 1 and w in letters:
            nxt = words[i + 1] if i + 1 < len(words) else ""
            if w == "A" and nxt[:1].islower() and nxt not in _ARTICLE_FOLLOWERS_AS_LETTER:
                continue
            if w == "I" and nxt[:1].islower():
                continue
            found.add(w)
    if len(found) == 1:
        return found.pop()
    # 5. option texts
    if texts and not found:
        pred = _norm(s)
        normed = [_norm(t) for t in texts]
        exact = [letters[i] for i, t in enumerate(normed) if t and t == pred]
        if len(exact) == 1:
            return exact[0]
        inside = [i for i, t in enumerate(normed)
                  if t and re.search(rf"(?<!\w){re.escape(t)}(?!\w)", pred)]
        if len(inside) == 1:
            return letters[inside[0]]
        if len(inside) > 1:
            longest = max(inside, key=lambda i: len(normed[i]))
            if all(normed[i] in normed[longest] for i in inside):
                return letters[longest]
    return None


def _option_texts(choices: Sequence[str] | int) -> list[str]:
    return [] if isinstance(choices, int) else [str(c) for c in choices]


def vlmevalkit_choice(text: str, choices: Sequence[str] | int) -> str | None:
    """VLMEvalKit's ``can_infer`` (exact matching, no judge model); ``"Z"`` for a refusal.

    >>> vlmevalkit_choice("A dog", ["a cat", "a dog"])
    'A'
    """
    n = choices if isinstance(choices, int) else len(choices)
    letters = LETTERS[:n]
    answer = str(text)
    if "Failed to obtain answer via API" not in answer:
        if any(phrase in answer for phrase in _VLMEVALKIT_REFUSALS):
            return "Z"
        words = re.sub(r"[.()\[\],:;!*#{}]", " ", answer).split()
        found = [c for c in letters if c in words]
        if len(found) == 1:
            return found[0]
        if not found and "Z" in words:
            return "Z"
    low = answer.lower()
    inside = [letters[i] for i, t in enumerate(_option_texts(choices)) if t.lower() in low]
    return inside[0] if len(inside) == 1 else None


def llava_scienceqa_choice(text: str, choices: Sequence[str] | int) -> str | None:
    """LLaVA-1.5's ``eval_science_qa.py``: a bare letter, ``"X. ..."``, or exactly one
    ``"The answer is X"`` + any character; A..E only, and only letters of the options."""
    n = choices if isinstance(choices, int) else len(choices)
    options = LETTERS[:5]
    answer = None
    if text in options:
        answer = text
    elif len(text) >= 3 and text[0] in options and text[1:3] == ". ":
        answer = text[0]
    else:
        found = _SQA_ANSWER_IS.findall(text)
        if len(found) == 1:
            answer = found[0]
    return answer if answer is not None and answer in options[:n] else None


def exact_letter(text: str, choices: Sequence[str] | int) -> str | None:
    """The answer itself when it is exactly one of the option letters (SEED-Bench's
    ``text == answer``)."""
    n = choices if isinstance(choices, int) else len(choices)
    return text if text in LETTERS[:n] and len(text) == 1 else None


def choice_accuracy(samples: Sequence[EvalSample], predictions: Mapping[Any, str] | Sequence[str],
                    ndigits: int = 2, parse: ChoiceParser = extract_choice) -> dict[str, Any]:
    """Accuracy (×100) of free-text answers on samples whose ``answers[0]`` is the gold letter,
    each answer read by ``parse``.

    Returns ``{"accuracy", "n", "unparsed", "per_category", "per_question", "extracted"}``;
    ``per_category`` groups by ``metadata["category"]`` (or ``"subject"``) when present.
    """
    preds = align_predictions(samples, predictions)
    per_question: dict[Any, float] = {}
    extracted: dict[Any, str | None] = {}
    for s in samples:
        if not s.answers:
            raise ValueError(f"sample {s.id!r} has no gold answer to score against")
        letter = parse(preds[s.id], s.choices or len(LETTERS))
        extracted[s.id] = letter
        per_question[s.id] = 1.0 if letter == s.answers[0] else 0.0
    groups: dict[str, list[float]] = defaultdict(list)
    for s in samples:
        cat = s.metadata.get("category", s.metadata.get("subject"))
        if cat is not None:
            groups[str(cat)].append(per_question[s.id])
    n = len(per_question)
    return {
        "accuracy": round(100 * sum(per_question.values()) / n, ndigits) if n else 0.0,
        "n": n,
        "unparsed": sum(1 for v in extracted.values() if v is None),
        "per_category": {k: round(100 * sum(v) / len(v), ndigits) for k, v in sorted(groups.items())},
        "per_question": per_question,
        "extracted": extracted,
    }


def rotate_choices(choices: Sequence[str], answer: str | int | None = None
                   ) -> list[tuple[list[str], str | None]]:
    """The N circular copies of an N-option question: copy k shows the options starting at
    the original option k; returns ``[(options, gold letter or None), ...]`` with copy 0 the
    original.

    >>> rotate_choices(["cat", "dog", "cow"], "B")
    [(['cat', 'dog', 'cow'], 'B'), (['dog', 'cow', 'cat'], 'A'), (['cow', 'cat', 'dog'], 'C')]
    """
    n = len(choices)
    if isinstance(answer, str):
        if answer not in LETTERS[:n]:
            raise ValueError(f"answer {answer!r} does not name one of {n} options")
        idx: int | None = LETTERS.index(answer)
    else:
        idx = answer
        if idx is not None and not 0 <= idx < n:
            raise ValueError(f"answer index {idx} out of range for {n} options")
    out = []
    for k in range(n):
        rotated = [choices[(i + k) % n] for i in range(n)]
        out.append((rotated, None if idx is None else LETTERS[(idx - k) % n]))
    return out


def circular_samples(samples: Sequence[EvalSample]) -> list[EvalSample]:
    """Every sample expanded into its circular copies (copy 0 first).

    Copies get ``metadata["group"]`` (the original question) and
    ``metadata["circular_copy"]`` = k; integer ids become ``id + k * 1_000_000`` (MMBench's
    convention), other ids ``f"{id}#{k}"``. Samples that already are copies (k > 0) are
    dropped, so a TSV that holds copies can be expanded again without duplicates.
    """
    out = []
    for s in samples:
        if s.metadata.get("circular_copy", 0):
            continue
        group = s.metadata.get("group", s.id)
        answer = s.answers[0] if s.answers else None
        for k, (opts, gold) in enumerate(rotate_choices(s.choices, answer)):
            sid = s.id + k * MMBENCH_CIRCULAR_STRIDE if isinstance(s.id, int) else (s.id if k == 0 else f"{s.id}#{k}")
            meta = dict(s.metadata, group=group, circular_copy=k)
            if "index" in meta and isinstance(sid, int):
                meta["index"] = sid
            out.append(replace(s, id=sid, choices=list(opts), answers=[gold] if gold else [], metadata=meta))
    return out


def circular_accuracy(samples: Sequence[EvalSample], predictions: Mapping[Any, str] | Sequence[str],
                      ndigits: int = 2, parse: ChoiceParser = extract_choice) -> dict[str, Any]:
    """MMBench CircularEval over samples holding all their copies, answers read by ``parse``.

    Groups by ``metadata["group"]`` (else the id). Returns ``{"circular_accuracy",
    "vanilla_accuracy", "groups", "per_category", "per_group", "extracted"}``:
    ``vanilla_accuracy`` scores copy 0 only (MMBench's "VanillaEval"), ``per_category`` the
    circular score per ``metadata["category"]``.
    """
    preds = align_predictions(samples, predictions)
    groups: dict[Any, list[EvalSample]] = defaultdict(list)
    for s in samples:
        groups[s.metadata.get("group", s.id)].append(s)
    per_group: dict[Any, bool] = {}
    extracted: dict[Any, str | None] = {}
    vanilla: list[float] = []
    categories: dict[str, list[float]] = defaultdict(list)
    for g, members in groups.items():
        ok = True
        for s in members:
            if not s.answers:
                raise ValueError(f"sample {s.id!r} has no gold answer to score against")
            letter = parse(preds[s.id], s.choices or len(LETTERS))
            extracted[s.id] = letter
            hit = letter == s.answers[0]
            ok = ok and hit
            if s.metadata.get("circular_copy", 0) == 0:
                vanilla.append(1.0 if hit else 0.0)
        per_group[g] = ok
        cat = members[0].metadata.get("category")
        if cat is not None:
            categories[str(cat)].append(1.0 if ok else 0.0)
    n = len(per_group)
    return {
        "circular_accuracy": round(100 * sum(per_group.values()) / n, ndigits) if n else 0.0,
        "vanilla_accuracy": round(100 * sum(vanilla) / len(vanilla), ndigits) if vanilla else 0.0,
        "groups": n,
        "per_category": {k: round(100 * sum(v) / len(v), ndigits) for k, v in sorted(categories.items())},
        "per_group": per_group,
        "extracted": extracted,
    }
