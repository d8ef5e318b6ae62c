"""Held-out evaluation on the synthetic world (``owl eval synth``).

A fresh set of scenes is drawn from a seed (the eval stream of :mod:`owlkit.zoo.world` never
yields the training scenes of the same seed), the model answers each task's questions with its
own chat template, and answers are scored by exact match after the world's normalisation
(case, punctuation, articles, digits or number words). Multi-turn samples are asked with the
gold earlier turns as history.
"""

from __future__ import annotations

from collections import defaultdict

from owlkit.config import IMAGE_PLACEHOLDER
from owlkit.zoo.world import described_turns, exact_match, make_eval_set

#: Accuracy targets of the shipped model (issue "owl-tiny").
TARGETS = {"colour": 0.95, "shape": 0.95, "count": 0.85, "position": 0.85, "relation": 0.85,
           "read": 0.80, "compare": 0.80, "text": 0.90}


def short_question(question: str, prompt: str) -> str:
    """A question as a model trained with a short-answer ``prompt`` is asked it."""
    return f"{question} {prompt}"


def with_short_answer_prompt(turns: list[dict], prompt: str | None, task: str) -> list[dict]:
    """LLaVA-style turns with ``prompt`` after every question of a short-answer task (every
    task of the world but ``caption``); unchanged when ``prompt`` is None."""
    if not prompt or task == "caption":
        return turns
    return [dict(t, value=short_question(t["value"], prompt)) if t["from"] == "human" else t for t in turns]


def conversation(sample, described: bool = False, short_answer_prompt: str | None = None) -> list[dict]:
    """An EvalSample's turns up to the scored question, as OpenAI-style messages.

    With ``described`` each image is replaced by its scene's caption (text only, see
    :func:`owlkit.zoo.world.described`): the model's language side answers from a perfect
    description, which tells how much of the error is the seeing and how much the reasoning.
    ``short_answer_prompt`` follows every question (:func:`with_short_answer_prompt`).
    """
    turns = with_short_answer_prompt(sample.conversations[:-1], short_answer_prompt, sample.task)
    roles = ["user" if turn["from"] == "human" else "assistant" for turn in turns]
    if described:
        texts = described_turns([turn["value"] for turn in turns], sample.scenes)
        return [{"role": role, "content": text} for role, text in zip(roles, texts)]
    images = list(sample.images)
    messages = []
    for role, turn in zip(roles, turns):
        text = turn["value"]
        parts = [{"type": "image", "image": images.pop(0)} for _ in range(text.count(IMAGE_PLACEHOLDER))]
        parts.append({"type": "text", "text": text.replace(IMAGE_PLACEHOLDER, "").strip()})
        messages.append({"role": role, "content": parts})
    return messages


def evaluate_synth(owl, seed: int, n_per_task: int = 50, batch_size: int = 16, progress: bool = False,
                   max_new_tokens: int = 48, described: bool = False, targets: dict | None = None) -> dict:
    """Per-task exact-match accuracy: ``{"tasks": {task: {"accuracy", "n"}}, "examples": [...]}``.

    ``described``: ask every question with the images replaced by their captions (see
    :func:`conversation`); the result says so (``"described": true``). ``targets``: the accuracy
    targets shown next to each task (default: owl-tiny's). A model whose config names a
    ``short_answer_prompt`` is asked with it after each question, as it was trained.
    """
    size = owl.model.config.vision_config.image_size
    prompt = owl.model.config.short_answer_prompt
    samples = make_eval_set(seed, n_per_task, image_size=size)
    answers = owl.generate_batch([conversation(s, described, prompt) for s in samples], batch_size=batch_size,
                                 progress=progress, max_new_tokens=max_new_tokens)
    right: dict[str, list[bool]] = defaultdict(list)
    examples = []
    for sample, answer in zip(samples, answers):
        ok = exact_match(answer, sample.answer)
        right[sample.task].append(ok)
        examples.append({"id": sample.id, "task": sample.task, "question": sample.question,
                         "answer": sample.answer, "prediction": answer, "correct": ok})
    tasks = {t: {"accuracy": sum(v) / len(v), "n": len(v), "target": (TARGETS if targets is None else targets).get(t)}
             for t, v in sorted(right.items())}
    return {"seed": seed, "described": described, "short_answer_prompt": prompt, "tasks": tasks, "examples": examples}


def markdown(result: dict) -> str:
    lines = ["Images replaced by their scenes' captions (--described).", ""] if result.get("described") else []
    lines += ["| task | accuracy | n | target |", "|---|---|---|---|"]
    for task, r in result["tasks"].items():
        target = "" if r["target"] is None else f"{r['target']:.0%}"
        lines.append(f"| {task} | {r['accuracy']:.1%} | {r['n']} | {target} |")
    return "\n".join(lines)
