"""owlkit: mPLUG-Owl and mPLUG-Owl2 on today's libraries.

Heavy imports (torch, transformers) happen on first use of the names below, so that the
``owl`` command starts quickly.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "OwlConfig": "owlkit.config",
    "OwlVisionConfig": "owlkit.config",
    "OwlAbstractorConfig": "owlkit.config",
    "OwlForCausalLM": "owlkit.models.owl",
    "load_model": "owlkit.checkpoints",
    "save_model": "owlkit.checkpoints",
    "build_from_components": "owlkit.checkpoints",
    "Owl": "owlkit.inference",
    "OwlProcessor": "owlkit.processing.processor",
}

__all__ = sorted(_LAZY) + ["__version__"]

from owlkit import _auto_hook  # noqa: E402  (cheap: no transformers import)

_auto_hook.install()


def __getattr__(name: str):
    if name in _LAZY:
        module = importlib.import_module(_LAZY[name])
        if name in ("OwlConfig", "OwlForCausalLM", "Owl", "load_model"):
            from owlkit.models import registry  # noqa: F401  (registers the Auto classes; torch: on first use only)
        if name == "OwlForCausalLM":
            import owlkit.checkpoints  # noqa: F401  (from_pretrained reads folders through it; torch: on first use only)
        return getattr(module, name)
    raise AttributeError(f"module 'owlkit' has no attribute {name!r}")
