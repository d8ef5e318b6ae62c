"""Running a model on a benchmark: what ``owl eval TASK`` does.

::

    from owlkit.inference import Owl
    from owlkit.evaluation.runner import evaluate

    result = evaluate("vqav2", Owl.load("mplug-owl2-7b"), "data/vqav2", "runs/owl2", limit=100)
    result["metrics"]["overall"]

Steps: look the benchmark up (:data:`~owlkit.evaluation.benchmarks.BENCHMARKS`), read it with
its reader (bad input raises :class:`~owlkit.errors.InputError` before the model is touched),
build its prompt, answer in batches, append every answer to ``<output>/<task>_predictions.jsonl``
as soon as its batch is done, score with its metric, and write ``results.json`` /
``results.md`` (:func:`.report.write_results`) plus the benchmark's submission file where it
has one. Ids already in the predictions file are not asked again,
so an interrupted run resumes where it stopped (a half-written last line is dropped).

How the model answers (``Benchmark.kind``):

* ``generate`` (:func:`generate_exact`): the official prompt string is tokenized as it is
  (:func:`exact_prompt_ids`, ``encode_prompt``), trailing space after ``ASSISTANT:``
  included, which the chat template would not produce; left-padded batches go through the
  decoding engine in lockstep (as ``generate`` runs them) with greedy decoding and the task's
  ``min_new_tokens`` / ``max_new_tokens``; the answer is the new tokens up to EOS, decoded
  without special tokens and stripped. For an mPLUG-Owl (v1) model the prompt is first
  rewritten into the v1 template (:func:`v1_prompt`) and the answer is also cut at
  ``"\\nHuman:"``.
* ``loglik`` (:func:`option_logprobs`, MMLU): no generation; each option letter is scored by
  the summed log-probability of its tokens ``" A"``, ``" B"``... after the prompt without its
  trailing space (the usual log-likelihood multiple-choice protocol), and the best letter is
  the prediction. One forward pass per question when every option is a single token.
* ``dialogue`` (OwlEval): OpenAI-style conversations through :meth:`Owl.generate_batch` (the
  model's own chat template and stop strings); the turns of one image are asked in order
  in one conversation, with the model's own earlier answers as assistant messages; turn
  ``t`` of every dialogue is batched together.

What ``--limit`` keeps is the benchmark's ``select``: MMBench is run with CircularEval, every
question asked once per rotation of its options, ``--limit`` counting questions; OwlEval's
``--limit`` counts dialogues.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from owlkit.config import V1_IMAGE_PLACEHOLDER as V1_IMAGE
from owlkit.config import V2_IMAGE_PLACEHOLDER as V2_IMAGE
from owlkit.errors import InputError
from owlkit.evaluation import report
from owlkit.evaluation.benchmarks import Benchmark, RunFolder, get_benchmark
from owlkit.evaluation.samples import LETTERS, EvalSample, group_dialogues
from owlkit.generation import Engine, Job
from owlkit.generation.stops import cut_at_stop, official_stops
from owlkit.processing.images import MODES
from owlkit.processing.templates import V1_SYSTEM, render
from owlkit.processing.tokenizer import encode_prompt

__all__ = [
    "v1_prompt",
    "exact_prompt",
    "exact_prompt_ids",
    "generate_exact",
    "common_prefix",
    "option_logprobs",
    "PredictionStore",
    "load_samples",
    "evaluate",
]

_V2_TURN = re.compile(r"USER: (?P<user>.*?) ASSISTANT:(?: (?P<answer>.*))?", re.S)


# ---------------------------------------------------------------------------------------------
# prompts as the model sees them


def v1_prompt(prompt: str) -> str:
    """An mPLUG-Owl2 prompt string rewritten in the mPLUG-Owl (v1) conversation template.

    ``USER: <|image|>{q} ASSISTANT: `` becomes the v1 system line, one ``Human: <image>`` line
    per image (images first, as the v1 template puts them), ``Human: {q}`` and ``AI: ``
    (trailing space, the v1 generation prompt). Earlier turns (``... ASSISTANT: {a}</s>USER:
    ...``) become ``Human:`` / ``AI: {a}`` line pairs, so ``v1_prompt(dialogue_prompt(turns, 2))``
    is ``dialogue_prompt(turns, 1)`` with ``<image>`` for the placeholder.
    """
    turns = prompt.split("</s>")
    lines = [V1_SYSTEM]
    for k, turn in enumerate(turns):
        m = _V2_TURN.fullmatch(turn)
        if m is None:
            raise InputError(f"not an mPLUG-Owl2 prompt (expected 'USER: ... ASSISTANT:'): {turn[:60]!r}")
        user, answer = m.group("user"), m.group("answer")
        n_images = user.count(V2_IMAGE)
        if n_images:
            user = user.replace(V2_IMAGE, "").strip()
        lines += [f"Human: {V1_IMAGE}"] * n_images
        lines.append(f"Human: {user}")
        if k < len(turns) - 1:
            lines.append(f"AI: {answer or ''}")
        elif answer:
            raise InputError(f"the prompt ends with an answer, not with 'ASSISTANT:': {turn[-60:]!r}")
        else:
            lines.append("AI: ")
    return "\n".join(lines)


def exact_prompt(prompt: str, owl_version: int) -> str:
    """The official (v2-style) prompt string as the model of ``owl_version`` gets it."""
    return prompt if int(owl_version) == 2 else v1_prompt(prompt)


def _encode(owl, text: str) -> list[int]:
    proc = owl.processor
    return encode_prompt(text, proc.owl_version, proc.tokenizer, proc.image_token_id)


def exact_prompt_ids(owl, prompt: str) -> list[int]:
    """Input ids of an official prompt string, tokenized exactly (trailing space included)."""
    return _encode(owl, exact_prompt(prompt, owl.processor.owl_version))


def _room(owl, rows: Sequence[Sequence[int]], wanted: int, names: Sequence[Any] | None) -> int:
    """``wanted`` new tokens clamped to what the context leaves after the longest prompt."""
    proc = owl.processor
    if not proc.max_length:
        return wanted
    for i, r in enumerate(rows):
        used = proc.positions(r)
        if used + 1 > proc.max_length:
            who = f"sample {names[i]!r}: " if names is not None else ""
            raise InputError(f"{who}the prompt needs {used} positions but the model's context is "
                             f"{proc.max_length}")
    return max(1, min(wanted, proc.max_length - max(proc.positions(r) for r in rows)))


def generate_exact(owl, prompts: Sequence[str], images: Sequence[Sequence[Any]], *, max_new_tokens: int,
                   min_new_tokens: int = 1, image_mode: str | None = None,
                   names: Sequence[Any] | None = None) -> list[str]:
    """Greedy answers to official prompt strings, as one left-padded batch.

    ``images[i]`` holds the images (paths or objects) of ``prompts[i]`` in placeholder order;
    ``image_mode`` overrides the processor's aspect-ratio mode. The ids are
    :func:`exact_prompt_ids`; the engine runs them as one lockstep batch (the rows stay
    together until the last one ends, as in ``generate``), each answer being its new ids up to
    EOS, decoded without special tokens, cut where the official protocol cuts
    (:func:`~owlkit.generation.stops.official_stops`) and stripped.
    """
    proc = owl.processor
    rows = [exact_prompt_ids(owl, p) for p in prompts]
    max_new = _room(owl, rows, int(max_new_tokens), names)
    min_new = max(0, min(int(min_new_tokens), max_new))
    jobs = [Job(input_ids=r, pixel_values=proc.image_processor(list(ims), mode=image_mode) if len(ims) else None,
                prompt_tokens=proc.positions(r), max_new_tokens=max_new, min_new_tokens=min_new)
            for r, ims in zip(rows, images)]
    Engine(owl.model, proc, max_batch=len(jobs), lockstep=True).run(jobs)
    stops = official_stops(proc.owl_version)
    return [cut_at_stop(proc.decode(job.token_ids), stops)[0].strip() for job in jobs]


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading ids ``a`` and ``b`` share (where a continuation's tokens start)."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def option_logprobs(owl, prompts: Sequence[str], options: Sequence[Sequence[str]], *, batch_size: int = 8,
                    on_done: Callable[[int], None] | None = None) -> list[list[float]]:
    """Summed log-probability of each continuation ``options[i][j]`` (e.g. ``" A"``) after
    ``prompts[i]`` without its trailing space (the official prompts end with ``"ASSISTANT: "``;
    the space goes with the option, as in the usual log-likelihood protocol).

    Tokens are ``encode(context + option)`` past the ids it shares with ``encode(context)``.
    When every option of a prompt is one token after the whole context, one forward pass
    scores them all. Text only. ``on_done(k)`` is called as questions complete.
    """
    proc, model = owl.processor, owl.model
    # requests: (ids, [(position predicting the token, token id, prompt index, option index)])
    requests: list[tuple[list[int], list[tuple[int, int, int, int]]]] = []
    pending = [0] * len(prompts)
    for i, (prompt, opts) in enumerate(zip(prompts, options)):
        text = exact_prompt(prompt, proc.owl_version)
        context = text[:-1] if text.endswith(" ") else text
        ctx = _encode(owl, context)
        fulls = [_encode(owl, context + o) for o in opts]
        starts = [max(1, common_prefix(ctx, f)) for f in fulls]
        for o, f, s in zip(opts, fulls, starts):
            if s >= len(f):
                raise InputError(f"option {o!r} adds no token to the prompt")
        if all(s == len(ctx) and len(f) == s + 1 for f, s in zip(fulls, starts)):
            requests.append((ctx, [(len(ctx) - 1, f[-1], i, j) for j, f in enumerate(fulls)]))
            pending[i] = 1
        else:
            for j, (f, s) in enumerate(zip(fulls, starts)):
                requests.append((f, [(p - 1, f[p], i, j) for p in range(s, len(f))]))
            pending[i] = len(fulls)
    _room(owl, [r for r, _ in requests], 1, None)
    scores = [[0.0] * len(opts) for opts in options]
    order = sorted(range(len(requests)), key=lambda k: len(requests[k][0]))
    pad = proc.tokenizer.pad_token_id if proc.tokenizer.pad_token_id is not None else 0
    device = model.device
    for start in range(0, len(order), batch_size):
        chunk = [requests[k] for k in order[start:start + batch_size]]
        width = max(len(ids) for ids, _ in chunk)
        input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for b, (ids, _) in enumerate(chunk):  # right padding: real tokens never see the pads
            input_ids[b, :len(ids)] = torch.tensor(ids, dtype=torch.long)
            mask[b, :len(ids)] = 1
        with torch.inference_mode():
            logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits
        done = 0
        for b, (_, targets) in enumerate(chunk):
            pos = torch.tensor([t[0] for t in targets], device=logits.device)
            logp = torch.log_softmax(logits[b, pos].float(), dim=-1)
            for row, (_, token, i, j) in zip(logp, targets):
                scores[i][j] += float(row[token])
            i = targets[0][2]
            pending[i] -= 1
            done += pending[i] == 0
        if on_done is not None and done:
            on_done(done)
    return scores


# ---------------------------------------------------------------------------------------------
# the predictions file


class PredictionStore:
    """``<task>_predictions.jsonl``: one JSON row per answered sample (``id``, ``prompt``,
    ``prediction``...), appended batch by batch. Rows are keyed by ``str(id)``; a later row
    for the same id wins. A last line cut short by an interruption is removed on opening."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.rows: dict[str, dict[str, Any]] = {}
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):  # interrupted mid-write: drop the partial row
            keep = data.rfind(b"\n") + 1
            with open(self.path, "r+b") as f:
                f.truncate(keep)
            print(f"{self.path}: dropped an incomplete last line (interrupted run)", file=sys.stderr)
            data = data[:keep]
        for lineno, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{self.path}:{lineno}: not a predictions row ({e.msg}); fix or delete "
                                 "the file") from None
            if not isinstance(row, dict) or "id" not in row or "prediction" not in row:
                raise InputError(f"{self.path}:{lineno}: not a predictions row (needs 'id' and "
                                 "'prediction'); fix or delete the file")
            self.rows[str(row["id"])] = row

    def get(self, sid: Any) -> dict[str, Any] | None:
        return self.rows.get(str(sid))

    def check(self, sid: Any, key: str, value: Any) -> None:
        """Refuse to reuse a row made from another prompt (other model generation, other data)."""
        row = self.get(sid)
        if row is not None and key in row and row[key] != value:
            raise InputError(f"{self.path}: the saved answer to {sid!r} was made with another {key} "
                             "(another model generation or data?); use a new --output folder or delete "
                             "the file")

    def append(self, rows: Sequence[dict[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(report._jsonable(row), ensure_ascii=False) + "\n")
                self.rows[str(row["id"])] = row
            f.flush()


# ---------------------------------------------------------------------------------------------
# reading


def load_samples(task: str | Benchmark, data: str | Path, *, limit: int | None = None,
                 images: str | Path | None = None, split: str | None = None,
                 annotations: str | Path | None = None) -> list[EvalSample]:
    """The samples the run will answer: the reader's, cut to ``limit`` (MMBench: ``limit``
    questions, each expanded into its circular copies; OwlEval: ``limit`` dialogues)."""
    spec = get_benchmark(task) if isinstance(task, str) else task
    if limit is not None and limit <= 0:
        raise InputError("--limit must be positive")
    given = {"images": images, "split": split, "annotations": annotations}
    kwargs = {}
    for option, value in given.items():
        if value is None:
            continue
        if option not in spec.options:
            raise InputError(f"--{option} does not apply to task {spec.name}")
        kwargs[spec.options[option]] = value
    path = spec.resolve_data(data)
    samples = spec.select(spec.reader(path, **kwargs), limit)
    if not samples:
        raise InputError(f"{path}: no samples for task {spec.name}; expected {spec.layout}")
    return samples


# ---------------------------------------------------------------------------------------------
# running


def _bar(total: int, task: str, progress: bool):
    return tqdm(total=total, unit="answer", desc=task, file=sys.stderr, disable=not progress or total == 0)


def _run_generate(owl, spec: Benchmark, samples, store, *, batch_size, max_new, min_new, image_mode,
                  progress) -> int:
    prompts = {s.id: spec.prompt.build(s) for s in samples}
    version = owl.processor.owl_version
    for s in samples:
        store.check(s.id, "prompt", exact_prompt(prompts[s.id], version))
    todo = [s for s in samples if store.get(s.id) is None]
    lengths = {s.id: len(exact_prompt_ids(owl, prompts[s.id])) for s in todo}
    todo.sort(key=lambda s: lengths[s.id])
    with _bar(len(todo), spec.name, progress) as bar:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            answers = generate_exact(owl, [prompts[s.id] for s in chunk], [s.images for s in chunk],
                                     max_new_tokens=max_new, min_new_tokens=min_new, image_mode=image_mode,
                                     names=[s.id for s in chunk])
            store.append([{"id": s.id, "prompt": exact_prompt(prompts[s.id], version), "prediction": a}
                          for s, a in zip(chunk, answers)])
            bar.update(len(chunk))
    return len(todo)


def _run_loglik(owl, spec: Benchmark, samples, store, *, batch_size, progress) -> int:
    prompts = {s.id: spec.prompt.build(s) for s in samples}
    version = owl.processor.owl_version
    for s in samples:
        store.check(s.id, "prompt", exact_prompt(prompts[s.id], version))
        if s.images:
            raise InputError(f"sample {s.id!r}: log-likelihood scoring is for text-only questions")
    todo = [s for s in samples if store.get(s.id) is None]
    # a few questions per call, so that the predictions file grows as the run goes
    per_call = max(1, batch_size)
    with _bar(len(todo), spec.name, progress) as bar:
        for start in range(0, len(todo), per_call):
            chunk = todo[start:start + per_call]
            letters = [LETTERS[:len(s.choices)] for s in chunk]
            scores = option_logprobs(owl, [prompts[s.id] for s in chunk],
                                     [[" " + c for c in ls] for ls in letters], batch_size=batch_size)
            rows = []
            for s, ls, sc in zip(chunk, letters, scores):
                best = max(range(len(ls)), key=lambda j: sc[j])
                rows.append({"id": s.id, "prompt": exact_prompt(prompts[s.id], version), "prediction": ls[best],
                             "logprobs": {c: round(v, 4) for c, v in zip(ls, sc)}})
            store.append(rows)
            bar.update(len(chunk))
    return len(todo)


def _run_dialogues(owl, spec: Benchmark, samples, store, *, batch_size, max_new, image_mode, progress) -> int:
    for s in samples:
        store.check(s.id, "question", s.question)
    dialogues = group_dialogues(samples)
    answers: dict[Any, str] = {}
    for d in dialogues:  # keep the answered turns up to the first missing one
        for s in d:
            row = store.get(s.id)
            if row is None:
                break
            answers[s.id] = row["prediction"]

    def conversation(d: list[EvalSample], t: int) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = []
        for k in range(t + 1):
            # the image once, in the first turn (every OwlEval row names it)
            content: list[dict[str, Any]] = [{"type": "image", "image": str(p)} for p in d[0].images] if k == 0 else []
            content.append({"type": "text", "text": d[k].question})
            messages.append({"role": "user", "content": content})
            if k < t:
                messages.append({"role": "assistant", "content": answers[d[k].id]})
        return messages

    total = sum(1 for s in samples if s.id not in answers)
    image_proc = owl.processor.image_processor
    saved_mode = image_proc.mode
    if image_mode:
        image_proc.mode = image_mode
    try:
        with _bar(total, spec.name, progress) as bar:
            for t in range(max((len(d) for d in dialogues), default=0)):
                todo = [d for d in dialogues if len(d) > t and d[t].id not in answers]
                for start in range(0, len(todo), batch_size):
                    chunk = todo[start:start + batch_size]
                    convs = [conversation(d, t) for d in chunk]
                    outs = owl.generate_batch(convs, batch_size=batch_size, max_new_tokens=max_new, truncate=True)
                    rows = []
                    for d, conv, out in zip(chunk, convs, outs):
                        s = d[t]
                        answers[s.id] = out
                        rows.append({"id": s.id, "question": s.question,
                                     "prompt": render(conv, owl.processor.template).prompt, "prediction": out,
                                     "dialogue": s.metadata.get("dialogue"), "turn": t})
                    store.append(rows)
                    bar.update(len(chunk))
    finally:
        image_proc.mode = saved_mode
    return total


def evaluate(task: str | Benchmark, owl, data: str | Path, output: str | Path, *,
             samples: Sequence[EvalSample] | None = None, limit: int | None = None, batch_size: int = 8,
             image_mode: str | None = None, max_new_tokens: int | None = None,
             images: str | Path | None = None, split: str | None = None, annotations: str | Path | None = None,
             model_id: str = "owlkit", html_embed: str = "relative", progress: bool = True,
             info: dict[str, Any] | None = None, lenient: bool = False, java: bool = False) -> dict[str, Any]:
    """Run ``owl`` (an :class:`~owlkit.inference.Owl`) on ``task`` and write the run folder.

    ``samples`` skips reading (they must come from :func:`load_samples`). ``max_new_tokens``
    overrides the task's (``min_new_tokens`` is clamped to it). ``lenient``: owlkit's forgiving
    answer parsers, metrics named ``*_lenient``; ``java``: pycocoevalcap's jars (captions).
    ``results.json`` records per metric the reference scorer and the lenient flag. Returns ``{"task", "metrics"
    (summary), "files", "generated", "reused"}``.
    """
    spec = get_benchmark(task) if isinstance(task, str) else task
    if java and spec.java is None:
        raise InputError(f"--java applies to the caption tasks only, not to {spec.name}")
    if batch_size <= 0:
        raise InputError("--batch-size must be positive")
    if max_new_tokens is not None and max_new_tokens <= 0:
        raise InputError("--max-new-tokens must be positive")
    if image_mode is not None and image_mode not in MODES:
        raise InputError(f"unknown image mode {image_mode!r}; choose one of: {', '.join(MODES)}")
    if samples is None:
        samples = load_samples(spec, data, limit=limit, images=images, split=split, annotations=annotations)
    samples = list(samples)
    data = Path(data)
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise InputError(f"{output}: is a file; the output is the run folder to write")
    output.mkdir(parents=True, exist_ok=True)
    store = PredictionStore(output / f"{spec.name}_predictions.jsonl")
    setting = spec.prompt
    max_new = int(max_new_tokens or setting.max_new_tokens)
    min_new = min(setting.min_new_tokens, max_new)
    mode = image_mode or owl.processor.image_processor.mode
    if spec.kind == "generate":
        generated = _run_generate(owl, spec, samples, store, batch_size=batch_size, max_new=max_new,
                                  min_new=min_new, image_mode=mode, progress=progress)
    elif spec.kind == "loglik":
        generated = _run_loglik(owl, spec, samples, store, batch_size=batch_size, progress=progress)
    else:
        generated = _run_dialogues(owl, spec, samples, store, batch_size=batch_size, max_new=max_new,
                                   image_mode=mode, progress=progress)
    preds = {s.id: str(store.get(s.id)["prediction"]) for s in samples}

    run_info: dict[str, Any] = {
        "model": model_id, "data": str(data), "samples": len(samples), "limit": limit,
        "owl_version": owl.processor.owl_version, "prompt_source": setting.source,
        "official_prompt": setting.official,
    }
    if spec.kind == "loglik":
        run_info["scoring"] = "log-likelihood of ' A'..' D' after the prompt"
    else:
        run_info.update({"image_mode": mode, "max_new_tokens": max_new,
                         "min_new_tokens": min_new if spec.kind == "generate" else None})
    run_info.update(info or {})
    if spec.kind == "dialogue":
        words = [len(p.split()) for p in preds.values()]
        metrics: dict[str, Any] = {"n": len(samples),
                                   "mean_answer_words": round(sum(words) / len(words), 2) if words else 0.0}
        run_info["dialogues"] = len(group_dialogues(samples))
    elif spec.metric is None:
        metrics = {"n": len(samples)}
        run_info["scored"] = spec.no_metric
    elif not any(s.answers for s in samples):
        metrics = {"n": len(samples)}
        run_info["scored"] = "no reference answers (test split): see the submission file"
    else:
        try:
            metrics = spec.score(samples, preds, lenient=lenient, java=java)
        except ValueError as exc:
            raise InputError(f"cannot score {spec.name}: {exc}") from None
    summary, _ = report.split_details(metrics)
    provenance = spec.provenance(summary, lenient) if spec.metric is not None else {}
    files = [report.write_results(output, spec.name, metrics, info=run_info, provenance=provenance),
             output / "results.md", store.path]
    if spec.submission is not None:
        files += spec.submission(samples, preds, RunFolder(output, spec.name, data, model_id, html_embed))
    return {"task": spec.name, "metrics": summary, "files": files, "generated": generated,
            "reused": len(samples) - generated}
