"""Writing model folders (owlkit's layout or the official one) and converting between them."""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers.utils import logging as hf_logging

from owlkit.checkpoints.loading import load_model
from owlkit.checkpoints.names import carried_names, official_buffers, official_names
from owlkit.checkpoints.official_config import config_to_official
from owlkit.errors import CheckpointError
from owlkit.weight_files import weight_index


@contextlib.contextmanager
def quiet_saving():
    """No transformers "Writing model shards" bar inside owlkit's own output."""
    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def save_model(model, path: str | Path, format: str = "owlkit", max_shard_size: str = "5GB") -> Path:
    """Write ``model`` as an owlkit folder (``format="owlkit"``) or in the official layout."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    if format == "owlkit":
        with quiet_saving():
            model.save_pretrained(str(out), max_shard_size=max_shard_size)
        return out
    if format != "official":
        raise CheckpointError(f"unknown format {format!r}; use 'owlkit' or 'official'")
    config = model.config
    table = official_names(config) | carried_names(config)
    state = {table[k]: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    for name, tensor in official_buffers(config).items():
        state.setdefault(name, tensor)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config_to_official(config), indent=2) + "\n")
    gen = {"bos_token_id": config.text_config.bos_token_id, "eos_token_id": config.text_config.eos_token_id,
           "pad_token_id": config.text_config.pad_token_id or 0}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    return out


def convert(src: str | Path, dst: str | Path, format: str = "owlkit", dtype: torch.dtype | str | None = None) -> Path:
    """Convert a model folder; tensors are copied bit for bit (dtype kept unless ``dtype`` is given).

    The model is read one tensor at a time (as :func:`load_model` does), so a conversion needs
    about the model's size in memory, not twice it.
    """
    src = Path(src)
    if dtype is None:
        floats = [i.dtype for i in weight_index(src).values() if i.dtype.is_floating_point]
        dtype = max(set(floats), key=floats.count) if floats else torch.float32
    model = load_model(src, dtype=dtype)
    out = save_model(model, dst, format=format)
    copy_side_files(src, out)
    return out


def copy_side_files(src: Path, dst: Path) -> None:
    """Tokenizer and preprocessing files travel with the weights."""
    for name in ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                 "preprocessor_config.json", "added_tokens.json", "chat_template.jinja", "chat_template.json"):
        if (src / name).exists() and not (dst / name).exists():
            shutil.copy2(src / name, dst / name)
