"""owl-tiny's vision pre-training: dense labels from scene descriptions, and a real short run."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from owlkit.zoo.world import COLOURS, SHAPES, SIZES, WORDS, Obj, Scene


def test_patch_targets_label_every_patch_of_a_cell_and_spell_the_word():
    from owlkit.zoo.tiny_vision import LETTERS, attributes, band_rows, object_class, patch_targets

    scene = Scene(objects=[Obj("star", "green", "small", 0, 0), Obj("square", "red", "big", 2, 2)],
                  word="OWL", noise=0.0, noise_seed=0)
    t = patch_targets(scene, 112, 14)  # 8 x 8 patches; cells 37.3 x 30 px; band from y = 90
    cells = t.cells.reshape(8, 8, 5)
    green_star, red_square = object_class(scene.objects[0]), object_class(scene.objects[1])
    assert attributes(green_star) == (sorted(COLOURS).index("green"), SHAPES.index("star"), SIZES.index("small"))
    assert attributes(red_square) == (sorted(COLOURS).index("red"), SHAPES.index("square"), SIZES.index("big"))
    assert len({object_class(Obj(s, c, z, 0, 0)) for s in SHAPES for c in COLOURS for z in SIZES}) == 60
    star = (1 + sorted(COLOURS).index("green"), 1 + SHAPES.index("star"), 1 + SIZES.index("small"),
            1 + green_star, 1 + green_star * 9 + 0)  # cell (0, 0)
    square = (1 + sorted(COLOURS).index("red"), 1 + SHAPES.index("square"), 1 + SIZES.index("big"),
              1 + red_square, 1 + red_square * 9 + 8)  # cell (2, 2)
    # patch centres at 7, 21, 35 px: rows 0-1 (y < 30) and columns 0-2 (x < 37.3) are the top-left cell
    assert all(tuple(cells[i, j]) == star for i in range(2) for j in range(3))
    assert tuple(cells[2, 0]) == (0,) * 5  # y = 35: the middle row, empty
    # bottom-right cell: y in [60, 90) -> patch rows 4-5 (centres 63, 77); x >= 74.7 -> columns 5-7
    assert all(tuple(cells[i, j]) == square for i in (4, 5) for j in (5, 6, 7))
    assert (cells[6:] == 0).all()  # the text band's patches name no object
    assert band_rows(112, 14) == [6, 7]
    assert t.count == 2
    assert t.letters == [1 + LETTERS.index(c) for c in "OWL"]
    assert t.word == 1 + WORDS.index("OWL")  # every band patch is taught to name the whole word
    blank = patch_targets(Scene(objects=[], word=None, noise=0.0, noise_seed=0), 112, 14)
    assert blank.letters == [] and blank.word == 0
    assert patch_targets(Scene(objects=[], word="ZZZ", noise=0.0, noise_seed=0), 112, 14).word == 0  # not a world word


def test_word_head_names_the_word_from_every_band_patch():
    from owlkit.zoo.tiny_vision import PretrainHeads, _loss

    torch.manual_seed(0)
    heads = PretrainHeads(16, band=2)
    tokens = torch.randn(3, 1 + 64, 16)
    cell, count, letters, words = heads(tokens, 8, [6, 7])
    assert words.shape == (3, 16, 1 + len(WORDS)) and letters.shape == (3, 8, 27)
    cells = torch.zeros(3, 64, 5, dtype=torch.long)
    counts = torch.zeros(3, dtype=torch.long)
    ids = torch.tensor([0, 1 + WORDS.index("OWL"), 1 + WORDS.index("TREE")])
    base = _loss(heads, tokens, 8, [6, 7], cells, counts, [[], [], []], torch.zeros(3, dtype=torch.long))
    with_words = _loss(heads, tokens, 8, [6, 7], cells, counts, [[], [], []], ids)
    assert not torch.isclose(base, with_words)  # the word labels enter the loss


def test_ctc_best_path_merges_repeats_and_drops_blanks():
    from owlkit.zoo.tiny_vision import ctc_greedy

    ids = torch.tensor([[0, 1, 1, 0, 1, 2, 2, 0]])
    lp = torch.nn.functional.one_hot(ids, 27).float().log_softmax(-1)
    assert ctc_greedy(lp) == [[1, 1, 2]]


def test_pretrain_vision_trains_only_the_encoder_and_logs(tmp_path):
    from owlkit.zoo.world import make_world
    from owlkit.zoo.tiny import init_model
    from owlkit.zoo.tiny_vision import VisionPretrainSettings, pretrain_vision

    world = tmp_path / "world"
    make_world(world, seed=5, n=24, image_size=112, fmt="jsonl", n_instruct=0)
    init_model(tmp_path / "init", 300, 3, seed=0)
    settings = VisionPretrainSettings(steps=40, batch_size=8, eval_every=20, eval_scenes=20, warmup_steps=5)
    out = pretrain_vision(tmp_path / "init", world, tmp_path / "vision", settings, threads=1, log=lambda m: None)

    before = load_file(str(tmp_path / "init" / "model.safetensors"))
    after = load_file(str(out / "model.safetensors"))
    assert before.keys() == after.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("vision.") for k in changed)
    assert any("layers.0." in k for k in changed)  # the whole encoder trains, not just its top
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 41))
    first, last = sum(r["loss"] for r in rows[:5]) / 5, sum(r["loss"] for r in rows[-5:]) / 5
    assert last < 0.8 * first
    checks = [r["eval"] for r in rows if "eval" in r]
    assert len(checks) == 2 and set(checks[0]) == {"colour", "shape", "size", "object", "place", "count", "word",
                                                      "word_class"}
    side_files = {f.name for f in (tmp_path / "init").iterdir() if f.suffix != ".safetensors"}
    assert {"preprocessor_config.json", "generation_config.json"} <= side_files
    assert side_files <= {f.name for f in out.iterdir()}  # the output is a model folder like its input
