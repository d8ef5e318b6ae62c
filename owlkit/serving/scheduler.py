"""The server's asyncio side of the decoding engine: jobs whose events an event loop awaits.

:class:`Scheduler` wraps one :class:`~owlkit.generation.Engine` running in its own worker
thread (continuous batching, sampling, stop strings, eviction: see
:mod:`owlkit.generation.engine`). The request handlers build a :class:`Job` (prompt ids, pixel
values, its own generation settings) and hand it to :meth:`Scheduler.submit` from the event
loop; the engine's worker reports the job's text to that loop through
``loop.call_soon_threadsafe`` and :meth:`Job.events` yields it. A client that goes away
cancels its job (:meth:`Job.cancel`): its slot is free before the next step. Too many waiting
jobs raise :class:`QueueFull` (HTTP 429), a closed scheduler :class:`SchedulerClosed` (503).
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

from owlkit.generation import Engine
from owlkit.generation import Job as EngineJob

SHUTTING_DOWN = "the server is shutting down"


class QueueFull(Exception):
    """More jobs are waiting than the scheduler accepts."""


class SchedulerClosed(Exception):
    """The scheduler is shutting down."""


class Job(EngineJob):
    """An engine job whose events (once submitted) an event loop awaits.

    Events (from :meth:`events`): ``("delta", text)`` any number of times, then ``("done",
    finish_reason)`` (``"stop"``, ``"length"`` or ``"cancelled"``) or ``("error", message)``.
    """

    def __post_init__(self):
        super().__post_init__()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue | None = None

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

    def _emit(self, kind: str, value: str) -> None:  # in the engine's worker thread
        loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(self._queue.put_nowait, (kind, value))
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            self.cancelled = True


class Scheduler:
    """The engine in its worker thread, fed from asyncio (see module doc).

    ``submit(job)`` from a running event loop; ``close()`` stops the worker (jobs still waiting
    or running get an error event).
    """

    def __init__(self, owl, max_batch: int = 8, max_wait_ms: float = 10.0, max_queue: int = 256):
        self.owl = owl
        self.engine = Engine(owl.model, owl.processor, max_batch=max_batch, max_wait_ms=max_wait_ms)
        self.max_queue = int(max_queue)

    def start(self) -> "Scheduler":
        self.engine.start()
        return self

    def close(self, timeout: float = 10.0) -> None:
        self.engine.close(timeout, message=SHUTTING_DOWN)

    @property
    def alive(self) -> bool:
        return self.engine.alive

    @property
    def waiting(self) -> int:
        return self.engine.waiting

    @property
    def running(self) -> int:
        return self.engine.running

    def stats(self) -> dict:
        return self.engine.stats()

    def submit(self, job: Job) -> Job:
        """Queue ``job`` (call from the event loop that will read its events)."""
        if not self.alive:
            raise SchedulerClosed(SHUTTING_DOWN)
        if self.waiting >= self.max_queue:
            raise QueueFull(f"{self.waiting} requests are waiting for the model; try again later")
        job._loop = asyncio.get_running_loop()
        job._queue = asyncio.Queue()
        return self.engine.submit(job)
