"""Vision pre-training for owl-tiny: what CLIP's pre-training is to the released models.

mPLUG-Owl and mPLUG-Owl2 start from a CLIP ViT-L/14 trained on 400 M image-text pairs; their
stage 1 aligns an encoder that already sees. owl-tiny's encoder would start from scratch, and
stage 1's captions alone (35,200 of them) left it naming 31% of the shape words of held-out
captions. So, as the decoder gets a text pre-training, the encoder gets a vision pre-training
on the training world's images before stage 1, with dense labels read off each scene
description (no held-out scene is used):

- every patch whose centre lies in a grid cell names the object in that cell (or "none"): its
  colour, its shape and its size, and also one joint class of the three and one joint class
  of object and cell. A patch must know its whole cell, and the joint heads force codes for
  conjunctions ("red circle at
  the top left"), not a red code plus a circle code: when the abstractor averages
  two objects' patches, a sum of conjunction codes still says which colour goes with which
  shape and place, while "red + circle + blue + square" would not;
- the CLS token names the number of objects;
- the patch rows of the text band, column by column, spell the written word (CTC over the
  columns, so that letters are read without knowing where each one falls);
- every patch of the text band also names the whole word (one of the world's words, or "none"),
  as a cell's patches name its object. Spelled letters alone reach the decoder as letters at
  places, which it did not learn to turn into the word's token (2% of held-out words read);
  a word code in every band patch survives the abstractor's averaging as the word itself
  (with the encoder frozen in stage 1 and more reading questions in stage 2 the model reads
  100%; docs/owl-tiny.md, "Reading", and docs/notes/owl-tiny-experiments.md).

The heads are linear and thrown away afterwards; only the encoder's weights change.
:func:`pretrain_vision` logs the loss and, on held-out scenes, how well each head does
(``metrics.jsonl``, the same layout as ``owl train``'s, so ``owl plot`` draws it).
"""

from __future__ import annotations

import json
import random
import string
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from owlkit.checkpoints import copy_side_files, load_model
from owlkit.processing.images import OwlImageProcessor
from owlkit.training.metrics import MetricsLogger
from owlkit.training.optim import build_optimizer, build_scheduler
from owlkit.zoo.world import (
    COLOURS, GRID, OBJECT_COUNT_WEIGHTS, SHAPES, SIZES, WORDS, layout, load_scenes, random_scene, render,
)

LETTERS = string.ascii_uppercase  # CTC classes: 0 = blank, 1.. = A..Z


@dataclass
class VisionPretrainSettings:
    """The recipe (measured in docs/notes/owl-tiny-experiments.md)."""

    steps: int = 1200
    batch_size: int = 64
    lr: float = 2e-3
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    eval_every: int = 250
    eval_scenes: int = 300
    seed: int = 0


@dataclass
class PatchTargets:
    """Labels of one image: per patch its cell's object (0 = none), the object count, the word's letters."""

    cells: np.ndarray  # [patches, 5] int64: colour, shape, size, object, object-and-cell (0 = none)
    count: int
    letters: list[int]
    word: int = 0  # 1 + the word's index in the world's WORDS; 0 = no word (or one outside the list)


def object_class(obj) -> int:
    """``obj``'s joint class of colour, shape and size, 0 ... 59."""
    return (sorted(COLOURS).index(obj.colour) * len(SHAPES) + SHAPES.index(obj.shape)) * len(SIZES) + SIZES.index(obj.size)


def attributes(k: int) -> tuple[int, int, int]:
    """Inverse of :func:`object_class`: (colour, shape, size) indices."""
    return k // (len(SHAPES) * len(SIZES)), (k // len(SIZES)) % len(SHAPES), k % len(SIZES)


def band_rows(image_size: int, patch_size: int) -> list[int]:
    """Patch rows whose centres lie in the text band below the grid."""
    grid_h, _, _ = layout(image_size)
    return [i for i in range(image_size // patch_size) if i * patch_size + patch_size / 2 >= grid_h]


def patch_targets(scene, image_size: int, patch_size: int) -> PatchTargets:
    """The labels of ``scene`` for a ``patch_size`` grid over an ``image_size`` image."""
    grid_h, cell_w, cell_h = layout(image_size)
    g = image_size // patch_size
    by_cell = {(o.row, o.col): o for o in scene.objects}
    cells = np.zeros((g * g, 5), dtype=np.int64)
    for i in range(g):
        for j in range(g):
            y, x = i * patch_size + patch_size / 2, j * patch_size + patch_size / 2
            if y >= grid_h:
                continue
            row, col = int(y // cell_h), int(x // cell_w)
            obj = by_cell.get((row, col))
            if obj is not None:
                k = object_class(obj)
                colour, shape, size = attributes(k)
                cells[i * g + j] = (1 + colour, 1 + shape, 1 + size, 1 + k, 1 + k * GRID * GRID + row * GRID + col)
    word = (scene.word or "").upper()
    letters = [1 + LETTERS.index(c) for c in word] if word and all(c in LETTERS for c in word) else []
    return PatchTargets(cells, len(scene.objects), letters, 1 + WORDS.index(word) if word in WORDS else 0)


class PretrainHeads(nn.Module):
    """Linear read-outs of the encoder's tokens (discarded after pre-training)."""

    def __init__(self, hidden: int, band: int):
        super().__init__()
        objects = len(COLOURS) * len(SHAPES) * len(SIZES)
        self.splits = (1 + len(COLOURS), 1 + len(SHAPES), 1 + len(SIZES), 1 + objects, 1 + objects * GRID * GRID)
        self.cell = nn.Linear(hidden, sum(self.splits))
        self.count = nn.Linear(hidden, len(OBJECT_COUNT_WEIGHTS))
        self.letters = nn.Linear(band * hidden, 1 + len(LETTERS))
        self.word = nn.Linear(hidden, 1 + len(WORDS))

    def forward(self, tokens: torch.Tensor, grid: int, band: list[int]):
        """``tokens`` [B, 1 + grid*grid, D] -> (per-patch logits of colour, shape, size, object and
        object-and-cell, count logits, letter log-probs [B, grid, C], word logits of each band
        patch [B, band*grid, W])."""
        cls, patches = tokens[:, 0], tokens[:, 1:]
        cell = self.cell(patches).split(self.splits, dim=-1)
        rows = patches.reshape(patches.shape[0], grid, grid, -1)[:, band]  # [B, band, grid, D]
        columns = rows.permute(0, 2, 1, 3).reshape(patches.shape[0], grid, -1)
        words = self.word(rows.reshape(patches.shape[0], len(band) * grid, -1))
        return cell, self.count(cls), self.letters(columns).log_softmax(-1), words


def _loss(heads: PretrainHeads, tokens, grid, band, cells, counts, letters, words) -> torch.Tensor:
    cell, count, letter_lp, word_logits = heads(tokens, grid, band)
    loss = sum(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), cells[..., k].reshape(-1))
               for k, logits in enumerate(cell))
    loss = loss + F.cross_entropy(count, counts)
    every_patch = words[:, None].expand(-1, word_logits.shape[1])  # each band patch names the word
    loss = loss + F.cross_entropy(word_logits.reshape(-1, word_logits.shape[-1]), every_patch.reshape(-1))
    written = [i for i, w in enumerate(letters) if w]
    if written:
        targets = torch.tensor([c for i in written for c in letters[i]], dtype=torch.long)
        lengths = torch.tensor([len(letters[i]) for i in written], dtype=torch.long)
        loss = loss + F.ctc_loss(letter_lp[written].transpose(0, 1), targets,
                                 torch.full((len(written),), grid, dtype=torch.long), lengths, zero_infinity=True)
    return loss


def ctc_greedy(letter_lp: torch.Tensor) -> list[list[int]]:
    """Best path per row: arg-max per column, repeats merged, blanks dropped."""
    out = []
    for row in letter_lp.argmax(-1).tolist():
        out.append([c for k, c in enumerate(row) if c and (k == 0 or c != row[k - 1])])
    return out


def _batch(targets: list[PatchTargets], index: list[int]):
    cells = torch.from_numpy(np.stack([targets[i].cells for i in index]))
    counts = torch.tensor([targets[i].count for i in index], dtype=torch.long)
    words = torch.tensor([targets[i].word for i in index], dtype=torch.long)
    return cells, counts, [targets[i].letters for i in index], words


def _processed(processor, path: Path) -> torch.Tensor:
    with Image.open(path) as image:
        return processor([image])


def _check(vision, heads, pixels, targets, grid, band) -> dict:
    """Held-out accuracy of each head: colour/shape/size/object (all three)/place (object and
    cell) over patches in occupied cells, count over images, the word (exact, CTC best path) and
    the band's word class (the band patches' summed log-probabilities) over images with one."""
    vision.eval()
    right = {"colour": 0, "shape": 0, "size": 0, "object": 0, "place": 0}
    occupied = count_right = words = words_right = named_right = 0
    with torch.no_grad():
        for start in range(0, len(targets), 100):
            index = list(range(start, min(start + 100, len(targets))))
            cells, counts, letters, word_ids = _batch(targets, index)
            cell, count, letter_lp, word_logits = heads(vision(pixels[index]), grid, band)
            named = word_logits.log_softmax(-1).sum(1).argmax(-1)
            mask = cells[..., 0] > 0
            occupied += int(mask.sum())
            for k, name in enumerate(right):
                right[name] += int((cell[k].argmax(-1) == cells[..., k])[mask].sum())
            count_right += int((count.argmax(-1) == counts).sum())
            for seq, want, guess, word_id in zip(ctc_greedy(letter_lp), letters, named.tolist(), word_ids.tolist()):
                if want:
                    words += 1
                    words_right += seq == want
                    named_right += guess == word_id
    vision.train()
    out = {name: round(v / max(occupied, 1), 4) for name, v in right.items()}
    out.update(count=round(count_right / len(targets), 4), word=round(words_right / max(words, 1), 4),
               word_class=round(named_right / max(words, 1), 4))
    return out


def pretrain_vision(model_dir: str | Path, world: str | Path, out_dir: str | Path,
                    settings: VisionPretrainSettings | None = None, threads: int = 2, log=print) -> Path:
    """Pre-train the vision encoder of the model in ``model_dir`` on ``world``'s images; the
    whole model (other weights unchanged) goes to ``out_dir``. Returns ``out_dir``."""
    s = settings or VisionPretrainSettings()
    model_dir, world, out_dir = Path(model_dir), Path(world), Path(out_dir)
    torch.set_num_threads(threads)
    torch.manual_seed(s.seed)
    model = load_model(model_dir)
    vision = model.vision
    size, patch = model.config.vision_config.image_size, model.config.vision_config.patch_size
    grid, band = size // patch, band_rows(size, patch)
    processor = OwlImageProcessor.from_pretrained(model_dir)

    scenes = load_scenes(world)
    paths = sorted(scenes)
    pixels = torch.cat([_processed(processor, world / p) for p in paths])
    targets = [patch_targets(scenes[p], size, patch) for p in paths]
    rng = random.Random(f"owl-tiny vision pre-training check {s.seed}")
    held_out = [random_scene(rng, word_prob=0.5, noise_prob=0.2) for _ in range(s.eval_scenes)]
    check_pixels = torch.cat([processor([render(sc, size)]) for sc in held_out])
    check_targets = [patch_targets(sc, size, patch) for sc in held_out]

    heads = PretrainHeads(vision.config.hidden_size, len(band))
    params = list(vision.parameters()) + list(heads.parameters())
    optim = {"lr": s.lr, "betas": (0.9, 0.98), "eps": 1e-6, "weight_decay": s.weight_decay,
             "warmup_steps": s.warmup_steps, "min_lr_ratio": s.min_lr_ratio}
    opt = build_optimizer([{"params": params}], optim, fused=False)
    schedule = build_scheduler(opt, optim, s.steps)

    metrics = MetricsLogger(out_dir, enabled=True)
    order = torch.Generator().manual_seed(s.seed)
    vision.train()
    start = time.perf_counter()
    try:
        for step in range(s.steps):
            index = torch.randint(0, len(targets), (s.batch_size,), generator=order).tolist()
            cells, counts, letters, words = _batch(targets, index)
            loss = _loss(heads, vision(pixels[index]), grid, band, cells, counts, letters, words)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, s.grad_clip)
            lr = opt.param_groups[0]["lr"]
            opt.step()
            schedule.step()
            row = {"step": step + 1, "loss": round(loss.item(), 5), "lr": lr,
                   "elapsed_s": round(time.perf_counter() - start, 2)}
            if (step + 1) % s.eval_every == 0 or step + 1 == s.steps:
                row["eval"] = _check(vision, heads, check_pixels, check_targets, grid, band)
                log(f"vision pre-training step {step + 1}/{s.steps}: loss {row['loss']:.4f}, held-out {row['eval']}")
            metrics.log(row)
    finally:
        metrics.close()
    vision.eval()
    model.save_pretrained(out_dir)
    copy_side_files(model_dir, out_dir)
    (out_dir / "vision_pretrain.json").write_text(json.dumps(asdict(s), indent=2) + "\n")
    return out_dir
