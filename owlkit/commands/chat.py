"""``owl chat [--model PATH] [--image P ...] [QUESTION]``.

With a question: one answer on stdout. Without: an interactive multi-turn session that streams
the reply; ``/image PATH`` attaches an image to the next message, ``/reset`` starts over,
``/exit`` (or end of input) leaves.
"""

from __future__ import annotations

import sys

from owlkit.commands._generation import add_generation_arguments, add_model_argument, generation_options, load_owl
from owlkit.errors import InputError

HELP = "commands: /image PATH (attach to the next message), /reset, /exit"


def add_arguments(parser) -> None:
    add_model_argument(parser)
    parser.add_argument("--image", action="append", default=[], help="image for the (first) question (repeatable)")
    parser.add_argument("question", nargs="?", help="ask once and exit; omit for an interactive session")
    add_generation_arguments(parser)


def _user_message(text: str, images: list) -> dict:
    from owlkit.processing.images import load_image  # numpy + PIL: import only when the command runs

    parts = [{"type": "image", "image": load_image(p)} for p in images]  # fails early on bad files
    parts.append({"type": "text", "text": text})
    return {"role": "user", "content": parts}


def run(args) -> int:
    opts = generation_options(args)
    if args.question is not None:
        message = _user_message(args.question, args.image)
        owl = load_owl(args)
        print(owl.chat([message], truncate=args.truncate, **opts))
        return 0
    owl = load_owl(args)
    interactive = sys.stdin.isatty()
    if interactive:
        print(HELP, file=sys.stderr)
    history: list[dict] = []
    pending = list(args.image)
    while True:
        if interactive:
            print("you> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line:
            return 0
        line = line.strip()
        if not line:
            continue
        if line in ("/exit", "/quit"):
            return 0
        if line == "/reset":
            history, pending = [], []
            print("(conversation cleared)", file=sys.stderr)
            continue
        if line.startswith("/image"):
            path = line[len("/image"):].strip()
            try:
                _user_message("", [path])
            except InputError as exc:
                print(f"error: {exc}", file=sys.stderr)
                continue
            pending.append(path)
            print(f"(image attached: {path})", file=sys.stderr)
            continue
        if line.startswith("/"):
            print(f"unknown command {line.split()[0]}; {HELP}", file=sys.stderr)
            continue
        try:
            message = _user_message(line, pending)
            conversation = history + [message]
            pieces = []
            print("owl> ", end="", flush=True)
            for piece in owl.chat(conversation, stream=True, truncate=args.truncate, **opts):
                pieces.append(piece)
                print(piece, end="", flush=True)
            print(flush=True)
        except InputError as exc:
            print(f"\nerror: {exc}", file=sys.stderr)
            continue
        history = conversation + [{"role": "assistant", "content": "".join(pieces).strip()}]
        pending = []
