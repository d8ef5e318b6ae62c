"""``owl generate --input q.jsonl --output a.jsonl [--batch-size N]``: batched answers.

Input rows: ``{"id", "image": PATH | "images": [PATHS] (optional), "question": TEXT | "messages": [...]}``;
image paths are relative to the input file's folder. Output rows: ``{"id", "answer"}`` plus the
input's question. Rows already in the output are skipped, so an interrupted run resumes. A bad
row is reported with its id and line number; the others still run (exit code 1 if any failed).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from owlkit.commands._generation import add_generation_arguments, add_model_argument, generation_options, load_owl
from owlkit.errors import InputError, OwlError
from owlkit.outputs import writable_file


def add_arguments(parser) -> None:
    add_model_argument(parser)
    parser.add_argument("--input", required=True, help="JSONL of questions")
    parser.add_argument("--output", required=True, help="JSONL of answers (appended; existing ids are skipped)")
    parser.add_argument("--batch-size", type=int, default=8)
    add_generation_arguments(parser)


def _conversation(row: dict, base: Path) -> list[dict]:
    from owlkit.processing.images import load_image  # numpy + PIL: import only when the command runs

    if "messages" in row:
        if not isinstance(row["messages"], list):
            raise InputError("'messages' must be a list")
        return row["messages"]
    if not isinstance(row.get("question"), str):
        raise InputError("the row needs a 'question' string or a 'messages' list")
    paths = row.get("images") or ([row["image"]] if row.get("image") else [])
    if isinstance(paths, str):
        paths = [paths]
    parts = [{"type": "image", "image": load_image(base / p)} for p in paths]
    parts.append({"type": "text", "text": row["question"]})
    return [{"role": "user", "content": parts}]


def drop_partial_last_line(output: Path) -> bytes:
    """Cut a last line without its newline (a run killed mid-write) off ``output``; return it.

    Appending after such a line would glue the next row onto it and break both.
    """
    if not output.exists():
        return b""
    with output.open("rb+") as f:
        f.seek(0, 2)
        size = f.tell()
        if size == 0:
            return b""
        f.seek(max(0, size - 1))
        if f.read(1) == b"\n":
            return b""
        # Find the last newline by reading backwards in blocks.
        end = size
        while end > 0:
            start = max(0, end - 65536)
            f.seek(start)
            block = f.read(end - start)
            cut = block.rfind(b"\n")
            if cut >= 0:
                keep = start + cut + 1
                break
            end = start
        else:
            keep = 0
        f.seek(keep)
        partial = f.read()
        f.truncate(keep)
    return partial


def _read_done(output: Path) -> set:
    done = set()
    if output.exists():
        for number, line in enumerate(output.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                done.add(json.loads(line)["id"])
            except (json.JSONDecodeError, KeyError, TypeError):
                print(f"{output}:{number}: not an answer row; its question is asked again", file=sys.stderr)
    return done


def run(args) -> int:
    from tqdm import tqdm

    src, out = Path(args.input), Path(args.output)
    if not src.exists():
        raise InputError(f"{src} does not exist")
    if args.batch_size <= 0:
        raise InputError("--batch-size must be positive")
    writable_file(out, "--output")
    partial = drop_partial_last_line(out)
    if partial:
        print(f"{out}: dropped an unfinished last line ({len(partial)} bytes) left by an interrupted run", file=sys.stderr)
    done = _read_done(out)
    todo, failed = [], 0
    for number, line in enumerate(src.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or "id" not in row:
                raise InputError("the row needs an 'id'")
        except (json.JSONDecodeError, InputError) as exc:
            print(f"{src}:{number}: skipped: {getattr(exc, 'msg', exc)}", file=sys.stderr)
            failed += 1
            continue
        if row["id"] in done:
            continue
        try:
            todo.append((number, row, _conversation(row, src.parent)))
        except OwlError as exc:
            print(f"{src}:{number} (id {row['id']}): skipped: {exc}", file=sys.stderr)
            failed += 1
    owl = load_owl(args)
    opts = generation_options(args)
    out.parent.mkdir(parents=True, exist_ok=True)
    answered = 0
    with out.open("a") as sink, tqdm(total=len(todo), unit="answer", file=sys.stderr) as bar:
        for start in range(0, len(todo), args.batch_size):
            chunk = todo[start:start + args.batch_size]
            try:
                answers = owl.generate_batch([c for _, _, c in chunk], batch_size=args.batch_size,
                                             truncate=args.truncate, **opts)
            except OwlError:  # find the bad row(s): answer this chunk one by one
                answers = []
                for number, row, conv in chunk:
                    try:
                        answers.append(owl.chat(conv, truncate=args.truncate, **opts))
                    except OwlError as exc:
                        print(f"{src}:{number} (id {row['id']}): failed: {exc}", file=sys.stderr)
                        answers.append(None)
                        failed += 1
            for (_, row, _), answer in zip(chunk, answers):
                if answer is None:
                    continue
                record = {"id": row["id"], "answer": answer}
                if "question" in row:
                    record["question"] = row["question"]
                sink.write(json.dumps(record, ensure_ascii=False) + "\n")
                answered += 1
            sink.flush()
            bar.update(len(chunk))
    print(f"{answered} answered, {len(done)} already done, {failed} failed -> {out}", file=sys.stderr)
    return 1 if failed else 0
