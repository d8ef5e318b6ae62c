"""Caption scores by pycocoevalcap itself (``owl eval --java``): its Java PTB tokenizer
(Stanford CoreNLP 3.4.1) and METEOR 1.5 jar, plus its BLEU, ROUGE-L and CIDEr on those
tokens, as ``COCOEvalCap.evaluate`` runs them. Needs ``pip install pycocoevalcap`` (it ships
the jars) and a Java runtime (Debian: ``apt-get install default-jre-headless``); without
them the command stops with a one-line error. The default path
(:func:`~owlkit.evaluation.captioning.caption_scores`) needs neither and gives the same BLEU,
ROUGE-L and CIDEr wherever the Python tokenizer agrees with the Java one.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from typing import Any

from owlkit.errors import InputError
from owlkit.evaluation.samples import EvalSample, align_predictions

__all__ = ["java_available", "java_caption_scores"]


def java_available() -> str | None:
    """``None`` when ``--java`` can run, else what is missing (one line)."""
    if shutil.which("java") is None:
        return "no Java runtime on PATH (Debian: apt-get install default-jre-headless)"
    try:
        import pycocoevalcap  # noqa: F401
    except ImportError:
        return "pycocoevalcap is not installed (pip install pycocoevalcap)"
    return None


def java_caption_scores(samples: Sequence[EvalSample], predictions: Mapping[Any, str] | Sequence[str]
                        ) -> dict[str, Any]:
    """``{"Bleu_1".."Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "n", "per_image"}`` from
    pycocoevalcap's own tokenizer and scorers."""
    missing = java_available()
    if missing:
        raise InputError(f"--java: {missing}")
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    preds = align_predictions(samples, predictions)
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({s.id: [{"caption": c} for c in s.answers] for s in samples})
    res = tokenizer.tokenize({s.id: [{"caption": preds[s.id]}] for s in samples})
    out: dict[str, Any] = {}
    per_image: dict[Any, dict[str, float]] = {k: {} for k in gts}
    for scorer, names in ((Bleu(4), ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4"]), (Meteor(), ["METEOR"]),
                          (Rouge(), ["ROUGE_L"]), (Cider(), ["CIDEr"])):
        score, scores = scorer.compute_score(gts, res)
        if len(names) == 1:
            score, scores = [score], [scores]
        for name, value, values in zip(names, score, scores):
            out[name] = float(value)
            if name in ("Bleu_4", "METEOR", "ROUGE_L", "CIDEr"):
                for key, v in zip(gts, values):
                    per_image[key][name] = float(v)
    out.update({"n": len(gts), "per_image": per_image})
    return out
