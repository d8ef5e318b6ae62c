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

The modules, bottom up: ``vocabulary`` (the tables), ``scenes``, ``rendering``, ``language``
(captions, referring expressions), ``tasks`` (question generators), ``answers`` (the second
route), ``scoring``, ``settings`` (random streams, checks), ``eval_sets``, ``files`` (a world
on disk).
"""

from owlkit.zoo.world.answers import answer_question
from owlkit.zoo.world.eval_sets import EvalSample, make_eval_set
from owlkit.zoo.world.files import FORMATS, WORLD_FILES, load_scenes, make_world
from owlkit.zoo.world.language import caption, described, described_turns, where_phrase, with_captions
from owlkit.zoo.world.rendering import cell_center, layout, render, text_box
from owlkit.zoo.world.scenes import Obj, Scene, random_scene
from owlkit.zoo.world.scoring import exact_match, normalize_answer
from owlkit.zoo.world.tasks import QA, conversations, generate, images_for
from owlkit.zoo.world.vocabulary import (
    BACKGROUND,
    COLOURS,
    DEFAULT_TASK_WEIGHTS,
    GRID,
    OBJECT_COUNT_WEIGHTS,
    POSITIONS,
    SHAPES,
    SIZES,
    TASKS,
    TEXT_COLOUR,
    WORDS,
)

__all__ = [
    "BACKGROUND", "COLOURS", "DEFAULT_TASK_WEIGHTS", "FORMATS", "GRID", "OBJECT_COUNT_WEIGHTS", "POSITIONS",
    "QA", "SHAPES", "SIZES", "TASKS", "TEXT_COLOUR", "WORDS", "WORLD_FILES",
    "EvalSample", "Obj", "Scene",
    "answer_question", "caption", "cell_center", "conversations", "described", "described_turns",
    "exact_match", "generate", "images_for", "layout", "load_scenes", "make_eval_set", "make_world",
    "normalize_answer", "random_scene", "render", "text_box", "where_phrase", "with_captions",
]
