"""An independent route from a question's text to its answer.

:func:`answer_question` parses the questions the generators ask and works the answer out from
the scenes alone; the tests check it always agrees with the generators (and it scores
free-form questions about known scenes).
"""

from __future__ import annotations

import re
from typing import Sequence

from owlkit.config import IMAGE_PLACEHOLDER
from owlkit.zoo.world.language import caption, plural
from owlkit.zoo.world.scenes import Obj, Scene
from owlkit.zoo.world.tasks import holds, which_image
from owlkit.zoo.world.vocabulary import (
    COLOURS, FIRST, MIXES, OPPOSITES, POSITIONS, RELATIONS, SECOND, SHAPES, SIDES, SIZES,
)


_POS_ALT = "|".join(sorted(POSITIONS.values(), key=len, reverse=True))
_NP = (
    rf"(?:(?P<{{p}}size>{'|'.join(SIZES)}) )?(?:(?P<{{p}}colour>{'|'.join(COLOURS)}) )?"
    rf"(?P<{{p}}shape>{'|'.join(SHAPES)}|object)(?: (?:at|in|on) the (?P<{{p}}pos>{_POS_ALT}))?"
)


def _np(prefix: str) -> str:
    return _NP.replace("{p}", prefix)


def _np_filter(m: re.Match, prefix: str, objects: Sequence[Obj]) -> list[Obj]:
    g = {k: m.group(prefix + k) for k in ("size", "colour", "shape", "pos")}
    return [
        o
        for o in objects
        if (g["size"] is None or o.size == g["size"])
        and (g["colour"] is None or o.colour == g["colour"])
        and (g["shape"] == "object" or o.shape == g["shape"])
        and (g["pos"] is None or o.position == g["pos"])
    ]


def _q(pattern: str) -> re.Pattern:
    return re.compile(pattern.replace("NP", _np("a"), 1).replace("NP", _np("b"), 1) + r"$")


_RX = {
    "caption": _q(r"(?:Describe the image\.|Write a short caption for the image\.)"),
    "colour": _q(r"What colour is the NP\?"),
    "shape": _q(r"What shape is the NP\?"),
    "count": _q(
        rf"How many (?:(?P<ccolour>{'|'.join(COLOURS)}) )?"
        rf"(?P<cnoun>objects|{'|'.join(map(plural, SHAPES))}) are there\?"
    ),
    "position": _q(r"Where is the NP\?"),
    "relation_yn": _q(rf"Is the NP (?P<rel>{'|'.join(RELATIONS)}) the NP\?"),
    "relation_what": _q(rf"What is (?P<rel>{'|'.join(RELATIONS)}) the NP\?"),
    "read": _q(r"(?:What word is written in the image|What does the text say)\?"),
    "more": _q(r"Which image has more objects\?"),
    "which": _q(r"Which image has an? NP\?"),
    "both": _q(r"Do both images contain an? NP\?"),
    "plus": _q(r"What is (?P<x>\d+) (?P<op>plus|minus) (?P<y>\d+)\?"),
    "spell": _q(r"Spell the word (?P<w>[a-z]+)\."),
    "kind": _q(r"Is (?:an? )?(?P<w>[a-z]+) a (?:shape|colour) or a (?:shape|colour)\?"),
    "mix": _q(r"What colour do you get when you mix (?P<x>[a-z]+) and (?P<y>[a-z]+)\?"),
    "sides": _q(r"How many (?:sides|points) does an? (?P<w>[a-z]+) have\?"),
    "opposite": _q(r"What is the opposite of (?P<w>[a-z]+)\?"),
    "after": _q(r"What number comes (?P<dir>after|before) (?P<x>\d+)\?"),
}


def _only(objs: list[Obj]) -> Obj | None:
    return objs[0] if len(objs) == 1 else None


def answer_question(question: str, scenes: Sequence[Scene] = ()) -> str | None:
    """The answer to a question this world asks, worked out from its text and ``scenes`` alone.

    ``<|image|>`` placeholders are ignored. Returns None for a question it does not understand or
    that has no single answer (e.g. "What colour is the circle?" with two circles).
    """
    q = question.replace(IMAGE_PLACEHOLDER, "").strip()
    one = scenes[0] if len(scenes) == 1 else None
    two = tuple(scenes) if len(scenes) == 2 else None
    if not scenes:
        return _answer_text(q)
    if one is not None:
        objs = one.objects
        if _RX["caption"].match(q):
            return caption(one)
        if m := _RX["colour"].match(q):
            o = _only(_np_filter(m, "a", objs))
            return o.colour if o else None
        if m := _RX["shape"].match(q):
            o = _only(_np_filter(m, "a", objs))
            return o.shape if o else None
        if m := _RX["count"].match(q):
            noun, colour = m.group("cnoun"), m.group("ccolour")
            hits = [
                o for o in objs
                if (colour is None or o.colour == colour) and (noun == "objects" or plural(o.shape) == noun)
            ]
            return str(len(hits))
        if m := _RX["position"].match(q):
            o = _only(_np_filter(m, "a", objs))
            return o.position if o else None
        if m := _RX["relation_yn"].match(q):
            a, b = _only(_np_filter(m, "a", objs)), _only(_np_filter(m, "b", objs))
            if a is None or b is None or a is b:
                return None
            return "yes" if holds(m.group("rel"), a, b) else "no"
        if m := _RX["relation_what"].match(q):
            ref = _only(_np_filter(m, "a", objs))
            if ref is None:
                return None
            hit = _only([o for o in objs if o is not ref and holds(m.group("rel"), o, ref)])
            return hit.describe() if hit else None
        if _RX["read"].match(q):
            return one.word
        return None
    if two is not None:
        a, b = two
        if _RX["more"].match(q):
            if len(a.objects) == len(b.objects):
                return None
            return FIRST if len(a.objects) > len(b.objects) else SECOND
        if m := _RX["which"].match(q):
            return which_image((bool(_np_filter(m, "a", a.objects)), bool(_np_filter(m, "a", b.objects))))
        if m := _RX["both"].match(q):
            return "yes" if _np_filter(m, "a", a.objects) and _np_filter(m, "a", b.objects) else "no"
    return None


def _answer_text(q: str) -> str | None:
    if m := _RX["plus"].match(q):
        x, y = int(m.group("x")), int(m.group("y"))
        return str(x + y if m.group("op") == "plus" else x - y)
    if m := _RX["spell"].match(q):
        return " ".join(m.group("w"))
    if m := _RX["kind"].match(q):
        w = m.group("w")
        return "shape" if w in SHAPES else "colour" if w in COLOURS else None
    if m := _RX["mix"].match(q):
        return MIXES.get(frozenset((m.group("x"), m.group("y"))))
    if m := _RX["sides"].match(q):
        w = m.group("w")
        if w == "star" and "points" in q:
            return "5"
        return str(SIDES[w]) if w in SIDES and "sides" in q else None
    if m := _RX["opposite"].match(q):
        return OPPOSITES.get(m.group("w"))
    if m := _RX["after"].match(q):
        return str(int(m.group("x")) + (1 if m.group("dir") == "after" else -1))
    return None
