"""Weight-only int8 / int4 quantization: the arithmetic, the kernels, the answers, the files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from conftest import fixture_folders
from helpers import make_model_folder
from owlkit import quantization as Q
from owlkit.checkpoints import load_model
from owlkit.cli import main as owl
from owlkit.errors import CheckpointError, ConfigError
from owlkit.models.owl import OwlForCausalLM
from owlkit.inference import Owl, bundled_model_path

FOLDERS = fixture_folders()


def test_quantized_weights_and_layers_agree_with_their_dequantized_weight():
    torch.manual_seed(0)
    w = torch.randn(64, 256) * 0.05
    q, scales = Q.quantize_int8(w)
    assert q.dtype == torch.int8 and (q.float() * scales[:, None] - w).abs().max() <= scales.max() / 2 + 1e-7
    packed, s4, z4 = Q.quantize_int4(w, 32)
    assert packed.shape == (64, 128) and s4.shape == z4.shape == (64, 8)
    unpacked = Q.unpack_int4(packed)
    assert unpacked.min() >= 0 and unpacked.max() <= 15
    x = torch.randn(5, 256)
    for bits in (8, 4):
        layer = Q.QuantizedLinear.from_weight(w, bits, 32)
        reference = F.linear(x, Q.dequantize(layer))
        assert (reference - x @ w.T).abs().max() < 0.1 * (x @ w.T).abs().max()  # it is a quantization
        out = layer(x)
        assert out.dtype == torch.float32 and torch.allclose(out, reference, atol=0.05, rtol=0.02)
        assert Q.compute_path(bits) in ("kernel-bf16", "kernel-fp32", "dequantize")


def test_quantizing_in_row_chunks_gives_the_whole_matrix_result(monkeypatch):
    """Large matrices are quantized a few million weights at a time (bounded temporaries); the
    rows are independent, so the chunks must give exactly the one-piece result, bfloat16 in too."""
    torch.manual_seed(0)
    w = (torch.randn(96, 256) * 0.05).to(torch.bfloat16)
    whole = {8: Q.quantize_int8(w), 4: Q.quantize_int4(w, 32)}
    monkeypatch.setattr(Q, "CHUNK_ELEMENTS", 256 * 7)  # 7 rows a chunk: the last one shorter
    for bits, expected in whole.items():
        chunked = Q.quantize_rows(w, bits, 32)
        assert len(chunked) == len(expected)
        for got, want in zip(chunked, expected):
            assert got.shape == want.shape and torch.equal(got, want)


def test_layers_int4_cannot_hold_go_int8_and_are_reported(tmp_path, capsys):
    """A width int4's groups do not divide: that layer is int8 (not float), and the folder's
    config lists it; the LM head is int8 in int4 mode; a folder written when such layers stayed
    float (listed in ``kept``) still loads them in float."""
    folder = tmp_path / "m"
    make_model_folder(folder, "test-owl2", seed=1)
    model = load_model(folder, quantize="int4", group_size=256)  # wider than every layer: none can be grouped
    info = model.config.owlkit_quantization
    quantized = {n: m.bits for n, m in model.named_modules() if isinstance(m, Q.QuantizedLinear)}
    assert info["bits"] == 4 and not info["kept"] and set(quantized.values()) == {8}
    assert set(quantized) == set(Q.quantizable(load_model(folder))) == {*info["in_int8"], "lm_head"}
    grouped = load_model(folder, quantize="int4", group_size=32)  # 48 and 96 inputs: some layers int4, some int8
    bits = {n: m.bits for n, m in grouped.named_modules() if isinstance(m, Q.QuantizedLinear)}
    assert {n for n, b in bits.items() if b == 8} == {*grouped.config.owlkit_quantization["in_int8"], "lm_head"}
    assert 4 in bits.values() and grouped.config.owlkit_quantization["in_int8"]
    for name in grouped.config.owlkit_quantization["in_int8"]:
        layer = grouped.get_submodule(name)
        assert layer.in_features % 32 or layer.out_features % 16
    assert owl(["quantize", str(folder), str(tmp_path / "q"), "--bits", "4", "--group-size", "256"]) == 0
    assert f"in int8 (widths not a multiple of 256): {len(info['in_int8'])} layer(s)" in capsys.readouterr().out
    assert owl(["info", str(tmp_path / "q")]) == 0
    assert f"{len(info['in_int8'])} in int8, their widths not a multiple of the group size" in capsys.readouterr().out
    # a folder of the earlier rule: the ungroupable layers in float, named in "kept"
    config = load_model(folder).config
    with torch.device("meta"):
        shell = OwlForCausalLM(config)
    kept, in_int8 = Q.replace_linears(shell, 4, 256, skip=set(info["in_int8"]))
    assert sorted(kept) == sorted(info["in_int8"]) and not in_int8
    assert {n for n, m in shell.named_modules() if isinstance(m, Q.QuantizedLinear)} == {"lm_head"}
    model = load_model(folder, quantize="int8")
    assert not model.config.owlkit_quantization["kept"]
    assert sum(isinstance(m, Q.QuantizedLinear) for m in model.modules()) == len(Q.quantizable(load_model(folder)))
    with pytest.raises(ConfigError, match="unknown quantize value 'int3'"):
        load_model(folder, quantize="int3")
    with pytest.raises(CheckpointError, match="group_size must be one of"):
        load_model(folder, quantize="int4", group_size=48)


@pytest.mark.skipif(not FOLDERS, reason="conformance fixtures not found (a 'shared' folder beside the clone)")
@pytest.mark.parametrize("root", FOLDERS, ids=[p.name for p in FOLDERS])
def test_fixture_logits_stay_close(root):
    """On the fixtures' prompts: cosine similarity to the float32 logits >= 0.999 (int8) and
    >= 0.98 for int4: these are 64-wide random matrices, each layer alone keeps 0.997-0.999 and
    the network 0.984-0.991 (measured; docs/performance.md); trained weights keep more (below)."""
    from test_conformance import _samples

    meta = json.loads((root / "inputs" / "meta.json").read_text())
    pixels = torch.from_numpy(np.load(root / "inputs" / "pixel_values.npy"))
    models = {"fp32": load_model(root / "model"), "int8": load_model(root / "model", quantize="int8"),
              "int4": load_model(root / "model", quantize="int4", group_size=32)}
    assert any(isinstance(m, Q.QuantizedLinear) for m in models["int4"].modules())
    for s in _samples(root):
        ids = torch.from_numpy(np.load(root / "inputs" / f"prompt_ids_s{s}.npy"))
        idx = meta["sample_images"][s - 1]
        logits = {}
        with torch.no_grad():
            for name, model in models.items():
                logits[name] = model(input_ids=ids, pixel_values=pixels[idx] if idx else None).logits.flatten()
        for name, floor in (("int8", 0.999), ("int4", 0.98)):
            cos = float(F.cosine_similarity(logits[name], logits["fp32"], dim=0))
            assert cos >= floor, (root.name, s, name, cos)


def test_a_quantized_folder_loads_as_it_is_and_answers_alike(tmp_path, capsys, monkeypatch):
    src = bundled_model_path()
    if not (src / "config.json").exists():
        pytest.skip("no bundled model in this installation")
    image = src.parent / "examples" / "colour.png"
    conv = [{"role": "user", "content": [{"type": "image", "image": str(image)},
                                         {"type": "text", "text": "What colour is the big star?"}]}]
    for bits in (8, 4):
        out = tmp_path / f"q{bits}"
        assert owl(["quantize", str(src), str(out), "--bits", str(bits), "--group-size", "32"]) == 0
        assert f"int{bits}" in capsys.readouterr().out
        on_the_fly = Owl.load(src, quantize=f"int{bits}", group_size=32)
        with monkeypatch.context() as m:  # loading the folder quantizes nothing again
            m.setattr(Q, "quantize_int8", lambda *a: pytest.fail("quantized again"))
            m.setattr(Q, "quantize_int4", lambda *a: pytest.fail("quantized again"))
            saved = Owl.load(out)
        assert saved.model.config.owlkit_quantization["bits"] == bits
        ids = torch.tensor([[1, 5, 9, 7]])
        with torch.no_grad():
            assert torch.equal(saved.model(input_ids=ids).logits, on_the_fly.model(input_ids=ids).logits)
        alone = [saved.chat(conv, max_new_tokens=6), saved.chat(conv[:1] and [{"role": "user", "content": "hello"}],
                                                                   max_new_tokens=6)]
        batched = saved.generate_batch([conv, [{"role": "user", "content": "hello"}]], max_new_tokens=6)
        assert batched == alone  # batched answers are the unbatched ones, quantized too
        assert owl(["info", str(out)]) == 0
        assert f"quantized: int{bits}" in capsys.readouterr().out
    with pytest.raises(CheckpointError, match="already quantized to int8"):
        load_model(tmp_path / "q8", quantize="int4")
    (tmp_path / "q4" / "model.safetensors").write_bytes((tmp_path / "q4" / "model.safetensors").read_bytes()[:1000])
    assert owl(["chat", "--model", str(tmp_path / "q4"), "hi"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "truncated or corrupt" in err


def test_trained_weights_keep_their_logits():
    """owl-tiny (trained) on an example scene: >= 0.999 (int8), >= 0.99 (int4)."""
    src = bundled_model_path()
    if not (src / "config.json").exists():
        pytest.skip("no bundled model in this installation")
    conv = [{"role": "user", "content": [{"type": "image", "image": str(src.parent / "examples" / "colour.png")},
                                         {"type": "text", "text": "What colour is the big star?"}]}]
    base = Owl.load(src)
    batch = base.processor(conv)
    with torch.no_grad():
        reference = base.model(**batch).logits.flatten()
        for quantize, floor in (("int8", 0.999), ("int4", 0.99)):
            logits = Owl.load(src, quantize=quantize).model(**batch).logits.flatten()
            assert float(F.cosine_similarity(logits, reference, dim=0)) >= floor, quantize


def test_a_running_int4_model_keeps_one_copy_and_says_it_cannot_be_saved(tmp_path):
    folder = tmp_path / "m"
    make_model_folder(folder, "test-owl2", seed=1)
    running = load_model(folder, quantize="int4", group_size=32)
    layers = [m for m in running.modules() if isinstance(m, Q.QuantizedLinear) and m.bits == 4]
    if Q.compute_path(4) == "dequantize":
        pytest.skip("this CPU runs int4 dequantized: the portable copy is what it uses")
    assert layers and all(m.qweight.numel() == 0 for m in layers)  # the kernel's layout only
    with pytest.raises(RuntimeError, match="cannot be saved"):
        running.save_pretrained(tmp_path / "out")
    portable = load_model(folder, quantize="int4", group_size=32, keep_portable=True)
    portable.save_pretrained(tmp_path / "out")
    ids = torch.tensor([[1, 5, 9, 7]])
    with torch.no_grad():
        assert torch.equal(load_model(tmp_path / "out")(input_ids=ids).logits, running(input_ids=ids).logits)


def test_quantized_loading_counts_the_quantized_bytes(tmp_path):
    folder = tmp_path / "m"
    make_model_folder(folder, "test-owl2", seed=1)
    model = load_model(folder, quantize="int8", max_memory="600MB")  # a float32 model of this size fits too
    assert model.config.owlkit_quantization["bits"] == 8
    with pytest.raises(CheckpointError, match="quantized models run on the CPU"):
        load_model(folder, quantize="int8", device_map="auto")


def test_the_int4_repack_in_row_chunks_is_the_kernels_layout():
    if Q.compute_path(4) == "dequantize":
        pytest.skip("this CPU runs int4 dequantized")
    q = torch.randint(0, 16, (2 * Q.REPACK_ROWS + 64, 256), dtype=torch.int32)
    packed = ((q[:, ::2] << 4) | q[:, 1::2]).to(torch.uint8)
    assert torch.equal(Q.repack_int4(packed), torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 2))


def test_a_low_rank_update_stays_out_of_the_rounding(tmp_path, capsys):
    """A base already on a 4-bit grid (as a GGUF model is) plus a small LoRA update, merged:
    int4 alone rounds the update back onto the base; with the factors in ``low_rank.safetensors``
    the quantized model keeps it (and so does a folder ``owl quantize`` writes)."""
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "m"
    model = make_model_folder(folder, "test-owl2", seed=1)
    names = [n for n, m in Q.quantizable(model).items() if n != "lm_head" and m.in_features % 32 == 0]
    state = load_file(str(folder / "model.safetensors"))
    g = torch.Generator().manual_seed(0)
    factors, merged = {}, dict(state)
    for name in names:
        w = state[f"{name}.weight"]
        state[f"{name}.weight"] = grid = Q.dequantize(Q.QuantizedLinear.from_weight(w, 4, 32))
        a, b = torch.randn(4, w.shape[1], generator=g), torch.randn(w.shape[0], 4, generator=g)
        b *= 0.02 * grid.std() / (b @ a).std()  # well under half a quantization step
        factors |= {f"{name}.lora_A": a, f"{name}.lora_B": b}
        merged[f"{name}.weight"] = grid + b @ a
    for name in set(Q.quantizable(model)) - set(names):  # int8 in int4 mode (widths of 48, the LM head): on its grid too
        state[f"{name}.weight"] = merged[f"{name}.weight"] = Q.dequantize(Q.QuantizedLinear.from_weight(state[f"{name}.weight"], 8, 32))
    base = tmp_path / "base"
    base.mkdir()
    for f in folder.iterdir():
        (base / f.name).write_bytes(f.read_bytes())
    save_file(state, str(base / "model.safetensors"))
    save_file(merged, str(folder / "model.safetensors"))
    ids = torch.tensor([[1, 5, 9, 7, 11, 4]])  # no image placeholder

    def logits(path, **quantize):
        with torch.no_grad():
            return load_model(path, **quantize)(input_ids=ids).logits.flatten()

    reference, without_update = logits(folder), logits(base)
    rounded = logits(folder, quantize="int4", group_size=32)
    assert (rounded - without_update).norm() < (rounded - reference).norm()  # the update is lost
    save_file(factors, str(folder / Q.LOW_RANK_FILE))
    kept = load_model(folder, quantize="int4", group_size=32)
    assert set(kept.config.owlkit_quantization["low_rank"]) == set(names)
    with torch.no_grad():
        kept_logits = kept(input_ids=ids).logits.flatten()
    # What stays is the error every int4 load has here (bfloat16 activations), as on the bare base
    floor = (logits(base, quantize="int4", group_size=32) - without_update).norm()
    assert (kept_logits - reference).norm() < 1.05 * floor + 1e-3 < 0.5 * (rounded - reference).norm()
    out = tmp_path / "q4"
    assert owl(["quantize", str(folder), str(out), "--bits", "4", "--group-size", "32"]) == 0
    assert f"{len(names)} layer(s) keep their low-rank update in float" in capsys.readouterr().out
    torch.testing.assert_close(logits(out), kept_logits)
    assert owl(["info", str(out)]) == 0
    assert f"{len(names)} with a low-rank update in float" in capsys.readouterr().out
    (folder / Q.LOW_RANK_FILE).write_bytes(b"not a safetensors file")
    with pytest.raises(ConfigError, match="low_rank.safetensors cannot be read"):
        load_model(folder, quantize="int8")
    save_file({"language_model.layers.99.mlp.up_proj.lora_A": torch.zeros(1, 4),
               "language_model.layers.99.mlp.up_proj.lora_B": torch.zeros(4, 1)}, str(folder / Q.LOW_RANK_FILE))
    with pytest.raises(CheckpointError, match="names language_model.layers.99.mlp.up_proj, not a layer of this model"):
        load_model(folder, quantize="int8")
    a, b = factors[f"{names[0]}.lora_A"], factors[f"{names[0]}.lora_B"]
    save_file({f"{names[0]}.lora_A": a.T.contiguous(), f"{names[0]}.lora_B": b}, str(folder / Q.LOW_RANK_FILE))
    with pytest.raises(ConfigError, match="low-rank factors of shapes .* do not fit"):
        load_model(folder, quantize="int8")
    save_file({f"{names[0]}.lora_A": factors[f"{names[0]}.lora_A"]}, str(folder / Q.LOW_RANK_FILE))
    with pytest.raises(ConfigError, match="needs exactly a lora_A and a lora_B"):
        load_model(folder, quantize="int8")


def test_a_config_names_its_int4_group_size(tmp_path, capsys):
    """``int4_group_size`` in config.json is the default group size of int4 loading (an explicit
    one wins); a value the kernel does not take is a one-line error naming the file."""
    folder = tmp_path / "m"
    make_model_folder(folder, "test-owl2", seed=1)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(dict(config, int4_group_size=32)))
    model = load_model(folder, quantize="int4")
    groups = {m.group_size for m in model.modules() if isinstance(m, Q.QuantizedLinear) and m.bits == 4}
    assert groups == {32} and model.config.owlkit_quantization["group_size"] == 32
    assert load_model(folder, quantize="int4", group_size=64).config.owlkit_quantization["group_size"] == 64
    (folder / "config.json").write_text(json.dumps(dict(config, int4_group_size=48)))
    with pytest.raises(CheckpointError, match="int4_group_size must be one of 32, 64, 128, 256, got 48"):
        load_model(folder, quantize="int4")
    assert owl(["info", str(folder)]) != 0  # owl info's int4 estimate reads it too: the same one line
    err = capsys.readouterr().err
    assert "int4_group_size must be one of 32, 64, 128, 256, got 48" in err and "Traceback" not in err
    assert load_model(folder, quantize="int8").config.owlkit_quantization["bits"] == 8  # int8 has no groups


def test_a_config_keeps_named_layers_at_int8_in_int4(tmp_path):
    """``int8_in_int4: ["visual"]``: the modality-adaptive visual branches stay int8 when the rest
    is int4, when quantized while loading and in a folder ``owl quantize`` wrote."""
    folder = tmp_path / "m"
    make_model_folder(folder, "test-owl2", seed=1)
    config = json.loads((folder / "config.json").read_text())
    config["int8_in_int4"] = ["visual"]
    (folder / "config.json").write_text(json.dumps(config))
    model = load_model(folder, quantize="int4", group_size=32)
    bits = {n: m.bits for n, m in model.named_modules() if isinstance(m, Q.QuantizedLinear)}
    visual = {n for n in bits if n.endswith(".visual")}
    assert visual and all(bits[n] == 8 for n in visual)
    in_int8 = set(model.config.owlkit_quantization["in_int8"])  # 48 inputs: not in groups of 32
    assert {bits[n] for n in bits if n not in visual | in_int8 | {"lm_head"}} == {4}
    assert owl(["quantize", str(folder), str(tmp_path / "q4"), "--bits", "4", "--group-size", "32"]) == 0
    saved = load_model(tmp_path / "q4")
    assert {n: m.bits for n, m in saved.named_modules() if isinstance(m, Q.QuantizedLinear)} == bits
