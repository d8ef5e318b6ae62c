"""owl-tiny: a small mPLUG-Owl2 trained here through the papers' whole paradigm.

Real mPLUG-Owl weights are gigabytes; owl-tiny makes every code path work out of the box. It
learns a procedural visual world (:mod:`owlkit.zoo.world`) with the same code a user runs on
real data, in the papers' order:

1. **world**: images with captions and instruction data (colour, shape, count, position,
   relations, scene text, two-image comparison, multi-turn dialogues, text-only instructions);
2. **tokenizer**: a SentencePiece model (LLaMA conventions: unk 0, bos 1, eos 2, byte fallback)
   trained on the world's text, with ``<|image|>`` as a token; the random model is initialised
   at unit gain (:func:`fan_in_init`), not with LLaMA's ``std = 0.02``;
3. **text pre-training** of the decoder (no pretrained LLM can be downloaded): the world's
   instructions with every image replaced by its caption, so the decoder learns the language
   and the reasoning of the world from text (recipe ``owl_tiny_text.yaml``);
4. **vision pre-training** of the encoder on the world's images (no CLIP can be downloaded;
   :mod:`owlkit.zoo.tiny_vision`: every patch names its cell's object, the CLS token the count, the
   text band spells the word and names it), then the visual branches of the modality-adaptive
   module are initialised from the text branches, as mPLUG-Owl2 does;
5. **stage 1**: image-caption pre-training, decoder frozen except its visual branches, the
   pre-trained encoder frozen too (``owl_tiny_stage1.yaml``, stage ``owl2_stage1``);
6. **stage 2**: joint instruction tuning on multimodal and text-only instructions, the reading
   questions at a larger share (``owl_tiny_stage2.yaml``, stage ``owl2_stage2``), the vision
   encoder frozen as in the paper;
7. **evaluation** on a held-out world (``owl eval synth``), then the model, a few example scenes
   and the training curves are installed in the package.

``owl tiny build`` (``make tiny``) runs it all; docs/owl-tiny.md describes the result.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers.utils import logging

from owlkit.config import IMAGE_PLACEHOLDER, OwlConfig
from owlkit.inference import Owl
from owlkit.models.abstractor import VisualAbstractor
from owlkit.models.owl import OwlForCausalLM
from owlkit.models.vision import VisionEmbeddings
from owlkit.processing.images import OwlImageProcessor
from owlkit.processing.tokenizer_training import train_sentencepiece
from owlkit.training import train
from owlkit.training.recipe import RECIPE_DIR, load_recipe
from owlkit.zoo.synth_eval import evaluate_synth, markdown
from owlkit.zoo.tiny_vision import VisionPretrainSettings, pretrain_vision
from owlkit.zoo.world import TASKS, described_turns, load_scenes, make_eval_set, make_world

#: The bundled builds' greedy replies and evaluations are part of what they ship: they load the
#: weights in the checkpoint's own layout, whose rounding those files were made with
#: (``Owl.load``'s ``decoding_layout``; owl-small and the paper-claims runs too).
BUILD_LAYOUT = "row-major"

ASSETS = Path(__file__).resolve().parents[1] / "assets"
RECIPES = RECIPE_DIR
IMAGE_SIZE = 112
TEMPLATE_STRINGS = ["USER:", "ASSISTANT:", "</s>", "USER: hello ASSISTANT: hi</s>"]
#: Task mix of the training world's instructions. Captions get a quarter share: stage 1 already
#: trains on a caption of every image, and with an equal mix a caption's ~26 answer tokens took
#: 52% of stage 2's supervised tokens, leaving 4% to each one-word task (colour, shape, ...).
CAPTION_SHARE = 0.25
NOISE_PROB = 0.2


def _log(message: str) -> None:
    print(f"[owl-tiny {time.strftime('%H:%M:%S')}] {message}", flush=True)


def text_only(world: Path) -> Path:
    """The world's instructions with each image replaced by its caption (text pre-training data)."""
    scenes = load_scenes(world)
    samples = json.loads((world / "instruct.json").read_text())
    out = []
    for sample in samples:
        images = sample.get("image") or []
        images = [images] if isinstance(images, str) else list(images)
        texts = described_turns([t["value"] for t in sample["conversations"]], [scenes[i] for i in images])
        turns = [{"from": t["from"], "value": text} for t, text in zip(sample["conversations"], texts)]
        out.append({"id": f"text-{sample['id']}", "task": sample.get("task"), "conversations": turns})
    path = world / "text.json"
    path.write_text(json.dumps(out))
    return path


def train_tokenizer(world: Path, folder: Path, vocab_size: int) -> int:
    """SentencePiece BPE on the world's text; returns the id of ``<|image|>``."""
    lines = [json.loads(line)["caption"] for line in (world / "captions.jsonl").read_text().splitlines()]
    for sample in json.loads((world / "instruct.json").read_text()):
        lines.extend(t["value"].replace(IMAGE_PLACEHOLDER, " ").strip() for t in sample["conversations"])
    return train_sentencepiece(lines + TEMPLATE_STRINGS * 20, folder, vocab_size)


def fan_in_init(model: torch.nn.Module) -> None:
    """Re-initialise every weight at unit gain: ``std = 1/sqrt(fan_in)`` for linear and patch layers.

    The LLaMA/CLIP default (``std = 0.02`` everywhere) suits hidden sizes in the thousands; at
    owl-tiny's 128-256 it shrinks every layer's output 4-8x, the part of the visual tokens that
    depends on the image carries ~2e-6 of their energy (squared norm), and a from-scratch model does not even learn
    "what colour is the object?" (measured: chance after 150 steps with every parameter training;
    with this init, 100% after 150 steps). Embeddings and the abstractor's learned tokens get unit
    variance, the vision position table 0.1.
    """
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                module.weight.normal_(0.0, 1.0 / math.sqrt(module.weight[0].numel()))
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, torch.nn.Embedding):
                module.weight.normal_(0.0, 1.0)
            elif isinstance(module, VisualAbstractor):
                module.query_embeds.normal_(0.0, 1.0)
                module.vit_eos.normal_(0.0, 1.0)
            elif isinstance(module, VisionEmbeddings):
                module.cls_token.normal_(0.0, 1.0)
                module.position_embedding.normal_(0.0, 0.1)


def init_model(folder: Path, vocab_size: int, image_token_id: int, seed: int) -> None:
    config = OwlConfig.from_preset("owl-tiny", image_token_id=image_token_id)
    config.text_config.vocab_size = vocab_size
    torch.manual_seed(seed)
    logging.disable_progress_bar()
    model = OwlForCausalLM(config)
    fan_in_init(model)
    model.save_pretrained(folder)
    OwlImageProcessor(config.vision_config.image_size, generation=2).save_pretrained(folder)


def copy_text_branches_to_visual(folder: Path) -> None:
    """mPLUG-Owl2 initialises the visual K/V projections and norms from the text ones."""
    path = folder / "model.safetensors"
    state = load_file(str(path))
    for name in list(state):
        if ".text." in name:
            state[name.replace(".text.", ".visual.")] = state[name].clone()
    save_file(state, str(path), metadata={"format": "pt"})


def run_stage(recipe: str, overrides: list[str]):
    """One training stage from scratch: a previous build's run folder is replaced."""
    out = next(o.split("=", 1)[1] for o in overrides if o.startswith("output_dir="))
    shutil.rmtree(out, ignore_errors=True)
    _log(f"training {recipe} {' '.join(overrides)}")
    result = train(RECIPES / recipe, overrides)
    return result.final_dir


def install(final: Path, run: Path, world_eval: dict) -> None:
    """Copy the model into the package, with example scenes and the training curves."""
    target = ASSETS / "owl-tiny"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.model",
                 "preprocessor_config.json"):
        if (final / name).exists():
            shutil.copy2(final / name, target / name)
    examples = ASSETS / "examples"
    shutil.rmtree(examples, ignore_errors=True)
    examples.mkdir(parents=True)

    chosen = []
    for sample in make_eval_set(7, 1, image_size=IMAGE_SIZE, tasks=["colour", "count", "position", "read", "shape"]):
        name = f"{sample.task}.png"
        sample.images[0].save(examples / name)
        chosen.append({"image": name, "question": sample.question.replace(IMAGE_PLACEHOLDER, "").strip(),
                       "answer": sample.answer})
    (examples / "questions.json").write_text(json.dumps(chosen, indent=2) + "\n")
    (target / "eval.json").write_text(json.dumps(world_eval["tasks"], indent=2) + "\n")


def ensure_world(world: Path, seed: int, n_images: int, n_instruct: int) -> bool:
    """Write the training world unless ``world`` already holds one made with these settings
    (its manifest is compared); returns whether it was written."""
    task_weights = {task: (CAPTION_SHARE if task == "caption" else 1.0) for task in TASKS}
    wanted = {"seed": seed, "n": n_images, "n_instruct": n_instruct, "image_size": IMAGE_SIZE,
              "task_weights": task_weights, "noise_prob": NOISE_PROB}
    manifest = json.loads((world / "world.json").read_text()) if (world / "world.json").exists() else None
    if manifest is not None and all(manifest.get(k) == v for k, v in wanted.items()):
        return False
    _log(f"writing the world: {n_images} images, {n_instruct} instructions"
         + (" (the one in place was made with other settings)" if manifest else ""))
    make_world(world, seed=seed, n=n_images, image_size=IMAGE_SIZE, fmt="jsonl", n_instruct=n_instruct,
               task_weights=task_weights, noise_prob=NOISE_PROB, overwrite=True)
    return True


def build(out: str | Path = "runs/owl-tiny", seed: int = 0, n_images: int = 6000, n_instruct: int = 24000,
          vocab_size: int = 1000, eval_seed: int = 1000, n_per_task: int = 100, steps_scale: float = 1.0,
          install_assets: bool = True) -> dict:
    out = Path(out)
    start = time.perf_counter()
    world = out / "world"
    ensure_world(world, seed, n_images, n_instruct)
    text = text_only(world)
    init = out / "init"
    image_token_id = train_tokenizer(world, init, vocab_size)
    init_model(init, vocab_size, image_token_id, seed)
    _log(f"tokenizer ({vocab_size} pieces) and random model written to {init}")

    def steps(recipe: str) -> str:
        n = load_recipe(RECIPES / recipe)["train"]["steps"]
        return f"train.steps={max(1, int(n * steps_scale))}"

    stage0 = run_stage("owl_tiny_text.yaml", [f"model.init={init}", f"data.sources.0.path={text}",
                                              f"output_dir={out / 'text'}", steps("owl_tiny_text.yaml")])

    default = VisionPretrainSettings()
    vision_steps = max(1, int(default.steps * steps_scale))
    vision_settings = replace(default, steps=vision_steps, eval_every=min(default.eval_every, vision_steps))
    _log(f"vision pre-training: {vision_settings.steps} steps of {vision_settings.batch_size} images")
    seeing = pretrain_vision(stage0, world, out / "vision", vision_settings, log=_log)
    copy_text_branches_to_visual(seeing)
    stage1 = run_stage("owl_tiny_stage1.yaml", [f"model.init={seeing}", f"data.sources.0.path={world / 'captions.jsonl'}",
                                                f"output_dir={out / 'stage1'}", steps("owl_tiny_stage1.yaml")])
    stage2 = run_stage("owl_tiny_stage2.yaml", [f"model.init={stage1}", f"data.sources.0.path={world / 'instruct.json'}",
                                                f"data.sources.1.path={text}", f"data.sources.2.path={world / 'instruct.json'}",
                                                f"output_dir={out / 'stage2'}", steps("owl_tiny_stage2.yaml")])
    _log("evaluating on a held-out world")
    owl = Owl.load(stage2, decoding_layout=BUILD_LAYOUT)
    result = evaluate_synth(owl, eval_seed, n_per_task, batch_size=32)
    table = markdown(result)
    (out / "eval.md").write_text(table + "\n")
    (out / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    print(table)
    if install_assets:
        install(stage2, out, result)
        _log(f"installed into {ASSETS}")
    _log(f"done in {(time.perf_counter() - start) / 60:.1f} min")
    return result
