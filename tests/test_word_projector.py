"""The ``words`` projector (each query a softmax over the LLM's embedding rows, mixing them) and
the ``words`` training objective (query i scored against the caption's i-th token)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import randomize, tiny_model, with_overrides

from owlkit.config import IGNORE_INDEX, OwlConfig
from owlkit.errors import CheckpointError, ConfigError, InputError
from owlkit.models.splice import Expanded

WORDS = [2, 5, 9, 17, 40, 41, 42, 100]


def words_model(queries: int = 6, word_ids=WORDS, seed: int = 0):
    return tiny_model("test-owl2", seed=seed, abstractor_config__projector="words",
                      abstractor_config__num_queries=queries, abstractor_config__word_ids=word_ids)


def test_config_counts_one_position_a_query_and_checks_the_words():
    config = OwlConfig.from_preset("test-owl2")
    config.abstractor_config.projector, config.abstractor_config.word_ids = "words", [1, 2]
    again = OwlConfig(**{k: v for k, v in config.to_dict().items() if k != "model_type"})
    assert again.tokens_per_image == again.abstractor_config.num_queries  # no vit_eos
    assert again.abstractor_config.word_ids == [1, 2]
    bad = config.to_dict()
    bad.pop("model_type")
    for ids in ([], [-1], [config.text_config.vocab_size]):
        bad["abstractor_config"]["word_ids"] = ids
        with pytest.raises(ConfigError, match="word_ids must be token ids below the vocabulary size"):
            OwlConfig(**bad)


def test_word_tokens_are_the_softmax_mix_of_the_llm_rows():
    model = words_model()
    pixels = torch.randn(3, 3, model.config.vision_config.image_size, model.config.vision_config.image_size)
    with torch.no_grad():
        tokens = model.encode_images(pixels)
        rows = model.language_model.embed_tokens.weight[WORDS]
        assert torch.equal(model.word_rows(), rows)
        scores = model.abstractor.scores(model.vision(pixels), rows)
    assert tokens.shape == (3, model.config.tokens_per_image, model.config.text_config.hidden_size)
    assert scores.shape == (3, 6, len(WORDS))
    torch.testing.assert_close(tokens, torch.softmax(scores, -1) @ rows)
    # sharp scores give the rows themselves: the tokens are the LLM's words
    with torch.no_grad():
        model.abstractor.visual_fc.weight.mul_(1e4)
        model.abstractor.visual_fc.bias.mul_(1e4)
        sharp = model.encode_images(pixels)
        picked = model.abstractor.scores(model.vision(pixels), rows).argmax(-1)
    torch.testing.assert_close(sharp, rows[picked], atol=1e-4, rtol=0)
    assert not hasattr(model.abstractor, "vit_eos")


def test_without_word_ids_the_whole_vocabulary_is_scored():
    model = words_model(word_ids=None)
    assert model.word_rows().shape[0] == model.config.text_config.vocab_size


def test_a_words_model_saves_and_loads_the_same(tmp_path):
    from owlkit.checkpoints import load_model

    model = words_model()
    model.save_pretrained(tmp_path / "m")
    again = load_model(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["abstractor_config"]["word_ids"] == WORDS
    pixels = torch.randn(2, 3, 56, 56)
    ids = torch.tensor([[1, model.config.placeholder_id, 7, 8]])
    with torch.no_grad():
        a = model(input_ids=ids, pixel_values=pixels[:1]).logits
        b = again(input_ids=ids, pixel_values=pixels[:1]).logits
    torch.testing.assert_close(a, b)


def _expanded(model, captions: list[list[int]], images_per_row: list[int], prefix: int = 2) -> Expanded:
    """Rows ``[prefix ids] [image slots] caption``, the caption supervised (as a captions source gives)."""
    q = model.config.tokens_per_image
    length = max(prefix + q * n + len(c) for c, n in zip(captions, images_per_row))
    ids = torch.full((len(captions), length), 0, dtype=torch.long)
    mask = torch.zeros_like(ids, dtype=torch.bool)
    labels = torch.full_like(ids, IGNORE_INDEX)
    for r, (caption, n) in enumerate(zip(captions, images_per_row)):
        mask[r, prefix:prefix + q * n] = True
        start = prefix + q * n
        ids[r, start:start + len(caption)] = torch.tensor(caption, dtype=torch.long)
        labels[r, start:start + len(caption)] = torch.tensor(caption, dtype=torch.long)
    return Expanded(ids, mask, torch.ones_like(ids), labels, sum(images_per_row))


def test_word_targets_are_the_caption_then_the_end_token():
    from owlkit.training.loss import word_targets

    model = words_model()
    eos = model.config.text_config.eos_token_id
    assert eos == 2
    # row 0: caption 9 40 </s> and ChatML's newline after it (not the caption's); row 1: no
    # image; row 2: an image without a caption (a dummy row): neither is scored
    ex = _expanded(model, [[9, 40, 2, 100], [5, 5], []], [1, 0, 1])
    targets, scored = word_targets(ex, model.config)
    pos = {w: i for i, w in enumerate(WORDS)}
    assert targets.tolist() == [[pos[9], pos[40], pos[2], pos[2], pos[2], pos[2]]]
    assert scored.tolist() == [True, False]
    with pytest.raises(InputError, match="does not fit the 6 word tokens"):
        word_targets(_expanded(model, [[5] * 7], [1]), model.config)
    with pytest.raises(InputError, match="caption token 3 is not among the projector's words"):
        word_targets(_expanded(model, [[5, 3]], [1]), model.config)
    with pytest.raises(InputError, match="one picture and its caption per sample"):
        word_targets(_expanded(model, [[5]], [2]), model.config)
    no_end = words_model(word_ids=[5, 9])
    with pytest.raises(ConfigError, match="end-of-sequence token 2 is not among"):
        word_targets(_expanded(no_end, [[5]], [1]), no_end.config)


def test_the_words_loss_is_the_per_query_cross_entropy_without_the_decoder():
    from owlkit.training.loss import LossModule

    model = words_model()
    ex = _expanded(model, [[9, 40, 2], [17, 2]], [1, 1])
    pixels = torch.randn(2, 3, 56, 56)
    calls = []
    model.language_model.register_forward_hook(lambda *a: calls.append(1))
    loss = LossModule(model, "words")(ex.input_ids, ex.attention_mask, ex.labels, pixels, ex.image_mask)
    with torch.no_grad():
        scores = model.abstractor.scores(model.vision(pixels), model.word_rows())
    pos = {w: i for i, w in enumerate(WORDS)}
    want = torch.tensor([[pos[9], pos[40], pos[2], pos[2], pos[2], pos[2]], [pos[17]] + [pos[2]] * 5])
    expected = torch.nn.functional.cross_entropy(scores.flatten(0, 1), want.flatten(), reduction="sum")
    torch.testing.assert_close(loss, expected)
    assert not calls  # the decoder does not run
    with pytest.raises(ConfigError, match="objective 'words' trains a 'words' projector"):
        LossModule(tiny_model("test-owl2"), "words")


@pytest.fixture(scope="module")
def world_and_words_model(tmp_path_factory):
    """A small synthetic world and a random words-projector model whose words are its captions'."""
    from helpers_tokenizer import train_tiny_tokenizer

    from owlkit.models.owl import OwlForCausalLM
    from owlkit.processing.tokenizer import OwlTokenizer
    from owlkit.zoo.small_model import caption_word_ids
    from owlkit.zoo.world import make_world

    root = tmp_path_factory.mktemp("words")
    world = root / "world"
    make_world(world, seed=0, n=24, image_size=56, fmt="jsonl", n_instruct=8)
    folder = train_tiny_tokenizer(root / "model")
    tokenizer = OwlTokenizer.from_pretrained(folder)
    ids = caption_word_ids(tokenizer, world / "captions.jsonl")
    longest = max(len(tokenizer.encode(json.loads(line)["caption"]))
                  for line in (world / "captions.jsonl").read_text().splitlines())
    config = OwlConfig.from_preset("test-owl2")
    config.text_config.vocab_size = 420
    config.abstractor_config.projector, config.abstractor_config.word_ids = "words", ids
    config.abstractor_config.num_queries = longest + 4
    randomize(OwlForCausalLM(config)).save_pretrained(folder)
    return world, folder, ids


def test_caption_word_ids_are_the_captions_tokens_and_the_end(world_and_words_model):
    from owlkit.processing.tokenizer import OwlTokenizer

    world, folder, ids = world_and_words_model
    tokenizer = OwlTokenizer.from_pretrained(folder)
    texts = [json.loads(line)["caption"] for line in (world / "captions.jsonl").read_text().splitlines()]
    seen = {t for text in texts for t in tokenizer.encode(text)}
    assert ids == sorted(seen | {tokenizer.eos_token_id})


def _words_recipe(out, folder, world, **over):
    recipe = {
        "model": {"init": str(folder)}, "stage": "owl2_stage1", "objective": "words",
        "freeze": ["vision", "language_model"],
        "data": {"sources": [{"type": "captions", "path": str(world / "captions.jsonl")}], "max_length": 512},
        "optim": {"lr": 1e-2, "warmup_steps": 1, "weight_decay": 0.0},
        "train": {"steps": 15, "micro_batch_size": 8, "grad_accum": 1, "threads": 1, "precision": "fp32"},
        "checkpoint": {"every": 0}, "log": {"progress": False}, "output_dir": str(out),
    }
    return with_overrides(recipe, over)


def test_training_with_the_words_objective_learns_the_captions_and_touches_nothing_else(world_and_words_model, tmp_path):
    from owlkit.checkpoints import load_model
    from owlkit.training import train

    world, folder, ids = world_and_words_model
    result = train(_words_recipe(tmp_path / "run", folder, world))
    rows = result.history
    assert all(math.isfinite(r["loss"]) for r in rows)
    assert rows[-1]["loss"] < 0.7 * rows[0]["loss"]
    queries = load_model(folder).config.tokens_per_image
    assert all(r["supervised_tokens"] == 8 * queries for r in rows)  # every query of every picture
    before, after = load_model(folder).state_dict(), load_model(result.final_dir).state_dict()
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"abstractor"}


def test_the_words_objective_refuses_what_it_cannot_train(world_and_words_model, tmp_path):
    from owlkit.training import train
    from owlkit.training.recipe import load_recipe

    world, folder, ids = world_and_words_model
    with pytest.raises(ConfigError, match=r"objective 'words' trains the projector only; add freeze: \[language_model\]"):
        train(_words_recipe(tmp_path / "a", folder, world, freeze=["vision"]))
    with pytest.raises(ConfigError, match="objective"):
        load_recipe("smoke", ["objective=word"])


def test_a_new_words_projector_starts_from_pytorch_init_with_zero_queries():
    """A words projector (the model's own init) starts as PyTorch initialises its layers, with
    zero queries: the init the words objective was measured with (docs/owl-small.md)."""
    torch.manual_seed(0)
    model = type(words_model())(words_model().config)  # the model's own init, not the tests' randomize
    a = model.abstractor
    assert torch.count_nonzero(a.query_embeds) == 0
    fan_in = a.visual_fc.weight.shape[1]
    bound = 1 / fan_in ** 0.5  # kaiming_uniform(a=sqrt(5)): uniform in +-1/sqrt(fan_in)
    assert a.visual_fc.weight.abs().max() <= bound and a.visual_fc.weight.std() > 0.8 * bound / 3 ** 0.5
    assert all(torch.all(layer.norm1.weight == 1) for layer in a.layers)
    # a query abstractor keeps the transformers-style init
    plain = type(words_model())(tiny_model("test-owl2").config)
    assert plain.abstractor.visual_fc.weight.std() < 0.03


def test_owl_info_names_the_word_projector(tmp_path, capsys):
    from owlkit.cli import main

    words_model().save_pretrained(tmp_path / "m")
    assert main(["info", str(tmp_path / "m")]) == 0
    out = capsys.readouterr().out
    assert "6 queries" in out and f"read as words ({len(WORDS)} of the vocabulary), no vit_eos" in out
