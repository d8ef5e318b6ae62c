"""LoRA instruction tuning (mPLUG-Owl stage 2) through peft, and ``owl merge-lora``."""

from __future__ import annotations

import json

import pytest
import torch

from owlkit.cli import main as owl


def test_owl1_stage2_lora_trains_adapters_and_abstractor_then_merges(tmp_path, capsys):
    from owlkit import load_model
    from owlkit.training import train

    out = tmp_path / "run"
    recipe = {
        "model": {"preset": "test-owl1"},
        "stage": "owl1_stage2",
        "lora": {"r": 4, "alpha": 8},  # dropout, targets and modules_to_save from the defaults
        "data": {"sources": [{"type": "random", "num_samples": 16, "text_tokens": 10, "images_per_sample": [1, 0]}]},
        "optim": {"lr": 1e-2, "warmup_steps": 0},
        "train": {"steps": 3, "micro_batch_size": 2, "grad_accum": 1, "threads": 1},
        "checkpoint": {"every": 2, "keep": 1},
        "log": {"progress": False},
        "output_dir": str(out),
    }
    result = train(recipe)
    table = capsys.readouterr().out
    rows = {line.split("  ")[0].strip(): line.split()[-2:] for line in table.splitlines() if line.startswith(("vision", "abstractor", "language_model", "lm_head", "lora"))}
    assert rows["vision"][0] == "0" and rows["language_model"][0] == "0" and rows["lm_head"][0] == "0"
    assert rows["abstractor"][0] != "0" and rows["lora adapters"][0] != "0"

    adapter = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 4 and adapter["lora_alpha"] == 8 and adapter["lora_dropout"] == 0.05
    assert adapter["modules_to_save"] == ["abstractor"]
    assert "q_proj" in adapter["target_modules"] and "v_proj" in adapter["target_modules"]
    assert (out / "base" / "model.safetensors").exists()  # preset init: the base is kept for merging
    ckpt = out / "checkpoints" / "step-00000003"
    assert (ckpt / "adapter" / "adapter_model.safetensors").exists() and not (ckpt / "model").exists()

    base = load_model(out / "base")
    final = load_model(result.final_dir)
    fb, ff = base.state_dict(), final.state_dict()
    changed = {k for k in fb if not torch.equal(fb[k], ff[k])}
    assert changed, "training changed nothing"
    for k in changed:  # only what LoRA folds into (q/v projections) and the abstractor moved
        assert k.startswith("abstractor.") or k.endswith(("self_attn.q_proj.weight", "self_attn.v_proj.weight")), k
    assert any(k.startswith("abstractor.") for k in changed)
    assert any(k.endswith("q_proj.weight") for k in changed)

    # owl merge-lora from the run folder and from the checkpoint give the same plain folder
    assert owl(["merge-lora", str(out), str(tmp_path / "merged")]) == 0
    assert owl(["merge-lora", str(ckpt / "adapter"), str(tmp_path / "merged2"), "--base", str(out / "base")]) == 0
    for folder in ("merged", "merged2"):
        m = load_model(tmp_path / folder).state_dict()
        for k in ff:
            assert torch.allclose(m[k], ff[k], atol=1e-6), (folder, k)
    # the factors travel beside the merged weights: quantized loading keeps the update in float
    from safetensors.torch import load_file

    from owlkit.quantization import LOW_RANK_FILE

    factors = load_file(str(tmp_path / "merged" / LOW_RANK_FILE))
    q = next(k.removesuffix(".weight") for k in changed if k.endswith("q_proj.weight"))
    torch.testing.assert_close(factors[f"{q}.lora_B"] @ factors[f"{q}.lora_A"], ff[f"{q}.weight"] - fb[f"{q}.weight"])
    assert set(load_model(tmp_path / "merged", quantize="int8").config.owlkit_quantization["low_rank"]) == \
        {k.removesuffix(".lora_A") for k in factors if k.endswith(".lora_A")}
    assert owl(["merge-lora", str(tmp_path / "nothing"), str(tmp_path / "x")]) == 2
    assert "no LoRA adapter" in capsys.readouterr().err


def test_lora_resume_continues_exactly(tmp_path):
    from owlkit.training import train

    def recipe(out, steps):
        return {
            "model": {"preset": "test-owl2"}, "stage": "owl2_stage2", "lora": {"r": 2, "dropout": 0.1},
            "data": {"sources": [{"type": "random", "num_samples": 16, "text_tokens": 8}]},
            "optim": {"lr": 1e-2, "warmup_steps": 1}, "train": {"steps": steps, "micro_batch_size": 2, "threads": 1},
            "checkpoint": {"every": 2, "keep": 2}, "log": {"progress": False}, "output_dir": str(out),
        }

    ref = [r["loss"] for r in train(recipe(tmp_path / "a", 4)).history]
    train(recipe(tmp_path / "b", 4), ["train.steps=4", "checkpoint.every=2"])  # same run...
    import shutil

    shutil.rmtree(tmp_path / "b" / "checkpoints" / "step-00000004")  # ...as if killed after step 2
    resumed = train(recipe(tmp_path / "b", 4), resume=True)
    assert [r["step"] for r in resumed.history] == [3, 4]
    assert [r["loss"] for r in resumed.history] == ref[2:]  # dropout RNG restored too


def test_lora_target_regex_covers_the_modality_adaptive_pairs():
    from owlkit.config import OwlConfig
    from owlkit.errors import ConfigError
    from owlkit.models.owl import OwlForCausalLM
    from owlkit.training.lora import target_regex

    model = OwlForCausalLM(OwlConfig.from_preset("test-owl2"))
    import re

    pattern = target_regex(model, ["q_proj", "v_proj"])
    hits = sorted(n for n, _ in model.named_modules() if re.fullmatch(pattern, n))
    assert hits == sorted(
        f"language_model.layers.{i}.self_attn.{m}" for i in range(2) for m in ("q_proj", "v_proj.text", "v_proj.visual")
    )
    with pytest.raises(ConfigError, match="'v_proj'"):
        target_regex(model, ["v_prj"])


def test_visual_branches_train_in_full_next_to_text_adapters(tmp_path):
    """``lora.modules_to_save: [abstractor, visual]``: the MAM's visual norms and key/value
    projections train whole, the text projections through adapters; merging keeps both."""
    from owlkit import load_model
    from owlkit.errors import ConfigError
    from owlkit.training import train
    from owlkit.training.lora import apply_lora

    out = tmp_path / "run"
    recipe = {
        "model": {"preset": "test-owl2"}, "stage": "owl2_stage2",
        "lora": {"r": 2, "alpha": 4, "dropout": 0.0, "target_modules": ["q_proj", "k_proj", "v_proj"],
                 "modules_to_save": ["abstractor", "visual"]},
        "data": {"sources": [{"type": "random", "num_samples": 16, "text_tokens": 10, "images_per_sample": [1]}]},
        "optim": {"lr": 1e-2, "warmup_steps": 0}, "train": {"steps": 3, "micro_batch_size": 2, "threads": 1},
        "log": {"progress": False}, "output_dir": str(out),
    }
    result = train(recipe)
    adapter = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter["modules_to_save"] == ["abstractor", "visual"]
    fb, ff = load_model(out / "base").state_dict(), load_model(result.final_dir).state_dict()
    changed = {k for k in fb if not torch.equal(fb[k], ff[k])}
    visual = {k for k in fb if ".visual." in k}
    # every visual norm and key/value projection moved but the last layer's post-attention norm:
    # it feeds only the visual positions' last outputs, where no loss is computed
    last = f"language_model.layers.{max(int(k.split('.')[2]) for k in visual)}.post_attention_layernorm.visual.weight"
    assert visual - {last} <= changed and last not in changed
    for k in changed - visual:
        assert k.startswith("abstractor.") or k.endswith(("q_proj.weight", "k_proj.text.weight", "v_proj.text.weight")), k
    assert any(k.endswith("k_proj.text.weight") for k in changed)
    from owlkit.training.lora import lora_factors

    assert lora_factors(out / "adapter") and not any(".visual" in k for k in lora_factors(out / "adapter"))
    with pytest.raises(ConfigError, match="'visual'.*modality_adaptive"):
        from helpers import tiny_model

        apply_lora(tiny_model("test-owl1"), {"r": 2, "alpha": 4, "dropout": 0.0, "target_modules": ["q_proj"],
                                             "modules_to_save": ["visual"]})


def test_lora_factors_fold_the_scale_and_skip_updates_that_are_not_b_times_a(tmp_path):
    from safetensors.torch import save_file

    from owlkit.training.lora import lora_factors

    a, b = torch.randn(4, 8), torch.randn(6, 4)
    key = "base_model.model.language_model.layers.0.mlp.up_proj"
    save_file({f"{key}.lora_A.weight": a, f"{key}.lora_B.weight": b}, str(tmp_path / "adapter_model.safetensors"))
    for extra, scale in (({}, 2.0), ({"use_rslora": True}, 4.0)):  # alpha / r, or alpha / sqrt(r)
        (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 8, **extra}))
        factors = lora_factors(tmp_path)
        assert torch.equal(factors["language_model.layers.0.mlp.up_proj.lora_A"], a)
        torch.testing.assert_close(factors["language_model.layers.0.mlp.up_proj.lora_B"], b * scale)
    for extra in ({"use_dora": True}, {"rank_pattern": {"up_proj": 2}}):
        (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 8, **extra}))
        assert lora_factors(tmp_path) == {}


def _distill_setup(images_per_sample):
    """A LoRA-wrapped tiny Owl2 and an expanded batch of random rows (images per row as given)."""
    from helpers import tiny_model

    from owlkit.models.splice import expand_placeholders
    from owlkit.training.lora import apply_lora
    from owlkit.training.loss import LossModule
    from owlkit.training.sources import RandomDataset, tensor_collate

    model = tiny_model("test-owl2")
    lora = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj", "down_proj"],
            "modules_to_save": ["abstractor"]}
    peft_model = apply_lora(model, lora)
    cfg = model.config
    data = RandomDataset(len(images_per_sample), cfg.text_config.vocab_size, cfg.vision_config.image_size,
                         text_tokens=9, images_per_sample=images_per_sample, seed=5)
    batch = tensor_collate([data[i] for i in range(len(data))])
    ex = expand_placeholders(batch["input_ids"], batch["attention_mask"], batch["labels"], cfg.tokens_per_image,
                             cfg.image_token_id)
    inputs = {"input_ids": ex.input_ids, "attention_mask": ex.attention_mask, "labels": ex.labels,
              "image_mask": ex.image_mask, "pixel_values": batch["pixel_values"]}
    return peft_model, LossModule(peft_model), inputs


def test_distilled_rows_learn_the_base_models_distributions():
    """Rows of a ``distill`` source: KL(base || model) at their supervised positions, the base
    being the model with its adapters off; the other rows keep the cross-entropy. Rows with
    images select their own images for the base's pass."""
    import torch.nn.functional as F

    peft_model, loss_module, inputs = _distill_setup([1, 2, 0, 1])
    distill = torch.tensor([False, True, False, True])
    # LoRA starts at zero (B = 0): the model is its base, every distilled position costs nothing
    at_start = loss_module(**inputs, distill=torch.ones(4, dtype=torch.bool))
    assert abs(float(at_start.detach())) < 1e-4
    at_start.backward()
    grads = [p.grad for n, p in peft_model.named_parameters() if "lora_" in n and p.grad is not None]
    assert grads and max(float(g.abs().max()) for g in grads) < 1e-5

    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    full = loss_module._supervised_logits  # the whole batch, with and without the adapters
    from owlkit.models.splice import Expanded

    ex = Expanded(inputs["input_ids"], inputs["image_mask"], inputs["attention_mask"], inputs["labels"],
                  int(inputs["image_mask"].sum()) // peft_model.config.tokens_per_image)
    with torch.no_grad():
        student, selected = full(ex, inputs["pixel_values"])
        with peft_model.disable_adapter():
            base, _ = full(ex, inputs["pixel_values"])
    rows = selected.nonzero()[:, 0]
    targets = inputs["labels"][:, 1:][selected]
    # rows with images, and a text-only row beside rows with images
    for distill in (distill, torch.tensor([False, False, True, False])):
        soft = distill[rows]
        ce = F.cross_entropy(student[~soft], targets[~soft], reduction="sum")
        p, q = F.log_softmax(student[soft], -1), F.log_softmax(base[soft], -1)
        kl = (q.exp() * (q - p)).sum()
        assert float(kl) > 0.01  # the adapters moved the model away from its base
        ours = loss_module(**inputs, distill=distill)
        assert float(ours) == pytest.approx(float(ce + kl), rel=1e-4)
    # without distilled rows: the plain cross-entropy of every supervised position
    plain = loss_module(**inputs)
    assert float(plain) == pytest.approx(float(F.cross_entropy(student, targets, reduction="sum")), rel=1e-5)


def test_distill_needs_lora(tmp_path):
    """Without adapters there is no base to distil from: a one-line error, in the recipe and in
    the loss module."""
    from helpers import tiny_model

    from owlkit.errors import ConfigError
    from owlkit.training.loss import LossModule
    from owlkit.training.recipe import load_recipe

    sources = [{"type": "llava", "path": "a.json", "distill": True}]
    recipe = {"model": {"preset": "test-owl2"}, "stage": "owl2_stage2", "data": {"sources": sources},
              "train": {"steps": 1}, "output_dir": str(tmp_path)}
    with pytest.raises(ConfigError, match="'distill' learns its replies as the base model's distributions.*lora"):
        load_recipe(recipe)
    with pytest.raises(ConfigError, match="'distill' must be true or false"):
        load_recipe({**recipe, "lora": {"r": 4}, "data": {"sources": [{**sources[0], "distill": "yes"}]}})
    load_recipe({**recipe, "lora": {"r": 4}})
    _, _, inputs = _distill_setup([1, 0])
    with pytest.raises(ConfigError, match="needs a LoRA run"):
        LossModule(tiny_model("test-owl2"))(**inputs, distill=torch.tensor([False, True]))


def test_bf16_lora_run_stores_frozen_linears_in_bf16_with_the_same_numbers(tmp_path, monkeypatch):
    """With bf16 autocast a LoRA run keeps its frozen products in bf16 (no cast of the whole model
    a micro-batch); every loss and gradient norm equals a run whose weights stay fp32, and the
    merged final model is fp32, merged into the base read back from disk."""
    from owlkit import load_model
    from owlkit.training import loop, train
    from owlkit.training.setup import store_frozen_linears

    def recipe(name):
        return {
            "model": {"preset": "test-owl2"},
            "stage": "owl2_stage2",
            "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
            "data": {"sources": [{"type": "random", "num_samples": 16, "text_tokens": 10,
                                  "images_per_sample": [1, 0]}]},
            "optim": {"lr": 1e-2, "warmup_steps": 0},
            "train": {"steps": 3, "micro_batch_size": 2, "grad_accum": 2, "threads": 1, "precision": "bf16"},
            "checkpoint": {"every": 0, "keep": 1},
            "log": {"progress": False, "every": 1},
            "output_dir": str(tmp_path / name),
        }

    stored = []
    monkeypatch.setattr(loop, "store_frozen_linears", lambda model, dtype: stored.append(store_frozen_linears(model, dtype)))
    cast = train(recipe("cast"))
    monkeypatch.setattr(loop, "store_frozen_linears", lambda model, dtype: 0)
    plain = train(recipe("plain"))
    assert stored and stored[0] > 0
    assert [(r["loss"], r["grad_norm"]) for r in cast.history] == [(r["loss"], r["grad_norm"]) for r in plain.history]
    final = load_model(cast.final_dir)
    assert {p.dtype for p in final.parameters()} == {torch.float32}
    for (k, a), b in zip(final.state_dict().items(), load_model(plain.final_dir).state_dict().values()):
        assert torch.equal(a, b), k


def test_store_frozen_linears_skips_trainable_and_tied_weights():
    from torch import nn

    from owlkit.training.setup import store_frozen_linears

    embed = nn.Embedding(10, 4)
    head = nn.Linear(4, 10, bias=False)
    head.weight = embed.weight  # tied
    frozen, trained = nn.Linear(4, 4), nn.Linear(4, 4)
    for p in [*embed.parameters(), *frozen.parameters()]:
        p.requires_grad_(False)
    model = nn.ModuleList([embed, head, frozen, trained])
    assert store_frozen_linears(model, torch.bfloat16) == 1
    assert frozen.weight.dtype == frozen.bias.dtype == torch.bfloat16
    assert head.weight.dtype == embed.weight.dtype == trained.weight.dtype == torch.float32
    assert head.weight is embed.weight
    assert store_frozen_linears(model, torch.bfloat16) == 0  # already stored
