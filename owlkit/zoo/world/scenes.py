"""Scenes: coloured shapes in the cells of a 3x3 grid, an optional word, optional noise.

A :class:`Scene` is what an image shows; the image, its caption and every answer are derived
from it. :func:`random_scene` draws one from a ``random.Random``.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

from owlkit.zoo.world.vocabulary import COLOURS, GRID, OBJECT_COUNT_WEIGHTS, POSITIONS, SHAPES, SIZES, WORDS


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
