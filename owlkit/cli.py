"""The ``owl`` command.

Each sub-command lives in its own module under :mod:`owlkit.commands` exposing
``add_arguments(parser)`` and ``run(args) -> int``. Modules are imported only when their
command runs, so ``owl --help`` stays fast (transformers alone takes seconds to import).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from owlkit.errors import OwlError

# name -> (module, one-line help). Keep sorted by name.
COMMANDS: dict[str, tuple[str, str]] = {
    "chat": ("owlkit.commands.chat", "chat with a model about images (one question, or an interactive session)"),
    "convert": ("owlkit.commands.convert", "convert a model folder between official and owlkit formats"),
    "data": ("owlkit.commands.data", "check training data files for malformed rows"),
    "demo": ("owlkit.commands.demo", "run the bundled model on example images"),
    "eval": ("owlkit.commands.eval", "evaluate a model on a benchmark (VQA, MME, MMBench, POPE, captioning, MMLU, OwlEval)"),
    "generate": ("owlkit.commands.generate", "answer a JSONL file of questions in batches (resumable)"),
    "info": ("owlkit.commands.info", "describe a model folder (format, sizes, parameters)"),
    "merge-lora": ("owlkit.commands.merge_lora", "fold a LoRA adapter into its base model (plain owlkit folder)"),
    "plot": ("owlkit.commands.plot", "PNG curves of a training run (loss, learning rate)"),
    "quantize": ("owlkit.commands.quantize", "write an int8 / int4 weight-only quantized copy of a model folder"),
    "serve": ("owlkit.commands.serve", "OpenAI-compatible server with dynamic batching, and the web demo at /"),
    "small": ("owlkit.commands.small", "train the bundled owl-small model on SmolLM2-135M-Instruct (make small)"),
    "synth": ("owlkit.commands.synth", "write a procedural visual world (images + caption/instruction data)"),
    "tiny": ("owlkit.commands.tiny", "train the bundled owl-tiny model from scratch (make tiny)"),
    "train": ("owlkit.commands.train", "train with a YAML recipe (stages of both papers; DDP / FSDP2)"),
    "web": ("owlkit.commands.web", "the web demo alone: chat about uploaded images in the browser"),
}


class OneLineParser(argparse.ArgumentParser):
    """argparse, with a usage error as one line (the problem and where to look) and exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="owl", description="mPLUG-Owl / mPLUG-Owl2 toolkit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (module, help_text) in sorted(COMMANDS.items()):
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        # Arguments are added lazily (see main) to keep start-up cheap.
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # Find the sub-command first, then let its module declare its own arguments.
    if argv and argv[0] in COMMANDS:
        module = importlib.import_module(COMMANDS[argv[0]][0])
        sub = OneLineParser(prog=f"owl {argv[0]}", description=COMMANDS[argv[0]][1])
        module.add_arguments(sub)
        # Options and positionals in any order (`owl train R --nproc 2 key=value`); argparse
        # cannot intermix a command with sub-commands of its own (`owl data check`): those parse
        # as usual (argparse raises TypeError before reading anything).
        try:
            args = sub.parse_intermixed_args(argv[1:])
        except TypeError:
            args = sub.parse_args(argv[1:])
        runner = module.run
    else:
        parser.parse_args(argv)  # prints help / usage errors and exits
        return 2
    try:
        return int(runner(args) or 0)
    except OwlError as exc:
        report_error(f"owl {argv[0]}: error: {exc}")
        return exc.exit_code
    except BrokenPipeError:  # `owl info M | head`: the reader left; say nothing, as other tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as exc:  # the file system said no: a path the user gave, a full disk, ...
        report_error(f"owl {argv[0]}: error: {os_error_line(exc)}")
        return 2
    except KeyboardInterrupt:
        print(f"owl {argv[0]}: interrupted", file=sys.stderr)
        return 130


def os_error_line(exc: OSError) -> str:
    """``cannot write runs/x (No space left on device)``-style text for an OSError."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    where = exc.filename if exc.filename is not None else ""
    if exc.filename2 is not None:
        where = f"{where} -> {exc.filename2}"
    return f"{where}: {reason}" if where else reason


def report_error(line: str) -> None:
    """Print a command's one-line error, once per run.

    Under ``owl train --nproc N`` (torchrun) every process fails alike: the launcher names a
    file in ``OWLKIT_ERROR_FILE``; each rank writes its line there (the lowest rank's is shown)
    and prints nothing, so the user sees one line instead of N copies and torchrun's traceback.
    """
    target = os.environ.get("OWLKIT_ERROR_FILE")
    if target and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        rank = int(os.environ.get("RANK", "0"))
        try:
            with open(f"{target}.rank{rank}", "w", encoding="utf-8") as f:
                f.write(line)
            return
        except OSError:
            pass
    print(line, file=sys.stderr)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
