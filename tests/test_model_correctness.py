"""Where owlkit is right although the official code is not (docs/official-differences.md)."""

from __future__ import annotations

import pytest
import torch

from helpers import tiny_model
from owlkit.errors import InputError

IMG = -200


def _prompt(n_text: int, images: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    words = torch.randint(3, 250, (n_text,), generator=g).tolist()
    ids = [1] + words[: n_text // 2]
    ids += [IMG] * images
    return ids + words[n_text // 2 :]


def _left_pad(rows: list[list[int]]):
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r)
        mask[i, width - len(r):] = 1
    return ids, mask


@pytest.mark.parametrize("preset", ["test-owl2", "test-owl1"])
def test_gqa_and_batched_generation_equal_unbatched(preset):
    model = tiny_model(preset, seed=1)
    assert model.config.text_config.num_key_value_heads < model.config.text_config.num_attention_heads
    rows = [_prompt(7, 1, 0), _prompt(4, 0, 1), _prompt(9, 2, 2), _prompt(3, 3, 3)]
    images = torch.randn(6, 3, 56, 56, generator=torch.Generator().manual_seed(5))
    per_row, start = [], 0
    for r in rows:
        n = r.count(IMG)
        per_row.append(images[start:start + n] if n else None)
        start += n
    singles, single_logits = [], []
    for r, pv in zip(rows, per_row):
        ids = torch.tensor([r])
        singles.append(model.generate(input_ids=ids, pixel_values=pv, max_new_tokens=6, do_sample=False)[0, -6:])
        with torch.no_grad():
            single_logits.append(model(input_ids=ids, pixel_values=pv).logits[0])
    ids, mask = _left_pad(rows)
    batched = model.generate(input_ids=ids, pixel_values=images, attention_mask=mask, max_new_tokens=6, do_sample=False)
    for i, s in enumerate(singles):
        assert batched[i, -6:].tolist() == s.tolist(), f"row {i}"
    with torch.no_grad():
        out = model(input_ids=ids, pixel_values=images, attention_mask=mask)
    for i, ref in enumerate(single_logits):
        valid = out.attention_mask[i].bool()
        torch.testing.assert_close(out.logits[i][valid], ref, atol=1e-4, rtol=0)


def test_right_padded_prompts_generate_like_single_ones():
    model = tiny_model("test-owl2", seed=2)
    rows = [_prompt(8, 1, 4), _prompt(3, 0, 5)]
    images = torch.randn(1, 3, 56, 56)
    width = max(map(len, rows))
    ids = torch.zeros(2, width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    batched = model.generate(input_ids=ids, pixel_values=images, attention_mask=mask, max_new_tokens=5, do_sample=False)
    one = model.generate(input_ids=torch.tensor([rows[0]]), pixel_values=images, max_new_tokens=5, do_sample=False)
    two = model.generate(input_ids=torch.tensor([rows[1]]), max_new_tokens=5, do_sample=False)
    assert batched[0, -5:].tolist() == one[0, -5:].tolist()
    assert batched[1, -5:].tolist() == two[0, -5:].tolist()


def test_placeholder_conventions_agree():
    """-200, owlkit's image token and mPLUG-Owl's runs of -1 describe the same input."""
    model = tiny_model("test-owl2", seed=3)
    model.config.image_token_id = 255
    t = model.config.tokens_per_image
    images = torch.randn(2, 3, 56, 56)
    a = torch.tensor([[1, 10, IMG, 11, IMG, IMG, 12]])
    b = torch.tensor([[1, 10, 255, 11, 255, 255, 12]])
    c = torch.tensor([[1, 10] + [-1] * t + [11] + [-1] * (2 * t) + [12]])
    images = torch.randn(3, 3, 56, 56)
    with torch.no_grad():
        la, lb, lc = (model(input_ids=x, pixel_values=images).logits for x in (a, b, c))
    torch.testing.assert_close(la, lb)
    torch.testing.assert_close(la, lc)


def test_text_only_sample_needs_no_dummy_image():
    model = tiny_model("test-owl2", seed=4)
    ids = torch.tensor([[1, 5, IMG, 6], [1, 7, 8, 9]])
    with torch.no_grad():
        out = model(input_ids=ids, pixel_values=torch.randn(1, 3, 56, 56))
    assert out.logits.shape[:2] == (2, 4 + model.config.tokens_per_image - 1)
    with pytest.raises(InputError, match="1 image placeholder.*2 image"):
        model(input_ids=ids, pixel_values=torch.randn(2, 3, 56, 56))


@pytest.mark.parametrize("preset", ["test-owl2", "test-owl1"])
def test_other_image_sizes(preset):
    model = tiny_model(preset, seed=5)
    ids = torch.tensor([[1, 5, IMG, 6]])
    with torch.no_grad():
        for h, w in [(56, 56), (84, 84), (42, 70)]:
            out = model(input_ids=ids, pixel_values=torch.randn(1, 3, h, w))
            assert torch.isfinite(out.logits).all()
            assert out.logits.shape[1] == 3 + model.config.tokens_per_image
        tokens = model.vision(torch.randn(2, 3, 84, 70))
        assert tokens.shape[1] == 1 + 6 * 5
        with pytest.raises(InputError, match="multiple of the patch size"):
            model(input_ids=ids, pixel_values=torch.randn(1, 3, 50, 56))


def test_configured_size_uses_the_stored_tables_unchanged():
    """At the configured size no interpolation happens: positions are the stored table itself."""
    from owlkit.models.abstractor import sincos_tables

    model = tiny_model("test-owl2", seed=6)
    g = model.config.vision_config.grid_size
    assert model.vision.embeddings.positions(g, g) is model.vision.embeddings.position_embedding
    q, k = sincos_tables(model.config.abstractor_config)
    _, k2 = sincos_tables(model.config.abstractor_config, g + 2, g)
    assert k.shape[0] == 1 + g * g and k2.shape[0] == 1 + (g + 2) * g
    assert torch.equal(k[0], torch.zeros_like(k[0]))


def test_bad_inputs_are_one_line_errors():
    model = tiny_model("test-owl2", seed=7)
    ids = torch.tensor([[1, 5, IMG, 6]])
    cases = [
        (dict(input_ids=ids), "1 image placeholder.*0 image"),
        (dict(input_ids=torch.tensor([[1, 5, 6]]), pixel_values=torch.randn(1, 3, 56, 56)), "0 image placeholder.*1 image"),
        (dict(input_ids=ids, pixel_values=torch.randn(3, 56, 56)), "pixel_values must have shape"),
        (dict(input_ids=torch.tensor([[1, -7, 6]])), r"negative ids \[-7\]"),
        (dict(input_ids=torch.tensor([[1, -1, -1, 6]]), pixel_values=torch.randn(1, 3, 56, 56)), "run of 2 image ids"),
        (dict(input_ids=torch.tensor([[1, 9999]])), "vocabulary size"),
        (dict(input_ids=ids, attention_mask=torch.ones(1, 3), pixel_values=torch.randn(1, 3, 56, 56)), "attention_mask shape"),
    ]
    for kwargs, pattern in cases:
        with pytest.raises(InputError, match=pattern) as info:
            model(**kwargs)
        assert "\n" not in str(info.value)


def test_cpu_decoding_layout_keeps_the_numbers(tmp_path):
    from owlkit.errors import OwlError
    from owlkit.models import cpu_decoding

    model = tiny_model("test-owl2", seed=8)
    ids = torch.tensor([[1, 5, IMG, 6, 7], [0, 1, 9, 10, 11]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 1, 1, 1, 1]])
    pv = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        ref = model(input_ids=ids, pixel_values=pv, attention_mask=mask).logits
    ref_ids = model.generate(input_ids=ids, pixel_values=pv, attention_mask=mask, max_new_tokens=5, do_sample=False)
    layout = cpu_decoding.optimize_for_cpu_decoding(model)
    assert layout in ("onednn-packed", "column-major")
    if layout == "onednn-packed":  # gate and up as one product; the vision MLPs' QuickGELU as a SiLU
        assert sum(isinstance(m, cpu_decoding.PackedGatedMLP) for m in model.modules()) == 2
        assert sum(isinstance(m, torch.nn.SiLU) for m in model.vision.modules()) == 2
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids, pixel_values=pv, attention_mask=mask).logits, ref, atol=1e-4, rtol=1e-4)
    assert torch.equal(model.generate(input_ids=ids, pixel_values=pv, attention_mask=mask, max_new_tokens=5, do_sample=False), ref_ids)
    if layout == "onednn-packed":
        with pytest.raises(OwlError, match="cannot be saved"):
            model.save_pretrained(tmp_path)
    # the fallback layout: same shapes and values, other strides
    other = tiny_model("test-owl2", seed=8)
    other.dtype  # noqa: B018
    for _, _, linear in cpu_decoding._linears(other):
        linear.weight.data = linear.weight.data.t().contiguous().t()
    with torch.no_grad():
        torch.testing.assert_close(other(input_ids=ids, pixel_values=pv, attention_mask=mask).logits, ref, atol=1e-4, rtol=1e-4)


def test_owl_load_fuses_products_stores_wide_matrices_column_major_and_keeps_them_savable(tmp_path):
    """Owl.load's default decoding layout: each layer's query + text key/value and gate + up as
    one column-major product, the LM head column-major, the rest as saved; the same numbers up
    to rounding, with and without an image and through the cache; a saved copy loads back
    equal; ``decoding_layout="row-major"`` keeps every matrix as saved; a bad value is an error."""
    from helpers import make_model_folder

    from owlkit import Owl, load_model
    from owlkit.errors import InputError
    from owlkit.models import cpu_decoding

    make_model_folder(tmp_path / "m", "test-owl2", seed=3)
    auto, plain = Owl.load(tmp_path / "m"), Owl.load(tmp_path / "m", decoding_layout="row-major")
    column_major = {"lm_head"}
    for name, layer in enumerate(auto.model.language_model.layers):
        attn, mlp = layer.self_attn, layer.mlp
        qkv, gate_up = attn.fused_qkv, mlp.fused_gate_up
        assert [p[2] for p in qkv.parts] == [attn.q_proj, attn.k_proj.text, attn.v_proj.text]
        assert [p[2] for p in gate_up.parts] == [mlp.gate_proj, mlp.up_proj]
        assert qkv.weight.shape == (sum(qkv.sizes), attn.q_proj.in_features) and not qkv.weight.is_contiguous()
        for product in (qkv, gate_up):  # every part a view of the joint storage
            assert {p[2].weight.untyped_storage().data_ptr() for p in product.parts} == {product.weight.untyped_storage().data_ptr()}
        column_major |= {f"language_model.layers.{name}.{part}" for part in (
            "self_attn.q_proj", "self_attn.k_proj.text", "self_attn.v_proj.text", "mlp.gate_proj", "mlp.up_proj")}
    for name, m in auto.model.named_modules():
        if isinstance(m, torch.nn.Linear):
            assert m.weight.is_contiguous() == (name not in column_major), name
    assert all(m.weight.is_contiguous() for m in plain.model.modules() if isinstance(m, torch.nn.Linear))
    assert plain.model.language_model.layers[0].self_attn.fused_qkv is None
    ids = torch.tensor([[1, 5, IMG, 6, 7, 8]])
    pv = torch.randn(1, 3, 56, 56, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for kwargs in ({"input_ids": ids[:, :2]}, {"input_ids": ids, "pixel_values": pv}):
            torch.testing.assert_close(auto.model(**kwargs).logits, plain.model(**kwargs).logits, atol=1e-5, rtol=1e-5)
    new_ids = {owl: owl.model.generate(input_ids=ids, pixel_values=pv, max_new_tokens=6, do_sample=False) for owl in (auto, plain)}
    assert torch.equal(new_ids[auto], new_ids[plain])
    auto.model.save_pretrained(tmp_path / "saved")
    again, ref = load_model(tmp_path / "saved").state_dict(), plain.model.state_dict()
    assert all(torch.equal(again[k], ref[k]) for k in ref)
    assert cpu_decoding.arrange_for_decoding(auto.model) == 0  # nothing twice
    with pytest.raises(InputError, match="decoding_layout must be one of auto, row-major"):
        Owl.load(tmp_path / "m", decoding_layout="packed")


def test_fused_products_give_way_to_gradients_and_to_changed_modules(tmp_path):
    """The joint weight serves only inference on the modules it was made from: with gradients
    on, the parts' own weights are used (and get gradients); a weight replaced, or a projection
    wrapped (LoRA), is used from then on, and the stale joint storage is let go."""
    from helpers import make_model_folder

    from owlkit import Owl

    make_model_folder(tmp_path / "m", "test-owl2", seed=4)
    auto, plain = Owl.load(tmp_path / "m"), Owl.load(tmp_path / "m", decoding_layout="row-major")
    ids = torch.tensor([[1, 5, 6, 7, 8]])
    auto.model(input_ids=ids).logits.sum().backward()
    plain.model(input_ids=ids).logits.sum().backward()
    for a, p in ((auto.model.language_model.layers[1].self_attn.k_proj.text, plain.model.language_model.layers[1].self_attn.k_proj.text),
                 (auto.model.language_model.layers[0].mlp.up_proj, plain.model.language_model.layers[0].mlp.up_proj)):
        torch.testing.assert_close(a.weight.grad, p.weight.grad, atol=1e-5, rtol=1e-4)
    for owl in (auto, plain):  # a new weight for one part, and one projection wrapped
        attn, mlp = owl.model.language_model.layers[0].self_attn, owl.model.language_model.layers[1].mlp
        attn.v_proj.text.weight = torch.nn.Parameter(torch.full_like(attn.v_proj.text.weight, 0.01))
        mlp.gate_proj = torch.nn.Sequential(mlp.gate_proj, torch.nn.Tanh())
    with torch.no_grad():
        torch.testing.assert_close(auto.model(input_ids=ids).logits, plain.model(input_ids=ids).logits, atol=1e-5, rtol=1e-5)
    assert auto.model.language_model.layers[0].self_attn.fused_qkv.stale
    assert auto.model.language_model.layers[0].self_attn.fused_qkv.weight is None
    assert auto.model.language_model.layers[1].mlp.fused_gate_up.stale
    assert not auto.model.language_model.layers[1].self_attn.fused_qkv.stale
    auto.model.float()  # nothing changes: the products stay
    assert not auto.model.language_model.layers[1].self_attn.fused_qkv.stale
    auto.model.to(torch.bfloat16)  # cast: stale at once, their float32 storage let go
    assert auto.model.language_model.layers[1].self_attn.fused_qkv.stale
    assert auto.model.language_model.layers[0].mlp.fused_gate_up.weight is None


def _cached_steps(model, ids, steps: int, mask=None) -> list[torch.Tensor]:
    """Logits of a prefill and then ``steps`` one-position steps through the cache (fixed tokens:
    a random model's argmax may be the image placeholder)."""
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, use_cache=True)
        logits = [out.logits[:, -1]]
        for step in range(steps):
            mask = None if mask is None else torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
            out = model(input_ids=torch.full((ids.shape[0], 1), 20 + step), past_key_values=out.past_key_values,
                        attention_mask=mask, use_cache=True)
            logits.append(out.logits[:, -1])
    return logits


def test_step_plan_gives_the_layers_numbers_bit_for_bit_and_gives_way_to_changes(tmp_path):
    """Owl.load's placed decoder runs one-position steps as a flat loop (StepPlan): the same
    logits bit for bit as the layers' own forward, one sample or several; padded batches, hooks,
    replaced modules and casts take the ordinary path, and a plan that no longer fits is dropped."""
    from helpers import make_model_folder

    from owlkit import Owl
    from owlkit.models.decode_step import StepPlan

    make_model_folder(tmp_path / "m", "test-owl2", seed=5)
    model = Owl.load(tmp_path / "m").model
    decoder = model.language_model
    plan = decoder.step_plan
    assert isinstance(plan, StepPlan) and len(plan.layers) == len(decoder.layers)
    assert Owl.load(tmp_path / "m", decoding_layout="row-major").model.language_model.step_plan is None
    runs = []
    plan.run = lambda *a, _run=plan.run: runs.append(1) or _run(*a)
    ids = torch.tensor([[1, 5, 6, 7, 8], [2, 9, 4, 12, 11]])
    for batch in (ids[:1], ids):
        runs.clear()
        with_plan = _cached_steps(model, batch, 5)
        assert len(runs) == 5
        decoder.step_plan = None
        without = _cached_steps(model, batch, 5)
        decoder.step_plan = plan
        assert all(torch.equal(a, b) for a, b in zip(with_plan, without))
    runs.clear()
    _cached_steps(model, ids, 2, mask=torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]]))
    assert not runs  # padding: the layers' own path
    calls = []
    handle = decoder.layers[1].mlp.register_forward_hook(lambda *a: calls.append(1))
    _cached_steps(model, ids[:1], 2)
    assert not runs and calls and decoder.step_plan is plan  # a hook: the ordinary path, the plan kept
    handle.remove()
    _cached_steps(model, ids[:1], 1)
    assert runs
    # a new parameter for a weight the plan reads: the ordinary path, and the same numbers as a
    # row-major model given the same parameter
    row_major = Owl.load(tmp_path / "m", decoding_layout="row-major").model
    for m in (model, row_major):
        down = m.language_model.layers[1].mlp.down_proj
        down.weight = torch.nn.Parameter(torch.full_like(down.weight, 0.01))
    runs.clear()
    steps = _cached_steps(model, ids[:1], 2)
    assert not runs and decoder.step_plan is None and plan.stale
    torch.testing.assert_close(steps, _cached_steps(row_major, ids[:1], 2), atol=1e-5, rtol=1e-5)
    model = Owl.load(tmp_path / "m").model
    decoder, plan = model.language_model, model.language_model.step_plan
    decoder.layers[0].self_attn.o_proj = torch.nn.Sequential(decoder.layers[0].self_attn.o_proj)
    steps = _cached_steps(model, ids[:1], 2)
    assert decoder.step_plan is None and plan.stale and not plan.layers  # dropped, references let go
    assert all(torch.isfinite(s).all() for s in steps)
    other = Owl.load(tmp_path / "m").model
    other.to(torch.bfloat16)
    _cached_steps(other, ids[:1], 1)
    assert other.language_model.step_plan is None


@pytest.mark.parametrize("quantize", ["int8", "int4"])
def test_step_plan_runs_quantized_layers_bit_for_bit(tmp_path, quantize):
    """A quantized model's steps run as a flat loop too (each product the layer's own kernel
    call, the input's cast shared by the products that read it): the same logits bit for bit as
    the layers' forward, with layers in int4, in int8 (widths int4's groups do not divide) and
    with a low-rank update; requantizing a layer sends the steps the ordinary way for good."""
    from helpers import make_model_folder
    from safetensors.torch import save_file

    from owlkit import Owl
    from owlkit import quantization as Q

    folder = tmp_path / "m"
    model = make_model_folder(folder, "test-owl2", seed=7)
    down = "language_model.layers.0.mlp.down_proj"
    g = torch.Generator().manual_seed(1)
    save_file({f"{down}.lora_A": torch.randn(2, 96, generator=g) * 0.1, f"{down}.lora_B": torch.randn(48, 2, generator=g) * 0.1},
              str(folder / Q.LOW_RANK_FILE))
    owl = Owl.load(folder, quantize=quantize, group_size=32)
    decoder = owl.model.language_model
    plan = decoder.step_plan
    assert plan is not None and len(plan.layers) == len(decoder.layers)
    bits = {m.bits for m in owl.model.modules() if isinstance(m, Q.QuantizedLinear)}
    assert bits == ({8} if quantize == "int8" else {4, 8})
    assert decoder.get_submodule("layers.0.mlp.down_proj").lora_A is not None
    runs = []
    plan.run = lambda *a, _run=plan.run: runs.append(1) or _run(*a)
    ids = torch.tensor([[1, 5, 6, 7, 8], [2, 9, 4, 12, 11]])
    single = _cached_steps(owl.model, ids[:1], 2)
    for batch in (ids[:1], ids):
        runs.clear()
        with_plan = _cached_steps(owl.model, batch, 4)
        assert len(runs) == 4
        decoder.step_plan = None
        without = _cached_steps(owl.model, batch, 4)
        decoder.step_plan = plan
        assert all(torch.equal(a, b) for a, b in zip(with_plan, without))
    layer = decoder.layers[1].self_attn.q_proj
    layer.set_weight(torch.zeros(layer.out_features, layer.in_features), prepare=True)
    runs.clear()
    changed = _cached_steps(owl.model, ids[:1], 2)
    assert not runs and decoder.step_plan is None and plan.stale
    assert not torch.equal(changed[-1], single[-1])


def test_fused_products_keep_a_tied_lm_head_tied_when_saved(tmp_path):
    """A model with tied embeddings (SmolLM2, owl-small's base) saves one table after Owl.load's
    layout changes, and loads back equal."""
    from helpers import train_tokenizer

    from owlkit import Owl, load_model

    folder = tmp_path / "m"
    image_id = train_tokenizer(folder, 320)
    from owlkit.config import OwlConfig
    from owlkit.models.owl import OwlForCausalLM

    config = OwlConfig.from_preset("test-owl2")
    config.text_config.vocab_size, config.text_config.tie_word_embeddings = 320, True
    config.tie_word_embeddings, config.image_token_id = True, image_id
    model = OwlForCausalLM(config)
    assert model.lm_head.weight is model.language_model.embed_tokens.weight
    model.save_pretrained(folder)
    owl = Owl.load(folder)
    assert owl.model.lm_head.weight is owl.model.language_model.embed_tokens.weight
    owl.model.save_pretrained(tmp_path / "saved")
    again = load_model(tmp_path / "saved")
    assert again.lm_head.weight.data_ptr() == again.language_model.embed_tokens.weight.data_ptr()
    assert (tmp_path / "saved" / "model.safetensors").stat().st_size == (folder / "model.safetensors").stat().st_size
    ref = load_model(folder).state_dict()
    assert all(torch.equal(again.state_dict()[k], ref[k]) for k in ref)


def test_packed_linear_stacks_several_products_with_and_without_bias():
    from owlkit.models import cpu_decoding

    if not cpu_decoding._packing_works():
        pytest.skip("oneDNN packing is not available in this torch build")
    torch.manual_seed(0)
    with_bias, without = torch.nn.Linear(16, 24), torch.nn.Linear(16, 8, bias=False)
    x = torch.randn(5, 16)
    with torch.no_grad():
        joint = cpu_decoding.PackedLinear(with_bias, without)(x)
        torch.testing.assert_close(joint, torch.cat([with_bias(x), without(x)], -1), atol=1e-5, rtol=1e-5)
    assert joint.shape == (5, 32)


def test_inference_encodes_images_in_chunks_with_the_same_numbers(monkeypatch):
    """Without gradients ``encode_images`` splits a batch of images; each image's rows keep their values."""
    import owlkit.models.owl as owl_module

    model = tiny_model("test-owl2").eval()
    grid = (model.config.vision_config.image_size // model.config.vision_config.patch_size) ** 2
    size = model.config.vision_config.image_size
    pixels = torch.randn(5, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        whole = model.encode_images(pixels)
        monkeypatch.setattr(owl_module, "INFERENCE_VISION_TOKENS", 2 * grid)  # chunks of 2, 2, 1
        calls = []
        model.vision.register_forward_hook(lambda _m, args, _out: calls.append(args[0].shape[0]))
        chunked = model.encode_images(pixels)
    assert calls == [2, 2, 1]
    # the same up to float32 rounding: products of other batch sizes sum in another order
    # (unseeded pixels gave differences up to 1.4e-6 in about one run of three)
    torch.testing.assert_close(chunked, whole, rtol=1e-4, atol=1e-5)
    with torch.enable_grad():  # training keeps one call: the batch is what the optimiser sees
        calls.clear()
        model.encode_images(pixels)
    assert calls == [5]


def test_decoder_rms_norm_equals_llamas_bit_for_bit():
    """The decoder's RMSNorm (one ``F.rms_norm`` in float32) gives LLaMA's numbers exactly,
    forward and backward, so trained bytes do not change; other dtypes take LLaMA's own path."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    from owlkit.models.decoder import DecoderRMSNorm

    torch.manual_seed(0)
    ours, theirs = DecoderRMSNorm(96, 1e-5), LlamaRMSNorm(96, 1e-5)
    with torch.no_grad():
        ours.weight.normal_()
        theirs.weight.copy_(ours.weight)
    for shape in ((1, 96), (4, 37, 96)):
        x = (torch.randn(*shape) * 3).requires_grad_()
        a, b = ours(x), theirs(x)
        assert torch.equal(a, b)
        assert torch.equal(torch.autograd.grad(a.square().sum(), x)[0], torch.autograd.grad(b.square().sum(), x)[0])
    half = torch.randn(3, 96).bfloat16()
    assert torch.equal(ours.bfloat16()(half), theirs.bfloat16()(half))
