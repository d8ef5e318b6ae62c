"""Caption metrics as pycocoevalcap computes them, without Java: BLEU-1..4, CIDEr(-D), ROUGE-L.

Source: ``pycocoevalcap`` (tylin/coco-caption, the package behind ``COCOEvalCap`` that
mPLUG-Owl2's ``evaluate_caption.py`` calls).

Tokenization: :func:`~owlkit.evaluation.ptb.tokenize_captions` (the PTB tokenizer of
pycocoevalcap in pure Python, :mod:`owlkit.evaluation.ptb`); ``owl eval --java`` runs the Java
tokenizer and METEOR of an installed pycocoevalcap instead (:mod:`owlkit.evaluation.coco_java`).

BLEU (``bleu_scorer.py``): corpus-level modified n-gram precision with option ``'closest'``
(for each candidate the reference length closest to the candidate length, ties to the
shorter), ``tiny = 1e-15`` added to the matches and ``small = 1e-9`` to the guesses, brevity
penalty ``exp(1 - r/c)`` when ``c < r`` (c, r summed over the corpus), BLEU-n the geometric
mean of the first n precisions; per-image scores computed the same way per sentence.

CIDEr (``cider_scorer.py``, which is CIDEr-D): n = 1..4, TF-IDF vectors with
``idf = log(N) - log(max(1, df))`` where ``df`` counts the images (of the evaluated set)
whose references contain the n-gram and ``N`` the number of images; for each reference the
"clipped" similarity ``sum(min(h, r) * r) / (|h| |r|)`` per n times the length penalty
``exp(-(l_h - l_r)^2 / (2 * 6^2))``; mean over n, mean over references, times 10; corpus
score = mean over images. Quirk kept: the "length" is the number of **bigrams** of a
sentence (the code counts ``n == 1`` with 0-based ``n``). With a single image ``log(N) = 0``
and every score is 0, as in pycocoevalcap.

ROUGE-L (``rouge.py``): LCS-based F-measure with beta = 1.2 using the best precision and the
best recall over the references, mean over images.

METEOR needs Java (``--java``); SPICE is not computed.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from owlkit.evaluation.ptb import tokenize_captions
from owlkit.evaluation.samples import EvalSample, align_predictions

__all__ = [
    "bleu",
    "cider_d",
    "rouge_l",
    "caption_scores",
]

# ---------------------------------------------------------------------------------------------
# BLEU (pycocoevalcap/bleu/bleu_scorer.py)


def _precook(s: str, n: int) -> tuple[int, Counter]:
    words = s.split()
    counts: Counter = Counter()
    for k in range(1, n + 1):
        for i in range(len(words) - k + 1):
            counts[tuple(words[i:i + k])] += 1
    return len(words), counts


def _as_list(value: str | Sequence[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def bleu(gts: Mapping[Any, Sequence[str]], res: Mapping[Any, str | Sequence[str]],
         n: int = 4) -> tuple[list[float], list[list[float]]]:
    """pycocoevalcap ``Bleu(n).compute_score(gts, res)`` on already tokenized text.

    ``gts``: ``{id: [reference, ...]}``; ``res``: ``{id: candidate}`` or ``{id: [candidate]}``.
    Returns ``([BLEU-1, ..., BLEU-n], [[per-image BLEU-1], ..., [per-image BLEU-n]])``; the
    per-image lists follow the order of ``gts``.
    """
    small, tiny = 1e-9, 1e-15
    total_guess, total_correct = [0] * n, [0] * n
    total_testlen = 0
    total_reflen = 0
    per_image: list[list[float]] = [[] for _ in range(n)]
    for key, refs in gts.items():
        hypo = _as_list(res[key])
        if len(hypo) != 1:
            raise ValueError(f"BLEU needs exactly one candidate per image ({key!r} has {len(hypo)})")
        if not refs:
            raise ValueError(f"BLEU needs at least one reference per image ({key!r} has none)")
        reflens, maxcounts = [], {}
        for ref in refs:
            rl, counts = _precook(ref, n)
            reflens.append(rl)
            for ng, c in counts.items():
                maxcounts[ng] = max(maxcounts.get(ng, 0), c)
        testlen, counts = _precook(hypo[0], n)
        reflen = min((abs(length - testlen), length) for length in reflens)[1]  # 'closest'
        guess = [max(0, testlen - k + 1) for k in range(1, n + 1)]
        correct = [0] * n
        for ng, c in counts.items():
            correct[len(ng) - 1] += min(maxcounts.get(ng, 0), c)
        total_testlen += testlen
        total_reflen += reflen
        score = 1.0
        for k in range(n):
            total_guess[k] += guess[k]
            total_correct[k] += correct[k]
            score *= (float(correct[k]) + tiny) / (float(guess[k]) + small)
            per_image[k].append(score ** (1.0 / (k + 1)))
        ratio = (testlen + tiny) / (reflen + small)
        if ratio < 1:
            for k in range(n):
                per_image[k][-1] *= math.exp(1 - 1 / ratio)
    scores = []
    score = 1.0
    for k in range(n):
        score *= float(total_correct[k] + tiny) / (total_guess[k] + small)
        scores.append(score ** (1.0 / (k + 1)))
    ratio = (total_testlen + tiny) / (total_reflen + small)
    if ratio < 1:
        scores = [s * math.exp(1 - 1 / ratio) for s in scores]
    return scores, per_image


# ---------------------------------------------------------------------------------------------
# CIDEr-D (pycocoevalcap/cider/cider_scorer.py)


def _ngram_counts(s: str, n: int) -> Counter:
    return _precook(s, n)[1]


def cider_d(gts: Mapping[Any, Sequence[str]], res: Mapping[Any, str | Sequence[str]],
            n: int = 4, sigma: float = 6.0) -> tuple[float, list[float]]:
    """pycocoevalcap ``Cider().compute_score(gts, res)`` on already tokenized text.

    Returns ``(corpus score, per-image scores in the order of gts)``. Document frequencies
    come from the references of exactly the images given.
    """
    crefs, ctest = [], []
    for key, refs in gts.items():
        hypo = _as_list(res[key])
        if len(hypo) != 1:
            raise ValueError(f"CIDEr needs exactly one candidate per image ({key!r} has {len(hypo)})")
        if not refs:
            raise ValueError(f"CIDEr needs at least one reference per image ({key!r} has none)")
        crefs.append([_ngram_counts(r, n) for r in refs])
        ctest.append(_ngram_counts(hypo[0], n))
    if not crefs:
        return 0.0, []
    document_frequency: defaultdict[tuple, float] = defaultdict(float)
    for refs in crefs:
        for ngram in {ng for ref in refs for ng in ref}:
            document_frequency[ngram] += 1
    ref_len = math.log(float(len(crefs)))

    def counts2vec(cnts: Counter) -> tuple[list[dict], list[float], int]:
        vec: list[dict] = [defaultdict(float) for _ in range(n)]
        norm = [0.0] * n
        length = 0
        for ngram, tf in cnts.items():
            df = math.log(max(1.0, document_frequency[ngram]))
            k = len(ngram) - 1
            vec[k][ngram] = float(tf) * (ref_len - df)
            norm[k] += vec[k][ngram] ** 2
            if k == 1:  # sic: counts bigrams
                length += tf
        return vec, [math.sqrt(x) for x in norm], length

    def sim(vh, vr, nh, nr, lh, lr) -> list[float]:
        delta = float(lh - lr)
        val = [0.0] * n
        for k in range(n):
            for ngram in vh[k]:
                val[k] += min(vh[k][ngram], vr[k].get(ngram, 0.0)) * vr[k].get(ngram, 0.0)
            if nh[k] != 0 and nr[k] != 0:
                val[k] /= nh[k] * nr[k]
            val[k] *= math.e ** (-(delta ** 2) / (2 * sigma ** 2))
        return val

    scores = []
    for test, refs in zip(ctest, crefs):
        vec, norm, length = counts2vec(test)
        total = [0.0] * n
        for ref in refs:
            vr, nr, lr = counts2vec(ref)
            total = [a + b for a, b in zip(total, sim(vec, vr, norm, nr, length, lr))]
        scores.append(sum(total) / n / len(refs) * 10.0)
    return sum(scores) / len(scores), scores


# ---------------------------------------------------------------------------------------------
# ROUGE-L (pycocoevalcap/rouge/rouge.py)


def _lcs(a: list[str], b: list[str]) -> int:
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0] * (len(b) + 1)
        for j, y in enumerate(b, 1):
            cur[j] = prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1])
        prev = cur
    return prev[-1]


def rouge_l(gts: Mapping[Any, Sequence[str]], res: Mapping[Any, str | Sequence[str]],
            beta: float = 1.2) -> tuple[float, list[float]]:
    """pycocoevalcap ``Rouge().compute_score(gts, res)`` on tokenized text (tokens split on
    single spaces, as the original does)."""
    scores = []
    for key, refs in gts.items():
        hypo = _as_list(res[key])
        if len(hypo) != 1 or not refs:
            raise ValueError(f"ROUGE-L needs one candidate and at least one reference ({key!r})")
        cand = hypo[0].split(" ")
        prec, rec = [], []
        for ref in refs:
            toks = ref.split(" ")
            lcs = _lcs(toks, cand)
            prec.append(lcs / float(len(cand)))
            rec.append(lcs / float(len(toks)))
        p, r = max(prec), max(rec)
        scores.append(((1 + beta ** 2) * p * r) / float(r + beta ** 2 * p) if p != 0 and r != 0 else 0.0)
    return (sum(scores) / len(scores) if scores else 0.0), scores


# ---------------------------------------------------------------------------------------------


def caption_scores(samples: Sequence[EvalSample], predictions: Mapping[Any, str] | Sequence[str],
                   tokenize: bool = True) -> dict[str, Any]:
    """COCOEvalCap-style scores of raw captions against ``sample.answers`` (the references).

    Returns ``{"Bleu_1".."Bleu_4", "ROUGE_L", "CIDEr", "n", "per_image"}`` on pycocoevalcap's
    scale (fractions; papers print them ×100). ``tokenize=False`` skips the PTB step for text
    that is already tokenized.
    """
    preds = align_predictions(samples, predictions)
    gts = {s.id: list(s.answers) for s in samples}
    res = {s.id: [preds[s.id]] for s in samples}
    if tokenize:
        gts, res = tokenize_captions(gts), tokenize_captions(res)
    b, b_per = bleu(gts, res, 4)
    c, c_per = cider_d(gts, res)
    r, r_per = rouge_l(gts, res)
    per_image = {
        key: {"Bleu_4": b_per[3][i], "ROUGE_L": r_per[i], "CIDEr": c_per[i]}
        for i, key in enumerate(gts)
    }
    out: dict[str, Any] = {f"Bleu_{k + 1}": b[k] for k in range(4)}
    out.update({"ROUGE_L": r, "CIDEr": c, "n": len(gts), "per_image": per_image})
    return out
