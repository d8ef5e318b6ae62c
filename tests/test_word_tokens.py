"""benchmarks/word_tokens.py: an abstractor trained to write the caption as word embeddings."""

import math

import pytest
import torch

from helpers import load_benchmark
from owlkit import Owl


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("word_tokens")


@pytest.fixture(scope="module")
def tiny():
    return Owl.load("owl-tiny")


def test_targets_pad_with_the_end_token_and_refuse_long_captions(bench):
    index = {7: 0, 9: 1, 2: 2}
    y = bench.targets([[7, 9, 2], [9, 2]], 5, 2, index)
    assert y.tolist() == [[0, 1, 2, 2, 2], [1, 2, 2, 2, 2]]
    with pytest.raises(SystemExit, match="a caption has 3 tokens"):
        bench.targets([[7, 9, 2]], 2, 2, index)


def test_caption_words_round_trip_through_the_scored_vocabulary(bench, tiny):
    tokenizer = tiny.processor.tokenizer
    text = "a big red square at the top left."
    ids = bench.caption_ids(tokenizer, [text])[0]
    assert ids[-1] == tokenizer.eos_token_id
    vocab = sorted(set(ids) | {5, 6})
    positions = [vocab.index(t) for t in ids] + [vocab.index(tokenizer.eos_token_id), vocab.index(5)]
    assert bench.words(tokenizer, positions, vocab).strip() == text


def test_a_new_abstractor_has_the_asked_queries(bench, tiny):
    model = tiny.model
    abstractor = bench.new_abstractor(model, 24, 1, seed=0)
    grid = model.config.vision_config.image_size // model.config.vision_config.patch_size
    feats = torch.randn(2, grid * grid + 1, model.config.abstractor_config.encoder_hidden_size)
    out = abstractor(feats, grid_hw=(grid, grid))
    assert out.shape == (2, 25, model.config.abstractor_config.text_hidden_size)  # + vit_eos
    assert model.config.abstractor_config.num_queries != 24  # the model's own config is left as it was


def test_benchmark_learns_and_reports(bench, tmp_path):
    out = tmp_path / "w.json"
    result = bench.main(["--model", "owl-tiny", "--world", str(tmp_path / "world"), "--images", "40",
                         "--steps", "30", "--report-every", "15", "--n-per-task", "2",
                         "--tasks", "colour", "count", "--tune-steps", "2", "--tune-batch-size", "2",
                         "--output", str(out)])
    assert out.exists() and result["training_pictures"] == 40
    assert [c["step"] for c in result["curve"]] == [15, 30]
    # far under a uniform guess over the scored words (ln V): the words are being learned
    assert result["curve"][-1]["loss"] < 0.5 * math.log(result["scored_vocabulary"])
    assert set(result["through_one_pass_caption"]) == {"colour", "count"}
    assert all(r["n"] == 2 and 0 <= r["accuracy"] <= 1 for r in result["through_one_pass_caption"].values())
    tuned = result["tuned_direct_answers"]
    assert tuned["questions_seen"] == 4 and set(tuned["tasks"]) == {"colour", "count"}
    assert all(r["n"] == 2 and 0 <= r["accuracy"] <= 1 for r in tuned["tasks"].values())
    with pytest.raises(SystemExit, match="the world holds"):  # more questions asked than the world has
        bench.main(["--model", "owl-tiny", "--world", str(tmp_path / "world"), "--images", "40", "--steps", "1",
                    "--n-per-task", "1", "--tasks", "colour", "--tune-steps", "100000"])
    with pytest.raises(SystemExit):
        bench.main(["--tasks", "compare"])
