"""The mPLUG-Owl2 paper's claims about training choices, measured on owl-small at small scale.

Each claim compares owl-small's recipe (the ``baseline`` variant) with one change to it. A
variant is data: options of the assembled base (:func:`owlkit.zoo.small_model.assemble_base`)
and recipe overrides per stage, run through the same build steps as owl-small itself
(:func:`owlkit.zoo.small.train_stage`: the packaged recipes, readers and training loop). After
stage 2 the LoRA factors are merged (:func:`owlkit.training.lora.merge_lora`) and the merged
model is measured: the held-out world (:func:`owlkit.zoo.synth_eval.evaluate_synth`) and the
language check (:mod:`owlkit.zoo.language_check`). A variant that changes stage 2 only
(``stage1_from``) starts from the baseline's stage 1 of the same seed.

Every (variant, seed) run writes ``<out>/<variant>-seed<S>/result.json`` and is skipped when
that file exists, so an interrupted comparison resumes where it stopped. The seed sets the
training world, the new weights' initialisation and the training order; the held-out world
(``eval_seed``) is the same for all. ``owl small claims`` runs them
(:mod:`owlkit.zoo.claims_run`) and writes the summary (``claims.json``, ``claims.md``);
docs/paper-claims.md holds the measured tables and verdicts.

This module is the light part (what the variants are, the summary tables): the command line
reads it without importing torch.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from owlkit.errors import ConfigError

#: The tasks of the held-out world, in table order.
TASKS = ("colour", "shape", "count", "position", "relation", "read", "compare", "multiturn", "text")
VISUAL_TASKS = TASKS[:-1]
#: Stage 2 without any text-only instruction: the world's questions about images only.
_MULTIMODAL_SOURCES = ("data.sources=[{type: llava, path: PATH, tasks: [" + ", ".join(
    t for t in TASKS if t != "text") + ", caption], weight: 1.0}, {type: llava, path: PATH, tasks: [read], weight: 1.0}]")


@dataclass(frozen=True)
class Variant:
    """One way to build owl-small: base options and recipe overrides per stage."""

    name: str
    what: str
    base: dict = field(default_factory=dict)
    stage1: tuple[str, ...] = ()
    stage2: tuple[str, ...] = ()
    #: Reuse this variant's stage 1 (same seed) instead of training one.
    stage1_from: str | None = None
    #: Measure the language check after stage 1 as well.
    check_stage1: bool = False


VARIANTS = {v.name: v for v in (
    Variant("baseline", "owl-small's recipe: MAM, LLM frozen in stage 1, text + multimodal stage 2, "
            "encoder frozen, abstractor", check_stage1=True),
    Variant("multimodal-only", "stage 2 without text-only instructions (no general.json, no world text questions)",
            stage2=(_MULTIMODAL_SOURCES,), stage1_from="baseline"),
    Variant("no-mam", "the decoder shares its layer norms and key/value projections between modalities",
            base={"modality_adaptive": False}),
    Variant("linear-projector", "a linear layer on every patch (LLaVA) instead of the abstractor's queries",
            base={"projector": "linear"}),
    Variant("vision-trained", "the vision encoder trains in both stages (stage 2: in full next to the LoRA)",
            stage1=("freeze=[]",), stage2=("lora.modules_to_save=[abstractor, vision]",)),
    Variant("llm-trained-stage1", "the LLM trains in stage 1 too (every decoder weight)",
            stage1=("also_train=[language_model]",), check_stage1=True),
)}


@dataclass(frozen=True)
class Claim:
    key: str
    title: str
    paper: str
    variants: tuple[str, str]


CLAIMS = {c.key: c for c in (
    Claim("mam", "Modality-adaptive module",
          "MAM helps both text and multimodal tasks (modality collaboration without interference)",
          ("baseline", "no-mam")),
    Claim("frozen-llm", "Frozen LLM in stage 1",
          "freezing the LLM during pre-training keeps its language while the visual side learns",
          ("baseline", "llm-trained-stage1")),
    Claim("joint", "Joint instruction tuning",
          "text-only instructions in stage 2 keep the LLM's linguistic ability",
          ("baseline", "multimodal-only")),
    Claim("vision", "Trainable vision encoder",
          "a trainable encoder (the paper's choice) helps; freezing it limits scene text",
          ("baseline", "vision-trained")),
    Claim("projector", "Visual abstractor against a linear projector",
          "a few learnable queries summarise the image as well as every patch does, at far fewer tokens",
          ("baseline", "linear-projector")),
)}


def variants_of(claims: list[str]) -> list[str]:
    """The variants the named claims compare, each once, in :data:`VARIANTS` order (the baseline
    first, the cheapest and most telling next)."""
    unknown = [c for c in claims if c not in CLAIMS]
    if unknown:
        raise ConfigError(f"unknown claim {unknown[0]!r}; choose from: {', '.join(CLAIMS)}")
    needed = {"baseline"} | {v for claim in claims for v in CLAIMS[claim].variants}
    return [name for name in VARIANTS if name in needed]


# ---------------------------------------------------------------------------------------------
# The summary
# ---------------------------------------------------------------------------------------------


def _stat(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values), "n": len(values),
            "values": values}


def summarise(results: list[dict]) -> dict:
    """Mean, min and max over seeds of every measure, per variant."""
    by_variant: dict[str, list[dict]] = {}
    for r in results:
        by_variant.setdefault(r["variant"], []).append(r)
    summary = {}
    for name, rows in by_variant.items():
        entry = {"seeds": sorted(r["seed"] for r in rows), "tokens_per_image": rows[0]["tokens_per_image"],
                 "tasks": {t: _stat([r["tasks"][t] for r in rows]) for t in TASKS if t in rows[0]["tasks"]}}
        entry["tasks"]["visual mean"] = _stat([statistics.fmean(r["tasks"][t] for t in VISUAL_TASKS) for r in rows])
        for key in ("language", "language_stage1"):
            if all(key in r for r in rows):
                entry[key] = {m: _stat([float(r[key][m]) for r in rows]) for m in ("general_correct", "perplexity")}
        summary[name] = entry
    return summary


def _cell(stat: dict, percent: bool = False, digits: int = 1) -> str:
    scale = 100 if percent else 1
    mean, low, high = (stat[k] * scale for k in ("mean", "min", "max"))
    return f"{mean:.{digits}f} ({low:.{digits}f}–{high:.{digits}f})" if stat["n"] > 1 else f"{mean:.{digits}f}"


def markdown(summary: dict, claims: list[str], reference: dict[str, float] | None = None) -> str:
    """One table per claim: accuracy per task (%), general questions and perplexity; mean (min–max).
    ``reference``: per task, the share of the most common answer (a first row)."""
    lines = []
    for key in claims:
        claim = CLAIMS[key]
        lines += [f"### {claim.title}", "", f"Paper: {claim.paper}.", ""]
        names = [v for v in claim.variants if v in summary]
        if not names:
            lines += ["(not measured)", ""]
            continue
        head = ["variant", "seeds", *TASKS, "visual mean", "general Qs", "perplexity"]
        if key == "frozen-llm":
            head += ["general Qs after stage 1", "perplexity after stage 1"]
        if key == "projector":
            head += ["tokens per image"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        if reference:
            visual = statistics.fmean(reference[t] for t in VISUAL_TASKS)
            cells = [f"{100 * reference[t]:.0f}" if t in reference else "–" for t in TASKS] + [f"{100 * visual:.0f}"]
            lines.append("| " + " | ".join(["*most common answer*", "–", *cells] + ["–"] * (len(head) - 2 - len(cells))) + " |")
        for name in names:
            s = summary[name]
            row = [name, ", ".join(map(str, s["seeds"]))]
            row += [_cell(s["tasks"][t], percent=True, digits=0) if t in s["tasks"] else "–" for t in (*TASKS, "visual mean")]
            row += [_cell(s["language"]["general_correct"], digits=1), _cell(s["language"]["perplexity"], digits=2)]
            if key == "frozen-llm":
                stage1 = s.get("language_stage1")
                row += [_cell(stage1["general_correct"]), _cell(stage1["perplexity"], digits=2)] if stage1 else ["–", "–"]
            if key == "projector":
                row += [str(s["tokens_per_image"])]
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    return "\n".join(lines)
