"""Model folders: official mPLUG-Owl / mPLUG-Owl2 and owlkit's own, loaded exactly, written, converted.

* :mod:`~owlkit.checkpoints.names`: the official parameter names, one table per generation,
  and the deterministic buffers official checkpoints carry;
* :mod:`~owlkit.checkpoints.official_config`: official ``config.json`` <-> ``OwlConfig``;
* :mod:`~owlkit.checkpoints.loading`: :func:`load_model` (any supported folder, one tensor at a
  time, every tensor checked);
* :mod:`~owlkit.checkpoints.saving`: :func:`save_model` (owlkit or official layout),
  :func:`convert`;
* :mod:`~owlkit.checkpoints.llm`: LLMs as building material, a HF LLaMA-family folder or a GGUF
  file (:func:`~owlkit.checkpoints.llm.read_language_model`);
* :mod:`~owlkit.checkpoints.components`: :func:`build_from_components`, a fresh model from such
  an LLM and a HF CLIP vision folder (or an owlkit model's encoder).

Importing this package makes ``OwlForCausalLM.from_pretrained`` read through
:func:`load_model` (the model layer knows no file formats; see :mod:`owlkit.models.owl`).
"""

from owlkit.checkpoints.components import build_from_components, fuse_qkv, save_built
from owlkit.checkpoints.loading import detect_format, load_model, read_config
from owlkit.checkpoints.names import (
    FORMATS,
    OFFICIAL_V1,
    OFFICIAL_V2,
    OWLKIT,
    carried_names,
    official_buffers,
    official_names,
)
from owlkit.checkpoints.official_config import config_from_official, config_to_official
from owlkit.checkpoints.saving import copy_side_files, convert, quiet_saving, save_model
from owlkit.models.owl import OwlForCausalLM

OwlForCausalLM.folder_loader = staticmethod(load_model)

__all__ = [
    "FORMATS", "OFFICIAL_V1", "OFFICIAL_V2", "OWLKIT",
    "build_from_components", "carried_names", "config_from_official", "config_to_official", "convert",
    "detect_format", "fuse_qkv", "load_model", "save_built", "official_buffers", "official_names", "quiet_saving",
    "copy_side_files", "read_config", "save_model",
]
