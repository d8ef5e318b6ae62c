"""The Python API: ``Owl.load(path).chat(messages)``.

``Owl`` bundles a model with its processor and offers:

* ``chat(messages, stream=False, **generation)``: the reply, or an iterator of text pieces;
* ``ask(image, question, **generation)``: one-liners;
* ``generate_batch(conversations, batch_size=8, **generation)``: many replies, batched.

Generation options: ``max_new_tokens`` (256), ``temperature`` (0 = greedy, the default),
``top_p``, ``top_k``, ``repetition_penalty``, ``seed``, ``stop`` (strings). Generation ends at
EOS and at the template's turn separator; stop strings are cut from the reply. All of it runs on
the decoding engine (:class:`owlkit.generation.Engine`): one row for ``chat``, continuous
batches for ``generate_batch``.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Any, Iterator, Sequence

from tqdm import tqdm

from owlkit.checkpoints import load_model
from owlkit.errors import InputError, OwlError
from owlkit.generation import Engine, Job
from owlkit.generation.stops import reply_stops, special_strings
from owlkit.models import cpu_decoding
from owlkit.processing.processor import OwlProcessor
from owlkit.zoo.bundled import resolve_model

GENERATION_KEYS = ("max_new_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "seed", "stop")


def bundled_model_path() -> Path:
    """Folder of the model shipped inside the package (owl-tiny)."""
    return Path(__file__).resolve().parent / "assets" / "owl-tiny"


class Owl:
    def __init__(self, model, processor: OwlProcessor):
        self.model = model
        self.processor = processor
        #: Counted before any opt-in CPU repacking (packed matrices are buffers, not parameters).
        self.num_parameters = sum(p.numel() for p in model.parameters())

    @classmethod
    def load(cls, path: str | Path | None = None, dtype=None, device=None, *, device_map=None,
             max_memory=None, quantize=None, group_size=None, image_cache_mb: float = 64.0,
             decoding_layout: str = "auto") -> "Owl":
        """Load a model folder (official or owlkit), or a bundled model by name (``"owl-small"``,
        ``"owl-tiny"``); without a path, the default bundled model (:mod:`owlkit.zoo.bundled`).

        ``dtype``, ``device``, ``device_map``, ``max_memory``, ``quantize`` and ``group_size`` as
        :func:`owlkit.load_model` (the default dtype: float32 on a CPU when it fits comfortably,
        else bfloat16; ``quantize="int8" | "int4"`` for weight-only quantization).
        ``image_cache_mb``: features of recently seen images are kept, so a multi-turn chat or
        several questions about one image encode it once (0 = off).
        ``decoding_layout``: ``"auto"`` places a float32 CPU model's decoder matrices for one-row
        products (each layer's in one storage, query/key/value and gate/up as one product each,
        the wide ones column-major), which decodes faster where measured
        (:mod:`owlkit.models.cpu_decoding`); ``"row-major"`` keeps the checkpoint's layout and so
        its exact rounding (owlkit's own builds load that way, to reproduce their bytes).
        """
        if decoding_layout not in cpu_decoding.LAYOUTS:
            raise InputError(f"decoding_layout must be one of {', '.join(cpu_decoding.LAYOUTS)}, got {decoding_layout!r}")
        path = resolve_model(path)
        if not (Path(path) / "config.json").exists() and Path(path) == bundled_model_path():
            raise OwlError("no bundled model in this installation; pass a model folder (--model PATH)")
        tokenizer_files = ("tokenizer.model", "tokenizer.json")
        if Path(path).is_dir() and not any((Path(path) / f).exists() for f in tokenizer_files):  # before a long load
            raise OwlError(f"{path} has no tokenizer (tokenizer.model or tokenizer.json); copy the release's tokenizer files there")
        model = load_model(path, dtype=dtype, device=device, device_map=device_map, max_memory=max_memory,
                           quantize=quantize, group_size=group_size)
        processor = OwlProcessor.from_pretrained(path, config=model.config)
        model.enable_image_feature_cache(image_cache_mb)
        # oneDNN's prepacked layout (model.optimize_for_cpu_decoding()) stays opt-in: slower to
        # decode than the plain layouts on the machines measured, and not savable.
        if decoding_layout == "auto" and getattr(model, "hf_device_map", None) is None:
            cpu_decoding.arrange_for_decoding(model)
        return cls(model, processor)

    # -- generation plumbing -----------------------------------------------------------------
    def _settings(self, opts: dict) -> dict:
        """The generation options checked and turned into :class:`Job` settings."""
        unknown = set(opts) - set(GENERATION_KEYS)
        if unknown:
            raise InputError(f"unknown generation option(s) {sorted(unknown)}; use {', '.join(GENERATION_KEYS)}")
        max_new = int(opts.get("max_new_tokens") or 256)
        if max_new <= 0:
            raise InputError("max_new_tokens must be positive")
        settings = {k: opts.get(k) for k in ("temperature", "top_p", "top_k", "seed", "repetition_penalty")}
        return {**settings, "max_new_tokens": max_new, "stops": reply_stops(self.processor.template, opts.get("stop"))}

    def _job(self, ids, images, settings: dict) -> Job:
        return Job.from_encoded(self.processor, ids, images, dtype=self.model.dtype, **settings)

    def special_strings(self) -> list[str]:
        return special_strings(self.processor.tokenizer)

    # -- public API ----------------------------------------------------------------------------
    def chat(self, messages, stream: bool = False, images=None, truncate: bool = False, **generation):
        """Reply to an OpenAI-style conversation; ``stream=True`` yields text pieces."""
        settings = self._settings(generation)
        ids, objects = self.processor.encode(messages, None if images is None else [images], reserve=1,
                                             truncate=truncate)
        job = self._job(ids, objects, settings)
        if stream:
            return self._stream(job)
        Engine(self.model, self.processor, max_batch=1).run([job])
        return job.text

    def _stream(self, job: Job) -> Iterator[str]:
        pieces: deque[str] = deque()
        job.on_event = lambda kind, value: pieces.append(value) if kind == "delta" else None
        for _ in Engine(self.model, self.processor, max_batch=1).iterate([job]):
            while pieces:
                yield pieces.popleft()
        while pieces:
            yield pieces.popleft()

    def ask(self, image, question: str, **generation) -> str:
        """One image (path, bytes, PIL image or array; or None) and one question -> the answer."""
        content: list[dict] = [] if image is None else [{"type": "image", "image": image}]
        content.append({"type": "text", "text": question})
        return self.chat([{"role": "user", "content": content}], **generation)

    def generate_batch(self, conversations: Sequence, batch_size: int = 8, progress: bool = False,
                       truncate: bool = False, **generation) -> list[str]:
        """Replies to many conversations, ``batch_size`` rows at a time.

        Continuous batching (:class:`~owlkit.generation.Engine`): prompts of similar length are
        prefilled together, the cache grows in place, and a finished answer's row is refilled
        with the next conversation at once. Greedy answers equal :meth:`chat`'s. With ``seed``
        each answer is drawn with its own generator seeded with it (independent of its
        neighbours).
        """
        if batch_size <= 0:
            raise InputError("batch_size must be positive")
        settings = self._settings(generation)  # the options checked before any work
        encoded = [self.processor.encode(c, reserve=1, truncate=truncate) for c in conversations]
        order = sorted(range(len(conversations)), key=lambda i: self.processor.positions(encoded[i][0]))
        jobs: dict[int, Job] = {}

        def make_jobs():
            for i in order:
                jobs[i] = self._job(*encoded[i], settings)
                yield jobs[i]

        engine = Engine(self.model, self.processor, max_batch=batch_size)
        bar = None
        if progress:
            bar = tqdm(total=len(order), unit="answer")
            engine.on_retire = lambda job: bar.update(1)
        try:
            engine.run(make_jobs())
        finally:
            if bar is not None:
                bar.close()
        return [jobs[i].text for i in range(len(encoded))]
