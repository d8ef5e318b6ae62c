"""One decoding engine for every caller: chat, batches, evaluation and the server.

Modules, from the engine outwards:

* :mod:`~owlkit.generation.engine`: :class:`Engine`, continuous batching over one model
  (admit, prefill, decode, evict), in the calling thread or in its own worker thread;
* :mod:`~owlkit.generation.cache`: the running rows and their key/value cache;
* :mod:`~owlkit.generation.jobs`: :class:`Job`, one prompt with its settings and progress;
* :mod:`~owlkit.generation.sampling`: the next token per row (greedy, temperature, top-k,
  top-p, seeded draws, repetition penalty, ``min_new_tokens``);
* :mod:`~owlkit.generation.streaming`: token ids in, text deltas out (:class:`ReplyText`);
* :mod:`~owlkit.generation.stops`: which stop strings apply and how text is cut at them.

``OwlForCausalLM.generate`` (transformers' ``GenerationMixin``) stays available to users; the
engine gives the same greedy ids (tests/test_generation.py).
"""

from __future__ import annotations

from owlkit.generation.engine import Engine
from owlkit.generation.jobs import Job

__all__ = ["Engine", "Job"]
