"""A procedural visual world for training and testing tiny mPLUG-Owl / mPLUG-Owl2 models.

A :class:`Scene` is a handful of coloured shapes on a 3x3 grid, with an optional word written in
a band below the grid and optional background noise. Everything is derived from the scene
description: the rendered image (:func:`render`), the canonical caption (:func:`caption`) and the
answer to every question the task generators ask. :func:`answer_question` is a second, independent
route from a question's text and its scenes to the answer; the tests check the two always agree.

Tasks (the ``task`` field of every sample):

``caption``   "Describe the image." -> the canonical caption
``colour``    "What colour is the circle?" -> "red"
``shape``     "What shape is the red object?" -> "circle"
``count``     "How many triangles are there?" -> "2"
``position``  "Where is the green star?" -> "top left"
``relation``  "Is the red circle to the left of the blue square?" -> "yes";
              "What is above the blue square?" -> "red circle"
``read``      "What word is written in the image?" -> "CAT"
``compare``   two images: "Which image has more objects?" -> "the first"
``multiturn`` 2-3 question/answer turns about one image
``text``      no image: "What is 3 plus 4?" -> "7", "Spell the word cat." -> "c a t", ...

Questions are only asked where they have exactly one answer (e.g. "What colour is the circle?"
only when the scene holds exactly one circle). Answers are 1-4 words, except captions.

:func:`make_world` writes a training world (images, ``scenes.jsonl``, stage-1 caption data as JSONL
and img2dataset-style webdataset shards, stage-2 instruction data as LLaVA JSON);
:func:`make_eval_set` builds held-out samples in memory; :func:`exact_match` scores answers.
Randomness comes only from ``random.Random`` / ``numpy.random.Generator`` objects seeded from
strings that name their purpose, so the same seed always gives byte-identical files, and the
training world and the evaluation set never share a random stream, whatever seeds they get.
"""

from __future__ import annotations

import io
import json
import random
import re
import shutil
import string
import tarfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from owlkit.errors import ConfigError

# --------------------------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------------------------

IMAGE_TOKEN = "<|image|>"
GRID = 3
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "diamond")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (240, 210, 20),
    "purple": (140, 50, 180),
    "orange": (250, 130, 20),
}
SIZES: tuple[str, ...] = ("small", "big")
BACKGROUND: tuple[int, int, int] = (240, 240, 240)
TEXT_COLOUR: tuple[int, int, int] = (20, 20, 20)
# (row, col) -> name; rows go top to bottom, columns left to right.
POSITIONS: dict[tuple[int, int], str] = {
    (0, 0): "top left",
    (0, 1): "top",
    (0, 2): "top right",
    (1, 0): "left",
    (1, 1): "center",
    (1, 2): "right",
    (2, 0): "bottom left",
    (2, 1): "bottom",
    (2, 2): "bottom right",
}
# Short common words for the scene text (no colour, shape, number or yes/no words, which would
# make questions ambiguous).
WORDS: tuple[str, ...] = (
    "GO", "UP", "HI", "OX",
    "CAT", "DOG", "SUN", "BOX", "CAR", "HAT", "PEN", "CUP", "BUS", "KEY", "MAP", "OWL",
    "FISH", "BIRD", "TREE", "BOOK", "DOOR", "MOON", "LAMP", "SHIP", "FROG", "CAKE", "MILK",
    "RAIN", "SNOW", "WIND",
    "APPLE", "HOUSE", "TRAIN", "CLOCK", "PLANT", "HORSE", "WATER", "CHAIR", "TABLE", "BREAD",
    "MOUSE", "LEMON", "TIGER",
    "GARDEN", "PENCIL", "ROCKET", "WINDOW", "BANANA",
)
TASKS: tuple[str, ...] = (
    "caption", "colour", "shape", "count", "position", "relation", "read", "compare",
    "multiturn", "text",
)
DEFAULT_TASK_WEIGHTS: dict[str, float] = {task: 1.0 for task in TASKS}
# Number of objects in a scene, 0..5.
OBJECT_COUNT_WEIGHTS: tuple[int, ...] = (1, 3, 4, 4, 3, 2)
SIDES = {"triangle": 3, "square": 4, "diamond": 4}
MIXES = {
    frozenset(("red", "yellow")): "orange",
    frozenset(("red", "blue")): "purple",
    frozenset(("blue", "yellow")): "green",
}
OPPOSITES = {
    "big": "small", "small": "big", "left": "right", "right": "left",
    "top": "bottom", "bottom": "top", "above": "below", "below": "above",
}
RELATIONS = ("to the left of", "to the right of", "above", "below")
FIRST, SECOND = "the first", "the second"
NUMBER_WORDS = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
    "nineteen", "twenty",
)


# --------------------------------------------------------------------------------------------
# Scenes
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Obj:
    """One shape in one grid cell."""

    shape: str
    colour: str
    size: str
    row: int
    col: int

    @property
    def position(self) -> str:
        return POSITIONS[(self.row, self.col)]

    def describe(self, with_size: bool = False) -> str:
        """``"red circle"`` (or ``"big red circle"``)."""
        return f"{self.size} {self.colour} {self.shape}" if with_size else f"{self.colour} {self.shape}"


@dataclass
class Scene:
    """What an image shows: objects in distinct cells, an optional word, optional noise.

    ``noise`` is the standard deviation (in 0-255 units) of grey Gaussian noise added to the
    background, drawn from ``numpy.random.default_rng(noise_seed)``; objects and text are never
    noised, so their colours stay exact.
    """

    objects: list[Obj] = field(default_factory=list)
    word: str | None = None
    noise: float = 0.0
    noise_seed: int = 0

    def __post_init__(self) -> None:
        cells = [(o.row, o.col) for o in self.objects]
        if len(set(cells)) != len(cells):
            raise ValueError(f"two objects share a cell: {cells}")
        for o in self.objects:
            if o.shape not in SHAPES or o.colour not in COLOURS or o.size not in SIZES:
                raise ValueError(f"unknown attribute in {o}")
            if not (0 <= o.row < GRID and 0 <= o.col < GRID):
                raise ValueError(f"cell out of the grid: {o}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "objects": [asdict(o) for o in self.objects],
            "word": self.word,
            "noise": self.noise,
            "noise_seed": self.noise_seed,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Scene":
        return cls(
            objects=[Obj(**o) for o in data.get("objects", [])],
            word=data.get("word"),
            noise=float(data.get("noise", 0.0)),
            noise_seed=int(data.get("noise_seed", 0)),
        )

    def key(self) -> tuple:
        """What the scene shows, ignoring noise: equal keys mean the same picture content."""
        return (tuple(sorted((o.row, o.col, o.shape, o.colour, o.size) for o in self.objects)), self.word)


def random_scene(
    rng: random.Random,
    *,
    word_prob: float = 0.5,
    noise_prob: float = 0.3,
    max_noise: float = 16.0,
    words: Sequence[str] = WORDS,
) -> Scene:
    """A random scene: 0-5 objects in distinct cells, a word with ``word_prob``, noise with ``noise_prob``."""
    n = rng.choices(range(len(OBJECT_COUNT_WEIGHTS)), weights=OBJECT_COUNT_WEIGHTS)[0]
    cells = rng.sample(sorted(POSITIONS), n)
    objects = [
        Obj(rng.choice(SHAPES), rng.choice(sorted(COLOURS)), rng.choice(SIZES), r, c)
        for r, c in sorted(cells)
    ]
    word = rng.choice(list(words)) if rng.random() < word_prob else None
    noise = round(rng.uniform(4.0, max_noise), 2) if rng.random() < noise_prob else 0.0
    return Scene(objects=objects, word=word, noise=noise, noise_seed=rng.getrandbits(32))


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def layout(image_size: int) -> tuple[int, float, float]:
    """``(grid_height, cell_width, cell_height)``: the grid fills the top, the text band the bottom fifth."""
    band = image_size // 5
    grid_h = image_size - band
    return grid_h, image_size / GRID, grid_h / GRID


def cell_center(row: int, col: int, image_size: int = 224) -> tuple[int, int]:
    """Pixel ``(x, y)`` of a cell's centre; every shape covers it."""
    _, cw, ch = layout(image_size)
    return int((col + 0.5) * cw), int((row + 0.5) * ch)


def text_box(image_size: int = 224) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)`` of the band below the grid where the word is written."""
    grid_h, _, _ = layout(image_size)
    return 0, grid_h, image_size, image_size


@lru_cache(maxsize=64)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # pragma: no cover - Pillow < 10.1, or no FreeType: fixed-size bitmap font
        return ImageFont.load_default()


def _fit_font(word: str, image_size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    x0, y0, x1, y1 = text_box(image_size)
    size = max(6, int((y1 - y0) * 0.85))
    while True:
        font = _font(size)
        left, top, right, bottom = font.getbbox(word)
        if (right - left <= 0.92 * (x1 - x0) and bottom - top <= 0.9 * (y1 - y0)) or size <= 6:
            return font
        size -= 1


def _shape_points(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "triangle":
        return [(cx, cy - r), (cx + 0.95 * r, cy + 0.75 * r), (cx - 0.95 * r, cy + 0.75 * r)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + 0.75 * r, cy), (cx, cy + r), (cx - 0.75 * r, cy)]
    if shape == "star":
        points = []
        for i in range(10):
            radius = r if i % 2 == 0 else 0.45 * r
            angle = -np.pi / 2 + i * np.pi / 5
            points.append((cx + radius * float(np.cos(angle)), cy + radius * float(np.sin(angle))))
        return points
    raise ValueError(shape)


def render(scene: Scene, image_size: int = 224) -> Image.Image:
    """Draw ``scene`` as an ``image_size`` x ``image_size`` RGB image."""
    img = Image.new("RGB", (image_size, image_size), BACKGROUND)
    draw = ImageDraw.Draw(img)
    _, cw, ch = layout(image_size)
    for o in scene.objects:
        cx, cy = cell_center(o.row, o.col, image_size)
        r = min(cw, ch) * (0.42 if o.size == "big" else 0.24)
        fill = COLOURS[o.colour]
        if o.shape == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        elif o.shape == "square":
            h = 0.85 * r
            draw.rectangle([cx - h, cy - h, cx + h, cy + h], fill=fill)
        else:
            draw.polygon(_shape_points(o.shape, cx, cy, r), fill=fill)
    if scene.noise > 0:
        arr = np.asarray(img).astype(np.float32)
        background = np.all(arr == np.array(BACKGROUND, dtype=np.float32), axis=-1, keepdims=True)
        noise_rng = np.random.default_rng(scene.noise_seed)
        noise = noise_rng.normal(0.0, scene.noise, size=(image_size, image_size, 1))
        arr = np.where(background, arr + noise.astype(np.float32), arr)
        img = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "RGB")
        draw = ImageDraw.Draw(img)
    if scene.word:
        font = _fit_font(scene.word, image_size)
        x0, y0, x1, y1 = text_box(image_size)
        left, top, right, bottom = draw.textbbox((0, 0), scene.word, font=font)
        x = (x0 + x1 - (right - left)) / 2 - left
        y = (y0 + y1 - (bottom - top)) / 2 - top
        draw.text((x, y), scene.word, fill=TEXT_COLOUR, font=font)
    return img


# --------------------------------------------------------------------------------------------
# Language
# --------------------------------------------------------------------------------------------


def where_phrase(row: int, col: int) -> str:
    """``"at the top left"``, ``"in the center"``, ``"on the left"``..."""
    name = POSITIONS[(row, col)]
    if name == "center":
        return "in the center"
    if name in ("left", "right"):
        return f"on the {name}"
    return f"at the {name}"


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _join(parts: list[str]) -> str:
    if len(parts) <= 2:
        return " and ".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def caption(scene: Scene) -> str:
    """The canonical description.

    E.g. ``"a big red circle at the top left and a small blue square in the center."``.
    """
    objects = sorted(scene.objects, key=lambda o: (o.row, o.col))
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
    n = text.count(IMAGE_TOKEN)
    if not n:
        return text
    if start + n > len(scenes):
        raise ValueError(f"{start + n} image placeholders but {len(scenes)} scenes")
    lines = [f"Image {k + 1}: {caption(scenes[k])}" if len(scenes) > 1 else f"Image: {caption(scenes[k])}"
             for k in range(start, start + n)]
    return "\n".join(lines) + "\n" + text.replace(IMAGE_TOKEN, "").strip()


def described_turns(texts: Sequence[str], scenes: Sequence[Scene]) -> list[str]:
    """:func:`described` over a conversation's turns, each turn's images taking the next scenes."""
    out, start = [], 0
    for text in texts:
        out.append(described(text, scenes, start))
        start += text.count(IMAGE_TOKEN)
    return out


def _plural(shape: str) -> str:
    return shape + "s"


_ATTRS = ("size", "colour", "shape", "cell")


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


def _refer(
    rng: random.Random, o: Obj, objects: Sequence[Obj], options: Sequence[Sequence[str]]
) -> str | None:
    """A noun phrase picking out ``o`` alone, from the first attribute sets that are unique."""
    good = [attrs for attrs in options if _unique(o, objects, attrs)]
    return _phrase(o, rng.choice(good)) if good else None


# --------------------------------------------------------------------------------------------
# Question generators: (rng, scenes) -> [(question, answer), ...] or None when the scenes do not
# allow the task. Answers come from the Scene objects, never from text.
# --------------------------------------------------------------------------------------------

QA = tuple[str, str]


def _gen_caption(rng: random.Random, scene: Scene) -> QA:
    prompt = rng.choice(("Describe the image.", "Write a short caption for the image."))
    return prompt, caption(scene)


def _gen_colour(rng: random.Random, scene: Scene) -> QA | None:
    objs = list(scene.objects)
    rng.shuffle(objs)
    for o in objs:
        ref = _refer(rng, o, scene.objects, [("shape",), ("size", "shape"), ("cell",)])
        if ref:
            return f"What colour is the {ref}?", o.colour
    return None


def _gen_shape(rng: random.Random, scene: Scene) -> QA | None:
    objs = list(scene.objects)
    rng.shuffle(objs)
    for o in objs:
        ref = _refer(rng, o, scene.objects, [("colour",), ("size", "colour"), ("cell",)])
        if ref:
            return f"What shape is the {ref}?", o.shape
    return None


def _gen_count(rng: random.Random, scene: Scene) -> QA:
    kind = rng.choice(("all", "shape", "shape", "colour"))
    if kind == "all":
        return "How many objects are there?", str(len(scene.objects))
    present = sorted({getattr(o, kind) for o in scene.objects})
    pool = sorted(COLOURS) if kind == "colour" else list(SHAPES)
    value = rng.choice(present) if present and rng.random() < 0.8 else rng.choice(pool)
    n = sum(getattr(o, kind) == value for o in scene.objects)
    noun = f"{value} objects" if kind == "colour" else _plural(value)
    return f"How many {noun} are there?", str(n)


def _gen_position(rng: random.Random, scene: Scene) -> QA | None:
    objs = list(scene.objects)
    rng.shuffle(objs)
    for o in objs:
        ref = _refer(rng, o, scene.objects, [("shape",), ("colour", "shape"), ("size", "colour", "shape")])
        if ref:
            return f"Where is the {ref}?", o.position
    return None


def _holds(relation: str, a: Obj, b: Obj) -> bool:
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
            ra, rb = _refer(rng, a, objs, _REF_NO_CELL), _refer(rng, b, objs, _REF_NO_CELL)
            if not (ra and rb):
                continue
            axes = [RELATIONS[:2]] if a.col != b.col else []
            axes += [RELATIONS[2:]] if a.row != b.row else []
            relation = rng.choice(rng.choice(axes))
            return f"Is the {ra} {relation} the {rb}?", "yes" if _holds(relation, a, b) else "no"
        return None
    options = [(rel, ref) for rel in RELATIONS for ref in objs]
    rng.shuffle(options)
    for relation, ref in options:
        hits = [o for o in objs if o is not ref and _holds(relation, o, ref)]
        name = _refer(rng, ref, objs, _REF_NO_CELL)
        if len(hits) == 1 and name:
            return f"What is {relation} the {name}?", hits[0].describe()
    return None


def _gen_read(rng: random.Random, scene: Scene) -> QA | None:
    if not scene.word:
        return None
    return rng.choice(("What word is written in the image?", "What does the text say?")), scene.word


def _which(flags: tuple[bool, bool]) -> str | None:
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
            return f"Do both images contain {_article(noun)} {noun}?", answer
        for attr, value in candidates:
            noun = value if attr == "shape" else f"{value} object"
            answer = _which(flags(attr, value))
            if answer:
                return f"Which image has {_article(noun)} {noun}?", answer
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
            return f"Is {_article(shape)} {shape} {options}?", "shape"
        return f"Is {rng.choice(sorted(COLOURS))} {options}?", "colour"
    if kind == "mix":
        pair = sorted(rng.choice(sorted(MIXES, key=sorted)))
        rng.shuffle(pair)
        return f"What colour do you get when you mix {pair[0]} and {pair[1]}?", MIXES[frozenset(pair)]
    if kind == "sides":
        shape = rng.choice(sorted(SIDES) + ["star"])
        if shape == "star":
            return "How many points does a star have?", "5"
        return f"How many sides does {_article(shape)} {shape} have?", str(SIDES[shape])
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
            q = "\n".join([IMAGE_TOKEN] * n_images) + "\n" + q
        out.append({"from": "human", "value": q})
        out.append({"from": "gpt", "value": a})
    return out


# --------------------------------------------------------------------------------------------
# An independent route from question text to answer, used to check the generators (and handy to
# score free-form questions about known scenes).
# --------------------------------------------------------------------------------------------

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
        rf"(?P<cnoun>objects|{'|'.join(map(_plural, SHAPES))}) are there\?"
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
    q = question.replace(IMAGE_TOKEN, "").strip()
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
                if (colour is None or o.colour == colour) and (noun == "objects" or _plural(o.shape) == noun)
            ]
            return str(len(hits))
        if m := _RX["position"].match(q):
            o = _only(_np_filter(m, "a", objs))
            return o.position if o else None
        if m := _RX["relation_yn"].match(q):
            a, b = _only(_np_filter(m, "a", objs)), _only(_np_filter(m, "b", objs))
            if a is None or b is None or a is b:
                return None
            return "yes" if _holds(m.group("rel"), a, b) else "no"
        if m := _RX["relation_what"].match(q):
            ref = _only(_np_filter(m, "a", objs))
            if ref is None:
                return None
            hit = _only([o for o in objs if o is not ref and _holds(m.group("rel"), o, ref)])
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
            return _which((bool(_np_filter(m, "a", a.objects)), bool(_np_filter(m, "a", b.objects))))
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


# --------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------

_SYNONYMS = {"color": "colour", "centre": "center", "middle": "center", "gray": "grey"}
_NUMBERS = {w: str(i) for i, w in enumerate(NUMBER_WORDS)}
_PUNCT = str.maketrans({c: " " for c in string.punctuation})


def normalize_answer(text: str) -> str:
    """Lower-case, punctuation to spaces, number words to digits, a leading article dropped.

    ``"The first."`` -> ``"first"``, ``"Seven"`` -> ``"7"``, ``"C-A-T"`` -> ``"c a t"``.
    """
    tokens = str(text).lower().translate(_PUNCT).split()
    tokens = [_NUMBERS.get(t, _SYNONYMS.get(t, t)) for t in tokens]
    spelled = len(tokens) > 1 and all(len(t) == 1 for t in tokens)
    if not spelled and len(tokens) > 1 and tokens[0] in ("a", "an", "the"):
        tokens = tokens[1:]
    return " ".join(tokens)


def exact_match(prediction: str, answer: str) -> bool:
    """Whether ``prediction`` and ``answer`` are the same after :func:`normalize_answer`."""
    return normalize_answer(prediction) == normalize_answer(answer)


# --------------------------------------------------------------------------------------------
# Samples
# --------------------------------------------------------------------------------------------


def _rng(*parts: object) -> random.Random:
    # String seeds are hashed with SHA-512, so they do not depend on PYTHONHASHSEED.
    return random.Random("owlkit-synth/" + "/".join(map(str, parts)))


def _check_weights(task_weights: Mapping[str, float] | Iterable[str] | None) -> dict[str, float]:
    if task_weights is None:
        return dict(DEFAULT_TASK_WEIGHTS)
    if not isinstance(task_weights, Mapping):
        task_weights = {t: 1.0 for t in task_weights}
    weights: dict[str, float] = {}
    for task, w in task_weights.items():
        if task not in TASKS:
            raise ConfigError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
        try:
            w = float(w)
        except (TypeError, ValueError):
            raise ConfigError(f"weight of task {task} must be a number, got {w!r}") from None
        if not w >= 0:
            raise ConfigError(f"weight of task {task} must be >= 0, got {w}")
        weights[task] = w
    if not sum(weights.values()) > 0:
        raise ConfigError("at least one task needs a weight > 0")
    return {t: weights[t] for t in TASKS if weights.get(t, 0) > 0}


def _apportion(weights: Mapping[str, float], total: int) -> dict[str, int]:
    """Exact counts per task summing to ``total``, proportional to weights (largest remainder)."""
    s = sum(weights.values())
    raw = {t: total * w / s for t, w in weights.items()}
    counts = {t: int(v) for t, v in raw.items()}
    rest = total - sum(counts.values())
    for t in sorted(raw, key=lambda t: (-(raw[t] - counts[t]), TASKS.index(t)))[:rest]:
        counts[t] += 1
    return counts


def _check_prob(name: str, value: float) -> float:
    if not 0.0 <= float(value) <= 1.0:
        raise ConfigError(f"{name} must be between 0 and 1, got {value}")
    return float(value)


def _check_image_size(image_size: int) -> int:
    if int(image_size) != image_size or image_size < 32:
        raise ConfigError(f"image size must be an integer >= 32, got {image_size}")
    return int(image_size)


@dataclass
class EvalSample:
    """One held-out sample; the model answers ``question`` after ``history``, and is scored on ``answer``."""

    id: str
    task: str
    images: list[Image.Image]
    scenes: list[Scene]
    conversations: list[dict[str, str]]

    @property
    def question(self) -> str:
        """The last human turn as the model sees it (with ``<|image|>`` lines if it is the first turn)."""
        return self.conversations[-2]["value"]

    @property
    def answer(self) -> str:
        return self.conversations[-1]["value"]

    @property
    def history(self) -> list[tuple[str, str]]:
        """Earlier (human, gpt) turns, for multi-turn samples."""
        c = self.conversations[:-2]
        return [(c[i]["value"], c[i + 1]["value"]) for i in range(0, len(c), 2)]


def make_eval_set(
    seed: int,
    n_per_task: int,
    image_size: int = 224,
    *,
    tasks: Iterable[str] | None = None,
    word_prob: float = 0.5,
    noise_prob: float = 0.3,
    exclude_scenes: Iterable[Scene] | None = None,
) -> list[EvalSample]:
    """``n_per_task`` held-out samples of each task, with fresh scenes, images in memory.

    The random stream is namespaced apart from :func:`make_world`'s, so even the same seed yields
    different scenes; ``exclude_scenes`` (e.g. a training world's scenes) are additionally
    avoided where another draw allows (the space of 0-1 object scenes is small).
    """
    if int(n_per_task) != n_per_task or n_per_task <= 0:
        raise ConfigError(f"n_per_task must be a positive integer, got {n_per_task}")
    image_size = _check_image_size(image_size)
    word_prob, noise_prob = _check_prob("word_prob", word_prob), _check_prob("noise_prob", noise_prob)
    chosen = list(_check_weights(list(tasks) if tasks is not None else None))
    if "read" in chosen and word_prob == 0:
        raise ConfigError("the read task needs words in the images; use word_prob > 0 or drop the task")
    excluded = {s.key() for s in exclude_scenes or ()}
    samples: list[EvalSample] = []
    for task in chosen:
        rng = _rng("eval", seed, task)
        for i in range(int(n_per_task)):
            for _attempt in range(1000):
                scenes = []
                for _ in range(images_for(task)):
                    for _retry in range(50):
                        scene = random_scene(rng, word_prob=word_prob, noise_prob=noise_prob)
                        if scene.key() not in excluded:
                            break
                    scenes.append(scene)
                turns = generate(task, rng, scenes)
                if turns:
                    break
            else:  # pragma: no cover - every task succeeds on some scene long before this
                raise ConfigError(f"could not build a {task} sample with word_prob={word_prob}")
            samples.append(
                EvalSample(
                    id=f"eval-{task}-{i:05d}",
                    task=task,
                    images=[render(s, image_size) for s in scenes],
                    scenes=scenes,
                    conversations=conversations(turns, len(scenes)),
                )
            )
    return samples


# --------------------------------------------------------------------------------------------
# Writing a world
# --------------------------------------------------------------------------------------------

_TAR_MTIME = 946684800  # 2000-01-01, fixed so shards are byte-identical across runs
WORLD_FILES = ("images", "shards", "scenes.jsonl", "captions.jsonl", "instruct.json", "world.json")
FORMATS = ("jsonl", "wds", "both")


def _image_bytes(img: Image.Image, ext: str) -> bytes:
    buf = io.BytesIO()
    if ext == "png":
        img.save(buf, format="PNG")
    else:
        img.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _tar_add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = _TAR_MTIME
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def _prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"{out_dir} is a file; give a folder to write the world into")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            raise ConfigError(f"{out_dir} is not empty; choose an empty folder or pass --overwrite")
        # Remove only what a world consists of, never anything else the user keeps there.
        for name in WORLD_FILES:
            path = out_dir / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)


def make_world(
    out_dir: str | Path,
    seed: int,
    n: int,
    image_size: int = 224,
    *,
    fmt: str = "both",
    task_weights: Mapping[str, float] | Iterable[str] | None = None,
    n_instruct: int | None = None,
    word_prob: float = 0.5,
    noise_prob: float = 0.3,
    shard_size: int = 1000,
    shard_image_ext: str = "png",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write a world of ``n`` images to ``out_dir`` and return its manifest (also in ``world.json``).

    Files: ``images/000001.png``...; ``scenes.jsonl`` (``{"key", "image", "scene"}`` a line);
    stage-1 captions as ``captions.jsonl`` (``fmt`` jsonl/both) and ``shards/00000.tar``...
    (``fmt`` wds/both; ``KEY.png|jpg``, ``KEY.txt``, ``KEY.json`` per sample); stage-2
    ``instruct.json``: ``n_instruct`` (default ``n``) LLaVA samples over the same images, task
    counts proportional to ``task_weights`` (a mapping, or task names for equal weights).
    A task a drawn image does not allow is retried on other images, then falls back to
    ``caption`` (the manifest's counts tell the truth).
    """
    if int(n) != n or n <= 0:
        raise ConfigError(f"n must be a positive integer, got {n}")
    n = int(n)
    n_instruct = n if n_instruct is None else n_instruct
    if int(n_instruct) != n_instruct or n_instruct < 0:
        raise ConfigError(f"n_instruct must be an integer >= 0, got {n_instruct}")
    image_size = _check_image_size(image_size)
    if fmt not in FORMATS:
        raise ConfigError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if shard_image_ext not in ("png", "jpg"):
        raise ConfigError(f"shard image extension must be png or jpg, got {shard_image_ext!r}")
    if int(shard_size) != shard_size or shard_size <= 0:
        raise ConfigError(f"shard size must be a positive integer, got {shard_size}")
    weights = _check_weights(task_weights)
    word_prob, noise_prob = _check_prob("word_prob", word_prob), _check_prob("noise_prob", noise_prob)
    out = Path(out_dir)
    _prepare_out_dir(out, overwrite)

    keys = [f"{i + 1:06d}" for i in range(n)]
    paths = [f"images/{k}.png" for k in keys]
    scenes = [
        random_scene(_rng("train", seed, "scene", i), word_prob=word_prob, noise_prob=noise_prob)
        for i in range(n)
    ]
    captions = [caption(s) for s in scenes]
    files: list[str] = []

    # Images, scene descriptions, stage-1 captions.
    (out / "images").mkdir()
    write_jsonl = fmt in ("jsonl", "both")
    write_wds = fmt in ("wds", "both")
    tar: tarfile.TarFile | None = None
    n_shards = 0
    if write_wds:
        (out / "shards").mkdir()
    with open(out / "scenes.jsonl", "w", encoding="utf-8") as f_scenes, (
        open(out / "captions.jsonl", "w", encoding="utf-8") if write_jsonl else io.StringIO()
    ) as f_caps:
        for i, (key, path, scene, cap) in enumerate(zip(keys, paths, scenes, captions)):
            img = render(scene, image_size)
            png = _image_bytes(img, "png")
            (out / path).write_bytes(png)
            f_scenes.write(json.dumps({"key": key, "image": path, "scene": scene.to_dict()}) + "\n")
            if write_jsonl:
                f_caps.write(json.dumps({"image": path, "caption": cap}) + "\n")
            if write_wds:
                if i % shard_size == 0:
                    if tar is not None:
                        tar.close()
                    shard = out / "shards" / f"{n_shards:05d}.tar"
                    tar = tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT)
                    n_shards += 1
                data = png if shard_image_ext == "png" else _image_bytes(img, "jpg")
                meta = {
                    "key": key, "caption": cap, "status": "success", "error_message": None,
                    "width": image_size, "height": image_size, "scene": scene.to_dict(),
                }
                _tar_add(tar, f"{key}.{shard_image_ext}", data)
                _tar_add(tar, f"{key}.txt", cap.encode("utf-8"))
                _tar_add(tar, f"{key}.json", json.dumps(meta).encode("utf-8"))
    if tar is not None:
        tar.close()
    files += ["images/", "scenes.jsonl"]
    if write_jsonl:
        files.append("captions.jsonl")
    if write_wds:
        files += [f"shards/{i:05d}.tar" for i in range(n_shards)]

    # Stage-2 instruction samples.
    rng = _rng("train", seed, "instruct")
    plan = [t for t, c in _apportion(weights, int(n_instruct)).items() for _ in range(c)]
    rng.shuffle(plan)
    samples = []
    for j, task in enumerate(plan):
        turns, idx = None, []
        for attempt in range(60):
            first = j % n if attempt == 0 else rng.randrange(n)
            if images_for(task) == 0:
                idx = []
            elif images_for(task) == 1:
                idx = [first]
            else:
                second = rng.randrange(n - 1) if n > 1 else 0
                idx = [first, second + (second >= first and n > 1)]
            turns = generate(task, rng, [scenes[k] for k in idx])
            if turns:
                break
        if not turns:
            task, idx = "caption", [j % n]
            turns = generate(task, rng, [scenes[idx[0]]])
        sample: dict[str, Any] = {"id": f"{j + 1:06d}", "task": task}
        if len(idx) == 1:
            sample["image"] = paths[idx[0]]
        elif idx:
            sample["image"] = [paths[k] for k in idx]
        sample["conversations"] = conversations(turns, len(idx))
        samples.append(sample)
    with open(out / "instruct.json", "w", encoding="utf-8") as f:
        json.dump(samples, f, indent=1)
        f.write("\n")
    files.append("instruct.json")

    counts = Counter(s["task"] for s in samples)
    manifest = {
        "generator": "owlkit.data.synth",
        "version": 1,
        "seed": seed,
        "n": n,
        "n_instruct": int(n_instruct),
        "image_size": image_size,
        "format": fmt,
        "task_weights": weights,
        "word_prob": word_prob,
        "noise_prob": noise_prob,
        "shard_size": int(shard_size),
        "shard_image_ext": shard_image_ext,
        "task_counts": {t: counts[t] for t in TASKS if counts[t]},
        "files": files + ["world.json"],
    }
    with open(out / "world.json", "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    return manifest


def load_scenes(path: str | Path) -> dict[str, Scene]:
    """``scenes.jsonl`` (or a world folder) as ``{image path: Scene}``."""
    path = Path(path)
    if path.is_dir():
        path = path / "scenes.jsonl"
    out = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                out[row["image"]] = Scene.from_dict(row["scene"])
    return out
