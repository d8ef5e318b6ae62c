"""Evaluation prompts and generation settings as data: :class:`TaskPrompt` and the phrases
the benchmarks share.

Each benchmark module (:mod:`owlkit.evaluation.benchmarks`) holds its own ``TaskPrompt``.
Official prompts (``official=True``) are those of mPLUG-Owl2's ``evaluate/*.py`` scripts,
character for character (spec B6):

* every prompt ends with ``"ASSISTANT: "`` **with** a trailing space (the chat template does
  not have it);
* VQA (v2, OK-VQA, TextVQA) puts a **space**, not a newline, before "Answer the question...";
* MME uses ``\\n`` there and then deletes the text "Please answer yes or no." from the whole
  prompt (so the space that preceded it stays: ``"... image? \\nAnswer ..."``);
* MMBench: ``{hint or "N/A"}\\n{question}\\n{A. c1\\nB. c2...}\\nAnswer with the option’s letter
  from the given choices directly.`` with U+2019 in "option’s";
* captioning: max 60 / min 8 new tokens, ``length_penalty 0``; everything else greedy with
  ``min_new_tokens 1``.

Benchmarks the official repository has no script for (GQA, VizWiz, POPE, SEED-Bench,
ScienceQA-IMG, MMLU, MM-Vet, OwlEval) use the LLaVA-1.5-style suffixes the mPLUG-Owl2 README
recommends (:data:`SHORT_ANSWER`, :data:`LETTER_ANSWER`) or the question alone, in the same
``USER: ... ASSISTANT: `` frame; these are marked ``official=False``.

Prompts contain the literal image placeholder ``<|image|>`` (one per image).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from owlkit.config import IMAGE_PLACEHOLDER
from owlkit.evaluation.choice import format_options

__all__ = [
    "IMAGE_PLACEHOLDER",
    "SHORT_ANSWER",
    "LETTER_ANSWER",
    "SHORT_ANSWER_PROMPT",
    "CHOICE_PROMPT",
    "OFFICIAL_SCRIPTS",
    "README_SUFFIX",
    "TaskPrompt",
    "prompt_fields",
    "format_options",
]


SHORT_ANSWER = "Answer the question using a single word or phrase."
LETTER_ANSWER = "Answer with the option\u2019s letter from the given choices directly."
#: the short-answer prompt with a newline before the suffix (MME, GQA, POPE)
SHORT_ANSWER_PROMPT = "USER: <|image|>{question}\n" + SHORT_ANSWER + " ASSISTANT: "
#: the image multiple-choice prompt (SEED-Bench)
CHOICE_PROMPT = "USER: <|image|>{question}\n{options}\n" + LETTER_ANSWER + " ASSISTANT: "
#: ``source`` prefixes: the official scripts, or the README suffix where there is no script
OFFICIAL_SCRIPTS = "mPLUG-Owl2 evaluate/"
README_SUFFIX = "not in the official scripts: mPLUG-Owl2 README suffix (LLaVA-1.5 style)"


@dataclass(frozen=True)
class TaskPrompt:
    """A prompt template and the generation settings of one benchmark.

    ``template`` is a ``str.format`` template over the fields ``question``, ``hint``,
    ``options`` and ``context`` (:func:`prompt_fields`); ``remove`` is deleted from the
    formatted prompt afterwards.
    """

    template: str
    max_new_tokens: int
    min_new_tokens: int = 1
    length_penalty: float = 1.0
    num_beams: int = 1
    do_sample: bool = False
    official: bool = True
    source: str = ""
    remove: str | None = None

    def format(self, **fields: Any) -> str:
        text = self.template.format(**fields)
        if self.remove:
            text = text.replace(self.remove, "")
        return text

    def build(self, sample: Any) -> str:
        """The prompt for one :class:`~owlkit.evaluation.samples.EvalSample`."""
        return self.format(**prompt_fields(sample))

    @property
    def generation_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``generate`` (greedy unless ``do_sample``)."""
        return {"max_new_tokens": self.max_new_tokens, "min_new_tokens": self.min_new_tokens,
                "do_sample": self.do_sample, "num_beams": self.num_beams,
                "length_penalty": self.length_penalty}


def prompt_fields(sample: Any) -> dict[str, str]:
    """The template fields of a sample: ``question`` = ``sample.question``; ``hint`` =
    ``sample.hint`` or ``"N/A"``; ``options`` = ``"A. ...\\nB. ..."`` from ``sample.choices``;
    ``context`` = ``"Context: {hint}\\n"`` when there is a hint, else empty."""
    hint = getattr(sample, "hint", None)
    return {
        "question": sample.question,
        "hint": hint if hint else "N/A",
        "options": format_options(getattr(sample, "choices", []) or []),
        "context": f"Context: {hint}\n" if hint else "",
    }
