"""``owl eval TASK --model M --data PATH --output DIR``: evaluate a model on a benchmark.

``owl eval synth --model M --seed S`` scores a model on a held-out synthetic world (per-task
exact match; no data folder). Otherwise TASK names a benchmark of
:mod:`owlkit.evaluation.benchmarks`: vqav2, okvqa, textvqa, vizwiz, gqa, scienceqa, seedbench,
mmbench, mmmu, mme, pope, mmvet, coco, flickr30k, nocaps, mmlu, owleval. The benchmark is read from its own local layout
(``docs/evaluation.md``), answered in batches with the task's official prompt and settings,
each answer appended to ``DIR/<task>_predictions.jsonl`` (a rerun skips the ids already there),
then scored into ``DIR/results.json`` and ``DIR/results.md``, with the benchmark's submission
file where one exists. The metrics table goes to stdout. Every metric is scored like the
scorer behind the published numbers (``results.json`` names it per metric); ``--lenient``
uses owlkit's forgiving answer parsers instead, under ``*_lenient`` metric names; ``--java``
scores captions with pycocoevalcap's own Java tokenizer and METEOR. A benchmark whose grader
cannot run offline (MM-Vet's GPT-4 judge) gets its submission file and no score, which one
line on stderr says.

``owl eval compare DIR [DIR ...] [--png PATH]`` prints the runs' metrics side by side and
writes a bar chart (default ``comparison.png`` beside the first run folder).

Bad input (unknown task, wrong layout, missing image, malformed row) is one line on stderr
naming the file and line or the expected layout, exit code 2; the data is read before the
model is loaded.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from owlkit.commands._generation import add_load_arguments, load_owl
from owlkit.errors import InputError
from owlkit.evaluation.benchmarks import BENCHMARKS, get_benchmark
from owlkit.evaluation.coco_java import java_available
from owlkit.evaluation.report import compare, metrics_markdown
from owlkit.outputs import writable_folder
from owlkit.zoo.bundled import model_name


def add_arguments(parser) -> None:
    parser.add_argument("task", help=f"one of {', '.join(BENCHMARKS)}; or 'compare' followed by run folders")
    parser.add_argument("runs", nargs="*", help="(compare) run folders written by owl eval")
    parser.add_argument("--model", default=None, help="model folder, or a bundled model: owl-small, owl-tiny (default: owl-small when installed, else owl-tiny)")
    add_load_arguments(parser)
    parser.add_argument("--data", help="the benchmark's data folder or file, in its official layout")
    parser.add_argument("--output", help="run folder (results.json, predictions, submission files)")
    parser.add_argument("--limit", type=int, default=None,
                        help="first N samples only (MMBench: questions; OwlEval: dialogues)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--image-mode", default=None,
                        help="resize, pad, crop or stretch (default: the model's: v2 resize, v1 stretch)")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="override the task's maximum answer length (min_new_tokens is clamped to it)")
    parser.add_argument("--images", default=None, help="image folder, when not where the layout puts it")
    parser.add_argument("--split", default=None, help="split to read (VizWiz, ScienceQA, MMMU, Karpathy captions)")
    parser.add_argument("--annotations", default=None, help="VQA v2 / OK-VQA annotations JSON to join")
    parser.add_argument("--model-id", default=None,
                        help="name of the model in reports (default: the model folder's name)")
    parser.add_argument("--html-images", default="relative",
                        help="OwlEval HTML: 'relative' links to the images or 'base64' thumbnails")
    parser.add_argument("--lenient", action="store_true",
                        help="owlkit's forgiving answer parsers instead of the reference scorers' (metrics named "
                             "*_lenient: not comparable with published numbers)")
    parser.add_argument("--java", action="store_true",
                        help="(captions) pycocoevalcap's Java tokenizer and METEOR (needs Java and pycocoevalcap)")
    parser.add_argument("--png", default=None, help="(compare) where to write the chart")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--seed", type=int, default=1000, help="(synth) seed of the held-out world")
    parser.add_argument("--n-per-task", type=int, default=50, help="(synth) questions per task")
    parser.add_argument("--described", action="store_true",
                        help="(synth) replace each image by its scene's caption: how well the language side "
                             "answers from a perfect description")


def _compare(args) -> int:
    if not args.runs:
        raise InputError("usage: owl eval compare DIR [DIR ...]: give the run folders to compare")
    res = compare(args.runs, png=args.png)
    if res["png"]:
        print(f"chart: {res['png']}", file=sys.stderr)
    return 0


def _synth(args) -> int:
    """Held-out accuracy per task on the synthetic world (no data folder needed)."""
    from owlkit.zoo.synth_eval import evaluate_synth, markdown  # numpy + PIL: import only when the command runs

    if args.n_per_task <= 0:
        raise InputError("--n-per-task must be positive")
    if args.output:
        writable_folder(args.output, "--output")
    owl = load_owl(args)
    targets = None  # owl-tiny's (evaluate_synth's default)
    if model_name(args.model) == "owl-small":
        from owlkit.zoo.small import TARGETS as targets  # torch: import only when the command runs
    result = evaluate_synth(owl, args.seed, args.n_per_task, batch_size=args.batch_size, progress=not args.quiet,
                            described=args.described, targets=targets,
                            **({"max_new_tokens": args.max_new_tokens} if args.max_new_tokens else {}))
    print(markdown(result))
    if args.output:
        out = Path(args.output)
        out.mkdir(parents=True, exist_ok=True)
        (out / "synth_results.json").write_text(json.dumps(result, indent=2) + "\n")
        (out / "synth_results.md").write_text(markdown(result) + "\n")
    return 0


def run(args) -> int:
    if args.task == "compare":
        return _compare(args)
    if args.task == "synth":
        return _synth(args)
    if args.described:
        raise InputError("--described is for 'owl eval synth' only: the other benchmarks have no scene descriptions")
    spec = get_benchmark(args.task)
    if args.runs:
        raise InputError(f"unexpected argument(s) {' '.join(args.runs)}; run folders are for 'owl eval compare'")
    if not args.data:
        raise InputError(f"--data is required: {spec.layout}")
    if not args.output:
        raise InputError("--output is required: the run folder to write")
    writable_folder(args.output, "--output")
    if args.html_images not in ("relative", "base64"):
        raise InputError(f"--html-images must be 'relative' or 'base64', not {args.html_images!r}")
    from owlkit.evaluation.runner import evaluate, load_samples  # torch: import only when the command runs
    from owlkit.processing.images import MODES  # numpy + PIL: import only when the command runs

    if args.image_mode is not None and args.image_mode not in MODES:
        raise InputError(f"unknown --image-mode {args.image_mode!r}; choose one of: {', '.join(MODES)}")
    if args.batch_size <= 0:
        raise InputError("--batch-size must be positive")
    if args.max_new_tokens is not None and args.max_new_tokens <= 0:
        raise InputError("--max-new-tokens must be positive")
    if args.java:
        if spec.java is None:
            raise InputError(f"--java applies to the caption tasks only, not to {spec.name}")
        if java_available():
            raise InputError(f"--java: {java_available()}")
    samples = load_samples(spec, args.data, limit=args.limit, images=args.images, split=args.split,
                           annotations=args.annotations)

    owl = load_owl(args)
    model_id = args.model_id or model_name(args.model)
    result = evaluate(spec, owl, args.data, args.output, samples=samples, limit=args.limit,
                      batch_size=args.batch_size, image_mode=args.image_mode, max_new_tokens=args.max_new_tokens,
                      model_id=model_id, html_embed=args.html_images, progress=not args.quiet,
                      info={"model_path": args.model}, lenient=args.lenient, java=args.java)
    print(metrics_markdown(spec.name, result["metrics"]))
    if spec.metric is None and spec.no_metric:
        print(f"{spec.name}: no score: {spec.no_metric}", file=sys.stderr)
    print(f"{result['generated']} answered, {result['reused']} already done; wrote "
          + ", ".join(str(p) for p in result["files"]), file=sys.stderr)
    return 0
