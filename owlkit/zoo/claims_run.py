"""Runs the variants of :mod:`owlkit.zoo.claims` (one seed each) and tabulates them.

A run builds the variant as owl-small is built (:func:`owlkit.zoo.small.train_stage`: the
packaged recipes, readers and training loop), merges stage 2's LoRA factors
(:func:`owlkit.training.lora.merge_lora`) and measures the merged model: the held-out world and
the language check. ``<out>/<variant>-seed<S>/result.json`` holds the measurements; a run whose
file exists is not repeated. Afterwards the weights are removed (init, stage 1 unless another
variant starts from it, the merged model); recipes, curves and adapters stay.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from pathlib import Path

import torch

from owlkit.errors import ConfigError
from owlkit.inference import Owl
from owlkit.training.lora import merge_lora
from owlkit.zoo.claims import VARIANTS, Variant, markdown, summarise, variants_of
from owlkit.zoo.language_check import language_summary
from owlkit.zoo.small import TARGETS, ensure_general, short_answer_instructions, stage2_sources, train_stage
from owlkit.zoo.small_model import SHORT_ANSWER_PROMPT, assemble_base, log
from owlkit.zoo.synth_eval import evaluate_synth
from owlkit.zoo.tiny import BUILD_LAYOUT, IMAGE_SIZE, ensure_world
from owlkit.zoo.world import make_eval_set


def _overrides(variant: Variant, stage: str, instruct: Path, threads: int | None) -> list[str]:
    path = json.dumps(str(instruct))  # a YAML string whatever the path holds
    sets = [s.replace("PATH", path) for s in getattr(variant, stage)]
    return sets + ([f"train.threads={threads}"] if threads else [])


def run_variant(name: str, seed: int, out: str | Path, *, steps_scale: float = 0.1, n_per_task: int = 50,
                eval_seed: int = 2000, n_images: int = 6000, n_instruct: int = 24000, threads: int | None = None,
                keep: bool = False) -> dict:
    """Build one variant for one seed under ``out`` and measure it (module doc); the result."""
    if name not in VARIANTS:
        raise ConfigError(f"unknown variant {name!r}; choose from: {', '.join(VARIANTS)}")
    variant, out = VARIANTS[name], Path(out)
    folder = out / f"{name}-seed{seed}"
    done = folder / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    if threads:
        torch.set_num_threads(threads)
    start = time.perf_counter()
    world = out / f"world-seed{seed}"
    ensure_world(world, seed, n_images, n_instruct)
    init = assemble_base(folder / "init", seed, short_answer_prompt=SHORT_ANSWER_PROMPT, **variant.base)
    general = ensure_general(out / "general.json", init)
    instruct = short_answer_instructions(world, SHORT_ANSWER_PROMPT)
    result: dict = {"variant": name, "seed": seed, "steps_scale": steps_scale, "eval_seed": eval_seed,
                    "n_per_task": n_per_task, "what": variant.what}
    if variant.stage1_from:
        source = out / f"{variant.stage1_from}-seed{seed}" / "stage1" / "final"
        if not (source / "config.json").is_file():
            run_variant(variant.stage1_from, seed, out, steps_scale=steps_scale, n_per_task=n_per_task,
                        eval_seed=eval_seed, n_images=n_images, n_instruct=n_instruct, threads=threads, keep=True)
        stage1 = source
    else:
        stage1 = train_stage("owl_small_stage1", folder / "stage1", seed, steps_scale, [
            f"model.init={init}", f"data.sources.0.path={world / 'captions.jsonl'}",
            *_overrides(variant, "stage1", instruct, threads)])
    if variant.check_stage1:
        log(f"{name} seed {seed}: the language check after stage 1")
        result["language_stage1"] = language_summary(Owl.load(stage1, dtype="float32", decoding_layout=BUILD_LAYOUT))
    train_stage("owl_small_stage2", folder / "stage2", seed, steps_scale, [
        *stage2_sources(stage1, general, instruct), *_overrides(variant, "stage2", instruct, threads)])
    merged = merge_lora(folder / "stage2", folder / "merged")
    owl = Owl.load(merged, dtype="float32", decoding_layout=BUILD_LAYOUT)
    log(f"{name} seed {seed}: evaluating on the held-out world (seed {eval_seed}) and the language check")
    synth = evaluate_synth(owl, eval_seed, n_per_task, batch_size=32, targets=TARGETS)
    result["tasks"] = {task: row["accuracy"] for task, row in synth["tasks"].items()}
    result["language"] = language_summary(owl)
    result["tokens_per_image"] = owl.model.config.tokens_per_image
    result["minutes"] = round((time.perf_counter() - start) / 60, 2)
    done.write_text(json.dumps(result, indent=2) + "\n")
    if not keep:  # the weights are large; the measurements, recipes and curves stay
        reused = any(v.stage1_from == name for v in VARIANTS.values())
        heavy = ["init", "merged", "stage2/checkpoints"] + ([] if reused else ["stage1/final", "stage1/checkpoints"])
        for part in heavy:
            shutil.rmtree(folder / part, ignore_errors=True)
    log(f"{name} seed {seed}: done in {result['minutes']:.1f} min")
    return result


def run_claims(claims: list[str], seeds: list[int], out: str | Path, **options) -> dict:
    """Every variant the claims need, for every seed (the baseline first); the summary, also
    written to ``<out>/claims.json`` and ``<out>/claims.md``."""
    out = Path(out)
    names = variants_of(claims)
    results = [run_variant(name, seed, out, **options) for seed in seeds for name in names]
    summary = summarise(results)
    reference = most_common_answer(options.get("eval_seed", 2000), options.get("n_per_task", 50))
    (out / "claims.json").write_text(json.dumps({"results": results, "summary": summary, "most_common_answer": reference},
                                                indent=2) + "\n")
    text = markdown(summary, claims, reference)
    (out / "claims.md").write_text(text + "\n")
    return {"results": results, "summary": summary, "markdown": text}


def most_common_answer(eval_seed: int, n_per_task: int) -> dict[str, float]:
    """Per task, the share of the held-out questions the most common answer gets right: what a
    model that ignores the image and the question would score."""
    samples = make_eval_set(eval_seed, n_per_task, image_size=IMAGE_SIZE)
    answers: dict[str, list[str]] = {}
    for sample in samples:
        answers.setdefault(sample.task, []).append(sample.answer)
    return {task: Counter(a).most_common(1)[0][1] / len(a) for task, a in answers.items()}
