"""Evaluation prompts and generation settings, per task, as data.

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

Tasks the official repository has no script for (GQA, VizWiz, POPE, SEED-Bench,
ScienceQA-IMG, MMLU, OwlEval) use the LLaVA-1.5-style suffixes the mPLUG-Owl2 README
recommends (``\\nAnswer the question using a single word or phrase.`` and ``\\nAnswer with
the option’s letter from the given choices directly.``) in the same ``USER: ... ASSISTANT: ``
frame; these are marked ``official=False``. OwlEval uses the inference chat prompts of each
generation (no trailing space), see :func:`dialogue_prompt`.

Prompts contain the literal image placeholder ``<|image|>`` (one per image).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from owlkit.config import IMAGE_PLACEHOLDER
from owlkit.evaluation.choice import format_options

__all__ = [
    "IMAGE_PLACEHOLDER",
    "TaskPrompt",
    "PROMPTS",
    "build_prompt",
    "mmmu_prompt",
    "dialogue_prompt",
    "format_options",
]


_SHORT = "Answer the question using a single word or phrase."
_LETTER = "Answer with the option\u2019s letter from the given choices directly."
_OWL1_SYSTEM = ("The following is a conversation between a curious human and AI assistant. The "
                "assistant gives helpful, detailed, and polite answers to the user's questions.")


@dataclass(frozen=True)
class TaskPrompt:
    """A prompt template and the generation settings of one task.

    ``template`` is a ``str.format`` template over the fields ``question``, ``hint``,
    ``options`` and ``context``; ``remove`` is deleted from the formatted prompt afterwards.
    """

    task: str
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

    @property
    def generation_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``generate`` (greedy unless ``do_sample``)."""
        return {"max_new_tokens": self.max_new_tokens, "min_new_tokens": self.min_new_tokens,
                "do_sample": self.do_sample, "num_beams": self.num_beams,
                "length_penalty": self.length_penalty}


_VQA = "USER: <|image|>{question} " + _SHORT + " ASSISTANT: "
_SHORT_NL = "USER: <|image|>{question}\n" + _SHORT + " ASSISTANT: "
_MC = "USER: <|image|>{question}\n{options}\n" + _LETTER + " ASSISTANT: "
_CAPTION = "USER: <|image|>Provide a one-sentence caption for the provided image. ASSISTANT: "
_OWL2 = "mPLUG-Owl2 evaluate/"
_README = "not in the official scripts: mPLUG-Owl2 README suffix (LLaVA-1.5 style)"

PROMPTS: dict[str, TaskPrompt] = {
    "vqav2": TaskPrompt("vqav2", _VQA, 10, source=_OWL2 + "evaluate_vqa.py"),
    "okvqa": TaskPrompt("okvqa", _VQA, 10, source=_OWL2 + "evaluate_vqa.py"),
    "textvqa": TaskPrompt("textvqa", _VQA, 10, source=_OWL2 + "evaluate_vqa.py"),
    "coco_caption": TaskPrompt("coco_caption", _CAPTION, 60, 8, length_penalty=0.0,
                               source=_OWL2 + "evaluate_caption.py (written for flickr)"),
    "flickr30k": TaskPrompt("flickr30k", _CAPTION, 60, 8, length_penalty=0.0,
                            source=_OWL2 + "evaluate_caption.py"),
    "nocaps": TaskPrompt("nocaps", _CAPTION, 60, 8, length_penalty=0.0,
                         source=_OWL2 + "evaluate_caption.py (written for flickr)"),
    "mme": TaskPrompt("mme", _SHORT_NL, 10, source=_OWL2 + "evaluate_mme.py",
                      remove="Please answer yes or no."),
    "mmbench": TaskPrompt("mmbench", "USER: <|image|>{hint}\n{question}\n{options}\n" + _LETTER + " ASSISTANT: ",
                          10, source=_OWL2 + "evaluate_mmbench.py"),
    "mmmu_mc": TaskPrompt("mmmu_mc", "USER: {question}\n{options}\n" + _LETTER + " ASSISTANT: ", 20,
                          source=_OWL2 + "evaluate_mmmu.py (<image k> -> <|image|>)"),
    "mmmu_open": TaskPrompt("mmmu_open", "USER: {question}\n" + _SHORT + " ASSISTANT: ", 20,
                            source=_OWL2 + "evaluate_mmmu.py (<image k> -> <|image|>)"),
    "gqa": TaskPrompt("gqa", _SHORT_NL, 10, official=False, source=_README),
    "pope": TaskPrompt("pope", _SHORT_NL, 10, official=False, source=_README),
    "vizwiz": TaskPrompt(
        "vizwiz",
        "USER: <|image|>{question}\nWhen the provided information is insufficient, respond with "
        "'Unanswerable'.\n" + _SHORT + " ASSISTANT: ",
        10, official=False, source=_README + ", LLaVA-1.5 VizWiz wording"),
    "seedbench": TaskPrompt("seedbench", _MC, 10, official=False, source=_README),
    "scienceqa": TaskPrompt("scienceqa", "USER: <|image|>{context}{question}\n{options}\n" + _LETTER + " ASSISTANT: ",
                            10, official=False, source=_README + ", LLaVA-1.5 ScienceQA context line"),
    "mmlu": TaskPrompt("mmlu", "USER: {question}\n{options}\n" + _LETTER + " ASSISTANT: ", 10,
                       official=False, source=_README + " (zero-shot, text only)"),
    "owleval": TaskPrompt("owleval", "USER: <|image|>{question} ASSISTANT:", 512, official=False,
                          source="mPLUG-Owl2 inference chat prompt; see dialogue_prompt"),
    "owleval_v1": TaskPrompt("owleval_v1", _OWL1_SYSTEM + "\nHuman: <|image|>\nHuman: {question}\nAI: ", 512,
                             official=False, source="mPLUG-Owl (v1) conversation template; see dialogue_prompt"),
}


def build_prompt(task: str, sample: Any) -> str:
    """The prompt of ``task`` for one :class:`~owlkit.evaluation.datasets.EvalSample`.

    Fields: ``question`` = ``sample.question``; ``hint`` = ``sample.hint`` or ``"N/A"``;
    ``options`` = ``"A. ...\\nB. ..."`` from ``sample.choices``; ``context`` =
    ``"Context: {hint}\\n"`` when there is a hint, else empty.
    """
    if task not in PROMPTS:
        raise KeyError(f"no prompt for task {task!r}; known: {', '.join(sorted(PROMPTS))}")
    if task.startswith("mmmu"):
        return mmmu_prompt(sample.question, sample.choices)
    hint = getattr(sample, "hint", None)
    fields = {
        "question": sample.question,
        "hint": hint if hint else "N/A",
        "options": format_options(getattr(sample, "choices", []) or []),
        "context": f"Context: {hint}\n" if hint else "",
    }
    return PROMPTS[task].format(**fields)


def mmmu_prompt(question: str, choices: Sequence[str] = ()) -> str:
    """The MMMU prompt: multiple choice when there are options, open otherwise; every
    ``<image k>`` becomes ``<|image|>`` (the images are then given in order). The official
    script replaces k = 1..5 only; the few MMMU questions with 6 or 7 images would keep
    ``<image 6>`` as text there."""
    task = "mmmu_mc" if choices else "mmmu_open"
    text = PROMPTS[task].format(question=question, options=format_options(choices))
    return re.sub(r"<image \d+>", IMAGE_PLACEHOLDER, text)


def dialogue_prompt(turns: Sequence[tuple[str, str | None]], generation: int = 2) -> str:
    """A multi-turn chat prompt with one image, the way the demos of each generation build it.

    ``turns`` = ``[(question, answer), ..., (last question, None)]``.

    * generation 2 (spec B4, inference): ``USER: <|image|>{q1} ASSISTANT: {a1}</s>USER: {q2}
      ASSISTANT:`` (no trailing space);
    * generation 1 (spec A4.3): the system line, ``Human: <|image|>``, then ``Human: {q}`` /
      ``AI: {a}`` lines joined by ``\\n``, ending with ``AI: `` (trailing space). The v1
      checkpoints expect ``<image>``: the v1 processor maps the placeholder.
    """
    if not turns:
        raise ValueError("dialogue_prompt needs at least one turn")
    if generation == 2:
        parts = []
        for i, (q, a) in enumerate(turns):
            q = (IMAGE_PLACEHOLDER + q) if i == 0 else q
            if a is None:
                parts.append(f"USER: {q} ASSISTANT:")
                break
            parts.append(f"USER: {q} ASSISTANT: {a}</s>")
        return "".join(parts)
    if generation == 1:
        lines = [_OWL1_SYSTEM, f"Human: {IMAGE_PLACEHOLDER}"]
        for q, a in turns:
            lines.append(f"Human: {q}")
            if a is None:
                lines.append("AI: ")
                break
            lines.append(f"AI: {a}")
        return "\n".join(lines)
    raise ValueError(f"generation must be 1 or 2, not {generation!r}")
