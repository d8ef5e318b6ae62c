"""Held-out evaluation samples, built in memory from a stream of their own."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from PIL import Image

from owlkit.errors import ConfigError
from owlkit.zoo.world.rendering import render
from owlkit.zoo.world.scenes import Scene, random_scene
from owlkit.zoo.world.settings import check_image_size, check_prob, check_task_weights, stream
from owlkit.zoo.world.tasks import conversations, generate, images_for


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
    image_size = check_image_size(image_size)
    word_prob, noise_prob = check_prob("word_prob", word_prob), check_prob("noise_prob", noise_prob)
    chosen = list(check_task_weights(list(tasks) if tasks is not None else None))
    if "read" in chosen and word_prob == 0:
        raise ConfigError("the read task needs words in the images; use word_prob > 0 or drop the task")
    excluded = {s.key() for s in exclude_scenes or ()}
    samples: list[EvalSample] = []
    for task in chosen:
        rng = stream("eval", seed, task)
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
