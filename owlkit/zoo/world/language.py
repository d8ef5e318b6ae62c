"""The world's language: captions, descriptions in place of images, referring expressions.

:func:`caption` is the canonical description of a scene; :func:`described` puts captions where
a text's ``<|image|>`` placeholders were; :func:`refer` finds a noun phrase that picks out one
object alone (the question generators ask only about objects they can name unambiguously).
"""

from __future__ import annotations

import random
from typing import Sequence

from owlkit.config import IMAGE_PLACEHOLDER
from owlkit.zoo.world.scenes import Obj, Scene
from owlkit.zoo.world.vocabulary import POSITIONS


def where_phrase(row: int, col: int) -> str:
    """``"at the top left"``, ``"in the center"``, ``"on the left"``..."""
    name = POSITIONS[(row, col)]
    if name == "center":
        return "in the center"
    if name in ("left", "right"):
        return f"on the {name}"
    return f"at the {name}"


def article(word: str) -> str:
    """``"an"`` before a vowel, else ``"a"``."""
    return "an" if word[0] in "aeiou" else "a"


def _join(parts: list[str]) -> str:
    if len(parts) <= 2:
        return " and ".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def caption(scene: Scene, rng: random.Random | None = None) -> str:
    """The canonical description, objects in reading order (row by row), or in an order drawn
    from ``rng``: then which object comes next says nothing of where it is, and a model
    continuing a caption must find objects by what they are.

    E.g. ``"a big red circle at the top left and a small blue square in the center."``.
    """
    objects = sorted(scene.objects, key=lambda o: (o.row, o.col))
    if rng is not None:
        rng.shuffle(objects)
    if objects:
        text = _join([f"a {o.size} {o.colour} {o.shape} {where_phrase(o.row, o.col)}" for o in objects]) + "."
    else:
        text = "an empty picture."
    if scene.word:
        text += f" the word {scene.word} is written at the bottom."
    return text


def described(text: str, scenes: Sequence[Scene], start: int = 0) -> str:
    """``text`` with its ``<|image|>`` placeholders replaced by the captions of ``scenes[start:]``.

    The descriptions go in front of the remaining text, one line each: ``"Image: ..."`` when the
    sample has one scene, ``"Image 1: ..."``, ``"Image 2: ..."`` when it has several (``start``:
    how many of them earlier turns showed). This is how owl-tiny's text pre-training sees the
    instructions, and how ``owl eval synth --described`` asks the held-out questions: the same
    question with a perfect description instead of the picture.
    """
    n = text.count(IMAGE_PLACEHOLDER)
    if n and start + n > len(scenes):
        raise ValueError(f"{start + n} image placeholders but {len(scenes)} scenes")
    return with_captions(text, [caption(scene) for scene in scenes], start)


def with_captions(text: str, captions: Sequence[str], start: int = 0) -> str:
    """:func:`described` with given captions (any text: a model's own, say) in place of the
    scenes' canonical ones, in the same form."""
    n = text.count(IMAGE_PLACEHOLDER)
    if not n:
        return text
    if start + n > len(captions):
        raise ValueError(f"{start + n} image placeholders but {len(captions)} captions")
    lines = [f"Image {k + 1}: {captions[k]}" if len(captions) > 1 else f"Image: {captions[k]}"
             for k in range(start, start + n)]
    return "\n".join(lines) + "\n" + text.replace(IMAGE_PLACEHOLDER, "").strip()


def described_turns(texts: Sequence[str], scenes: Sequence[Scene]) -> list[str]:
    """:func:`described` over a conversation's turns, each turn's images taking the next scenes."""
    out, start = [], 0
    for text in texts:
        out.append(described(text, scenes, start))
        start += text.count(IMAGE_PLACEHOLDER)
    return out


def plural(shape: str) -> str:
    """``"circle"`` -> ``"circles"`` (every shape name takes an s)."""
    return shape + "s"


def _phrase(o: Obj, attrs: Sequence[str]) -> str:
    """A noun phrase naming ``o`` by ``attrs``: ``"big circle"``, ``"red object"``, ``"object on the left"``."""
    parts = [getattr(o, a) for a in ("size", "colour") if a in attrs]
    parts.append(o.shape if "shape" in attrs else "object")
    text = " ".join(parts)
    if "cell" in attrs:
        text += " " + where_phrase(o.row, o.col)
    return text


def _same(a: Obj, b: Obj, attrs: Sequence[str]) -> bool:
    for attr in attrs:
        if attr == "cell":
            if (a.row, a.col) != (b.row, b.col):
                return False
        elif getattr(a, attr) != getattr(b, attr):
            return False
    return True


def _unique(o: Obj, objects: Sequence[Obj], attrs: Sequence[str]) -> bool:
    return sum(_same(o, other, attrs) for other in objects) == 1


def refer(
    rng: random.Random, o: Obj, objects: Sequence[Obj], options: Sequence[Sequence[str]]
) -> str | None:
    """A noun phrase picking out ``o`` alone: one of the attribute sets of ``options`` that no other
    object shares, chosen at random; None when there is none."""
    good = [attrs for attrs in options if _unique(o, objects, attrs)]
    return _phrase(o, rng.choice(good)) if good else None
