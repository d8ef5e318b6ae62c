"""Configuration: the model's configs and presets, and every placeholder and index constant.

The constants are defined here and cost nothing to import; the config classes
(:class:`OwlConfig`, :class:`OwlVisionConfig`, :class:`OwlAbstractorConfig`) and
:data:`PRESETS` live in :mod:`owlkit.config.model`, which imports transformers, and load on
first use of their names (``from owlkit.config import OwlConfig``). So data readers, the
synthetic world and the prompt builders share the constants without paying for transformers.
"""

from __future__ import annotations

#: mPLUG-Owl2's image placeholder in text, also owlkit's own (data, prompts, the tokenizer's piece).
V2_IMAGE_PLACEHOLDER = "<|image|>"
#: mPLUG-Owl (v1)'s and LLaVA's image placeholder in text.
V1_IMAGE_PLACEHOLDER = "<image>"
#: The placeholder owlkit writes.
IMAGE_PLACEHOLDER = V2_IMAGE_PLACEHOLDER
#: Both placeholders, in the order they are looked for.
IMAGE_PLACEHOLDERS = (V2_IMAGE_PLACEHOLDER, V1_IMAGE_PLACEHOLDER)

#: Placeholder id of the mPLUG-Owl2 code: one per image in ``input_ids``.
IMAGE_TOKEN_INDEX = -200
#: Placeholder id of the mPLUG-Owl (v1) code: a run of ``tokens_per_image`` of them per image.
V1_IMAGE_ID = -1
#: Label of a position the loss ignores (PyTorch's ``cross_entropy`` default).
IGNORE_INDEX = -100

_MODEL_NAMES = ("OwlConfig", "OwlVisionConfig", "OwlAbstractorConfig", "PRESETS")


def __getattr__(name: str):
    if name in _MODEL_NAMES:
        from owlkit.config import model  # transformers: on first use of a config name only

        return getattr(model, name)
    raise AttributeError(f"module 'owlkit.config' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_MODEL_NAMES))
