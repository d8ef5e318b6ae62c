"""Pre-trained LLaMA-family language models as building material: a HF folder or a GGUF file.

:func:`read_language_model` returns what :func:`owlkit.build_from_components` needs from an
LLM, whatever file it came in:

* ``config``: the LLaMA config as a dict in HF names (grouped-query heads, rope settings, tied
  embeddings, vocabulary size);
* ``state``: the weights in HF LLaMA names (``model.layers.0.self_attn.q_proj.weight``...),
  ``lm_head.weight`` absent when the embeddings are tied;
* ``save_tokenizer(folder)``: writes the LLM's own tokenizer (``tokenizer.json`` and
  ``tokenizer_config.json``, or the SentencePiece files) and its chat template, if it has one.

GGUF files are read with transformers' GGUF loader (``gguf`` package): every quantization type
the ``gguf`` package dequantizes is accepted, the q/k rows that llama.cpp permutes for its rope
kernel are permuted back, and the vocabulary becomes a ``tokenizers`` tokenizer. Before any
tensor is read the file's header is checked: the architecture must be ``llama`` and every
tensor type dequantizable, otherwise one line says which and why.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from unittest import mock

import torch
from tqdm.auto import tqdm
from transformers import AutoTokenizer, LlamaForCausalLM
from transformers import modeling_gguf_pytorch_utils as gguf_loader
from transformers.utils import logging as hf_logging

from owlkit.errors import CheckpointError, first_line
from owlkit.weight_files import read_json, read_state_dict

#: GGUF ``general.architecture`` values whose tensors map onto LLaMA's.
GGUF_ARCHITECTURES = ("llama",)
#: Tokenizer files copied from a HF folder (whichever exist).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "chat_template.jinja", "chat_template.json")


@dataclass
class LanguageModel:
    """An LLM read for building (see module doc)."""

    path: Path
    config: dict
    state: dict[str, torch.Tensor]
    save_tokenizer: Callable[[Path], None]
    #: The LLM's tokenizer (a transformers tokenizer), read when first asked for.
    tokenizer: Callable[[], Any] = lambda: None

    @property
    def chat_template(self) -> str | None:
        return self.config.get("chat_template")


#: Keys of a loaded config that describe where and how it was read, not the model: dropped, so a
#: built model's config names no path of the machine that built it.
LOADING_KEYS = ("quantization_config", "architectures", "transformers_version", "dtype", "torch_dtype",
                "_name_or_path", "_model_name_or_path", "_commit_hash")


def _portable(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in LOADING_KEYS}


def is_gguf(path: str | Path) -> bool:
    path = Path(path)
    if path.is_file():
        with path.open("rb") as f:
            return f.read(4) == b"GGUF"
    return False


def read_language_model(path: str | Path, dtype: torch.dtype = torch.float32) -> LanguageModel:
    """A LLaMA-architecture LLM from a HF folder or a GGUF file (see module doc)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist; give a HF LLaMA folder or a .gguf file")
    if is_gguf(path):
        return _read_gguf(path, dtype)
    if path.is_file():
        raise CheckpointError(f"{path} is neither a GGUF file nor a folder; give a HF LLaMA folder or a .gguf file")
    return _read_hf_folder(path, dtype)


def _read_hf_folder(folder: Path, dtype: torch.dtype) -> LanguageModel:
    if not (folder / "config.json").exists():
        raise CheckpointError(f"no config.json in {folder}; expected a HF LLaMA folder or a .gguf file")
    config = _portable(read_json(folder / "config.json"))
    if config.get("model_type") != "llama":
        raise CheckpointError(f"{folder} holds a {config.get('model_type')!r} model; owlkit builds on LLaMA-architecture "
                              "LLMs (model_type 'llama')")
    state = {k: v.to(dtype) for k, v in read_state_dict(folder).items()}

    def save_tokenizer(dst: Path) -> None:
        for name in TOKENIZER_FILES:
            if (folder / name).exists():
                shutil.copyfile(folder / name, Path(dst) / name)

    return LanguageModel(folder, config, state, save_tokenizer, lambda: AutoTokenizer.from_pretrained(folder))


def _check_gguf_header(path: Path) -> None:
    from gguf import GGMLQuantizationType, GGUFReader
    from gguf.quants import _type_traits

    try:
        reader = GGUFReader(path)
    except Exception as e:  # the gguf package raises ValueError / struct errors on damaged files
        raise CheckpointError(f"cannot read {path} as GGUF ({first_line(e)})") from None
    field = reader.fields.get("general.architecture")
    arch = field.contents() if field is not None else None
    if arch not in GGUF_ARCHITECTURES:
        raise CheckpointError(f"{path.name} holds a {arch!r} model; owlkit builds on LLaMA-architecture LLMs "
                              f"(GGUF general.architecture {', '.join(map(repr, GGUF_ARCHITECTURES))})")
    readable = {GGMLQuantizationType.F32, GGMLQuantizationType.F16, *_type_traits}
    bad = sorted({t.tensor_type.name for t in reader.tensors if t.tensor_type not in readable})
    if bad:
        raise CheckpointError(f"{path.name} has tensors of type {', '.join(bad)}, which the gguf package cannot "
                              "dequantize; convert it to another type (e.g. Q8_0 or F16) with llama.cpp's tools")


def _read_gguf(path: Path, dtype: torch.dtype) -> LanguageModel:
    _check_gguf_header(path)
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # "some keys were not parsed" notes
    hf_logging.disable_progress_bar()  # "Loading weights"
    try:  # the loader's own per-tensor bar is plain tqdm
        with mock.patch.object(gguf_loader, "tqdm", lambda it, **kw: tqdm(it, disable=True, **kw)):
            llm = LlamaForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
            tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    config = llm.config.to_dict()
    config = _portable(config)
    if getattr(tokenizer, "chat_template", None):
        config["chat_template"] = tokenizer.chat_template
    state = {k: v for k, v in llm.state_dict().items() if not (config.get("tie_word_embeddings") and k == "lm_head.weight")}

    def save_tokenizer(dst: Path) -> None:
        tokenizer.save_pretrained(dst)

    return LanguageModel(path, config, state, save_tokenizer, lambda: tokenizer)
