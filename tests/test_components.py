"""Building a fresh model from HF LLaMA + HF CLIP folders (tiny random ones made here)."""

from __future__ import annotations

import json

import pytest
import torch

from owlkit.checkpoints import build_from_components, fuse_qkv
from owlkit.errors import CheckpointError


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("components")
    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128,
    )).eval()
    clip = CLIPVisionModel(CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=56,
        patch_size=14, hidden_act="quick_gelu",
    )).eval()
    with torch.no_grad():  # move norms/biases off their trivial init so a mapping slip shows
        for p in list(llama.parameters()) + list(clip.parameters()):
            p.add_(0.1 * torch.randn_like(p))
    llama.save_pretrained(root / "llama")
    clip.save_pretrained(root / "clip")
    return root, llama, clip


@pytest.mark.parametrize("version", [2, 1])
def test_components_reproduce_their_sources(parts, version):
    root, llama, clip = parts
    model = build_from_components(root / "llama", root / "clip", owl_version=version, num_queries=4,
                                  abstractor_layers=1, abstractor_intermediate_size=48)
    pv = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        ours = model.vision(pv)
        theirs = clip.post_layernorm(clip(pixel_values=pv).last_hidden_state)
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
        ids = torch.randint(3, 128, (2, 9))
        torch.testing.assert_close(model(input_ids=ids).logits, llama(input_ids=ids).logits, atol=1e-5, rtol=1e-5)
        out = model(input_ids=torch.tensor([[1, 5, -200, 6]]), pixel_values=pv[:1])
    assert torch.isfinite(out.logits).all()
    if version == 2:
        layer = model.language_model.layers[0]
        assert torch.equal(layer.self_attn.k_proj.text.weight, layer.self_attn.k_proj.visual.weight)
        assert torch.equal(layer.input_layernorm.text.weight, layer.input_layernorm.visual.weight)


def test_fuse_qkv_layout():
    d, heads = 8, 2
    q, k, v = (torch.full((d, 3), float(i)) for i in range(3))
    fused = fuse_qkv(q, k, v, heads)
    # per head: [q rows, k rows, v rows], each head_dim = 4
    assert fused[:, 0].tolist() == [0] * 4 + [1] * 4 + [2] * 4 + [0] * 4 + [1] * 4 + [2] * 4


def test_wrong_folders(parts, tmp_path):
    root, _, _ = parts
    with pytest.raises(CheckpointError, match="'clip_vision_model' model; owlkit builds on LLaMA-architecture"):
        build_from_components(root / "clip", root / "clip")
    with pytest.raises(CheckpointError, match="'llama' model; expected CLIP or an owlkit model folder"):
        build_from_components(root / "llama", root / "llama")
    with pytest.raises(CheckpointError, match="no config.json"):
        build_from_components(root / "llama", tmp_path)


def test_the_cache_is_read_under_either_name():
    """transformers 5.24 passes the key/value cache as ``cache=``, earlier 5.x releases as
    ``past_key_values=``: a decoding step gives the same logits either way."""
    from transformers import DynamicCache

    from helpers import tiny_model
    from owlkit.errors import InputError

    model = tiny_model("test-owl2", seed=3)
    ids = torch.randint(3, 250, (1, 9), generator=torch.Generator().manual_seed(0))
    full = model(input_ids=ids).logits[0, -1]
    steps = []
    for name in ("cache", "past_key_values"):
        cache = DynamicCache(config=model.config.text_config)
        with torch.no_grad():
            model(input_ids=ids[:, :-1], use_cache=True, **{name: cache})
            out = model(input_ids=ids[:, -1:], attention_mask=torch.ones(1, 9, dtype=torch.long),
                        use_cache=True, **{name: cache})
        assert cache.get_seq_length() == 9
        steps.append(out.logits[0, -1])
    torch.testing.assert_close(steps[0], full, atol=1e-5, rtol=0)
    torch.testing.assert_close(steps[1], full, atol=1e-5, rtol=0)
    with pytest.raises(InputError, match="once"):
        model(input_ids=ids, cache=DynamicCache(config=model.config.text_config),
              past_key_values=DynamicCache(config=model.config.text_config))


def test_a_trained_abstractor_starts_the_new_one(parts, tmp_path):
    """``abstractor_from``: the abstractor of an owlkit folder on the same encoder, its shape
    included; only the tensors of the LLM's width (output projection, vit_eos) start new."""
    root, _, _ = parts
    donor = build_from_components(root / "llama", root / "clip", num_queries=4, abstractor_layers=1,
                                  abstractor_intermediate_size=48, seed=3)
    donor.save_pretrained(tmp_path / "donor")
    model = build_from_components(root / "llama", root / "clip", num_queries=8, abstractor_layers=2,
                                  abstractor_from=tmp_path / "donor")
    a = model.config.abstractor_config
    assert (a.num_queries, a.num_hidden_layers, a.intermediate_size) == (4, 1, 48)
    ours, theirs = model.state_dict(), donor.state_dict()
    moved = [k for k in theirs if k.startswith("abstractor.") and "visual_fc" not in k and "vit_eos" not in k]
    assert moved and all(torch.equal(ours[k], theirs[k]) for k in moved)
    assert not torch.equal(ours["abstractor.visual_fc.weight"], theirs["abstractor.visual_fc.weight"])
    with pytest.raises(CheckpointError, match="only a query abstractor can be transferred"):
        build_from_components(root / "llama", root / "clip", projector="linear", abstractor_from=tmp_path / "donor")
    with pytest.raises(CheckpointError, match="can only be taken from an owlkit model folder"):
        build_from_components(root / "llama", root / "clip", abstractor_from=root / "clip")
    config = json.loads((tmp_path / "donor" / "config.json").read_text())
    config["abstractor_config"]["grid_size"] = 2
    (tmp_path / "donor" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="abstractor reads 2x2 patches of width 32; this encoder gives 4x4"):
        build_from_components(root / "llama", root / "clip", abstractor_from=tmp_path / "donor")


def test_word_ids_belong_to_a_words_projector(parts):
    root = parts[0]
    model = build_from_components(root / "llama", root / "clip", num_queries=4, abstractor_layers=1,
                                  projector="words", word_ids=[1, 5, 9])
    assert model.config.abstractor_config.word_ids == [1, 5, 9] and model.word_rows().shape[0] == 3
    with pytest.raises(CheckpointError, match="word_ids belong to a 'words' projector, not 'abstractor'"):
        build_from_components(root / "llama", root / "clip", word_ids=[1, 5, 9])
