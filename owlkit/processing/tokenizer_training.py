"""Train a LLaMA-style SentencePiece tokenizer (for owl-tiny, the demo stand-in, tests, benchmarks).

LLaMA's conventions: BPE, ``<unk>`` 0, ``<s>`` 1, ``</s>`` 2, no pad piece, byte fallback (any
text encodes), digits split, a dummy prefix, no normalisation; optionally ``<|image|>`` as a
single piece, which makes it owlkit's image token.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Iterable

import sentencepiece as spm

from owlkit.config import V2_IMAGE_PLACEHOLDER


def train_sentencepiece(lines: Iterable[str], folder: str | Path, vocab_size: int, image_token: bool = True,
                        **extra) -> int | None:
    """Write ``folder/tokenizer.model``; returns the id of ``<|image|>`` (None without it).

    The model is written through ``model_writer``, so the file does not record the folder it was
    written to (with ``model_prefix`` SentencePiece stores that path in the model): the same text
    gives the same bytes wherever it is built."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if image_token:
        extra["user_defined_symbols"] = [V2_IMAGE_PLACEHOLDER, *extra.get("user_defined_symbols", [])]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, vocab_size=vocab_size,
        model_type="bpe", byte_fallback=True, split_digits=True, add_dummy_prefix=True,
        remove_extra_whitespaces=False, normalization_rule_name="identity", allow_whitespace_only_pieces=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, character_coverage=1.0, minloglevel=2, **extra,
    )
    (folder / "tokenizer.model").write_bytes(model.getvalue())
    if not image_token:
        return None
    return spm.SentencePieceProcessor(model_proto=model.getvalue()).piece_to_id(V2_IMAGE_PLACEHOLDER)
