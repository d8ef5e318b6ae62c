"""The decoding engine: continuous batching of :class:`~owlkit.generation.jobs.Job` s over one model.

Every caller generates through it: ``Owl.chat`` (one row, streamed or not), ``Owl.generate_batch``
(many rows), ``owl eval`` (:func:`owlkit.evaluation.runner.generate_exact`) and the server (its
worker thread, wrapped for asyncio by :class:`owlkit.serving.scheduler.Scheduler`). It runs a
loop over a set of *running rows* (at most ``max_batch``) with their key/value cache
(:mod:`owlkit.generation.cache`):

1. **Admit.** Jobs waiting take the free slots. The worker thread, when nothing runs, waits
   for a first job and then at most ``max_wait_ms`` for more, so that a burst starts as one
   batch; while rows run, newcomers are admitted at once, between two steps.
2. **Prefill.** The newcomers' prompts ``[new, width]`` (left-padded, images encoded and
   spliced: ``[new, positions, hidden]``) go through the model as one batch; their first
   tokens are chosen and their caches are appended to the running rows' (left-padded to a
   common length; padded keys are masked).
3. **Decode.** One step for every running row: each row's last token in ``[rows, 1]``, its
   logits ``[rows, vocab]`` out, one token chosen per row (:mod:`owlkit.generation.sampling`).
4. **Per-row bookkeeping** (:meth:`Job._step`): the row's new text (stop strings cut, their
   possible beginnings held back) goes to its job's listener; the row finishes at EOS, at one
   of its stop strings, at its own ``max_new_tokens``, or when it was cancelled.
5. **Evict.** Finished and cancelled rows leave the batch (and the cache) before the next step,
   so their slot is free for the next waiting job at once.

Positions follow each row's attention mask and padded keys stay masked, so a greedy row gets
the same ids as when generated alone. With ``lockstep=True`` a batch is admitted only when the
previous one is done and finished rows stay in it (their output unused) until every row has
finished: the batch keeps the shape transformers' ``generate`` gives it, which is what the
official evaluation protocol of ``owl eval`` runs.

Two ways to drive it: :meth:`Engine.run` / :meth:`Engine.iterate` in the calling thread (no
worker thread), or :meth:`Engine.start` + :meth:`Engine.submit` from any thread, one worker
thread owning the model.
"""

from __future__ import annotations

import ctypes
import itertools
import logging
import queue
import threading
import time
from typing import Iterable, Iterator

import torch

from owlkit.errors import first_line
from owlkit.generation.cache import RowCache, Rows
from owlkit.generation.jobs import Job
from owlkit.generation.sampling import choose_tokens
from owlkit.generation.stops import special_strings

log = logging.getLogger("owlkit.generation")

TRIM_EVERY_S = 10.0
_malloc_trim = None


def release_memory() -> None:
    """Give freed heap memory back to the system (glibc ``malloc_trim``; a no-op elsewhere).

    Batches of ever-changing shapes fragment the allocator's heap, so that the resident memory
    of a long-running worker can creep up although nothing is leaked.
    """
    global _malloc_trim
    if _malloc_trim is None:
        try:
            _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


class Engine:
    """Generates jobs on ``model`` with ``processor``'s tokenizer (see module doc).

    ``on_retire(job)``, when set, is called as each job ends (finished, cancelled or failed).
    """

    def __init__(self, model, processor, max_batch: int = 8, max_wait_ms: float = 10.0, lockstep: bool = False):
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.model = model
        self.processor = processor
        self.max_batch = int(max_batch)
        self.max_wait = max(0.0, float(max_wait_ms)) / 1000
        self.lockstep = lockstep
        tok = processor.tokenizer
        self.eos_id = tok.eos_token_id
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
        self.specials = special_strings(tok)
        self.on_retire = None
        self._inbox: queue.Queue[Job] = queue.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._rows: Rows | None = None
        self._closing_message = "the engine is shutting down"
        # statistics
        self.steps = 0  # forward passes (prefills and decoding steps)
        self.busy_s = 0.0  # time spent in them
        self.step_rows = 0  # rows over all forward passes
        self.completed = 0
        self.cancelled = 0
        self.failed = 0
        self.tokens = 0

    # -- in the calling thread -----------------------------------------------------------------
    def run(self, jobs: Iterable[Job]) -> None:
        """Generate every job to its end in the calling thread, ``max_batch`` rows at a time.

        ``jobs`` is read lazily (a generator can build each job, images included, only when a
        slot is free). Each job's reply is in ``job.text``. Errors propagate.
        """
        for _ in self.iterate(jobs):
            pass

    def iterate(self, jobs: Iterable[Job]) -> Iterator[int]:
        """:meth:`run`, one forward pass per iteration (yields the running rows after it).

        Between two iterations the jobs' listeners have had their new text, so a caller can
        stream it; closing the iterator cancels the jobs still running.
        """
        if self.alive:
            raise RuntimeError("the engine's worker thread is running; submit() jobs instead")
        source, exhausted = iter(jobs), False
        rows: Rows | None = None
        try:
            while not exhausted or rows is not None:
                free = self.max_batch - (len(rows) if rows is not None else 0)
                if self.lockstep and rows is not None:
                    free = 0
                new = list(itertools.islice(source, free)) if not exhausted and free > 0 else []
                exhausted = exhausted or len(new) < free
                if new:
                    with torch.inference_mode():
                        fresh = self._timed(self._prefill, new)
                    if len(fresh):
                        rows = fresh if rows is None else rows.join(fresh)
                    yield len(rows) if rows is not None else 0
                if rows is not None:
                    with torch.inference_mode():
                        rows = self._timed(self._decode, rows)
                    yield len(rows) if rows is not None else 0
        finally:
            for job in rows.jobs if rows is not None else []:
                if not job.finished:
                    self._retire(job, "cancelled")

    # -- with a worker thread ------------------------------------------------------------------
    def start(self) -> "Engine":
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(target=self._work, name="owl-engine", daemon=True)
                self._thread.start()
        return self

    def close(self, timeout: float = 10.0, message: str | None = None) -> None:
        """Stop the worker; jobs still waiting or running fail with ``message``."""
        if message:
            self._closing_message = message
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        while True:  # whatever still waits will never run
            job = self._next(0)
            if job is None:
                break
            job._fail(self._closing_message)

    def submit(self, job: Job) -> Job:
        """Queue ``job`` for the worker thread (from any thread)."""
        job.submitted_at = time.monotonic()
        self._inbox.put(job)
        return job

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stop.is_set()

    @property
    def waiting(self) -> int:
        return self._inbox.qsize()

    @property
    def running(self) -> int:
        rows = self._rows
        return len(rows) if rows is not None else 0

    def stats(self) -> dict:
        return {
            "waiting": self.waiting,
            "running": self.running,
            "steps": self.steps,
            "mean_batch_size": round(self.step_rows / self.steps, 3) if self.steps else 0.0,
            "busy_s": round(self.busy_s, 3),
            "completed": self.completed,
            "cancelled": self.cancelled,
            "failed": self.failed,
            "completion_tokens": self.tokens,
        }

    def _next(self, timeout: float) -> Job | None:
        try:
            return self._inbox.get(timeout=timeout) if timeout > 0 else self._inbox.get_nowait()
        except queue.Empty:
            return None

    def _admit(self, running: int) -> list[Job]:
        """Waiting jobs for the free slots (see module doc for when it waits)."""
        jobs: list[Job] = []
        deadline = None
        while running + len(jobs) < self.max_batch and not self._stop.is_set():
            if running or jobs:
                wait = 0.0 if running or deadline is None else deadline - time.monotonic()
                job = self._next(wait)
                if job is None:
                    break
            else:
                job = self._next(0.1)
                if job is None:
                    continue  # idle: look at the stop flag again
                deadline = time.monotonic() + self.max_wait
            if job.cancelled:
                self._retire(job, "cancelled")
                continue
            jobs.append(job)
        return jobs

    def _work(self) -> None:
        torch.set_grad_enabled(False)
        trimmed, busy = time.monotonic(), False
        try:
            while not self._stop.is_set():
                rows = self._rows
                if busy and (rows is None and self._inbox.empty() or time.monotonic() - trimmed > TRIM_EVERY_S):
                    release_memory()  # on going idle, and now and then under load
                    trimmed, busy = time.monotonic(), rows is not None
                new = [] if self.lockstep and rows is not None else self._admit(len(rows) if rows is not None else 0)
                busy = busy or bool(new)
                if new:
                    fresh = self._guarded(new, self._prefill, new)
                    if fresh is not None and len(fresh):
                        self._rows = fresh if self._rows is None else self._rows.join(fresh)
                if self._rows is not None and len(self._rows):
                    self._rows = self._guarded(self._rows.jobs, self._decode, self._rows)
        finally:
            rows, self._rows = self._rows, None
            for job in rows.jobs if rows is not None else []:
                if not job.finished:
                    job._fail(self._closing_message)
                    self._retire(job)

    def _guarded(self, jobs: list[Job], step, *args) -> Rows | None:
        """``step(*args)``; on an exception every job in ``jobs`` fails with a one-line message."""
        try:
            with torch.inference_mode():
                return self._timed(step, *args)
        except Exception as exc:  # noqa: BLE001  (reported to every job of the batch)
            log.exception("generation failed")
            message = first_line(exc)
            for job in jobs:
                if not job.finished:
                    job._fail(f"generation failed: {message}")
                    self._retire(job)
            return None

    # -- the steps -----------------------------------------------------------------------------
    def _timed(self, step, *args):
        """``step(*args)``, its time added to ``busy_s``."""
        start = time.perf_counter()
        try:
            return step(*args)
        finally:
            self.busy_s += time.perf_counter() - start

    def _retire(self, job: Job, reason: str | None = None) -> None:
        if reason is not None:
            job._finish(reason)
        self.tokens += job.completion_tokens
        if job.finish_reason == "cancelled":
            self.cancelled += 1
        elif job.finish_reason == "error":
            self.failed += 1
        else:
            self.completed += 1
        if self.on_retire is not None:
            self.on_retire(job)

    def _decode_text(self, ids):
        return self.processor.decode(ids, skip_special_tokens=False)

    def _advance(self, rows: Rows, logits: torch.Tensor) -> Rows:
        """Choose each row's next token, hand it to its job, and drop the rows that finished."""
        self.steps += 1
        self.step_rows += len(rows)
        tokens = choose_tokens(rows.jobs, logits, self.eos_id)
        keep = []
        for i, (job, token) in enumerate(zip(rows.jobs, tokens.tolist())):
            if job.finished:  # lockstep: stays until the batch is done
                pass
            elif job.cancelled:
                self._retire(job, "cancelled")
            elif job._step(token, self._decode_text, self.eos_id, self.specials):
                self._retire(job)
            else:
                keep.append(i)
        rows.last = tokens
        if self.lockstep and keep:
            return rows
        return rows if len(keep) == len(rows) else rows.keep(keep)

    def _prefill(self, jobs: list[Job]) -> Rows:
        model = self.model
        width = max(len(j.input_ids) for j in jobs)
        input_ids = torch.full((len(jobs), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(jobs), width), dtype=torch.long)
        vocab = model.config.text_config.vocab_size
        for i, job in enumerate(jobs):
            n = len(job.input_ids)
            input_ids[i, width - n:] = torch.tensor(job.input_ids, dtype=torch.long)
            attention_mask[i, width - n:] = 1
            if job.repetition_penalty != 1.0:  # placeholders are not text
                job.penalty_prompt = [t for t in job.input_ids if 0 <= t < vocab]
            job.started_at = time.monotonic()
        pixels = [j.pixel_values for j in jobs if j.pixel_values is not None and len(j.pixel_values)]
        device = model.device
        pixel_values = torch.cat(pixels).to(device) if pixels else None
        embeds, mask, _, mm = model.embed_multimodal(input_ids.to(device), pixel_values, attention_mask.to(device),
                                                     pad_side="generate")
        cache = RowCache(model.config.text_config.num_hidden_layers)
        out = model(inputs_embeds=embeds, attention_mask=mask, mm_token_type_ids=mm, past_key_values=cache,
                    use_cache=True, logits_to_keep=1)
        rows = Rows(list(jobs), cache, mask.long(), torch.zeros(len(jobs), dtype=torch.long, device=device))
        return self._advance(rows, out.logits[:, -1])

    def _decode(self, rows: Rows) -> Rows | None:
        gone = [i for i, j in enumerate(rows.jobs) if j.cancelled and not j.finished]
        if gone:  # jobs cancelled since the last step free their slots now
            for i in gone:
                self._retire(rows.jobs[i], "cancelled")
            if not self.lockstep:
                rows = rows.keep([i for i in range(len(rows)) if i not in set(gone)])
        if not len(rows) or all(j.finished for j in rows.jobs):
            return None
        model = self.model
        embeds = model.get_input_embeddings()(rows.last[:, None])
        rows.mask = torch.cat([rows.mask, rows.mask.new_ones((len(rows), 1))], dim=1)
        out = model(inputs_embeds=embeds, attention_mask=rows.mask, past_key_values=rows.cache, use_cache=True,
                    logits_to_keep=1)
        rows = self._advance(rows, out.logits[:, -1])
        return rows if len(rows) else None
