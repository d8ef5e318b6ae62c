"""`owl info`, `owl demo` and the owl-tiny build steps (the full build takes ~45 min: `make tiny`)."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from helpers import make_model_folder
from owlkit.cli import main as owl


def test_owl_info(tmp_path, capsys):
    make_model_folder(tmp_path / "m", "test-owl2", seed=1)
    assert owl(["info", str(tmp_path / "m")]) == 0
    out = capsys.readouterr().out
    assert "format: owlkit" in out and "heads 4/2 (q/kv)" in out and "modality-adaptive True" in out
    assert owl(["info", str(tmp_path / "nothing")]) == 2


def test_owl_demo_answers_the_example_scenes(tmp_path, capsys):
    from PIL import Image

    photo = tmp_path / "photo.jpg"
    Image.new("RGB", (90, 60), (10, 120, 200)).save(photo)
    assert owl(["demo", str(photo), "--max-new-tokens", "8"]) == 0
    out = capsys.readouterr().out
    from owlkit.inference import bundled_model_path

    examples = json.loads((bundled_model_path().parent / "examples" / "questions.json").read_text())
    for item in examples:
        assert f"[{item['image']}] {item['question']}" in out
    assert "[photo.jpg] Describe the image." in out and "example answers correct" in out
    from owlkit.commands.demo import TEXT_QUESTIONS

    assert all(f"[no image] {q}" in out for q in TEXT_QUESTIONS)  # asked without an image
    assert owl(["demo", "--text-question", "What is two plus two?", "--max-new-tokens", "4"]) == 0
    assert "[no image] What is two plus two?" in capsys.readouterr().out
    from owlkit.checkpoints import load_model

    n = sum(p.numel() for p in load_model(bundled_model_path()).parameters())  # before any CPU repacking
    assert f"{n / 1e6:.1f}M parameters" in out


def test_saving_commands_print_no_transformers_progress_bar(tmp_path, capsys):
    make_model_folder(tmp_path / "m", "test-owl2", seed=1)
    capsys.readouterr()
    assert owl(["convert", str(tmp_path / "m"), str(tmp_path / "c")]) == 0
    assert "Writing model shards" not in capsys.readouterr().err


def test_tiny_text_corpus_and_mam_init(tmp_path):
    from owlkit.zoo.world import caption, load_scenes, make_world
    from owlkit.zoo.tiny import copy_text_branches_to_visual, init_model, text_only, train_tokenizer

    world = tmp_path / "world"
    make_world(world, seed=3, n=12, image_size=112, fmt="jsonl", n_instruct=40)
    text = json.loads(text_only(world).read_text())
    scenes = load_scenes(world)
    instruct = json.loads((world / "instruct.json").read_text())
    assert len(text) == len(instruct)
    for sample, plain in zip(instruct, text):
        joined = " ".join(t["value"] for t in plain["conversations"])
        assert "<|image|>" not in joined
        images = sample.get("image") or []
        for image in [images] if isinstance(images, str) else images:
            assert caption(scenes[image]) in joined
    image_id = train_tokenizer(world, tmp_path / "init", 400)
    init_model(tmp_path / "init", 400, image_id, seed=0)
    copy_text_branches_to_visual(tmp_path / "init")
    state = load_file(str(tmp_path / "init" / "model.safetensors"))
    text_names = [k for k in state if ".text." in k]
    assert text_names and all(torch.equal(state[k], state[k.replace(".text.", ".visual.")]) for k in text_names)


def test_tiny_init_keeps_the_image_signal(tmp_path):
    """owl-tiny starts from unit-gain weights: the picture still shows in the visual tokens.

    With the LLaMA/CLIP std of 0.02 at owl-tiny's widths the visual tokens of two different
    images differ by ~0.2% of their norm and the model cannot learn colours (docs/owl-tiny.md).
    """
    import math

    from owlkit.checkpoints import load_model
    from owlkit.zoo.world import Obj, Scene, render
    from owlkit.processing.images import OwlImageProcessor
    from owlkit.zoo.tiny import init_model

    init_model(tmp_path, 300, 3, seed=0)
    model = load_model(tmp_path).eval()
    for name, p in model.named_parameters():
        if name.endswith("weight") and p.ndim >= 2 and "embed_tokens" not in name and "position" not in name:
            expected = 1 / math.sqrt(p[0].numel())
            assert abs(p.std().item() / expected - 1) < 0.15, name
    scenes = [Scene(objects=[Obj("circle", colour, "big", 1, 1)], word=None, noise=0.0, noise_seed=0)
              for colour in ("red", "blue")]
    size = model.config.vision_config.image_size
    pixels = OwlImageProcessor(size, generation=2)([render(s, size) for s in scenes])
    with torch.no_grad():
        feats = model.encode_images(pixels)
    spread = (feats[0] - feats[1]).norm() / feats.norm(dim=(1, 2)).mean()
    assert spread > 0.01


def test_tiny_build_reuses_its_world_only_when_made_with_the_same_settings(tmp_path):
    from owlkit.zoo.tiny import CAPTION_SHARE, ensure_world

    world = tmp_path / "world"
    assert ensure_world(world, seed=3, n_images=12, n_instruct=40)
    manifest = json.loads((world / "world.json").read_text())
    assert manifest["task_weights"]["caption"] == CAPTION_SHARE
    assert manifest["task_counts"]["caption"] < manifest["task_counts"]["shape"]  # a quarter share
    stamp = (world / "instruct.json").stat().st_mtime_ns
    assert not ensure_world(world, seed=3, n_images=12, n_instruct=40)  # same settings: reused
    assert (world / "instruct.json").stat().st_mtime_ns == stamp
    assert ensure_world(world, seed=3, n_images=12, n_instruct=60)  # other settings: written again
    assert len(json.loads((world / "instruct.json").read_text())) == 60


def test_a_short_answer_prompt_follows_the_world_questions(tmp_path, capsys):
    """A model trained with a short-answer prompt (owl-small) is asked with it: by owl eval synth,
    by owl demo on the example scenes; captions and questions without an image go as they are."""
    import shutil

    from owlkit.inference import Owl, bundled_model_path
    from owlkit.zoo.synth_eval import conversation, evaluate_synth, with_short_answer_prompt
    from owlkit.zoo.world import make_eval_set

    prompt = "Answer the question using a single word or phrase."
    turns = [{"from": "human", "value": "<image>\nWhere?"}, {"from": "gpt", "value": "top"}, {"from": "human", "value": "And?"}]
    hinted = with_short_answer_prompt(turns, prompt, "multiturn")
    assert [t["value"] for t in hinted] == [f"<image>\nWhere? {prompt}", "top", f"And? {prompt}"]
    assert with_short_answer_prompt(turns, prompt, "caption") == turns and with_short_answer_prompt(turns, None, "read") == turns
    sample = make_eval_set(3, 1, image_size=112, tasks=["colour"])[0]
    assert conversation(sample, short_answer_prompt=prompt)[-1]["content"][-1]["text"].endswith(f"? {prompt}")

    folder = tmp_path / "m"
    shutil.copytree(bundled_model_path(), folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "short_answer_prompt": prompt}))
    owl_model = Owl.load(folder)
    asked = []
    owl_model.generate_batch = lambda convs, **kw: asked.extend(convs) or ["x"] * len(convs)
    result = evaluate_synth(owl_model, 5, 1)
    assert result["short_answer_prompt"] == prompt and len(asked) == len(result["examples"])
    for conv, example in zip(asked, result["examples"]):
        assert conv[-1]["content"][-1]["text"].endswith(prompt) == (example["task"] != "caption")
    assert owl(["demo", "--model", str(folder), "--max-new-tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert out.count(f"? {prompt}\n") == len(json.loads((bundled_model_path().parent / "examples" / "questions.json").read_text()))
    assert f"[no image] What is the capital of France?\n" in out
