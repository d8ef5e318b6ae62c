"""Tiny random models with decisive logits, for tests."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from owlkit.config import OwlConfig
from owlkit.models.owl import OwlForCausalLM


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Fixture-style random weights: norms near 1, biases small, matrices N(0, 1/fan_in).

    The HF default (std 0.02) makes tiny models' logits nearly uniform, so greedy ids would
    hinge on float noise; these weights give clear margins, as the official fixtures do.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if p.ndim == 1 and ("norm" in name or "ln" in name):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            elif p.ndim == 1:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif "embed_tokens" in name or name.endswith(("cls_token", "position_embedding", "query_embeds", "vit_eos")):
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            elif name == "lm_head.weight":
                p.copy_(2 * torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5)
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) / fan_in**0.5)
    return model


def tiny_model(preset: str = "test-owl2", seed: int = 0, **overrides) -> OwlForCausalLM:
    config = OwlConfig.from_preset(preset)
    for key, value in overrides.items():
        section, _, attr = key.partition("__")
        if attr:
            setattr(getattr(config, section), attr, value)
        else:
            setattr(config, section, value)
    return randomize(OwlForCausalLM(config), seed).eval()


CORPUS_WORDS = (
    "the a red green blue circle square star what is in this image picture colour shape how many "
    "there are one two three yes no describe hello world owl cat dog left right top bottom"
).split()


def train_tokenizer(folder, vocab_size: int = 320) -> int:
    """A LLaMA-style SentencePiece model (unk 0, bos 1, eos 2, byte fallback) with ``<|image|>``.

    Returns the id of ``<|image|>``.
    """
    import random

    from owlkit.processing.tokenizer_training import train_sentencepiece

    rnd = random.Random(0)
    lines = [" ".join(rnd.choice(CORPUS_WORDS) for _ in range(rnd.randint(3, 10))) + "?" for _ in range(400)]
    lines += ["USER: hello ASSISTANT: hi", "Human: what\nAI: yes"] * 20
    return train_sentencepiece(lines, folder, vocab_size)


def make_model_folder(folder, preset: str = "test-owl2", seed: int = 0):
    """A complete tiny model folder (weights, config, tokenizer) as a user would have one."""
    from pathlib import Path

    folder = Path(folder)
    image_id = train_tokenizer(folder, 320)
    model = tiny_model(preset, seed=seed, text_config__vocab_size=320)
    model.config.image_token_id = image_id
    model.save_pretrained(folder)
    return model


def with_overrides(recipe: dict, over: dict) -> dict:
    """``recipe`` with ``over``'s values set; ``a__b`` keys address nested sections (``optim__lr``)."""
    for key, value in over.items():
        node = recipe
        *parents, leaf = key.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return recipe


def load_benchmark(name: str):
    """``benchmarks/<name>.py`` as a module (the benchmarks are scripts, not a package)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
