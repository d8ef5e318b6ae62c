"""LLaMA tokenizers as the official code used them, and the image-placeholder rules.

Loading (:meth:`OwlTokenizer.from_pretrained`): a model folder's ``tokenizer.model``
(SentencePiece, as the official releases ship it) is read with the ``sentencepiece`` library;
a folder with only ``tokenizer.json`` is read with the ``tokenizers`` library. When both exist
the SentencePiece model wins, because it *is* what the official slow tokenizer ran.
``tokenizer_config.json`` / ``special_tokens_map.json`` / ``added_tokens.json`` give the
special tokens, ``add_bos_token`` (default true) and ``add_eos_token`` (default false).

Both official generations used transformers' slow ``LlamaTokenizer`` in its legacy mode
(transformers 4.28.1 / 4.31.0). Its behaviour, reproduced by :meth:`OwlTokenizer.encode`:

* special tokens (``<unk>``, ``<s>``, ``</s>``, the pad token) and added tokens written in the
  text are split out first and map to their ids (so ``</s>`` in a v2 prompt is the EOS id);
* every remaining piece is SentencePiece-encoded on its own, so the dummy-prefix space is
  added to each piece (text right after ``</s>`` starts with ``"▁"``);
* no whitespace is stripped around special tokens (the slow tokenizer wraps them as
  ``AddedToken(lstrip=False, rstrip=False)``).

transformers 5 has no slow LLaMA tokenizer any more (``LlamaTokenizer`` is now backed by
``tokenizers``, and differs on e.g. whitespace-only text), hence the direct use of
``sentencepiece`` here.

Placeholder rules (:func:`encode_prompt`), one id per image in both generations:

* v2, ``tokenizer_image_token``: the prompt is split on ``<|image|>``; each chunk is encoded on
  its own (fresh dummy prefix after every image); BOS once at the start (when the tokenizer's
  ``add_bos_token`` is set); one placeholder id between chunks. **Departure** (quirk 20): when
  the prompt starts with ``<|image|>`` the official code emits ``[-200, BOS, ...]`` (the BOS
  moves behind the image); we emit ``[BOS, -200, ...]``.
* v1, ``_tokenize_prompt``: BOS once, the prompt split on ``<image>``, each non-empty chunk
  encoded on its own without special tokens. **Departure**: each image is ONE placeholder id
  (the model expands it), where the official processor writes 65 copies of ``-1``.

The placeholder id is a parameter: the model's own ``image_token_id`` when the tokenizer has an
``<|image|>`` token (:func:`placeholder_id`), else ``-200``; the model accepts ``-200`` for
both generations.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Iterable, Sequence

import sentencepiece as spm
from tokenizers import Tokenizer

from owlkit.config import IMAGE_TOKEN_INDEX, V1_IMAGE_PLACEHOLDER, V2_IMAGE_PLACEHOLDER
from owlkit.errors import CheckpointError, InputError, first_line
from owlkit.processing.images import generation_number


def _token_content(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, dict):
        return value.get("content")
    return str(value)


def _post_processor_adds_bos(path: Path) -> bool | None:
    """Whether a ``tokenizer.json``'s template puts a special token first (None: it has no template).

    Folders of non-LLaMA tokenizers (e.g. GPT-2-style BPE with a ChatML template) often omit
    ``add_bos_token``; their ``tokenizer.json`` post-processor says what fast tokenizers do.
    """
    processor = _read_json(path).get("post_processor") or {}
    if processor.get("type") != "TemplateProcessing":
        return None
    single = processor.get("single") or []
    return bool(single) and "SpecialToken" in single[0]


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot read JSON ({first_line(exc)})") from None
    return data if isinstance(data, dict) else {}


class _SentencePieceBackend:
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(path))
        except (OSError, RuntimeError) as exc:
            raise CheckpointError(f"{path}: not a SentencePiece model ({first_line(exc)})") from None
        self.size = self.sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return list(self.sp.encode(text))

    def token_to_id(self, token: str) -> int | None:
        i = self.sp.piece_to_id(token)
        return i if 0 <= i < self.size and self.sp.id_to_piece(i) == token else None

    def id_to_token(self, i: int) -> str | None:
        return self.sp.id_to_piece(i) if 0 <= i < self.size else None

    def decode(self, ids: list[int]) -> str:
        return self.sp.decode(ids) if ids else ""


class _TokenizersBackend:
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.tok = Tokenizer.from_file(str(path))
        except Exception as exc:  # noqa: BLE001  (the library raises a bare Exception)
            raise CheckpointError(f"{path}: not a tokenizers JSON file ({first_line(exc)})") from None
        self.size = self.tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return list(self.tok.encode(text, add_special_tokens=False).ids)

    def token_to_id(self, token: str) -> int | None:
        return self.tok.token_to_id(token)

    def id_to_token(self, i: int) -> str | None:
        return self.tok.id_to_token(i)

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=False) if ids else ""


class OwlTokenizer:
    """A LLaMA tokenizer with the slow (legacy) ``LlamaTokenizer`` semantics; see module doc.

    Build it with :meth:`from_pretrained` (a model folder), :meth:`from_sentencepiece` or
    :meth:`from_tokenizer_json`.
    """

    def __init__(
        self,
        backend: _SentencePieceBackend | _TokenizersBackend,
        *,
        bos_token: str | None = "<s>",
        eos_token: str | None = "</s>",
        unk_token: str | None = "<unk>",
        pad_token: str | None = None,
        add_bos_token: bool = True,
        add_eos_token: bool = False,
        added_tokens: dict[str, int] | None = None,
    ) -> None:
        self._backend = backend
        self.add_bos_token = bool(add_bos_token)
        self.add_eos_token = bool(add_eos_token)
        self._added: dict[str, int] = {}
        for token, i in (added_tokens or {}).items():
            self._added[str(token)] = int(i)
        self._id_to_added = {i: t for t, i in self._added.items()}
        self.bos_token, self.eos_token, self.unk_token, self.pad_token = bos_token, eos_token, unk_token, pad_token
        self.bos_token_id = self.token_to_id(bos_token)
        self.eos_token_id = self.token_to_id(eos_token)
        self.unk_token_id = self.token_to_id(unk_token)
        self.pad_token_id = self.token_to_id(pad_token)
        self.special_tokens = [t for t in (unk_token, bos_token, eos_token, pad_token) if t and self.token_to_id(t) is not None]
        self.special_ids = {self.token_to_id(t) for t in self.special_tokens}
        no_split = {t: self.token_to_id(t) for t in list(self.special_tokens) + list(self._added)}
        self._no_split = {t: i for t, i in no_split.items() if t and i is not None}
        if self._no_split:
            alternatives = sorted(self._no_split, key=len, reverse=True)
            self._split_re: re.Pattern | None = re.compile("(" + "|".join(map(re.escape, alternatives)) + ")")
        else:
            self._split_re = None

    # -- construction ----------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, *, backend: str | None = None) -> "OwlTokenizer":
        """Load from a model folder; ``backend`` forces ``"sentencepiece"`` or ``"tokenizers"``."""
        folder = Path(folder)
        sp_path, json_path = folder / "tokenizer.model", folder / "tokenizer.json"
        if backend is None:
            backend = "sentencepiece" if sp_path.is_file() else "tokenizers" if json_path.is_file() else None
        if backend is None:
            raise CheckpointError(f"{folder}: no tokenizer.model or tokenizer.json found; copy the tokenizer files into the model folder")
        if backend not in ("sentencepiece", "tokenizers"):
            raise CheckpointError(f"unknown tokenizer backend {backend!r}; use 'sentencepiece' or 'tokenizers'")
        path = sp_path if backend == "sentencepiece" else json_path
        if not path.is_file():
            raise CheckpointError(f"{path}: not found")
        settings = cls._settings_from_folder(folder)
        impl = _SentencePieceBackend(path) if backend == "sentencepiece" else _TokenizersBackend(path)
        return cls(impl, **settings)

    @classmethod
    def from_sentencepiece(cls, path: str | os.PathLike, **settings: Any) -> "OwlTokenizer":
        """A ``tokenizer.model`` file with explicit settings (see ``__init__``)."""
        return cls(_SentencePieceBackend(Path(path)), **settings)

    @classmethod
    def from_tokenizer_json(cls, path: str | os.PathLike, **settings: Any) -> "OwlTokenizer":
        """A ``tokenizer.json`` file with explicit settings (see ``__init__``)."""
        return cls(_TokenizersBackend(Path(path)), **settings)

    @staticmethod
    def _settings_from_folder(folder: Path) -> dict[str, Any]:
        config = _read_json(folder / "tokenizer_config.json")
        special_map = _read_json(folder / "special_tokens_map.json")
        settings: dict[str, Any] = {}
        for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
            value = config.get(key, special_map.get(key))
            if key in config or key in special_map:
                settings[key] = _token_content(value)
        for key in ("add_bos_token", "add_eos_token"):
            if config.get(key) is not None:
                settings[key] = bool(config[key])
        if "add_bos_token" not in settings and not (folder / "tokenizer.model").is_file():
            bos = _post_processor_adds_bos(folder / "tokenizer.json")
            if bos is not None:
                settings["add_bos_token"] = bos
        added: dict[str, int] = {}
        for i, entry in (config.get("added_tokens_decoder") or {}).items():
            content = _token_content(entry)
            if content is not None:
                added[content] = int(i)
        for token, i in _read_json(folder / "added_tokens.json").items():
            added[str(token)] = int(i)
        if added:
            settings["added_tokens"] = added
        return settings

    # -- vocabulary -------------------------------------------------------------------------

    def token_to_id(self, token: str | None) -> int | None:
        """The id of one token string (special, added or vocabulary), or ``None``."""
        if token is None:
            return None
        if token in self._added:
            return self._added[token]
        return self._backend.token_to_id(token)

    def id_to_token(self, i: int) -> str | None:
        if i in self._id_to_added:
            return self._id_to_added[i]
        return self._backend.id_to_token(int(i))

    def convert_tokens_to_ids(self, tokens: str | Iterable[str]):
        if isinstance(tokens, str):
            return self.token_to_id(tokens)
        return [self.token_to_id(t) for t in tokens]

    @property
    def vocab_size(self) -> int:
        """Ids in use: the backend's vocabulary and every added token."""
        return max([self._backend.size] + [i + 1 for i in self._added.values()])

    def __len__(self) -> int:
        return self.vocab_size

    @property
    def image_token_id(self) -> int | None:
        """The id of a ``<|image|>`` token when the vocabulary has one (owlkit models), else None."""
        return self.token_to_id(V2_IMAGE_PLACEHOLDER)

    @property
    def backend(self) -> str:
        return "sentencepiece" if isinstance(self._backend, _SentencePieceBackend) else "tokenizers"

    def __repr__(self) -> str:
        return (
            f"OwlTokenizer(backend={self.backend!r}, vocab_size={self.vocab_size}, bos={self.bos_token_id}, "
            f"eos={self.eos_token_id}, add_bos_token={self.add_bos_token})"
        )

    # -- encoding / decoding ----------------------------------------------------------------

    def _pieces(self, text: str) -> list[str]:
        if self._split_re is None:
            return [text]
        return [p for p in self._split_re.split(text) if p]

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Text -> ids; ``add_special_tokens`` adds BOS/EOS per ``add_bos_token``/``add_eos_token``.

        Special and added tokens in the text map to their ids; the text between them is
        encoded piece by piece (each with its own dummy prefix), as the slow LLaMA tokenizer.
        """
        if not isinstance(text, str):
            raise InputError(f"text to tokenize must be a string, got {type(text).__name__}")
        ids: list[int] = []
        if add_special_tokens and self.add_bos_token and self.bos_token_id is not None:
            ids.append(self.bos_token_id)
        for piece in self._pieces(text):
            token_id = self._no_split.get(piece)
            if token_id is not None:
                ids.append(token_id)
            else:
                ids.extend(self._backend.encode(piece))
        if add_special_tokens and self.add_eos_token and self.eos_token_id is not None:
            ids.append(self.eos_token_id)
        return ids

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        """``{"input_ids": encode(text, add_special_tokens)}`` (transformers-style call)."""
        return {"input_ids": self.encode(text, add_special_tokens=add_special_tokens)}

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Ids -> text.

        Runs of ordinary ids are decoded together by the backend (SentencePiece drops the
        dummy-prefix space of a run's first piece); special tokens are written out unless
        ``skip_special_tokens``; tokens added beyond the backend's vocabulary are written out;
        negative ids (image placeholders) are dropped. Departure: the transformers 4.31 slow
        tokenizer also put a space in front of the text run that precedes a special token
        (``"a</s>"`` decoded as ``" a</s>"``); we insert nothing.
        """
        out: list[str] = []
        run: list[int] = []
        for raw in ids:
            i = int(raw)
            if i < 0:
                continue
            if i in self.special_ids:
                if not skip_special_tokens:
                    out.append(self._backend.decode(run) + (self.id_to_token(i) or ""))
                    run = []
                continue
            if i in self._id_to_added and i >= self._backend.size:
                out.append(self._backend.decode(run) + self._id_to_added[i])
                run = []
                continue
            if i >= self._backend.size:
                continue  # padding rows of a model vocabulary larger than the tokenizer's
            run.append(i)
        out.append(self._backend.decode(run))
        return "".join(out)


def load_tokenizer(folder: str | os.PathLike, *, backend: str | None = None) -> OwlTokenizer:
    """:meth:`OwlTokenizer.from_pretrained`."""
    return OwlTokenizer.from_pretrained(folder, backend=backend)


def placeholder_id(tokenizer: OwlTokenizer) -> int:
    """The id to emit per image: the tokenizer's ``<|image|>`` token if any, else ``-200``."""
    token_id = tokenizer.image_token_id
    return IMAGE_TOKEN_INDEX if token_id is None else token_id


def encode_prompt(
    prompt: str,
    generation: int | str,
    tokenizer: OwlTokenizer,
    image_token_id: int = IMAGE_TOKEN_INDEX,
) -> list[int]:
    """A rendered prompt -> ids with one ``image_token_id`` per image placeholder.

    v2 (``<|image|>``): ``tokenizer_image_token`` with the BOS fix; v1 (``<image>``):
    ``_tokenize_prompt`` with one id per image instead of 65 ``-1``. See module doc.
    """
    if not isinstance(prompt, str):
        raise InputError(f"prompt must be a string, got {type(prompt).__name__}")
    if generation_number(generation) == 2:
        ids: list[int] = []
        if tokenizer.add_bos_token and tokenizer.bos_token_id is not None:
            ids.append(tokenizer.bos_token_id)
        for k, chunk in enumerate(prompt.split(V2_IMAGE_PLACEHOLDER)):
            if k:
                ids.append(image_token_id)
            if chunk:
                ids.extend(tokenizer.encode(chunk))
        return ids
    if tokenizer.bos_token_id is None:
        raise InputError("the tokenizer has no BOS token, which mPLUG-Owl prompts start with")
    ids = [tokenizer.bos_token_id]
    for chunk in re.split(f"({re.escape(V1_IMAGE_PLACEHOLDER)})", prompt):
        if chunk == V1_IMAGE_PLACEHOLDER:
            ids.append(image_token_id)
        elif chunk:
            ids.extend(tokenizer.encode(chunk))
    return ids
