"""What the training world and the evaluation set share: named random streams, checked settings.

Every random stream is a ``random.Random`` seeded from a string naming its purpose
(:func:`stream`), so the training world and the evaluation set never share one, whatever
seeds they get, and the same seed always gives the same files.
"""

from __future__ import annotations

import random
from typing import Iterable, Mapping

from owlkit.errors import ConfigError
from owlkit.zoo.world.vocabulary import DEFAULT_TASK_WEIGHTS, TASKS


def stream(*parts: object) -> random.Random:
    """The random stream named by ``parts`` (e.g. ``("eval", seed, task)``)."""
    # String seeds are hashed with SHA-512, so they do not depend on PYTHONHASHSEED.
    return random.Random("owlkit-synth/" + "/".join(map(str, parts)))


def check_task_weights(task_weights: Mapping[str, float] | Iterable[str] | None) -> dict[str, float]:
    """Task -> weight (> 0 only, in :data:`TASKS` order); task names alone weigh 1 each, None all."""
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


def check_prob(name: str, value: float) -> float:
    if not 0.0 <= float(value) <= 1.0:
        raise ConfigError(f"{name} must be between 0 and 1, got {value}")
    return float(value)


def check_image_size(image_size: int) -> int:
    if int(image_size) != image_size or image_size < 32:
        raise ConfigError(f"image size must be an integer >= 32, got {image_size}")
    return int(image_size)


