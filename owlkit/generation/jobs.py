"""A :class:`Job`: one prompt, its generation settings, and its progress as the engine runs it.

The engine's worker (or the caller of :meth:`Engine.run <owlkit.generation.engine.Engine.run>`)
feeds a job its new tokens (:meth:`Job._step`); the job turns them into text
(:class:`~owlkit.generation.streaming.ReplyText`), decides when it is finished (EOS, one of its
stop strings, its ``max_new_tokens``, or :meth:`Job.cancel`) and reports ``("delta", text)``
and then ``("done", finish_reason)`` or ``("error", message)`` through :meth:`Job._emit`
(to ``on_event`` when set; the server's jobs hand them to an event loop instead).
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from owlkit.generation.streaming import ReplyText

_ids = itertools.count(1)


@dataclass(eq=False)
class Job:
    """One request's prompt and settings, and its progress (written by the engine)."""

    input_ids: list[int]
    pixel_values: torch.Tensor | None = None
    prompt_tokens: int = 0  # decoder positions of the prompt (images expanded)
    max_new_tokens: int = 256
    min_new_tokens: int = 0
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    repetition_penalty: float = 1.0
    stops: Sequence[str] = ()
    on_event: Callable[[str, str], None] | None = None
    # -- progress, written by the engine ------------------------------------------------------
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
                     seed: int | None = None, repetition_penalty: float | None = None,
                     stops: Sequence[str] = ()) -> "Job":
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
            repetition_penalty=float(repetition_penalty or 1.0),
            stops=list(stops),
        )

    def __post_init__(self):
        self.cancelled = False
        self.penalty_prompt: list[int] = []  # the prompt's text ids, set by the engine when penalised
        self._reply: ReplyText | None = None
        self._rng: torch.Generator | None = None

    @property
    def sampling(self) -> bool:
        return self.temperature > 0

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def token_ids(self) -> list[int]:
        """The new ids so far (EOS not included)."""
        return self._reply.ids if self._reply is not None else []

    def generator(self) -> torch.Generator | None:
        """This job's own random generator when it has a seed (else None: the global one)."""
        if self.seed is None:
            return None
        if self._rng is None:
            self._rng = torch.Generator().manual_seed(int(self.seed) % 2**64)
        return self._rng

    def cancel(self) -> None:
        """Stop generating for this job (safe from any thread, idempotent)."""
        self.cancelled = True

    # -- engine side ---------------------------------------------------------------------------
    def _emit(self, kind: str, value: str) -> None:
        if self.on_event is not None:
            self.on_event(kind, value)

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
