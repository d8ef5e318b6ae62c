"""Training: recipes, freezing per stage, the papers' optimiser, DDP / FSDP2, checkpoints.

Public API (imported lazily, so ``owlkit.training.recipe`` stays light):

* :func:`train` (``owlkit.training.loop``): run a recipe, returns a :class:`TrainResult`;
  :class:`Trainer` is the run it drives (setup, then one :func:`train_step` per optimiser step,
  ``owlkit.training.step``, returning a :class:`StepStats`);
* :class:`LossModule` (``owlkit.training.loss``): the summed cross-entropy the wrappers see;
* :func:`load_recipe` / :class:`Recipe` (``owlkit.training.recipe``): YAML + ``key=value`` overrides;
* :class:`BatchSource`, :class:`RandomDataset`, :func:`tensor_collate`,
  :func:`build_batch_source`, :func:`load_processing` (``owlkit.training.sources``): the data seam;
* :func:`apply_stage`, :func:`param_groups`, :func:`parameter_table` (``owlkit.training.params``);
* :func:`merge_lora` (``owlkit.training.lora``).

See docs/training.md.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "train": "owlkit.training.loop",
    "TrainResult": "owlkit.training.loop",
    "TrainingError": "owlkit.training.loop",
    "Trainer": "owlkit.training.loop",
    "LossModule": "owlkit.training.loss",
    "StepStats": "owlkit.training.step",
    "train_step": "owlkit.training.step",
    "load_recipe": "owlkit.training.recipe",
    "Recipe": "owlkit.training.recipe",
    "DEFAULTS": "owlkit.training.recipe",
    "BatchSource": "owlkit.training.sources",
    "RandomDataset": "owlkit.training.sources",
    "tensor_collate": "owlkit.training.sources",
    "build_batch_source": "owlkit.training.sources",
    "load_processing": "owlkit.training.sources",
    "apply_stage": "owlkit.training.params",
    "param_groups": "owlkit.training.params",
    "parameter_table": "owlkit.training.params",
    "merge_lora": "owlkit.training.lora",
    "plot_run": "owlkit.training.metrics",
    "read_metrics": "owlkit.training.metrics",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'owlkit.training' has no attribute {name!r}")
