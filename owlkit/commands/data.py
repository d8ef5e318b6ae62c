"""``owl data check FILE...``: list malformed training rows with ``file:line`` and a summary.

Checks every row of LLaVA JSON/JSONL, mPLUG-Owl JSONL, caption JSONL, webdataset shards and
text-only conversation files (see docs/data.md): rows that cannot be read (bad JSON, missing
fields, unknown roles), placeholder/image count mismatches, empty or wrongly ordered turns
(they must alternate human/gpt, start with human and end with gpt), missing image files
(``--decode-images`` also decodes them), corrupt shards, and, with ``--tokenizer`` and
``--max-length``, samples longer than the limit (images counted as ``tokens_per_image``
positions). Exit status 1 when anything was found, 0 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections import Counter
from pathlib import Path

from owlkit.config import IGNORE_INDEX
from owlkit.data.records import Problem, Record, image_problems, iter_entries, record_problems
from owlkit.errors import ConfigError, InputError

KIND_NAMES = {
    "json": "invalid JSON",
    "malformed": "malformed row",
    "placeholder": "placeholder/image mismatch",
    "turns": "turn order / empty turn",
    "image": "missing or unreadable image",
    "length": "over max length",
    "shard": "shard problem",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True
    check = sub.add_parser(
        "check",
        help="report malformed rows of training data files",
        description="Report malformed rows (file:line) of training data files; exit 1 if any.",
    )
    check.add_argument("files", nargs="+", metavar="FILE", help="data files, shard folders/patterns")
    check.add_argument(
        "--type", dest="kind", choices=("llava", "owl_jsonl", "captions", "wds", "text"), default=None,
        help="data format (default: guessed from each file)",
    )
    check.add_argument("--image-root", default=None, help="folder relative image paths start from (default: each file's folder)")
    check.add_argument("--prompt", default=None, help="caption prompt of captions/wds sources (default: none)")
    check.add_argument("--tokenizer", metavar="MODEL_DIR", default=None, help="model folder with the tokenizer, for the length check")
    check.add_argument("--max-length", type=int, default=None, help="longest allowed sample in decoder positions (needs --tokenizer)")
    check.add_argument("--owl-version", type=int, choices=(1, 2), default=None, help="template generation (default: from the model folder, else 2)")
    check.add_argument("--template", default=None, help="conversation template (default: the generation's)")
    check.add_argument("--tokens-per-image", type=int, default=None, help="positions per image (default: from the model folder, else 65)")
    check.add_argument("--decode-images", action="store_true", help="also decode every image (slower)")
    check.add_argument("--limit", type=int, default=100, help="print at most this many problems (0: all; default 100)")


def _model_settings(folder: Path) -> tuple[int, int]:
    """(generation, tokens per image) of a model folder, from its config as loading reads it;
    2 and 65 for a folder that holds no model config (a tokenizer's, an LLM's)."""
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read JSON ({exc})") from None
    from owlkit.checkpoints.loading import FORMATS, read_config  # torch: import only when the command runs

    if not isinstance(config, dict) or config.get("model_type") not in FORMATS:
        return 2, 65
    model = read_config(folder, config["model_type"])
    return model.owl_version, model.tokens_per_image


class _LengthCheck:
    def __init__(self, args: argparse.Namespace) -> None:
        from owlkit.processing.tokenizer import load_tokenizer, placeholder_id  # numpy + PIL: import only when the command runs

        folder = Path(args.tokenizer)
        self.tokenizer = load_tokenizer(folder)
        generation, tokens_per_image = _model_settings(folder)
        self.generation = args.owl_version or generation
        self.tokens_per_image = args.tokens_per_image or tokens_per_image
        self.template = args.template
        self.max_length = args.max_length
        self.image_token_id = placeholder_id(self.tokenizer)

    def __call__(self, record) -> list[str]:
        from owlkit.processing.labels import build_training_example  # numpy + PIL: import only when the command runs

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ex = build_training_example(
                    record.messages, self.generation, self.tokenizer, template=self.template,
                    image_token_id=self.image_token_id, tokens_per_image=self.tokens_per_image,
                )
        except InputError as exc:
            return [f"cannot tokenize ({exc})"]
        n_images = sum(1 for t in ex.input_ids if t == self.image_token_id)
        positions = len(ex.input_ids) + n_images * (self.tokens_per_image - 1)
        if positions <= self.max_length:
            return []
        # what truncation would leave
        used, kept_supervised = 0, 0
        for token, label in zip(ex.input_ids, ex.labels):
            used += self.tokens_per_image if token == self.image_token_id else 1
            if used > self.max_length:
                break
            kept_supervised += label != IGNORE_INDEX
        tail = "; truncation would cut away every reply" if kept_supervised == 0 else ", it will be truncated"
        return [
            f"sample is {positions} positions long ({len(ex.input_ids) - n_images} tokens + {n_images} image(s) x "
            f"{self.tokens_per_image}), over --max-length {self.max_length}{tail}"
        ]


def run_check(args: argparse.Namespace) -> int:
    if (args.tokenizer is None) != (args.max_length is None):
        raise ConfigError("--tokenizer and --max-length go together (the length check needs both)")
    if args.max_length is not None and args.max_length <= 0:
        raise ConfigError(f"--max-length must be positive, got {args.max_length}")
    length_check = _LengthCheck(args) if args.tokenizer else None
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None
    show_progress = tqdm is not None and sys.stderr.isatty()

    kinds: Counter = Counter()
    rows = bad_rows = printed = hidden = 0
    for file in args.files:
        entries = iter_entries(file, args.kind, args.image_root, args.prompt, validate=False)
        if show_progress:
            entries = tqdm(entries, desc=str(file), unit=" rows", leave=False, file=sys.stderr)
        for entry in entries:
            if isinstance(entry, Problem):
                found = [entry]
                if entry.line is not None:
                    rows += 1
            else:
                assert isinstance(entry, Record)
                rows += 1
                found = [Problem(entry.source, entry.line, m, "turns") for m in record_problems(entry)]
                found += [Problem(entry.source, entry.line, m, "image") for m in image_problems(entry, args.decode_images)]
                if length_check is not None and not found:
                    found += [Problem(entry.source, entry.line, m, "length") for m in length_check(entry)]
            if not found:
                continue
            if any(p.line is not None for p in found):
                bad_rows += 1
            for problem in found:
                kinds[problem.kind] += 1
                if args.limit <= 0 or printed < args.limit:
                    print(problem)
                    printed += 1
                else:
                    hidden += 1
    total = sum(kinds.values())
    files = f"{len(args.files)} file{'s' if len(args.files) != 1 else ''}"
    if hidden:
        print(f"... {hidden} more problem(s) not shown (--limit 0 shows all)")
    if not total:
        print(f"checked {rows} rows in {files}: no problems")
        return 0
    detail = ", ".join(f"{KIND_NAMES.get(k, k)}: {n}" for k, n in sorted(kinds.items(), key=lambda kv: -kv[1]))
    print(f"checked {rows} rows in {files}: {total} problem(s) in {bad_rows} row(s) ({detail})")
    return 1


def run(args: argparse.Namespace) -> int:
    if args.action == "check":
        return run_check(args)
    raise ConfigError(f"unknown action {args.action!r}")  # pragma: no cover
