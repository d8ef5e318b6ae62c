"""Inputs of both mPLUG-Owl generations, as the official code prepares them.

* :mod:`owlkit.processing.images`: :class:`OwlImageProcessor` (pixel values, four aspect-ratio
  modes, robust image loading);
* :mod:`owlkit.processing.templates`: the conversation templates and :func:`render`;
* :mod:`owlkit.processing.tokenizer`: :class:`OwlTokenizer` and :func:`encode_prompt`
  (placeholder rules);
* :mod:`owlkit.processing.labels`: :func:`build_training_example` (supervised replies only).

Nothing here imports transformers; torch is imported only when pixel tensors are returned.
See docs/processing.md.
"""

from __future__ import annotations

from owlkit.config import IGNORE_INDEX, IMAGE_TOKEN_INDEX, V1_IMAGE_PLACEHOLDER, V2_IMAGE_PLACEHOLDER
from owlkit.processing.images import (
    CLIP_MEAN,
    CLIP_STD,
    DEFAULT_MAX_PIXELS,
    MODES,
    PAD_COLOR,
    OwlImageProcessor,
    clip_preprocess,
    default_mode,
    expand2square,
    generation_number,
    load_image,
    pil_resize,
)
from owlkit.processing.labels import TrainingExample, build_training_example
from owlkit.processing.templates import (
    TEMPLATES,
    RenderedPrompt,
    Template,
    default_template,
    get_template,
    render,
)
from owlkit.processing.tokenizer import (
    OwlTokenizer,
    encode_prompt,
    load_tokenizer,
    placeholder_id,
)

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "DEFAULT_MAX_PIXELS",
    "IGNORE_INDEX",
    "IMAGE_TOKEN_INDEX",
    "MODES",
    "PAD_COLOR",
    "TEMPLATES",
    "V1_IMAGE_PLACEHOLDER",
    "V2_IMAGE_PLACEHOLDER",
    "OwlImageProcessor",
    "OwlTokenizer",
    "RenderedPrompt",
    "Template",
    "TrainingExample",
    "build_training_example",
    "clip_preprocess",
    "default_mode",
    "default_template",
    "encode_prompt",
    "expand2square",
    "generation_number",
    "get_template",
    "load_image",
    "load_tokenizer",
    "pil_resize",
    "placeholder_id",
    "render",
]
