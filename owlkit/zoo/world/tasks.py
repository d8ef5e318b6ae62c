"""Question generators: ``(rng, scenes) -> [(question, answer), ...]``, or None when the scenes
do not allow the task.

Answers come from the :class:`~owlkit.zoo.world.scenes.Scene` objects, never from text; a
question is asked only where it has exactly one answer. :func:`generate` is the entry point,
:func:`conversations` turns the pairs into LLaVA-style turns.
"""

from __future__ import annotations

import random
from typing import Callable, Sequence

from owlkit.config import IMAGE_PLACEHOLDER
from owlkit.errors import ConfigError
from owlkit.zoo.world.language import article, caption, plural, refer
from owlkit.zoo.world.scenes import Obj, Scene
from owlkit.zoo.world.vocabulary import (
    COLOURS, FIRST, MIXES, OPPOSITES, RELATIONS, SECOND, SHAPES, SIDES, TASKS, WORDS,
)

QA = tuple[str, str]


def _gen_caption(rng: random.Random, scene: Scene) -> QA:
    prompt = rng.choice(("Describe the image.", "Write a short caption for the image."))
    return prompt, caption(scene)


def _ask_attribute(rng: random.Random, scene: Scene, question: str, attr: str,
                   options: Sequence[Sequence[str]]) -> QA | None:
    """``question`` (with ``{ref}``) about the first object, in a shuffled order, that ``options`` can name alone."""
    objs = list(scene.objects)
    rng.shuffle(objs)
    for o in objs:
        ref = refer(rng, o, scene.objects, options)
        if ref:
            return question.format(ref=ref), getattr(o, attr)
    return None


#: How a question may name the object whose colour, shape or position it asks: by one of these
#: attribute sets, chosen at random among those that pick it out alone (``refer``); owl-small's
#: stage-1 statements name objects alike.
REFERENCES: dict[str, tuple[tuple[str, ...], ...]] = {
    "colour": (("shape",), ("size", "shape"), ("cell",)),
    "shape": (("colour",), ("size", "colour"), ("cell",)),
    "position": (("shape",), ("colour", "shape"), ("size", "colour", "shape")),
}


def _gen_colour(rng: random.Random, scene: Scene) -> QA | None:
    return _ask_attribute(rng, scene, "What colour is the {ref}?", "colour", REFERENCES["colour"])


def _gen_shape(rng: random.Random, scene: Scene) -> QA | None:
    return _ask_attribute(rng, scene, "What shape is the {ref}?", "shape", REFERENCES["shape"])


def _gen_count(rng: random.Random, scene: Scene) -> QA:
    kind = rng.choice(("all", "shape", "shape", "colour"))
    if kind == "all":
        return "How many objects are there?", str(len(scene.objects))
    present = sorted({getattr(o, kind) for o in scene.objects})
    pool = sorted(COLOURS) if kind == "colour" else list(SHAPES)
    value = rng.choice(present) if present and rng.random() < 0.8 else rng.choice(pool)
    n = sum(getattr(o, kind) == value for o in scene.objects)
    noun = f"{value} objects" if kind == "colour" else plural(value)
    return f"How many {noun} are there?", str(n)


def _gen_position(rng: random.Random, scene: Scene) -> QA | None:
    return _ask_attribute(rng, scene, "Where is the {ref}?", "position", REFERENCES["position"])


def holds(relation: str, a: Obj, b: Obj) -> bool:
    """Whether ``a`` is ``relation`` ``b`` (columns for left/right, rows for above/below)."""
    if relation == "to the left of":
        return a.col < b.col
    if relation == "to the right of":
        return a.col > b.col
    if relation == "above":
        return a.row < b.row
    if relation == "below":
        return a.row > b.row
    raise ValueError(relation)


_REF_NO_CELL = [("colour", "shape"), ("size", "colour", "shape")]


def _gen_relation(rng: random.Random, scene: Scene) -> QA | None:
    objs = list(scene.objects)
    if len(objs) < 2:
        return None
    if rng.random() < 0.5:  # yes/no
        pairs = [(a, b) for a in objs for b in objs if a is not b]
        rng.shuffle(pairs)
        for a, b in pairs:
            ra, rb = refer(rng, a, objs, _REF_NO_CELL), refer(rng, b, objs, _REF_NO_CELL)
            if not (ra and rb):
                continue
            axes = [RELATIONS[:2]] if a.col != b.col else []
            axes += [RELATIONS[2:]] if a.row != b.row else []
            relation = rng.choice(rng.choice(axes))
            return f"Is the {ra} {relation} the {rb}?", "yes" if holds(relation, a, b) else "no"
        return None
    options = [(rel, ref) for rel in RELATIONS for ref in objs]
    rng.shuffle(options)
    for relation, ref in options:
        hits = [o for o in objs if o is not ref and holds(relation, o, ref)]
        name = refer(rng, ref, objs, _REF_NO_CELL)
        if len(hits) == 1 and name:
            return f"What is {relation} the {name}?", hits[0].describe()
    return None


def _gen_read(rng: random.Random, scene: Scene) -> QA | None:
    if not scene.word:
        return None
    return rng.choice(("What word is written in the image?", "What does the text say?")), scene.word


def which_image(flags: tuple[bool, bool]) -> str | None:
    """``"the first"`` / ``"the second"`` when exactly that image has the thing, else None."""
    if flags == (True, False):
        return FIRST
    if flags == (False, True):
        return SECOND
    return None


def _gen_compare(rng: random.Random, a: Scene, b: Scene) -> QA | None:
    kinds = ["more", "which", "both"]
    rng.shuffle(kinds)
    for kind in kinds:
        if kind == "more":
            if len(a.objects) != len(b.objects):
                return "Which image has more objects?", FIRST if len(a.objects) > len(b.objects) else SECOND
            continue
        # A shape or a colour present in at least one image (questions about absent things are dull).
        candidates = [("shape", o.shape) for o in a.objects + b.objects]
        candidates += [("colour", o.colour) for o in a.objects + b.objects]
        candidates = sorted(set(candidates))
        rng.shuffle(candidates)

        def flags(attr: str, value: str) -> tuple[bool, bool]:
            return (
                any(getattr(o, attr) == value for o in a.objects),
                any(getattr(o, attr) == value for o in b.objects),
            )

        if kind == "both" and candidates:
            # Balance yes and no: things in both images are rarer than things in one.
            common = [c for c in candidates if all(flags(*c))]
            pool = common if common and (rng.random() < 0.5 or len(common) == len(candidates)) else [
                c for c in candidates if c not in common
            ]
            attr, value = pool[0]
            noun = value if attr == "shape" else f"{value} object"
            answer = "yes" if all(flags(attr, value)) else "no"
            return f"Do both images contain {article(noun)} {noun}?", answer
        for attr, value in candidates:
            noun = value if attr == "shape" else f"{value} object"
            answer = which_image(flags(attr, value))
            if answer:
                return f"Which image has {article(noun)} {noun}?", answer
    return None


def _gen_text(rng: random.Random) -> QA:
    kind = rng.choice(("plus", "minus", "spell", "kind", "mix", "sides", "opposite", "after", "before"))
    if kind == "plus":
        x, y = rng.randrange(10), rng.randrange(10)
        return f"What is {x} plus {y}?", str(x + y)
    if kind == "minus":
        x = rng.randrange(10)
        y = rng.randrange(x + 1)
        return f"What is {x} minus {y}?", str(x - y)
    if kind == "spell":
        word = rng.choice(sorted({w.lower() for w in WORDS} | set(COLOURS) | set(SHAPES)))
        return f"Spell the word {word}.", " ".join(word)
    if kind == "kind":
        options = ("a shape or a colour", "a colour or a shape")[rng.randrange(2)]
        if rng.random() < 0.5:
            shape = rng.choice(SHAPES)
            return f"Is {article(shape)} {shape} {options}?", "shape"
        return f"Is {rng.choice(sorted(COLOURS))} {options}?", "colour"
    if kind == "mix":
        pair = sorted(rng.choice(sorted(MIXES, key=sorted)))
        rng.shuffle(pair)
        return f"What colour do you get when you mix {pair[0]} and {pair[1]}?", MIXES[frozenset(pair)]
    if kind == "sides":
        shape = rng.choice(sorted(SIDES) + ["star"])
        if shape == "star":
            return "How many points does a star have?", "5"
        return f"How many sides does {article(shape)} {shape} have?", str(SIDES[shape])
    if kind == "opposite":
        word = rng.choice(sorted(OPPOSITES))
        return f"What is the opposite of {word}?", OPPOSITES[word]
    if kind == "after":
        x = rng.randrange(10)
        return f"What number comes after {x}?", str(x + 1)
    x = rng.randrange(1, 11)
    return f"What number comes before {x}?", str(x - 1)


_SINGLE: dict[str, Callable[[random.Random, Scene], QA | None]] = {
    "caption": _gen_caption,
    "colour": _gen_colour,
    "shape": _gen_shape,
    "count": _gen_count,
    "position": _gen_position,
    "relation": _gen_relation,
    "read": _gen_read,
}
_MULTITURN_TASKS = ("colour", "shape", "count", "position", "relation", "read")


def _gen_multiturn(rng: random.Random, scene: Scene) -> list[QA] | None:
    want = rng.choice((2, 3))
    turns: list[QA] = []
    tasks = list(_MULTITURN_TASKS)
    rng.shuffle(tasks)
    for task in tasks:
        qa = _SINGLE[task](rng, scene)
        if qa and qa[0] not in {q for q, _ in turns}:
            turns.append(qa)
        if len(turns) == want:
            break
    return turns if len(turns) >= 2 else None


def images_for(task: str) -> int:
    """How many images a task's samples carry."""
    return {"compare": 2, "text": 0}.get(task, 1)


def generate(task: str, rng: random.Random, scenes: Sequence[Scene]) -> list[QA] | None:
    """Question/answer turns of ``task`` about ``scenes`` (``images_for(task)`` of them), or None."""
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    if len(scenes) != images_for(task):
        raise ValueError(f"task {task} needs {images_for(task)} scenes, got {len(scenes)}")
    if task == "text":
        return [_gen_text(rng)]
    if task == "compare":
        qa = _gen_compare(rng, scenes[0], scenes[1])
        return [qa] if qa else None
    if task == "multiturn":
        return _gen_multiturn(rng, scenes[0])
    qa = _SINGLE[task](rng, scenes[0])
    return [qa] if qa else None


def conversations(turns: Sequence[QA], n_images: int) -> list[dict[str, str]]:
    """LLaVA-style turns; the first human turn starts with one ``<|image|>`` line per image."""
    out = []
    for i, (q, a) in enumerate(turns):
        if i == 0 and n_images:
            q = "\n".join([IMAGE_PLACEHOLDER] * n_images) + "\n" + q
        out.append({"from": "human", "value": q})
        out.append({"from": "gpt", "value": a})
    return out
