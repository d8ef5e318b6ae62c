"""Can the lookup a world question asks be read off a model's visual tokens?

"What colour is the square?" asks for a lookup: find the object by one attribute, read another
off it. owl-small names every colour and shape of a picture but binds them at chance once a
picture holds three objects (docs/owl-small.md, "Where the binding is lost"). This probe asks
whether the tokens the decoder receives make that lookup learnable at all, apart from the LLM:
a small reader (two transformer layers of width 128 over the tokens and one question token,
trained from scratch) learns shape -> colour and colour -> shape lookups on rendered scenes of
the world (two objects or more; the asked attribute unique in its picture) from

* ``tokens``: what the model's projector (abstractor or linear) gives the decoder, and
* ``patches``: the encoder's patch tokens themselves (one per 14 px patch),

and is scored on held-out scenes after every epoch. The same reader, data and schedule for both.

    python benchmarks/visual_lookup.py [--model owl-small] [--images 6000] [--epochs 10]
        [--held-out 0.2] [--seed 0] [--threads 2] [--output visual_lookup.json]

Prints (and writes) JSON: the settings, the token shapes, and per epoch the training loss and
the held-out accuracy for each kind of token.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import arguments, emit  # noqa: E402

from owlkit import Owl  # noqa: E402
from owlkit.zoo.world import COLOURS, SHAPES, random_scene, render  # noqa: E402

VOCAB = [*sorted(COLOURS), *SHAPES]  # what a question asks by, and what it asks for


def lookups(scenes) -> list[tuple[int, int, int]]:
    """``(scene index, asked-by word, answer word)``: shape -> colour and colour -> shape, for
    pictures of two objects or more where the asked attribute is unique."""
    out = []
    for i, scene in enumerate(scenes):
        objects = scene.objects
        if len(objects) < 2:
            continue
        for o in objects:
            if sum(p.shape == o.shape for p in objects) == 1:
                out.append((i, VOCAB.index(o.shape), VOCAB.index(o.colour)))
            if sum(p.colour == o.colour for p in objects) == 1:
                out.append((i, VOCAB.index(o.colour), VOCAB.index(o.shape)))
    return out


class Reader(nn.Module):
    """A question token and the visual tokens through two transformer layers; the answer is read
    at the question token."""

    def __init__(self, width_in: int, n_tokens: int, width: int = 128, layers: int = 2):
        super().__init__()
        self.inp = nn.Sequential(nn.LayerNorm(width_in), nn.Linear(width_in, width))
        self.pos = nn.Parameter(torch.randn(n_tokens, width) * 0.02)
        self.ask = nn.Embedding(len(VOCAB), width)
        layer = nn.TransformerEncoderLayer(width, 4, 4 * width, 0.0, batch_first=True)
        self.layers = nn.TransformerEncoder(layer, layers)
        self.out = nn.Linear(width, len(VOCAB))

    def forward(self, tokens: torch.Tensor, ask: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.ask(ask)[:, None], self.inp(tokens) + self.pos], dim=1)
        return self.out(self.layers(x)[:, 0])


def features(owl, scenes, batch: int = 64) -> dict[str, torch.Tensor]:
    """The encoder's patches (its CLS row dropped) and the projector's tokens for every scene."""
    model, processor = owl.model.eval(), owl.processor.image_processor
    size = model.config.vision_config.image_size
    patch = model.config.vision_config.patch_size
    patches, tokens = [], []
    with torch.no_grad():
        for start in range(0, len(scenes), batch):
            pixels = torch.from_numpy(processor.preprocess_numpy([render(s, size) for s in scenes[start:start + batch]]))
            encoded = model.vision(pixels)
            patches.append(encoded[:, 1:].clone())
            tokens.append(model.abstractor(encoded, grid_hw=(size // patch, size // patch)).clone())
    return {"tokens": torch.cat(tokens), "patches": torch.cat(patches)}


def train_reader(feats: torch.Tensor, train: list, test: list, epochs: int, seed: int) -> list[dict]:
    torch.manual_seed(seed)
    order = random.Random(seed)
    reader = Reader(feats.shape[-1], feats.shape[1])
    opt = torch.optim.AdamW(reader.parameters(), 1e-3)

    def batch_of(items):
        columns = list(zip(*items))
        return feats[torch.tensor(columns[0])], torch.tensor(columns[1]), torch.tensor(columns[2])

    curve, train, start = [], list(train), time.perf_counter()
    for epoch in range(1, epochs + 1):
        order.shuffle(train)
        reader.train()
        losses = []
        for b in range(0, len(train), 64):
            x, ask, answer = batch_of(train[b:b + 64])
            loss = F.cross_entropy(reader(x, ask), answer)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        reader.eval()
        with torch.no_grad():
            x, ask, answer = batch_of(test)
            accuracy = (reader(x, ask).argmax(-1) == answer).float().mean().item()
        curve.append({"epoch": epoch, "loss": round(sum(losses) / len(losses), 4),
                      "held_out": round(accuracy, 4), "seconds": round(time.perf_counter() - start, 1)})
        print(json.dumps(curve[-1]), flush=True)
    return curve


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="owl-small", help="model folder or bundled name (default owl-small)")
    parser.add_argument("--images", type=int, default=6000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--held-out", type=float, default=0.2, help="share of the scenes held out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    if args.images < 10 or not 0 < args.held_out < 1:
        parser.error("--images must be at least 10 and --held-out between 0 and 1")
    torch.set_num_threads(args.threads)
    rng = random.Random(args.seed)
    scenes = [random_scene(rng) for _ in range(args.images)]
    owl = Owl.load(args.model, dtype="float32")
    feats = features(owl, scenes)
    cut = int(len(scenes) * (1 - args.held_out))
    questions = lookups(scenes)
    train = [q for q in questions if q[0] < cut]
    test = [q for q in questions if q[0] >= cut]
    if not train or not test:
        parser.error("too few scenes with two objects or more: raise --images")
    result = {"settings": {**arguments(args), "projector": owl.model.config.abstractor_config.projector},
              "questions": {"train": len(train), "held_out": len(test)},
              "shapes": {k: list(v.shape[1:]) for k, v in feats.items()},
              "curves": {}}
    for name, tensor in feats.items():
        print(f"{name} {list(tensor.shape[1:])}", flush=True)
        result["curves"][name] = train_reader(tensor, train, test, args.epochs, args.seed)
    return emit(result, args.output)


if __name__ == "__main__":
    main()
