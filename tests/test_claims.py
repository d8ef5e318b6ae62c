"""The paper-claims variants: a linear projector, a decoder without the MAM, the variant runs and
their summary. A tiny GGUF written by the tests stands in for SmolLM2 (the measured comparison
is `owl small claims`, docs/paper-claims.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers_gguf import tiny_llama, write_distilled_text, write_gguf
from owlkit.checkpoints import load_model
from owlkit.checkpoints.components import build_from_components, save_built
from owlkit.checkpoints.official_config import config_to_official
from owlkit.errors import CheckpointError, ConfigError
from owlkit.training.recipe import load_recipe
from owlkit.zoo import claims, claims_run
from owlkit.zoo import small_model

BUNDLED = Path(__file__).resolve().parents[1] / "owlkit" / "assets" / "owl-tiny"


@pytest.fixture(scope="module")
def gguf(tmp_path_factory):
    return write_gguf(tiny_llama(tie=True), tmp_path_factory.mktemp("llm") / "tiny.gguf")


def test_a_linear_projector_gives_one_decoder_position_per_patch(gguf, tmp_path):
    model = build_from_components(gguf, BUNDLED, projector="linear", modality_adaptive=False)
    config = model.config
    grid = config.vision_config.image_size // config.vision_config.patch_size
    assert config.tokens_per_image == grid * grid
    assert sorted(n for n, _ in model.abstractor.named_parameters()) == ["visual_fc.bias", "visual_fc.weight"]
    assert not any(".visual." in n for n in model.state_dict())  # no modality-adaptive branches
    pixels = torch.rand(2, 3, config.vision_config.image_size, config.vision_config.image_size)
    with torch.no_grad():
        features = model.encode_images(pixels)
        patches = model.vision(pixels)[:, 1:]  # the CLS row is not projected
    assert features.shape == (2, grid * grid, config.text_config.hidden_size)
    torch.testing.assert_close(features, model.abstractor.visual_fc(patches))
    # An image placeholder expands to every patch; the folder round-trips.
    folder = save_built(model, gguf, BUNDLED, tmp_path / "linear")
    again = load_model(folder, dtype="float32")
    assert again.config.abstractor_config.projector == "linear" and not again.config.modality_adaptive
    ids = torch.tensor([[1, 40, config.placeholder_id, 50, 60]])
    with torch.no_grad():
        out = again(input_ids=ids, pixel_values=pixels[:1])
        reference = model(input_ids=ids, pixel_values=pixels[:1])
    assert out.logits.shape[1] == 4 + grid * grid
    torch.testing.assert_close(out.logits, reference.logits)
    # owl data check counts an image as the folder's config says, as loading reads it
    from owlkit.commands.data import _model_settings

    assert _model_settings(folder) == (2, grid * grid)
    (tmp_path / "tokenizer_only").mkdir()
    assert _model_settings(tmp_path / "tokenizer_only") == (2, 65)


def test_variants_have_no_official_format(gguf):
    with pytest.raises(CheckpointError, match="linear projector has no place in the official mPLUG-Owl2 format"):
        config_to_official(build_from_components(gguf, BUNDLED, projector="linear").config)
    with pytest.raises(CheckpointError, match="always has the modality-adaptive module"):
        config_to_official(build_from_components(gguf, BUNDLED, modality_adaptive=False).config)
    with pytest.raises(ConfigError, match="projector 'mlp' is not one of abstractor, linear"):
        build_from_components(gguf, BUNDLED, projector="mlp")


def test_the_mam_branches_start_from_the_text_ones_only_when_asked(gguf):
    with_mam = build_from_components(gguf, BUNDLED, num_queries=4, abstractor_layers=1)
    without = build_from_components(gguf, BUNDLED, num_queries=4, abstractor_layers=1, modality_adaptive=False)
    shared = without.language_model.layers[0].self_attn.k_proj.weight
    assert torch.equal(shared, with_mam.language_model.layers[0].self_attn.k_proj.text.weight)
    assert torch.equal(shared, with_mam.language_model.layers[0].self_attn.k_proj.visual.weight)


def _result(variant, seed, accuracy, general, ppl, tokens=17):
    return {"variant": variant, "seed": seed, "tasks": {t: accuracy for t in claims.TASKS}, "tokens_per_image": tokens,
            "language": {"general_correct": general, "general_total": 75, "perplexity": ppl}}


def test_the_summary_gives_mean_and_range_over_seeds():
    results = [_result("baseline", 0, 0.5, 40, 18.0), _result("baseline", 1, 0.7, 44, 19.0),
               _result("linear-projector", 0, 0.9, 30, 18.5, tokens=64), _result("linear-projector", 1, 0.8, 31, 18.7, tokens=64)]
    summary = claims.summarise(results)
    base = summary["baseline"]
    assert base["seeds"] == [0, 1]
    assert base["tasks"]["colour"]["mean"] == pytest.approx(0.6) and base["tasks"]["colour"]["min"] == 0.5
    assert base["tasks"]["visual mean"]["max"] == pytest.approx(0.7)
    assert base["language"]["general_correct"]["mean"] == 42
    text = claims.markdown(summary, ["projector", "mam"])
    assert "| linear-projector | 0, 1 | 85 (80–90) |" in text and text.rstrip().endswith("(not measured)") is False
    assert "| baseline | 0, 1 | 60 (50–70) |" in text and "42.0 (40.0–44.0) | 18.50 (18.00–19.00) | 17 |" in text
    assert "no-mam" not in text  # a variant not measured has no row
    with_reference = claims.markdown(summary, ["mam"], {t: 0.25 for t in claims.TASKS})
    row = next(line for line in with_reference.splitlines() if "most common answer" in line)
    assert row.count("|") == with_reference.splitlines()[4].count("|") and "| 25 | 25 |" in row


def test_claims_need_the_baseline_first_and_known_names():
    assert claims.variants_of(["joint", "mam"]) == ["baseline", "multimodal-only", "no-mam"]
    with pytest.raises(ConfigError, match="unknown claim 'speed'; choose from: mam, frozen-llm"):
        claims.variants_of(["speed"])
    with pytest.raises(ConfigError, match="unknown variant 'big'"):
        claims_run.run_variant("big", 0, "unused")


def test_every_variant_builds_and_is_measured(gguf, tmp_path, monkeypatch):
    """Each variant through the real recipes and training loop, one step a stage, on a tiny world."""
    monkeypatch.setattr(small_model, "base_gguf", lambda: gguf)
    monkeypatch.setattr(claims_run, "SHORT_ANSWER_PROMPT", "Short.")  # the tiny LLM's context is 256 positions
    out = tmp_path / "claims"
    write_distilled_text(out)
    options = dict(steps_scale=0.001, n_per_task=1, n_images=16, n_instruct=64)
    result = claims_run.run_claims(list(claims.CLAIMS), [0], out, **options)
    runs = {r["variant"]: r for r in result["results"]}
    assert list(runs) == list(claims.VARIANTS)
    for name, run in runs.items():
        assert set(claims.TASKS) <= set(run["tasks"]), name
        assert run["language"]["general_total"] == 75 and run["language"]["perplexity"] > 1
        assert not (out / f"{name}-seed0" / "merged").exists()  # weights removed, measurements kept
    assert runs["linear-projector"]["tokens_per_image"] == 64 and runs["baseline"]["tokens_per_image"] == 17
    assert "language_stage1" in runs["llm-trained-stage1"] and "language_stage1" in runs["baseline"]
    # multimodal-only trained from the baseline's stage 1 on world images only
    recipe = load_recipe(out / "multimodal-only-seed0" / "stage2" / "recipe.yaml")
    assert recipe["model"]["init"].endswith("baseline-seed0/stage1/final")
    assert [Path(s["path"]).name for s in recipe["data"]["sources"]] == ["instruct_short.json", "instruct_short.json"]
    assert all("text" not in s["tasks"] for s in recipe["data"]["sources"])
    assert not (out / "multimodal-only-seed0" / "stage1").exists()  # none of its own
    # what trained: the encoder in vision-trained (both stages), the LLM in llm-trained-stage1's stage 1
    trained = {name: _trained_in_stage1(out / f"{name}-seed0") for name in ("baseline", "vision-trained", "llm-trained-stage1")}
    assert trained["baseline"] == {"abstractor", "language_model (visual)"}
    assert trained["vision-trained"] == {"vision", "abstractor", "language_model (visual)"}
    assert trained["llm-trained-stage1"] == {"abstractor", "language_model", "language_model (visual)"}
    assert load_recipe(out / "vision-trained-seed0" / "stage2" / "recipe.yaml")["lora"]["modules_to_save"] == ["abstractor", "vision"]
    metrics = json.loads((out / "baseline-seed0" / "stage2" / "metrics.jsonl").read_text().splitlines()[0])
    assert metrics["step"] == 1
    assert (out / "claims.md").read_text().count("### ") == len(claims.CLAIMS)
    # A second call reads the results instead of training again.
    again = claims_run.run_variant("baseline", 0, out, **options)
    assert again == runs["baseline"]


def _trained_in_stage1(folder: Path) -> set[str]:
    from owlkit.training.params import apply_stage, module_of

    recipe = load_recipe(folder / "stage1" / "recipe.yaml")
    model = build_from_components(small_model.base_gguf(), BUNDLED, num_queries=4, abstractor_layers=1)
    apply_stage(model, recipe["stage"], recipe.get("also_train") or (), recipe.get("freeze") or ())
    return {module_of(n) for n, p in model.named_parameters() if p.requires_grad}


def test_the_command_refuses_mixed_options():
    for args in (["claims", "--variant", "no-mam"], ["build", "--variant", "no-mam", "--stage1", "optim.lr=1"]):
        done = subprocess.run([sys.executable, "-m", "owlkit.cli", "small", *args], capture_output=True, text=True)
        assert done.returncode != 0 and "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_the_command_passes_variant_builds_their_defaults(monkeypatch, capsys):
    from owlkit.cli import main

    seen = []
    monkeypatch.setattr(claims_run, "run_variant", lambda name, seed, out, **kw: seen.append((name, seed, out, kw)) or {"ok": 1})
    monkeypatch.setattr(claims_run, "run_claims", lambda names, seeds, out, **kw: seen.append((names, seeds, out, kw)) or {"markdown": "T"})
    assert main(["small", "build", "--variant", "no-mam", "--seed", "3"]) == 0
    assert main(["small", "claims", "--claim", "mam", "--claim", "joint", "--seeds", "0", "1", "--threads", "1"]) == 0
    (name, seed, out, kw), (names, seeds, out2, kw2) = seen
    assert (name, seed, out) == ("no-mam", 3, "runs/claims") and kw["steps_scale"] == 0.1 and kw["n_per_task"] == 50
    assert (names, seeds, out2) == (["mam", "joint"], [0, 1], "runs/claims") and kw2["threads"] == 1
    assert '"ok": 1' in capsys.readouterr().out


def test_the_projector_benchmark_reports_positions_and_prefill(gguf, monkeypatch):
    """benchmarks/projector.py on a tiny GGUF standing in for SmolLM2 (one and two images)."""
    from helpers import load_benchmark

    monkeypatch.setattr(small_model, "base_gguf", lambda: gguf)
    result = load_benchmark("projector").main(["--images", "1", "2", "--repeat", "1"])
    assert result["tokens_per_image"] == {"abstractor": 17, "linear": 64}
    one, two = result["rows"]
    assert two["prompt_positions"]["linear"] - one["prompt_positions"]["linear"] == 64
    assert two["prompt_positions"]["abstractor"] - one["prompt_positions"]["abstractor"] == 17
    assert all(ms > 0 for row in result["rows"] for ms in row["prefill_ms"].values())
