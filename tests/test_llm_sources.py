"""Owls built from pre-trained LLaMA-family LLMs: HF folders and GGUF files that the tests write."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers_gguf import CHATML, tiny_llama, write_gguf
from owlkit.checkpoints import load_model
from owlkit.checkpoints.components import build_from_components, save_built
from owlkit.errors import CheckpointError, InputError
from owlkit.checkpoints.llm import read_language_model

BUNDLED = Path(__file__).resolve().parents[1] / "owlkit" / "assets" / "owl-tiny"
SMALL = {"num_queries": 4, "abstractor_layers": 1}


@pytest.fixture(scope="module")
def llms(tmp_path_factory):
    """The same tiny LLaMA (grouped-query attention, tied embeddings) as a HF folder and as GGUF files."""
    root = tmp_path_factory.mktemp("llms")
    model = tiny_llama(tie=True)
    model.save_pretrained(root / "hf")
    (root / "hf" / "chat_template.jinja").write_text(CHATML)
    write_gguf(model, root / "f32.gguf")
    write_gguf(model, root / "q8.gguf", qtype="Q8_0")
    write_gguf(model, root / "q4.gguf", qtype="Q4_1")
    write_gguf(tiny_llama(tie=False), root / "untied.gguf")
    return root, model


def test_a_gguf_file_reads_exactly_as_its_hf_folder(llms):
    root, model = llms
    from_gguf = read_language_model(root / "f32.gguf")
    from_hf = read_language_model(root / "hf")
    assert from_gguf.config["num_key_value_heads"] == 2 and from_gguf.config["tie_word_embeddings"] is True
    assert from_gguf.config["rope_parameters"]["rope_theta"] == 50000.0
    assert from_gguf.chat_template == CHATML
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight":
            continue  # tied: stored once
        assert torch.equal(from_gguf.state[name], tensor), name  # llama.cpp's q/k permutation undone
        assert torch.equal(from_hf.state[name], tensor), name


@pytest.mark.parametrize("qtype, tol", [("q8", 0.01), ("q4", 0.1)])
def test_quantized_gguf_dequantizes_close_to_the_original(llms, qtype, tol):
    root, model = llms
    llm = read_language_model(root / f"{qtype}.gguf")
    w = model.state_dict()["model.layers.1.self_attn.k_proj.weight"]
    got = llm.state["model.layers.1.self_attn.k_proj.weight"]
    assert 0 < (got - w).abs().max().item() < tol


def test_the_built_owl_speaks_like_its_llm_without_images(llms):
    root, model = llms
    owl = build_from_components(root / "f32.gguf", BUNDLED, **SMALL)
    assert owl.config.tie_word_embeddings and owl.lm_head.weight is owl.language_model.embed_tokens.weight
    ids = torch.tensor([[1, 40, 50, 60, 70, 260, 2, 1, 80]])
    with torch.no_grad():
        ours = owl(input_ids=ids).logits
        theirs = model(input_ids=ids).logits
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    # The MAM's visual branches start as copies of the text ones (the paper's initialisation).
    layer = owl.language_model.layers[0]
    assert torch.equal(layer.self_attn.k_proj.visual.weight, layer.self_attn.k_proj.text.weight)
    # The encoder is the bundled model's, weight for weight.
    from owlkit.weight_files import read_state_dict

    bundled = read_state_dict(BUNDLED)
    assert all(torch.equal(owl.state_dict()[k], v) for k, v in bundled.items() if k.startswith("vision."))


def test_untied_gguf_keeps_its_output_matrix(llms):
    root, _ = llms
    owl = build_from_components(root / "untied.gguf", BUNDLED, **SMALL)
    assert not owl.config.tie_word_embeddings
    assert not torch.equal(owl.lm_head.weight, owl.language_model.embed_tokens.weight)


def test_a_saved_build_loads_with_its_llms_tokenizer_and_chat_template(llms, tmp_path):
    from owlkit import Owl
    from owlkit.processing.labels import IGNORE_INDEX

    root, _ = llms
    llm = read_language_model(root / "f32.gguf")
    folder = save_built(build_from_components(llm, BUNDLED, **SMALL), llm, BUNDLED, tmp_path / "owl")
    assert json.loads((folder / "config.json").read_text())["conversation_template"] == "chat_template"
    assert str(root) not in (folder / "config.json").read_text()  # no path of the building machine
    model = load_model(folder, dtype="float32")
    assert model.lm_head.weight is model.language_model.embed_tokens.weight  # stored once, tied again
    owl = Owl.load(folder, dtype="float32")
    proc = owl.processor
    assert proc.stop_strings == ["<|im_end|>"] and not proc.tokenizer.add_bos_token
    ids, _ = proc.encode([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "the hat"}]}],
                         images=[np.zeros((8, 8, 3), np.uint8)])
    text = proc.tokenizer.decode([i for i in ids if i >= 0])
    assert text == "<|im_start|>user\nthe hat<|im_end|>\n<|im_start|>assistant\n"
    assert ids.count(owl.model.config.placeholder_id) == 1
    batch = proc([[{"role": "user", "content": "re a"}, {"role": "assistant", "content": "the"},
                   {"role": "user", "content": "a"}, {"role": "assistant", "content": "he"}]], return_labels=True)
    supervised = [t for t in batch["labels"][0].tolist() if t != IGNORE_INDEX]
    assert proc.tokenizer.decode(supervised) == "the<|im_end|>\nhe<|im_end|>\n"  # the replies and their ends only
    reply = owl.chat([{"role": "user", "content": "the"}], max_new_tokens=3)
    assert isinstance(reply, str)


def test_gguf_of_another_architecture_is_one_line(llms, tmp_path):
    _, model = llms
    path = write_gguf(model, tmp_path / "qwen.gguf", architecture="qwen2")
    with pytest.raises(CheckpointError, match="'qwen2' model; owlkit builds on LLaMA-architecture"):
        read_language_model(path)


def test_gguf_with_a_tensor_type_the_gguf_package_cannot_dequantize(tmp_path):
    import gguf

    w = gguf.GGUFWriter(str(tmp_path / "int.gguf"), "llama")
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.int8))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(CheckpointError, match="tensors of type I8, which the gguf package cannot dequantize"):
        read_language_model(tmp_path / "int.gguf")


def test_not_an_llm(tmp_path):
    (tmp_path / "junk.gguf").write_bytes(b"GGUF" + b"\0" * 12)
    with pytest.raises(CheckpointError, match="cannot read .*junk.gguf as GGUF"):
        read_language_model(tmp_path / "junk.gguf")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointError, match="neither a GGUF file nor a folder"):
        read_language_model(tmp_path / "notes.txt")
    with pytest.raises(CheckpointError, match="does not exist"):
        read_language_model(tmp_path / "nothing")


def test_a_folder_naming_a_chat_template_its_tokenizer_lacks(llms, tmp_path):
    from owlkit import Owl

    root, _ = llms
    llm = read_language_model(root / "f32.gguf")
    folder = save_built(build_from_components(llm, BUNDLED, **SMALL), llm, BUNDLED, tmp_path / "owl")
    (folder / "chat_template.jinja").unlink()
    with pytest.raises(InputError, match="names the tokenizer's chat template but its tokenizer has none"):
        Owl.load(folder, dtype="float32")
