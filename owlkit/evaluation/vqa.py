"""VQA accuracy (VQA v2, OK-VQA, TextVQA, VizWiz) and exact match (GQA).

Protocol: the standard VQA v2 evaluation (``vqaEval.py`` of the VQA API, as copied into
mPLUG-Owl2's ``evaluate/vqa_eval.py`` by way of Qwen-VL), reproduced line for line:

* prediction: ``\\n`` and ``\\t`` become spaces, ``strip()``, then :func:`process_punctuation`
  and :func:`process_digit_article`;
* ground truth: the answers of the (normally 10) annotators are passed through
  :func:`process_punctuation` **only** when they are not all identical (and never through
  :func:`process_digit_article`);
* for each ground-truth answer ``i``: ``acc_i = min(1, #(other answers == prediction) / 3)``,
  where "other answers" are the remaining annotators; the question score is the mean of the
  ``acc_i``; the overall score is ``100 * mean`` rounded to 2 decimals, likewise per question
  type and per answer type.

Faithfully kept quirks of the official code:

* the punctuation test looks at the *original* text (``p + ' ' in inText``) while the
  replacement applies to the running output;
* the digit-comma-digit test (``(\\d)(,)(\\d)``) makes **every** punctuation mark be deleted
  (instead of replaced by a space) anywhere in the text;
* the period regex ``(?!<=\\d)(\\.)(?!\\d)`` has a typo (``(?!<=`` instead of ``(?<!``), so it
  deletes every period that is not followed by a digit ("3.5" keeps its period, "1." loses
  it); and ``re.UNICODE`` is passed as the *count* argument of ``sub``, so at most 32 periods
  are deleted;
* the contraction table is applied word by word after the number/article mapping, and it
  contains a few odd entries ("somebody'd" -> "somebodyd") which are kept as they are.

The newer GitHub master of the VQA API (GT-Vision-Lab) instead processes the prediction and
the ground truth (punctuation *and* digits/articles) only when the annotators disagree; the
numbers published for mPLUG-Owl2 use the version above, which is what this module does.

The EvalAI answer processor (:func:`evalai_normalize`, the one used to write VQA v2
test-dev submission files; from facebookresearch/mmf ``EvalAIAnswerProcessor``) lowercases,
drops ``,`` and ``?``, splits ``'s``, and then applies the same punctuation / digit / article /
contraction normalisation, with its own comma rule ``(?<=\\d)(\\,)+(?=\\d)``.

VizWiz (``vqaEval.py`` of the VizWiz VQA evaluation) uses the same formula and the same
prediction processing but compares with the annotators' answers **as written**
(``process_gt=False``): "Coca-Cola" against coca-cola x6, coca cola, coke x2, soda scores 0.3
there, 1.0 with the VQA v2 rule. "unanswerable" is an ordinary answer (a prediction
"Unanswerable." becomes "unanswerable").
:func:`vizwiz_submission_answer` follows the common convention of writing "unanswerable" when
the normalised prediction is empty.

GQA follows LLaVA-1.5 (the protocol of the mPLUG-Owl2 README numbers): the prediction
lowercased without its trailing periods must equal the gold answer (:func:`gqa_accuracy`).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from owlkit.errors import InputError
from owlkit.evaluation.samples import EvalSample, align_predictions

__all__ = [
    "CONTRACTIONS",
    "NUMBER_MAP",
    "ARTICLES",
    "PUNCTUATION",
    "process_punctuation",
    "process_digit_article",
    "normalize_answer",
    "evalai_normalize",
    "vizwiz_submission_answer",
    "process_gt_answers",
    "vqa_question_accuracy",
    "vqa_accuracy",
    "breakdown",
    "gqa_prediction",
    "gqa_accuracy",
]

# The official table, in the official order (vqaEval.py, VQAEval.__init__).
CONTRACTIONS: dict[str, str] = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've",
    "couldnt": "couldn't", "couldn'tve": "couldn't've", "couldnt've": "couldn't've",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't",
    "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've",
    "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've",
    "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've",
    "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're",
    "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've",
    "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't",
    "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll",
    "youre": "you're", "youve": "you've",
}

NUMBER_MAP: dict[str, str] = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}

ARTICLES: tuple[str, ...] = ("a", "an", "the")

# Official order matters only for the running replacement, and is kept.
PUNCTUATION: tuple[str, ...] = (
    ";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`",
    ",", "?", "!",
)

# Verbatim, typo included: "(?!<=\d)" is a negative *lookahead* for the two characters "<="
# followed by a digit, which is always true at a period, so the rule is "a period not followed
# by a digit is deleted".
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
# The official call is periodStrip.sub("", outText, re.UNICODE): re.UNICODE lands in `count`.
_PERIOD_COUNT = int(re.UNICODE)  # == 32

# EvalAI variant (mmf EvalAIAnswerProcessor).
_EVALAI_COMMA_STRIP = re.compile(r"(?<=\d)(\,)+(?=\d)")


def _punctuation(text: str, comma_strip: re.Pattern[str]) -> str:
    out = text
    has_digit_comma = comma_strip.search(text) is not None
    for p in PUNCTUATION:
        if (p + " " in text or " " + p in text) or has_digit_comma:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out, _PERIOD_COUNT)


def process_punctuation(text: str) -> str:
    """Official ``processPunctuation``.

    Each mark of :data:`PUNCTUATION` is deleted when it touches a space anywhere in the
    *input* (``"p "`` or ``" p"``) or when the input contains digit-comma-digit; otherwise it
    is replaced by a space. Then every period not followed by a digit is deleted.

    >>> process_punctuation("1,000")
    '1000'
    >>> process_punctuation("black/white")
    'black white'
    >>> process_punctuation("3.5 ft.")
    '3.5 ft'
    """
    return _punctuation(text, _COMMA_STRIP)


def process_digit_article(text: str) -> str:
    """Official ``processDigitArticle``: lowercase, split on whitespace, map number words
    ("zero".."ten", "none") to digits, drop articles, apply the contraction table, join with
    single spaces.

    >>> process_digit_article("The Two dogs")
    '2 dogs'
    >>> process_digit_article("dont")
    "don't"
    """
    words = []
    for word in text.lower().split():
        word = NUMBER_MAP.get(word, word)
        if word not in ARTICLES:
            words.append(word)
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


def normalize_answer(text: str) -> str:
    """The full processing the official evaluation applies to a *prediction*."""
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(text))


def evalai_normalize(text: str) -> str:
    """EvalAI answer processor (VQA v2 test-dev / test-std submissions).

    ``lower``, delete ``,`` and ``?``, ``'s`` -> ``" 's"``, strip, newline/tab -> space, then
    the punctuation rule (with the EvalAI comma regex) and :func:`process_digit_article`.

    >>> evalai_normalize("Two dogs.")
    '2 dogs'
    >>> evalai_normalize("man's")
    "man 's"
    """
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(_punctuation(text, _EVALAI_COMMA_STRIP))


def vizwiz_submission_answer(prediction: str) -> str:
    """Answer for a VizWiz submission file: EvalAI-normalised, "unanswerable" when empty."""
    answer = evalai_normalize(prediction)
    return answer if answer else "unanswerable"


def process_gt_answers(gt_answers: Sequence[str]) -> list[str]:
    """Ground-truth answers as the official code compares them: punctuation-processed only
    when the annotators disagree (``len(set(answers)) > 1``), left untouched otherwise."""
    answers = [str(a) for a in gt_answers]
    if len(set(answers)) > 1:
        return [process_punctuation(a) for a in answers]
    return answers


def vqa_question_accuracy(prediction: str, gt_answers: Sequence[str], process_gt: bool = True) -> float:
    """Score in [0, 1] of one raw prediction against the raw annotator answers
    (``process_gt=False``: compared as written, as VizWiz's ``vqaEval.py`` does).

    For each annotator ``i``: ``min(1, #{j != i : gt_j == pred} / 3)``; mean over ``i``.
    With 10 annotators of whom ``k`` gave the (processed) prediction, this is
    ``(k * min(1, (k-1)/3) + (10-k) * min(1, k/3)) / 10``: 0.3, 0.6, 0.9, 1.0 for k = 1..4.
    """
    if not gt_answers:
        raise ValueError("vqa_question_accuracy needs at least one ground-truth answer")
    pred = normalize_answer(prediction)
    gts = process_gt_answers(gt_answers) if process_gt else [str(a) for a in gt_answers]
    total = 0.0
    for i in range(len(gts)):
        matches = sum(1 for j, g in enumerate(gts) if j != i and g == pred)
        total += min(1.0, matches / 3)
    return total / len(gts)


def breakdown(scores: Mapping[Any, float], samples: Sequence[EvalSample], key: str,
              ndigits: int = 2) -> dict[str, float]:
    """Mean score (×100, rounded) per value of ``sample.metadata[key]`` (e.g.
    ``question_type``, ``answer_type``, ``category``). Samples without the key are skipped."""
    groups: dict[str, list[float]] = defaultdict(list)
    for s in samples:
        if key in s.metadata and s.metadata[key] is not None and s.id in scores:
            groups[str(s.metadata[key])].append(scores[s.id])
    return {k: round(100 * sum(v) / len(v), ndigits) for k, v in groups.items()}


def vqa_accuracy(samples: Sequence[EvalSample], predictions: Mapping[Any, str] | Sequence[str],
                 ndigits: int = 2, process_gt: bool = True) -> dict[str, Any]:
    """VQA accuracy of raw predictions over samples carrying annotator answers
    (``process_gt``: see :func:`vqa_question_accuracy`).

    ``predictions`` is ``{sample.id: text}`` or a list aligned with ``samples``. Returns
    ``{"overall", "perQuestionType", "perAnswerType", "n", "per_question"}`` where the first
    three are ×100 and rounded like the official ``setAccuracy`` and ``per_question`` holds the
    unrounded [0, 1] score of each sample id.
    """
    preds = align_predictions(samples, predictions)
    per_question: dict[Any, float] = {}
    for s in samples:
        if len(s.answers) < 2:
            # One answer can never match "the other annotators": the official formula would
            # silently score 0. This happens with JSONL files that carry only the majority
            # answer; join them with the official annotations instead.
            raise InputError(
                f"sample {s.id!r} has {len(s.answers)} ground-truth answer(s); VQA accuracy needs "
                "the annotators' answers (usually 10): read the official annotations file too"
            )
        per_question[s.id] = vqa_question_accuracy(preds[s.id], s.answers, process_gt)
    n = len(per_question)
    overall = round(100 * sum(per_question.values()) / n, ndigits) if n else 0.0
    return {
        "overall": overall,
        "perQuestionType": breakdown(per_question, samples, "question_type", ndigits),
        "perAnswerType": breakdown(per_question, samples, "answer_type", ndigits),
        "n": n,
        "per_question": per_question,
    }


def gqa_prediction(text: str) -> str:
    """A GQA prediction as LLaVA-1.5's ``convert_gqa_for_eval.py`` writes it: trailing
    periods removed, lowercased (GQA's ``eval.py`` then compares it with the answer exactly)."""
    return text.rstrip(".").lower()


def gqa_accuracy(samples: Sequence[EvalSample], predictions: Mapping[Any, str] | Sequence[str],
                 ndigits: int = 2, lenient: bool = False) -> dict[str, Any]:
    """GQA accuracy ×100: :func:`gqa_prediction` equal to the gold answer as written
    (``lenient``: :func:`normalize_answer` of both, which forgives articles and punctuation),
    plus a breakdown by ``metadata["structural"]`` / ``metadata["semantic"]`` when present."""
    preds = align_predictions(samples, predictions)
    norm = normalize_answer if lenient else str
    per_question: dict[Any, float] = {}
    for s in samples:
        if not s.answers:
            raise ValueError(f"sample {s.id!r} has no ground-truth answer to score against")
        gold = {norm(a) for a in s.answers}
        pred = normalize_answer(preds[s.id]) if lenient else gqa_prediction(preds[s.id])
        per_question[s.id] = 1.0 if pred in gold else 0.0
    n = len(per_question)
    return {
        "accuracy": round(100 * sum(per_question.values()) / n, ndigits) if n else 0.0,
        "perStructuralType": breakdown(per_question, samples, "structural", ndigits),
        "perSemanticType": breakdown(per_question, samples, "semantic", ndigits),
        "n": n,
        "per_question": per_question,
    }
