"""Dynamic (continuous) batching: concurrent requests share batched decoding steps, each streamed on its own.

The asyncio side builds a :class:`Job` (prompt ids, pixel values, its own generation settings)
and hands it to :meth:`Scheduler.submit`. One worker thread owns the model and runs its own
decoding loop over a set of *running rows* (at most ``max_batch``), with their key/value cache:

1. **Admit.** Jobs waiting in the queue take the free slots. When nothing runs, the worker
   waits for a first job and then at most ``max_wait_ms`` for more, so that a burst starts as
   one batch; while rows run, newcomers are admitted at once, between two steps.
2. **Prefill.** The newcomers' prompts (left-padded, images encoded and spliced) go through
   the model as one batch; their first tokens are chosen and their caches are appended to the
   running rows' (left-padded to a common length; padded keys are masked).
3. **Decode.** One step for every running row: each row's last token in, one token out.
4. **Per-row bookkeeping** (:meth:`Job._step`): the row's new text (stop strings cut, their
   possible beginnings held back) goes to that job's asyncio queue through
   ``loop.call_soon_threadsafe``; the row finishes at EOS, at one of its own stop strings, at
   its own ``max_new_tokens``, or when its client went away (:meth:`Job.cancel`).
5. **Evict.** Finished and cancelled rows leave the batch (and the cache) before the next step,
   so their slot is free for the next waiting job at once.

The same engine runs offline: :meth:`Scheduler.run` takes a list of jobs and drives steps 2-5
in the calling thread until all are done (no worker thread, no asyncio), which is how
:meth:`owlkit.Owl.generate_batch` batches.

Sampling settings are per row (:func:`_choose`): greedy rows take their arg-max, sampling rows
draw from their own temperature / top-k / top-p distribution, with their own
``torch.Generator`` when the request has a ``seed`` (so a seeded answer does not depend on
its neighbours). Positions follow each row's attention mask and padded keys stay masked, so a
greedy row gets the same ids as when generated alone.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import AsyncIterator, Iterable, Sequence

import torch

from owlkit.errors import first_line
from owlkit.streaming import ReplyText

log = logging.getLogger("owlkit.serving")

_ids = itertools.count(1)


class QueueFull(Exception):
    """More jobs are waiting than the scheduler accepts."""


class SchedulerClosed(Exception):
    """The scheduler is shutting down."""


@dataclass(eq=False)
class Job:
    """One request's prompt and settings, and (once submitted) its stream of events.

    Events (from :meth:`events`): ``("delta", text)`` any number of times, then ``("done",
    finish_reason)`` (``"stop"``, ``"length"`` or ``"cancelled"``) or ``("error", message)``.
    """

    input_ids: list[int]
    pixel_values: torch.Tensor | None = None
    prompt_tokens: int = 0  # decoder positions of the prompt (images expanded)
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stops: Sequence[str] = ()
    # -- progress, written by the worker thread --------------------------------------------
    id: int = field(default_factory=lambda: next(_ids))
    completion_tokens: int = 0
    text: str = ""  # the reply so far (stop strings cut, special tokens removed)
    finish_reason: str | None = None
    submitted_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None

    @classmethod
    def from_encoded(cls, processor, ids: Sequence[int], images, *, max_new_tokens: int, dtype=None,
                     temperature: float | None = 0.0, top_p: float | None = None, top_k: int | None = None,
                     seed: int | None = None, stops: Sequence[str] = ()) -> "Job":
        """A job for a prompt encoded by ``processor.encode``: its images preprocessed, and
        ``max_new_tokens`` cut to the room left in the model's context."""
        used = processor.positions(ids)
        room = processor.max_length - used if processor.max_length else max_new_tokens
        pixel_values = processor.image_processor(images) if images else None
        if pixel_values is not None and dtype is not None:
            pixel_values = pixel_values.to(dtype)
        return cls(
            input_ids=list(ids),
            pixel_values=pixel_values,
            prompt_tokens=used,
            max_new_tokens=max(1, min(max_new_tokens, room)),
            temperature=float(temperature or 0.0),
            top_p=float(top_p) if top_p is not None else 1.0,
            top_k=int(top_k or 0),
            seed=seed,
            stops=list(stops),
        )

    def __post_init__(self):
        self.cancelled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue | None = None
        self._reply: ReplyText | None = None
        self._rng: torch.Generator | None = None

    @property
    def sampling(self) -> bool:
        return self.temperature > 0

    def _generator(self) -> torch.Generator | None:
        """This job's own random generator when it has a seed (else the global one)."""
        if self.seed is None:
            return None
        if self._rng is None:
            self._rng = torch.Generator().manual_seed(int(self.seed) % 2**64)
        return self._rng

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def cancel(self) -> None:
        """The client went away: stop generating for it (safe from any thread, idempotent)."""
        self.cancelled = True

    async def events(self) -> AsyncIterator[tuple[str, str]]:
        if self._queue is None:
            raise RuntimeError("submit the job first")
        while True:
            kind, value = await self._queue.get()
            yield kind, value
            if kind != "delta":
                return

    async def result(self) -> str:
        """Wait for the end; the whole reply (raises RuntimeError on a generation error)."""
        async for kind, value in self.events():
            if kind == "error":
                raise RuntimeError(value)
        return self.text

    # -- worker side ---------------------------------------------------------------------------
    def _emit(self, kind: str, value: str) -> None:
        loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(self._queue.put_nowait, (kind, value))
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            self.cancelled = True

    def _step(self, token: int, decode, eos_id: int | None, specials) -> bool:
        """Take one new token; True when this job has finished."""
        self.completion_tokens += 1
        if eos_id is not None and token == eos_id:
            return self._finish("stop")
        if self._reply is None:
            self._reply = ReplyText(decode, self.stops, specials)
        delta = self._reply.push(token)
        if delta:
            self._emit("delta", delta)
        self.text = self._reply.text
        if self._reply.stopped:
            return self._finish("stop")
        if self.completion_tokens >= self.max_new_tokens:
            return self._finish("length")
        return False

    def _finish(self, reason: str) -> bool:
        if self.finished:
            return True
        if self._reply is not None and reason != "cancelled":
            tail = self._reply.flush()  # what was held back as a possible stop-string start
            if tail:
                self._emit("delta", tail)
        self.text = self._reply.final if self._reply is not None else ""
        self.finish_reason = reason
        self.finished_at = time.monotonic()
        self._emit("done", reason)
        return True

    def _fail(self, message: str) -> None:
        if not self.finished:
            self.finish_reason = "error"
            self.finished_at = time.monotonic()
            self._emit("error", message)


def _release_memory() -> None:
    """Give freed heap memory back to the system (glibc ``malloc_trim``; a no-op elsewhere).

    Batches of ever-changing shapes fragment the allocator's heap, so that the resident memory
    of a long-running server can creep up although nothing is leaked.
    """
    global _malloc_trim
    if _malloc_trim is None:
        try:
            import ctypes

            _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim = None
TRIM_EVERY_S = 10.0


def _pad_left(t: torch.Tensor, n: int, dim: int) -> torch.Tensor:
    if n <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = n
    return torch.cat([t.new_zeros(shape), t], dim)


class _Cache:
    """Key/value cache of a set of rows: per layer ``[rows, kv_heads, length, head_dim]``.

    Implements the two methods the decoder calls (``update``, ``get_seq_length``). Rows are
    right-aligned (a row's own tokens end at the last column; padding on the left is masked).
    Each layer's tensors have room to grow (doubling), so a step writes one column in place
    instead of copying the whole cache.
    """

    def __init__(self, layers: int):
        self.keys: list[torch.Tensor | None] = [None] * layers  # buffers, ``lengths[i]`` columns used
        self.values: list[torch.Tensor | None] = [None] * layers
        self.lengths = [0] * layers

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.lengths[layer_idx]

    def layer(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.lengths[i]
        return self.keys[i][:, :, :n], self.values[i][:, :, :n]

    def set(self, i: int, key: torch.Tensor, value: torch.Tensor) -> None:
        self.keys[i], self.values[i], self.lengths[i] = key, value, key.shape[2]

    def update(self, key, value, layer_idx: int, *args, **kwargs):
        n, q = self.lengths[layer_idx], key.shape[2]
        buf_k, buf_v = self.keys[layer_idx], self.values[layer_idx]
        if buf_k is None or n + q > buf_k.shape[2]:
            room = max(2 * (n + q), 64)
            grown_k = key.new_empty(key.shape[0], key.shape[1], room, key.shape[3])
            grown_v = value.new_empty(value.shape[0], value.shape[1], room, value.shape[3])
            if n:
                grown_k[:, :, :n] = buf_k[:, :, :n]
                grown_v[:, :, :n] = buf_v[:, :, :n]
            buf_k, buf_v = self.keys[layer_idx], self.values[layer_idx] = grown_k, grown_v
        buf_k[:, :, n:n + q] = key
        buf_v[:, :, n:n + q] = value
        self.lengths[layer_idx] = n + q
        return buf_k[:, :, :n + q], buf_v[:, :, :n + q]


class _Rows:
    """The running rows: their jobs, cache, attention mask ``[rows, length]`` and last tokens."""

    def __init__(self, jobs: list[Job], cache: _Cache, mask: torch.Tensor, last: torch.Tensor):
        self.jobs, self.cache, self.mask, self.last = jobs, cache, mask, last

    def __len__(self) -> int:
        return len(self.jobs)

    def keep(self, rows: list[int]) -> "_Rows":
        """Only ``rows`` (in order), with the columns that are padding for all of them dropped."""
        index = torch.tensor(rows, dtype=torch.long, device=self.mask.device)
        mask = self.mask.index_select(0, index)
        used = mask.any(0).nonzero()
        first = int(used[0]) if len(used) else mask.shape[1]
        cache = _Cache(len(self.cache.keys))
        for i in range(len(cache.keys)):
            k, v = self.cache.layer(i)
            cache.set(i, k[:, :, first:].index_select(0, index), v[:, :, first:].index_select(0, index))
        return _Rows([self.jobs[i] for i in rows], cache, mask[:, first:], self.last.index_select(0, index))

    def join(self, other: "_Rows") -> "_Rows":
        """These rows and ``other``'s, left-padded to a common length."""
        width = max(self.mask.shape[1], other.mask.shape[1])
        pa, pb = width - self.mask.shape[1], width - other.mask.shape[1]
        cache = _Cache(len(self.cache.keys))
        for i in range(len(cache.keys)):
            (ka, va), (kb, vb) = self.cache.layer(i), other.cache.layer(i)
            cache.set(i, torch.cat([_pad_left(ka, pa, 2), _pad_left(kb, pb, 2)]),
                      torch.cat([_pad_left(va, pa, 2), _pad_left(vb, pb, 2)]))
        mask = torch.cat([_pad_left(self.mask, pa, 1), _pad_left(other.mask, pb, 1)])
        return _Rows(self.jobs + other.jobs, cache, mask, torch.cat([self.last, other.last]))


def _row_distributions(jobs: Sequence[Job], logits: torch.Tensor) -> torch.Tensor:
    """Each row's temperature, top-k and top-p applied to its logits (``-inf`` = excluded)."""
    scores = logits.float()
    vocab = scores.shape[-1]
    temperature = torch.tensor([max(j.temperature, 1e-4) for j in jobs], dtype=torch.float32)
    top_p = torch.tensor([j.top_p for j in jobs], dtype=torch.float32)
    top_k = torch.tensor([j.top_k if j.top_k > 0 else vocab for j in jobs], dtype=torch.long).clamp(1, vocab)
    out = scores / temperature[:, None]
    if bool((top_k < vocab).any()):
        kth = out.sort(dim=-1, descending=True).values.gather(1, (top_k - 1)[:, None])
        out = out.masked_fill(out < kth, float("-inf"))
    if bool((top_p < 1).any()):
        sorted_logits, order = out.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        before = probs.cumsum(-1) - probs  # the probability of the better tokens
        drop = torch.zeros_like(before, dtype=torch.bool).scatter(1, order, before > top_p[:, None])
        out = out.masked_fill(drop, float("-inf"))  # never drops a row's best token
    return out


def _choose(jobs: Sequence[Job], logits: torch.Tensor) -> torch.Tensor:
    """The next token of every row: arg-max for greedy rows, a draw for sampling rows."""
    chosen = logits.argmax(-1)
    sampling = [i for i, j in enumerate(jobs) if j.sampling]
    if sampling:
        index = torch.tensor(sampling, dtype=torch.long, device=logits.device)
        rows = [jobs[i] for i in sampling]
        probs = _row_distributions(rows, logits.index_select(0, index)).softmax(-1)
        for r, i in enumerate(sampling):
            chosen[i] = torch.multinomial(probs[r], 1, generator=jobs[i]._generator())[0]
    return chosen


class Scheduler:
    """Owns the model in one worker thread and batches all jobs through it (see module doc).

    ``submit(job)`` from a running event loop; ``close()`` stops the worker (jobs still waiting
    or running get an error event).
    """

    def __init__(self, owl, max_batch: int = 8, max_wait_ms: float = 10.0, max_queue: int = 256):
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.owl = owl
        self.max_batch = int(max_batch)
        self.max_wait = max(0.0, float(max_wait_ms)) / 1000
        self.max_queue = int(max_queue)
        self._inbox: queue.Queue[Job] = queue.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._rows: _Rows | None = None
        # statistics
        self.steps = 0  # forward passes (prefills and decoding steps)
        self.busy_s = 0.0  # time spent in them
        self.step_rows = 0  # rows over all forward passes
        self.completed = 0
        self.cancelled = 0
        self.failed = 0
        self.tokens = 0
        self.on_retire = None  # optional callback(job), called as each job ends

    # -- life cycle ----------------------------------------------------------------------------
    def start(self) -> "Scheduler":
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(target=self._work, name="owl-scheduler", daemon=True)
                self._thread.start()
        return self

    def close(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        while True:  # whatever still waits will never run
            job = self._next(0)
            if job is None:
                break
            job._fail("the server is shutting down")

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

    # -- the asyncio side ----------------------------------------------------------------------
    def submit(self, job: Job) -> Job:
        """Queue ``job`` (call from the event loop that will read its events)."""
        if not self.alive:
            raise SchedulerClosed("the server is shutting down")
        if self.waiting >= self.max_queue:
            raise QueueFull(f"{self.waiting} requests are waiting for the model; try again later")
        job._loop = asyncio.get_running_loop()
        job._queue = asyncio.Queue()
        job.submitted_at = time.monotonic()
        self._inbox.put(job)
        return job

    # -- offline -------------------------------------------------------------------------------
    def run(self, jobs: Iterable[Job]) -> None:
        """Generate every job to its end in the calling thread, ``max_batch`` rows at a time.

        ``jobs`` is read lazily (a generator can build each job, images included, only when a
        slot is free). A finished row's slot goes to the next job before the next step
        (continuous batching); each job's reply is in ``job.text``. Errors propagate. Not while
        the worker thread runs.
        """
        if self.alive:
            raise RuntimeError("the scheduler's worker thread is running; submit() jobs instead")
        source, exhausted = iter(jobs), False
        rows: _Rows | None = None
        with torch.inference_mode():
            while not exhausted or rows is not None:
                free = self.max_batch - (len(rows) if rows is not None else 0)
                new = list(itertools.islice(source, free)) if not exhausted and free > 0 else []
                exhausted = exhausted or len(new) < free
                if new:
                    fresh = self._timed(self._prefill, new)
                    if len(fresh):
                        rows = fresh if rows is None else rows.join(fresh)
                if rows is not None:
                    rows = self._timed(self._decode, rows)

    # -- the worker ----------------------------------------------------------------------------
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

    def _work(self) -> None:
        torch.set_grad_enabled(False)
        trimmed, busy = time.monotonic(), False
        try:
            while not self._stop.is_set():
                rows = self._rows
                if busy and (rows is None and self._inbox.empty() or time.monotonic() - trimmed > TRIM_EVERY_S):
                    _release_memory()  # on going idle, and now and then under load
                    trimmed, busy = time.monotonic(), rows is not None
                new = self._admit(len(rows) if rows is not None else 0)
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
                job._fail("the server is shutting down")
                self._retire(job)

    def _timed(self, step, *args):
        """``step(*args)``, its time added to ``busy_s``."""
        start = time.perf_counter()
        try:
            return step(*args)
        finally:
            self.busy_s += time.perf_counter() - start

    def _guarded(self, jobs: list[Job], step, *args) -> _Rows | None:
        """``step(*args)``; on an exception every job in ``jobs`` fails with a one-line message."""
        try:
            with torch.inference_mode():
                return self._timed(step, *args)
        except Exception as exc:  # noqa: BLE001  (reported to every client of the batch)
            log.exception("generation failed")
            message = first_line(exc)
            for job in jobs:
                if not job.finished:
                    job._fail(f"generation failed: {message}")
                    self._retire(job)
            return None

    def _advance(self, rows: _Rows, logits: torch.Tensor) -> _Rows:
        """Choose each row's next token, hand it to its job, and drop the rows that finished."""
        self.steps += 1
        self.step_rows += len(rows)
        tokens = _choose(rows.jobs, logits)
        eos = self.owl.processor.tokenizer.eos_token_id
        decode = self._decode_text
        specials = self.owl.special_strings()
        keep = []
        for i, (job, token) in enumerate(zip(rows.jobs, tokens.tolist())):
            if job.cancelled:
                self._retire(job, "cancelled")
            elif job._step(token, decode, eos, specials):
                self._retire(job)
            else:
                keep.append(i)
        rows.last = tokens
        return rows if len(keep) == len(rows) else rows.keep(keep)

    def _decode_text(self, ids):
        return self.owl.processor.decode(ids, skip_special_tokens=False)

    def _prefill(self, jobs: list[Job]) -> _Rows:
        model = self.owl.model
        tok = self.owl.processor.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        width = max(len(j.input_ids) for j in jobs)
        input_ids = torch.full((len(jobs), width), pad, dtype=torch.long)
        attention_mask = torch.zeros((len(jobs), width), dtype=torch.long)
        for i, job in enumerate(jobs):
            n = len(job.input_ids)
            input_ids[i, width - n:] = torch.tensor(job.input_ids, dtype=torch.long)
            attention_mask[i, width - n:] = 1
            job.started_at = time.monotonic()
        pixels = [j.pixel_values for j in jobs if j.pixel_values is not None and len(j.pixel_values)]
        device = model.device
        pixel_values = torch.cat(pixels).to(device) if pixels else None
        embeds, mask, _, mm = model.embed_multimodal(input_ids.to(device), pixel_values, attention_mask.to(device),
                                                     pad_side="generate")
        cache = _Cache(model.config.text_config.num_hidden_layers)
        out = model(inputs_embeds=embeds, attention_mask=mask, mm_token_type_ids=mm, past_key_values=cache,
                    use_cache=True, logits_to_keep=1)
        rows = _Rows(list(jobs), cache, mask.long(), torch.zeros(len(jobs), dtype=torch.long, device=device))
        return self._advance(rows, out.logits[:, -1])

    def _decode(self, rows: _Rows) -> _Rows | None:
        gone = [i for i, j in enumerate(rows.jobs) if j.cancelled]
        if gone:  # clients that hung up since the last step free their slots now
            for i in gone:
                self._retire(rows.jobs[i], "cancelled")
            rows = rows.keep([i for i in range(len(rows)) if i not in set(gone)])
            if not len(rows):
                return None
        model = self.owl.model
        embeds = model.get_input_embeddings()(rows.last[:, None])
        rows.mask = torch.cat([rows.mask, rows.mask.new_ones((len(rows), 1))], dim=1)
        out = model(inputs_embeds=embeds, attention_mask=rows.mask, past_key_values=rows.cache, use_cache=True,
                    logits_to_keep=1)
        rows = self._advance(rows, out.logits[:, -1])
        return rows if len(rows) else None
