"""The training engine in one process: recipes, freezing, optimiser groups, the loop, resume,
bad input, outputs. Tiny random models (``test-owl2`` / ``test-owl1``) on random tensors."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch

from helpers import with_overrides
from owlkit.cli import main as owl
from owlkit.errors import ConfigError, OwlError
from owlkit.training.recipe import load_recipe


def tiny(out, **over) -> dict:
    """A recipe for a few-step run of a tiny model on random tensors, in fp32."""
    recipe = {
        "model": {"preset": "test-owl2"},
        "stage": "owl2_stage2",
        "data": {"sources": [{"type": "random", "num_samples": 24, "text_tokens": 10}]},
        "optim": {"lr": 1e-3, "warmup_steps": 1},
        # fp32: the engine's sums are compared exactly across batch splits (auto is bf16 on some CPUs)
        "train": {"steps": 4, "micro_batch_size": 2, "grad_accum": 2, "threads": 1, "precision": "fp32"},
        "checkpoint": {"every": 2, "keep": 2},
        "log": {"progress": False},
        "output_dir": str(out),
    }
    return with_overrides(recipe, over)


def losses(result) -> list[float]:
    return [row["loss"] for row in result.history]


# ---------------------------------------------------------------------------------------------
# Recipes
# ---------------------------------------------------------------------------------------------


def test_overrides_nested_keys_yaml_scalars_and_list_indices(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(
        "model: {preset: test-owl2}\n"
        "data: {sources: [{type: random, num_samples: 8}]}\n"
        "train: {steps: 3}\n"
    )
    r = load_recipe(path, ["optim.lr=2e-5", "train.gradient_checkpointing=true", "optim.betas=[0.9, 0.95]",
                           "data.sources.0.num_samples=16", "lora.r=4", "stage=owl2_stage2", "optim.warmup_steps=null"])
    assert r.optim.lr == 2e-5 and isinstance(r.optim.lr, float)
    assert r.train.gradient_checkpointing is True
    assert r.optim.betas == [0.9, 0.95]
    assert r.data.sources[0]["num_samples"] == 16
    assert r.lora["r"] == 4 and r.lora["alpha"] == 32 and r.lora["target_modules"] == ["q_proj", "v_proj"]
    assert r.train.micro_batch_size == 1  # defaults fill the rest


@pytest.mark.parametrize(
    "where, text, near",
    [
        ("file", "optim: {lr: 1.0e-4, warmup_step: 3}", "optim.warmup_steps"),
        ("file", "trian: {steps: 3}", "train"),
        ("override", "train.micro_batch=2", "train.micro_batch_size"),
        ("override", "checkpoint.evry=5", "checkpoint.every"),
        ("override", "lora.alpah=4", "lora.alpha"),
    ],
)
def test_unknown_key_names_the_nearest_valid_one(tmp_path, where, text, near):
    path = tmp_path / "r.yaml"
    base = "model: {preset: test-owl2}\ndata: {sources: [{type: random}]}\ntrain: {steps: 3}\n"
    path.write_text(base + (text + "\n" if where == "file" else ""))
    with pytest.raises(ConfigError) as err:
        load_recipe(path, [text] if where == "override" else [])
    message = str(err.value)
    assert f"'{near}'" in message and "\n" not in message


@pytest.mark.parametrize(
    "over, fragment",
    [
        (["train.precision=fp16"], "train.precision"),
        (["optim.lr=-1"], "optim.lr"),
        (["train.epochs=2"], "exactly one of train.steps and train.epochs"),
        (["stage=owl1_stage2"], "LoRA"),
        (["stage=owl2_stage1", "lora.r=8"], "LoRA is for instruction tuning"),
        (["model.init=some/folder"], "exactly one of model.init"),
        (["data.on_bad_image=ignore"], "data.on_bad_image"),
    ],
)
def test_bad_values_are_one_line_config_errors(over, fragment):
    base = {"model": {"preset": "test-owl2"}, "data": {"sources": [{"type": "random"}]}, "train": {"steps": 2}}
    with pytest.raises(ConfigError, match=fragment):
        load_recipe(base, over)


def test_bundled_recipes_load_and_name_their_command():
    from owlkit.training.recipe import resolve_recipe_path

    expected = {
        "owl2_stage1": ("owl2_stage1", None), "owl2_stage2": ("owl2_stage2", None),
        "owl1_stage1": ("owl1_stage1", None), "owl1_stage2": ("owl1_stage2", 8),
    }
    for name, (stage, rank) in expected.items():
        r = load_recipe(name)
        assert r.stage == stage
        assert (r.lora or {}).get("r") == rank
        head = resolve_recipe_path(name).read_text().splitlines()[:8]
        assert any(line.startswith(f"#   owl train {name}") for line in head), name
    lora = load_recipe("owl1_stage2").lora
    assert lora == {"r": 8, "alpha": 32, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"],
                    "modules_to_save": ["abstractor"]}
    assert load_recipe("owl2_stage1").optim.layer_decay == 0.9


def test_recipes_by_name_and_by_path(tmp_path, monkeypatch):
    """A bare name is a packaged recipe (whatever the working folder holds); anything with a
    ``/`` or ``.yaml`` is a path; an unknown name is one line listing the packaged ones."""
    from owlkit.training.recipe import RECIPE_DIR, packaged_recipes, resolve_recipe_path

    assert {"owl2_stage1", "owl2_stage2", "owl1_stage1", "owl1_stage2", "smoke"} <= set(packaged_recipes())
    monkeypatch.chdir(tmp_path)
    (tmp_path / "smoke").mkdir()  # a folder named like a recipe does not shadow it
    assert resolve_recipe_path("smoke") == RECIPE_DIR / "smoke.yaml"
    (tmp_path / "mine.yaml").write_text((RECIPE_DIR / "smoke.yaml").read_text())
    assert resolve_recipe_path("mine.yaml") == Path("mine.yaml")
    assert load_recipe("./mine.yaml", ["train.steps=3"]).train.steps == 3
    with pytest.raises(ConfigError, match=r"^no packaged recipe named 'owl2_stage3'; did you mean 'owl2_stage[12]'\? "
                                          r"available: .*owl2_stage2.*smoke"):
        resolve_recipe_path("owl2_stage3")
    with pytest.raises(ConfigError, match=r"^recipe file recipes/smoke.yaml not found$"):
        resolve_recipe_path("recipes/smoke.yaml")


def test_cli_reports_recipe_errors_in_one_line_with_exit_code_2(capsys, tmp_path):
    assert owl(["train", "smoke", "optim.lrr=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "owl train: error: unknown recipe key 'optim.lrr'; did you mean 'optim.lr'?"
    assert owl(["train", "smoke", "train.steps=5", "--print-recipe"]) == 0
    assert "steps: 5" in capsys.readouterr().out
    assert owl(["train", "smoke", "--resume", "train.steps=6", "--print-recipe"]) == 0  # not a checkpoint path
    assert "steps: 6" in capsys.readouterr().out
    assert owl(["train", "smoke", "optim.lr_scales.vision=-1"]) == 2
    assert capsys.readouterr().err.strip().startswith("owl train: error: optim.lr_scales must map")
    assert owl(["train", "smoke", "optim.lr_scales.visoin=0.5", f"output_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("owl train: error: optim.lr_scales: no parameter is named 'visoin'") and "vision" in err
    assert owl(["train", "smoke", "freeze=[visoin]"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "owl train: error: freeze must be a list of vision, abstractor, language_model, lm_head, got ['visoin']"
    assert owl(["train", "smoke", "freeze=[vision]", "also_train=[vision]"]) == 2
    assert capsys.readouterr().err.strip().endswith("vision is both in also_train and in freeze; keep it in one of them")


# ---------------------------------------------------------------------------------------------
# Freezing and parameter groups
# ---------------------------------------------------------------------------------------------


def _model(preset):
    from owlkit.config import OwlConfig
    from owlkit.models.owl import OwlForCausalLM

    torch.manual_seed(0)
    return OwlForCausalLM(OwlConfig.from_preset(preset))


@pytest.mark.parametrize(
    "preset, stage, rule",
    [
        ("test-owl2", "owl2_stage1", lambda n: n.startswith(("vision.", "abstractor.")) or ".visual." in n),
        ("test-owl2", "owl2_stage2", lambda n: not n.startswith("vision.")),
        ("test-owl1", "owl1_stage1", lambda n: n.startswith(("vision.", "abstractor."))),
    ],
)
def test_freezing_follows_the_papers(preset, stage, rule):
    from owlkit.training.params import apply_stage, parameter_table

    model = _model(preset)
    apply_stage(model, stage)
    for name, p in model.named_parameters():
        assert p.requires_grad == rule(name), name
    if stage == "owl2_stage1":
        assert any(".visual." in n and p.requires_grad for n, p in model.named_parameters())
        assert not model.language_model.layers[0].input_layernorm.text.weight.requires_grad
    table, counts = parameter_table(model.named_parameters())
    assert "trainable" in table.splitlines()[0]
    total = sum(p.numel() for p in model.parameters())
    assert sum(t + f for t, f in counts.values()) == total


def test_also_train_adds_whole_modules_to_a_stage(tmp_path):
    """``also_train: [vision]`` (as a stage 2 that keeps tuning the encoder): the stage's policy plus the vision encoder,
    which then gets its layer-wise decayed rates; a typo is a one-line error."""
    from owlkit.errors import ConfigError
    from owlkit.training.params import apply_stage, param_groups
    from owlkit.training.recipe import load_recipe

    model = _model("test-owl2")
    apply_stage(model, "owl2_stage2", ["vision"])
    assert all(p.requires_grad for p in model.parameters())
    groups = param_groups(model.named_parameters(), lr=1.0, weight_decay=0.0, layer_decay=0.5, num_vision_layers=2)
    rates = {n: g["lr"] for g in groups for n in g["param_names"]}
    assert rates["vision.embeddings.patch_embed.weight"] == 0.125 and rates["lm_head.weight"] == 1.0
    base = {"stage": "owl2_stage2", "model": {"preset": "test-owl2"}, "data": {"sources": [{"type": "random"}]},
            "train": {"steps": 1},
            "output_dir": str(tmp_path)}
    assert load_recipe({**base, "also_train": ["vision"]})["also_train"] == ["vision"]
    with pytest.raises(ConfigError, match="also_train must be a list of vision"):
        load_recipe({**base, "also_train": ["visoin"]})
    with pytest.raises(ConfigError, match="cannot be combined with lora"):
        load_recipe({**base, "also_train": ["vision"], "lora": {"r": 4}})


def test_freeze_takes_whole_modules_out_of_a_stage(tmp_path):
    """``freeze: [vision]`` (a stage 1 that keeps a pre-trained encoder): the stage's policy without
    the vision encoder, whose parameters get no optimiser group; bad lists are one-line errors."""
    from owlkit.errors import ConfigError
    from owlkit.training.params import apply_stage, param_groups
    from owlkit.training.recipe import load_recipe

    model = _model("test-owl2")
    apply_stage(model, "owl2_stage1", freeze=["vision"])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and not any(n.startswith("vision.") for n in trainable)
    assert any(n.startswith("abstractor.") for n in trainable)
    assert all(n.startswith("abstractor.") or ".visual." in n for n in trainable)
    groups = param_groups(model.named_parameters(), lr=1.0, weight_decay=0.0, layer_decay=0.5, num_vision_layers=2)
    assert not any(n.startswith("vision.") for g in groups for n in g["param_names"])
    apply_stage(model, "owl2_stage1")
    assert all(p.requires_grad for p in model.vision.parameters())
    base = {"stage": "owl2_stage1", "model": {"preset": "test-owl2"}, "data": {"sources": [{"type": "random"}]},
            "train": {"steps": 1}, "output_dir": str(tmp_path)}
    assert load_recipe({**base, "freeze": "vision"})["freeze"] == ["vision"]
    assert load_recipe(base)["freeze"] == []
    with pytest.raises(ConfigError, match="freeze must be a list of vision"):
        load_recipe({**base, "freeze": ["visoin"]})
    with pytest.raises(ConfigError, match="both in also_train and in freeze"):
        load_recipe({**base, "freeze": ["vision"], "also_train": ["vision"]})
    with pytest.raises(ConfigError, match="freeze cannot be combined with lora"):
        load_recipe({**base, "stage": "owl2_stage2", "freeze": ["vision"], "lora": {"r": 4}})


def test_lr_scales_multiply_the_rate_under_a_name_prefix(tmp_path):
    """``optim.lr_scales``: a multiplier per parameter-name prefix (the longest wins), on top of
    the layer-wise decay, in a group of its own; bad prefixes and values are one-line errors;
    the optimiser of a real run holds the scaled rates."""
    from owlkit.errors import ConfigError
    from owlkit.training.params import apply_stage, param_groups
    from owlkit.training.recipe import load_recipe

    model = _model("test-owl2")
    apply_stage(model, "owl2_stage2", ["vision"])
    scales = {"vision": 0.1, "abstractor": 2.0, "abstractor.layers.1": 3.0}
    groups = param_groups(model.named_parameters(), lr=1.0, weight_decay=0.0, layer_decay=0.5,
                          num_vision_layers=2, lr_scales=scales)
    where = {n: g for g in groups for n in g["param_names"]}
    assert where["vision.embeddings.patch_embed.weight"]["lr"] == pytest.approx(0.125 * 0.1)
    assert where["vision.layers.1.mlp.fc1.weight"]["lr"] == pytest.approx(0.5 * 0.1)
    assert where["abstractor.layers.0.attention.query.weight"]["lr"] == 2.0
    assert where["abstractor.layers.1.attention.query.weight"]["lr"] == 3.0
    assert where["lm_head.weight"]["lr"] == 1.0 and where["lm_head.weight"]["name"] == "default/decay"
    names = [g["name"] for g in groups]
    assert len(names) == len(set(names))
    with pytest.raises(ConfigError, match="no parameter is named 'visoin'"):
        param_groups(model.named_parameters(), lr=1.0, weight_decay=0.0, lr_scales={"visoin": 0.5})
    base = {"stage": "owl2_stage2", "model": {"preset": "test-owl2"}, "data": {"sources": [{"type": "random"}]},
            "train": {"steps": 1}, "output_dir": str(tmp_path)}
    assert load_recipe(base, ["optim.lr_scales.vision=0.3"])["optim"]["lr_scales"] == {"vision": 0.3}
    for bad in ("optim.lr_scales={vision: 0}", "optim.lr_scales={vision: fast}", "optim.lr_scales=[vision]"):
        with pytest.raises(ConfigError, match="optim.lr_scales must map"):
            load_recipe(base, [bad])
    # a real one-step run: Adam's first step moves every weight by about the group's rate
    from safetensors.torch import load_file

    from owlkit.training.loop import train
    from owlkit.training.setup import build_model

    moved = {}
    for name, over in (("plain", {}), ("scaled", {"optim__lr_scales": {"abstractor": 0.25}})):
        recipe = load_recipe(tiny(tmp_path / name, train__steps=1, optim__weight_decay=0.0, **over))
        start = build_model(recipe, recipe["train"]["seed"]).state_dict()
        end = load_file(str(train(recipe).final_dir / "model.safetensors"))
        moved[name] = {k: (end[k] - start[k]).abs().max().item() for k in ("abstractor.query_embeds", "lm_head.weight")}
    assert moved["scaled"]["lm_head.weight"] == pytest.approx(moved["plain"]["lm_head.weight"], rel=1e-3)
    assert moved["scaled"]["abstractor.query_embeds"] == pytest.approx(0.25 * moved["plain"]["abstractor.query_embeds"], rel=1e-3)
    # resuming a run with other groups is a one-line error, not a failure inside torch
    recipe = load_recipe(tiny(tmp_path / "plain", train__steps=2, checkpoint__every=1,
                              optim__lr_scales={"abstractor": 0.5}))
    with pytest.raises(ConfigError, match=r"other optimiser groups \(only there: none; only in this recipe: "
                                          r"default@abstractor/.*optim.lr_scales"):
        train(recipe, resume=True)


def test_param_groups_layer_decay_and_no_weight_decay():
    """Every parameter's group and learning rate (BEiT convention, L = 2 vision layers)."""
    from owlkit.training.params import apply_stage, param_groups

    model = _model("test-owl2")
    apply_stage(model, "owl2_stage1")
    lr, d, wd = 1e-3, 0.5, 0.05
    groups = param_groups(model.named_parameters(), lr=lr, weight_decay=wd, layer_decay=d, num_vision_layers=2)
    where = {name: g for g in groups for name in g["param_names"]}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(where) == trainable

    params = dict(model.named_parameters())

    def expect(name):
        if name.startswith("vision.embeddings."):
            scale, label = d**3, "vision.embeddings"  # L + 1
        elif name.startswith("vision.layers.0."):
            scale, label = d**2, "vision.layers.0"  # L - 0
        elif name.startswith("vision.layers.1."):
            scale, label = d**1, "vision.layers.1"  # L - 1
        elif name.startswith("vision.post_layernorm."):
            scale, label = 1.0, "vision.post_layernorm"
        else:
            scale, label = 1.0, "default"
        last = name.rsplit(".", 1)[-1]
        no_decay = params[name].ndim < 2 or last in ("cls_token", "position_embedding", "query_embeds", "vit_eos")
        return f"{label}/{'no_decay' if no_decay else 'decay'}", lr * scale, 0.0 if no_decay else wd

    for name in sorted(trainable):
        g = where[name]
        label, group_lr, group_wd = expect(name)
        assert g["name"] == label, name
        assert g["lr"] == pytest.approx(group_lr, rel=1e-12), name
        assert g["weight_decay"] == group_wd, name
    # spot checks that do not rely on the rule above
    assert where["vision.embeddings.patch_embed.weight"]["weight_decay"] == wd
    assert where["vision.embeddings.cls_token"]["weight_decay"] == 0.0
    assert where["abstractor.query_embeds"]["weight_decay"] == 0.0
    assert where["abstractor.vit_eos"]["weight_decay"] == 0.0
    assert where["abstractor.layers.0.attention.query.weight"]["name"] == "default/decay"
    assert where["language_model.layers.0.self_attn.k_proj.visual.weight"]["name"] == "default/decay"
    assert where["language_model.layers.0.input_layernorm.visual.weight"]["name"] == "default/no_decay"
    # stage 2: embed_tokens trains but is never decayed; lm_head is
    model = _model("test-owl2")
    apply_stage(model, "owl2_stage2")
    where = {n: g for g in param_groups(model.named_parameters(), lr=lr, weight_decay=wd) for n in g["param_names"]}
    assert where["language_model.embed_tokens.weight"]["weight_decay"] == 0.0
    assert where["lm_head.weight"]["weight_decay"] == wd
    assert not any(n.startswith("vision.") for n in where)


def test_schedule_warmup_cosine_to_min_ratio_per_group():
    from owlkit.training.optim import build_optimizer, build_scheduler, lr_factor

    a, b = torch.nn.Parameter(torch.zeros(2, 2)), torch.nn.Parameter(torch.zeros(2))
    groups = [{"params": [a], "lr": 1e-3, "lr_scale": 1.0}, {"params": [b], "lr": 0.25e-3, "lr_scale": 0.25}]
    optim = {"lr": 1e-3, "betas": [0.9, 0.98], "eps": 1e-6, "weight_decay": 0.0, "schedule": "cosine",
             "min_lr_ratio": 0.1, "warmup_steps": 4}
    opt = build_optimizer(groups, optim)
    assert opt.defaults["betas"] == (0.9, 0.98) and opt.defaults["eps"] == 1e-6
    sched = build_scheduler(opt, optim, total_steps=20)
    seen = []
    for step in range(20):
        seen.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    assert seen[0][0] == pytest.approx(1e-3 / 4) and seen[3][0] == pytest.approx(1e-3)
    assert seen[4][0] == pytest.approx(1e-3)  # cosine starts at the peak
    p = (12 - 4) / 16
    assert seen[12][0] == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p))))
    assert all(s[1] == pytest.approx(0.25 * s[0]) for s in seen)
    assert min(s[0] for s in seen) > 1e-4 - 1e-12  # never below min_lr_ratio
    assert lr_factor(0, 10, 0, "linear", 0.0) == 1.0 and lr_factor(5, 10, 0, "constant") == 1.0


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


def test_run_outputs_metrics_table_and_a_loadable_model(tmp_path, capsys):
    from owlkit import load_model
    from owlkit.training import train
    from owlkit.training.metrics import read_metrics

    out = tmp_path / "run"
    result = train(tiny(out, stage="owl2_stage1", optim__layer_decay=0.9, log__tensorboard=True))
    printed = capsys.readouterr().out
    assert "module" in printed and "language_model (visual)" in printed and "trainable" in printed
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for r in rows:
        assert {"step", "loss", "lr", "grad_norm", "samples_per_s", "tokens"} <= set(r)
        assert math.isfinite(r["loss"]) and r["samples"] == 4 and r["tokens"] > 0
    assert rows[0]["lr"] == pytest.approx(1e-3)  # one warmup step
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert [p.name for p in sorted((out / "checkpoints").iterdir())] == ["step-00000002", "step-00000004"]
    ckpt = out / "checkpoints" / "step-00000004"
    assert {"model", "optimizer.pt", "state.pt", "rng-rank0.pt", "trainer_state.json"} <= {p.name for p in ckpt.iterdir()}
    state = torch.load(ckpt / "state.pt", weights_only=True)
    assert state["step"] == 4 and state["samples_seen"] == 16
    optimizer = torch.load(ckpt / "optimizer.pt", weights_only=True)
    assert any(k.endswith("vision.embeddings.cls_token") for k in optimizer["state"])
    # the final model loads, is trained where it should be and equals the last checkpoint
    final = load_model(result.final_dir)
    last = load_model(ckpt / "model")
    for (name, a), b in zip(final.state_dict().items(), last.state_dict().values()):
        assert torch.equal(a, b), name
    # export to the official layout
    assert owl(["convert", str(result.final_dir), str(tmp_path / "official"), "--format", "official"]) == 0
    assert json.loads((tmp_path / "official" / "config.json").read_text())["model_type"] == "mplug_owl2"
    # plot
    assert owl(["plot", str(out)]) == 0
    assert (out / "loss.png").stat().st_size > 1000 and (out / "lr.png").exists()


def test_a_frozen_module_leaves_a_run_unchanged(tmp_path):
    """``freeze: [vision]`` in a stage 1 run: the encoder comes out bit-identical to the one the
    run started from (a model saved first), the abstractor moved, the optimiser holds no state
    for the encoder."""
    from owlkit import load_model
    from owlkit.training import train

    start = train(tiny(tmp_path / "start", train__steps=1)).final_dir
    result = train(tiny(tmp_path / "run", stage="owl2_stage1", freeze=["vision"], train__steps=2,
                        model={"init": str(start)}))
    before, after = load_model(start), load_model(result.final_dir)
    assert all(torch.equal(a, b) for a, b in zip(before.vision.state_dict().values(), after.vision.state_dict().values()))
    assert not all(torch.equal(a, b) for a, b in zip(before.abstractor.state_dict().values(),
                                                      after.abstractor.state_dict().values()))
    optimizer = torch.load(tmp_path / "run" / "checkpoints" / "step-00000002" / "optimizer.pt", weights_only=True)
    assert optimizer["state"] and not any("vision." in k for k in optimizer["state"])


def test_grad_accumulation_and_checkpointing_give_the_global_batch_loss(tmp_path):
    from owlkit.training import train

    base = losses(train(tiny(tmp_path / "a", train__steps=3, train__micro_batch_size=4, train__grad_accum=1)))
    accum = losses(train(tiny(tmp_path / "b", train__steps=3, train__micro_batch_size=1, train__grad_accum=4,
                              train__gradient_checkpointing=True)))
    assert accum == pytest.approx(base, abs=1e-5)


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_is_bf16_on_a_cpu_with_native_bf16_only(monkeypatch, native):
    from owlkit.training.setup import autocast_dtype

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    cpu = torch.device("cpu")
    assert autocast_dtype("auto", cpu) == (torch.bfloat16 if native else None)
    assert autocast_dtype("fp32", cpu) is None and autocast_dtype("bf16", cpu) is torch.bfloat16


def test_bf16_autocast_on_cpu_is_close_to_fp32_deterministic_and_keeps_fp32_weights(tmp_path):
    from owlkit.training import train

    fp32 = train(tiny(tmp_path / "fp32", train__precision="fp32"))
    bf16 = train(tiny(tmp_path / "bf16", train__precision="bf16"))
    assert losses(bf16) == pytest.approx(losses(fp32), rel=0.03) and losses(bf16) != losses(fp32)
    assert losses(train(tiny(tmp_path / "again", train__precision="bf16"))) == losses(bf16)  # deterministic
    from safetensors.torch import load_file

    weights = load_file(str(bf16.final_dir / "model.safetensors"))
    assert {t.dtype for t in weights.values() if t.is_floating_point()} == {torch.float32}


def test_loss_matches_the_model_loss(tmp_path):
    """The loop's leaner loss (logits at supervised positions only) is the model's mean CE."""
    from owlkit.training.loss import LossModule
    from owlkit.training.sources import RandomDataset, tensor_collate

    model = _model("test-owl2").train()
    data = RandomDataset(3, 256, 56, text_tokens=9, images_per_sample=[1, 0, 2], seed=3)
    batch = tensor_collate([data[i] for i in range(3)])
    n = int((batch["labels"][:, 1:] != -100).sum())
    ours = LossModule(model)(batch["input_ids"], batch["attention_mask"], batch["labels"], batch["pixel_values"])
    ref = model(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"],
                attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
    assert float(ours.detach()) / n == pytest.approx(float(ref.detach()), rel=1e-5)


def test_a_step_expands_each_micro_batch_once_and_names_its_numbers(tmp_path, monkeypatch):
    """train_step returns a StepStats whose counts are the metrics row's; the placeholders of a
    micro-batch are expanded once (the counts and the forward pass share the layout)."""
    import owlkit.models.owl
    import owlkit.training.step
    from owlkit.models.splice import expand_placeholders
    from owlkit.training import StepStats, train, train_step

    calls = []

    def counted(*args, **kwargs):
        calls.append(args[0].shape)
        return expand_placeholders(*args, **kwargs)

    monkeypatch.setattr(owlkit.training.step, "expand_placeholders", counted)
    monkeypatch.setattr(owlkit.models.owl, "expand_placeholders", counted)
    seen = []

    def recording(*args, **kwargs):
        seen.append(train_step(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr("owlkit.training.loop.train_step", recording)
    data = [{"type": "random", "num_samples": 24, "text_tokens": 10, "images_per_sample": [1, 0, 2]}]
    result = train(tiny(tmp_path / "run", train__steps=2, data__sources=data))
    assert len(calls) == 2 * 2  # steps x micro-batches
    assert all(isinstance(s, StepStats) for s in seen) and len(seen) == 2
    for stats, row in zip(seen, result.history):
        for name in ("loss", "grad_norm", "lr", "tokens", "positions", "supervised_tokens", "samples"):
            assert getattr(stats, name) == row[name], name
        assert stats.read == stats.samples == 4 and stats.data_errors == 0


class _Poisoned(torch.utils.data.Dataset):
    """Random records; from sample ``at`` on, NaN pixels or a reader error."""

    def __init__(self, kind, at, n=24):
        from owlkit.training.sources import RandomDataset

        self.base, self.kind, self.at = RandomDataset(n, 256, 56, text_tokens=10, seed=42), kind, at

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        r = self.base[i]
        if i == self.at and self.kind == "nan":
            r["pixel_values"] = torch.full_like(r["pixel_values"], float("nan"))
        if i == self.at and self.kind == "shard":
            raise OwlError("data/shards/00003.tar is truncated or corrupt (unexpected end of data)")
        return r


def _source(kind=None, at=-1, collate=None):
    from owlkit.training.sources import BatchSource, tensor_collate

    return BatchSource(_Poisoned(kind, at), collate or tensor_collate)


def test_nan_loss_stops_with_a_clear_message_keeping_the_last_good_checkpoint(tmp_path):
    from owlkit.training import train
    from owlkit.training.loop import TrainingError

    out = tmp_path / "run"
    recipe = tiny(out, train__steps=6, data__shuffle=False)
    # unshuffled, 4 samples per step: sample 13 is read at step 4
    with pytest.raises(TrainingError) as err:
        train(recipe, source=_source("nan", 13))
    message = str(err.value)
    assert "loss is nan at step 4" in message and "step-00000002" in message and "--resume" in message
    assert "\n" not in message
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-00000002"]
    assert not (out / "final").exists()


def test_data_errors_stop_and_resume_continues_exactly(tmp_path):
    """A corrupt shard stops the run naming the shard; resume then gives the uninterrupted losses."""
    from owlkit.training import train
    from owlkit.training.loop import TrainingError

    ref = losses(train(tiny(tmp_path / "ref", train__steps=6), source=_source()))
    out = tmp_path / "run"
    with pytest.raises(TrainingError, match=r"00003\.tar is truncated.*step-00000004"):
        train(tiny(out, train__steps=6, data__shuffle=False), source=_source("shard", 21))
    # same order as the reference: resume the shuffled recipe with healthy data
    out2 = tmp_path / "run2"
    with pytest.raises(TrainingError):
        train(tiny(out2, train__steps=6), source=_source("shard", _position_of(step=5)))
    resumed = train(tiny(out2, train__steps=6), source=_source(), resume=True)
    assert [r["step"] for r in resumed.history] == [5, 6]
    assert losses(resumed) == ref[4:]  # bit for bit
    from owlkit.training.metrics import read_metrics

    assert [r["step"] for r in read_metrics(out2)] == [1, 2, 3, 4, 5, 6]


def _position_of(step):
    """Dataset index read first at 1-based ``step`` by the tiny recipe (shuffled, 24 samples)."""
    from owlkit.training.sampling import StepSampler

    s = StepSampler(24, 2, 2, 0, 1, seed=42, shuffle=True, start_step=0, total_steps=6)
    return s.index((step - 1) * 4)


def test_bad_images_are_counted_or_stop_the_run(tmp_path):
    from owlkit.training import train
    from owlkit.training.sources import tensor_collate
    from owlkit.training.loop import TrainingError

    def skipping(records):  # what OwlCollator(on_bad_image="skip") returns for one bad image
        batch = tensor_collate(records[1:])
        batch["num_skipped"] = 1
        return batch

    # one sample of two dropped: over the default share (data.max_dropped 0.1), the run stops
    with pytest.raises(TrainingError, match=r"8 of the 16 sample\(s\) read so far were dropped \(50%.*missing or unreadable image.*data\.max_dropped"):
        train(tiny(tmp_path / "skip0"), source=_source(collate=skipping))
    result = train(tiny(tmp_path / "skip", data__max_dropped=0.5), source=_source(collate=skipping))
    assert result.skipped_samples == 8 and result.history[-1]["skipped_samples"] == 8  # one per micro-batch
    assert result.dropped == {"bad_image": 8, "no_reply": 0} and result.history[-1]["dropped_bad_image"] == 8
    assert all(row["samples"] == 2 for row in result.history)

    def stopping(records):  # on_bad_image="stop"
        raise OwlError("data/a.jsonl:7: bad image (data/img/7.jpg: no such file)")

    with pytest.raises(TrainingError, match=r"7\.jpg: no such file"):
        train(tiny(tmp_path / "stop"), source=_source(collate=stopping))


def test_a_run_with_nothing_to_learn_stops_with_the_reason(tmp_path, capsys):
    """Replies cut away by data.max_length, or every image missing (a wrong image_root): the run
    stops with a one-line reason instead of training on nothing and reporting success."""
    from owlkit.cli import main as owl
    from owlkit.training import train
    from owlkit.training.loop import TrainingError

    world, folder = _world_and_model(tmp_path, n=12, n_instruct=12)
    source = {"type": "llava", "path": str(world / "instruct.json")}
    base = dict(model={"init": str(folder)}, train__steps=3, train__micro_batch_size=4, train__grad_accum=1,
                data__sources=[source])
    with pytest.raises(TrainingError, match=r"step 1 has nothing to learn from: .*4 with no reply left within data\.max_length"):
        train(tiny(tmp_path / "short", data__max_length=16, **base))
    assert not (tmp_path / "short" / "final").exists()
    # a wrong image_root: every image row dropped -> stop
    wrong = {**source, "image_root": str(tmp_path / "nowhere")}
    recipe = tiny(tmp_path / "root", **{**base, "data__sources": [wrong]}, data__max_length=256)
    with pytest.raises(TrainingError, match=r"nothing to learn from: .*4 with a missing or unreadable image"):
        train(recipe)
    # the command line: one line, exit 2
    import yaml

    (tmp_path / "r.yaml").write_text(yaml.safe_dump({**recipe, "output_dir": str(tmp_path / "cli")}))
    capsys.readouterr()
    assert owl(["train", str(tmp_path / "r.yaml"), "log.progress=false"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "missing or unreadable image" in err and "Traceback" not in err


def test_a_warmup_longer_than_the_run_is_warned_about(tmp_path, capsys):
    from owlkit.training import train

    train(tiny(tmp_path / "w", optim__warmup_steps=10))
    assert "the warmup (10 steps) is longer than the run (4 steps)" in capsys.readouterr().out
    train(tiny(tmp_path / "ok", optim__warmup_steps=4))
    assert "is longer than the run" not in capsys.readouterr().out


def test_data_source_keys_are_checked_by_print_recipe(capsys):
    from owlkit.cli import main as owl

    assert owl(["train", "smoke", "data.sources.0.num_sample=3", "--print-recipe"]) == 2
    assert "unknown key 'num_sample' in a 'random' data source; did you mean 'num_samples'?" in capsys.readouterr().err
    header = ["train", "owl2_stage2", "model.init=runs/x", "data.sources.0.path=a.json", "data.sources.0.wieght=2"]
    assert owl([*header, "--print-recipe"]) == 2
    assert "unknown key 'wieght' in a 'llava' data source; did you mean 'weight'?" in capsys.readouterr().err
    assert owl([*header[:-1], "data.sources.1.weight=-1", "--print-recipe"]) == 2
    assert "'weight' must be a number >= 0" in capsys.readouterr().err


def test_a_weight_0_source_is_not_read(tmp_path, capsys):
    """The owl2_stage2 header command without text-only data: data.sources.1.weight=0 drops it."""
    from owlkit.data.datasets import build_dataset
    from owlkit.training.recipe import load_recipe

    world, _ = _world_and_model(tmp_path, n=4, n_instruct=4)
    recipe = load_recipe("owl2_stage2", ["model.init=runs/x", f"data.sources.0.path={world / 'instruct.json'}",
                                         f"data.sources.0.image_root={world}", "data.sources.1.weight=0"])
    assert recipe["data"]["sources"][1]["path"] == "data/sharegpt.json"  # does not exist here
    dataset = build_dataset(recipe["data"]["sources"], seed=0)
    assert len(dataset) == 4 and "weight 0: not read" in dataset.summary()


def test_starting_over_an_existing_run_needs_resume(tmp_path):
    from owlkit.training import train

    train(tiny(tmp_path / "r", train__steps=2))
    with pytest.raises(ConfigError, match="--resume"):
        train(tiny(tmp_path / "r", train__steps=2))


def test_random_source_keys_are_checked(tmp_path):
    from owlkit.training import train

    with pytest.raises(ConfigError, match="'text_tokens'"):
        train(tiny(tmp_path / "r", data__sources=[{"type": "random", "text_token": 4}]))


def test_epochs_and_global_batch_size_set_steps_and_accumulation(tmp_path):
    from owlkit.training import train

    result = train(tiny(tmp_path / "r", train__steps=None, train__epochs=1, train__grad_accum=None,
                        train__global_batch_size=8, checkpoint__every=0))
    assert result.steps == 3 and [r["samples"] for r in result.history] == [8, 8, 8]
    assert json.loads((tmp_path / "r" / "checkpoints" / "step-00000003" / "trainer_state.json").read_text())["step"] == 3


def _world_and_model(tmp_path, n: int, n_instruct: int):
    """A small synthetic world (LLaVA JSON + captions) and a random test-owl2 model folder with a
    tokenizer that covers it."""
    from helpers_tokenizer import train_tiny_tokenizer

    from owlkit.config import OwlConfig
    from owlkit.zoo.world import make_world
    from owlkit.models.owl import OwlForCausalLM

    world = tmp_path / "world"
    make_world(world, seed=0, n=n, image_size=56, fmt="jsonl", n_instruct=n_instruct)
    folder = train_tiny_tokenizer(tmp_path / "model")
    config = OwlConfig.from_preset("test-owl2")
    config.text_config.vocab_size = 420
    torch.manual_seed(0)
    OwlForCausalLM(config).save_pretrained(folder)
    return world, folder


def test_real_data_through_owlkit_data_with_a_missing_image(tmp_path):
    """The recipe's data section goes through owlkit.data (LLaVA JSON, tokenizer and image
    processor from the model folder); a missing image is skipped and counted, or stops the run."""
    from owlkit.training import train
    from owlkit.training.loop import TrainingError

    world, folder = _world_and_model(tmp_path, n=12, n_instruct=12)
    records = json.loads((world / "instruct.json").read_text())
    gone = "images/000002.png"
    (world / gone).unlink()
    expected = sum(gone in ([r["image"]] if isinstance(r.get("image"), str) else r.get("image") or []) for r in records)
    recipe = tiny(tmp_path / "run", model={"init": str(folder)}, train__steps=3, train__micro_batch_size=4,
                  train__grad_accum=1, data__sources=[{"type": "llava", "path": str(world / "instruct.json")}],
                  data__max_length=128)
    result = train({**recipe, "data": {**recipe["data"], "max_dropped": 0.5}})
    assert result.skipped_samples == expected >= 1
    assert all(math.isfinite(r["loss"]) for r in result.history)
    assert (result.final_dir / "tokenizer.model").exists()  # tokenizer travels with the model
    with pytest.raises(TrainingError, match=r"000002\.png"):
        train(tiny(tmp_path / "stop", **{k: v for k, v in recipe.items() if k not in ("output_dir",)},
                   data__on_bad_image="stop"))


# ---------------------------------------------------------------------------------------------
# Length grouping (data.group_by_length)
# ---------------------------------------------------------------------------------------------


def test_group_by_length_makes_batches_of_similar_length_and_keeps_epochs_whole():
    import numpy as np

    from owlkit.training.sampling import StepSampler

    lengths = np.random.default_rng(0).integers(1, 200, 100)

    def sampler(micro=4, accum=2, seed=3, **kw):
        return StepSampler(100, micro, accum, 0, 1, seed=seed, shuffle=True, start_step=0, total_steps=30, **kw)

    grouped, plain = sampler(group_window=4, lengths=lambda e: lengths + e), sampler()
    for epoch in (0, 1, 2):
        order = [grouped.index(epoch * 100 + p) for p in range(100)]
        assert sorted(order) == list(range(100))  # every sample once per epoch
    order = [grouped.index(p) for p in range(100)]
    spread = np.mean([np.ptp(lengths[order[i:i + 8]]) for i in range(0, 96, 8)])
    base = [plain.index(p) for p in range(100)]
    assert spread < 0.4 * np.mean([np.ptp(lengths[base[i:i + 8]]) for i in range(0, 96, 8)])
    # the epoch's last, partial batch stays last: windows of 32 samples -> 96..99 are the tail
    assert set(order[96:]) == set(base[96:])
    # deterministic, seeded, and the same data per step however the batch is split
    assert order == [sampler(group_window=4, lengths=lambda e: lengths + e).index(p) for p in range(100)]
    assert order != [sampler(seed=4, group_window=4, lengths=lambda e: lengths + e).index(p) for p in range(100)]
    assert order == [sampler(8, 1, group_window=4, lengths=lambda e: lengths + e).index(p) for p in range(100)]


def test_sort_micro_batches_reorders_a_step_but_keeps_its_samples():
    import numpy as np

    from owlkit.training.sampling import StepSampler

    lengths = np.random.default_rng(1).integers(1, 200, 60)
    plain = StepSampler(60, 3, 4, 0, 1, seed=5, shuffle=True, start_step=0, total_steps=10)
    sorted_ = StepSampler(60, 3, 4, 0, 1, seed=5, shuffle=True, start_step=0, total_steps=10,
                          sort_micro_batches=True, lengths=lambda e: lengths)
    a, b = list(plain), list(sorted_)
    assert len(a) == len(b) == 40
    for step in range(10):
        mine = b[step * 4:(step + 1) * 4]
        assert sorted(sum(mine, [])) == sorted(sum(a[step * 4:(step + 1) * 4], []))  # same samples
        got = [int(lengths[sorted_.index(p)]) for p in sum(mine, [])]
        assert got == sorted(got, reverse=True)  # longest first, so each micro-batch is uniform


def test_group_by_length_recipe_key(tmp_path):
    from owlkit.training import train

    with pytest.raises(ConfigError, match=r"data\.group_by_length.*>= 0"):
        load_recipe("smoke", ["data.group_by_length=-1"])
    with pytest.raises(ConfigError, match=r"data\.group_by_length.*'random' source"):
        train(tiny(tmp_path / "random", data__group_by_length=4))
    with pytest.raises(ConfigError, match=r"data\.sort_micro_batches.*true or false"):
        load_recipe("smoke", ["data.sort_micro_batches=3"])


def test_training_with_length_grouping_on_real_files(tmp_path):
    from owlkit.training import train

    world, folder = _world_and_model(tmp_path, n=8, n_instruct=16)
    recipe = tiny(tmp_path / "run", model={"init": str(folder)}, train__steps=3, train__micro_batch_size=4,
                  train__grad_accum=1, data__group_by_length=2, data__max_length=128,
                  data__sources=[{"type": "llava", "path": str(world / "instruct.json")},
                                 {"type": "captions", "path": str(world / "captions.jsonl"), "weight": 0.5}])
    result = train(recipe)
    assert len(result.history) == 3 and all(math.isfinite(r["loss"]) for r in result.history)
    # sorting each step's samples into micro-batches by length: same samples, same global-batch
    # loss and gradients, less padding
    def variant(name, **over):
        again = copy.deepcopy(recipe)
        again["output_dir"] = str(tmp_path / name)
        return train(with_overrides(again, {"train__micro_batch_size": 2, "train__grad_accum": 4,
                                            "data__group_by_length": 0, **over}))

    base, fast = variant("plain"), variant("sorted", data__sort_micro_batches=True)
    assert losses(fast) == pytest.approx(losses(base), rel=1e-5)
    assert [r["tokens"] for r in fast.history] == [r["tokens"] for r in base.history]
    assert sum(r["positions"] for r in fast.history) < sum(r["positions"] for r in base.history)
