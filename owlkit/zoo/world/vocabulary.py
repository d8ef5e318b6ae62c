"""The world's words and numbers: shapes, colours, sizes, grid positions, scene words, tasks.

Every other module of the world draws its choices from these tables, so a change here changes
every scene, image and question a seed gives.
"""

from __future__ import annotations

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
