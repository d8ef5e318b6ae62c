"""The Python API: ``Owl.load(path).chat(messages)``.

``Owl`` bundles a model with its processor and offers:

* ``chat(messages, stream=False, **generation)``: the reply, or an iterator of text pieces;
* ``ask(image, question, **generation)``: one-liners;
* ``generate_batch(conversations, batch_size=8, **generation)``: many replies, batched.

Generation options: ``max_new_tokens`` (256), ``temperature`` (0 = greedy, the default),
``top_p``, ``top_k``, ``repetition_penalty``, ``seed``, ``stop`` (strings). Generation ends at
EOS and at the template's turn separator; stop strings are cut from the reply.
"""

from __future__ import annotations

import threading
from pathlib import Path
from queue import Queue
from typing import Any, Iterator, Sequence

import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList
from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor
from transformers.generation.streamers import BaseStreamer

from owlkit.errors import InputError, OwlError
from owlkit.processing.processor import OwlProcessor
from owlkit.streaming import ReplyText, cut_at_stop, strip_special

GENERATION_KEYS = ("max_new_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "seed", "stop")


def bundled_model_path() -> Path:
    """Folder of the model shipped inside the package (owl-tiny)."""
    return Path(__file__).resolve().parent / "assets" / "owl-tiny"


class _StopOnStrings(StoppingCriteria):
    """Per-row stop when the decoded new text contains any stop string.

    ``generate`` starts from the spliced embeddings, so the ids it checks are the new ones only.
    """

    def __init__(self, processor: OwlProcessor, stops: list[str]):
        self.processor, self.stops = processor, stops

    def __call__(self, input_ids, scores, **kwargs):
        done = [any(s in self.processor.decode(row, skip_special_tokens=False) for s in self.stops)
                for row in input_ids.tolist()]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class _PromptRepetitionPenalty(LogitsProcessor):
    """transformers' repetition penalty over each row's prompt text *and* its new tokens.

    ``generate`` starts from the spliced embeddings, so the ids it hands to logits processors
    are the new ones only (the official code is in the same case): its own
    ``repetition_penalty`` would ignore the prompt, unlike a text-only LLaMA. This processor
    puts the prompt's text ids (not padding, not image placeholders) in front.
    """

    def __init__(self, penalty: float, input_ids: torch.Tensor, attention_mask: torch.Tensor, vocab_size: int):
        self.inner = RepetitionPenaltyLogitsProcessor(penalty)
        text = attention_mask.bool() & (input_ids >= 0) & (input_ids < vocab_size)
        # padding and placeholders become a copy of the row's first text id: the penalty applies
        # to a set of ids, so a repeat changes nothing
        fill = input_ids.gather(1, text.long().argmax(1, keepdim=True))
        fill = torch.where(text.any(1, keepdim=True), fill, 0)
        self.prompt = torch.where(text, input_ids, fill)

    def __call__(self, input_ids, scores):
        prompt = self.prompt.to(input_ids.device)
        return self.inner(torch.cat([prompt, input_ids], dim=1), scores)


class _TokenQueue(BaseStreamer):
    """Receives new token ids from ``generate`` (in its thread) for ``chat(stream=True)``."""

    def __init__(self):
        self.queue: Queue = Queue()
        self.first = True

    def put(self, value):
        if self.first:  # generate first puts the (empty) prompt
            self.first = False
            return
        self.queue.put(value.reshape(-1).tolist())

    def end(self):
        self.queue.put(None)


class Owl:
    def __init__(self, model, processor: OwlProcessor):
        self.model = model
        self.processor = processor
        #: Counted before any CPU repacking (packed matrices are buffers, not parameters).
        self.num_parameters = sum(p.numel() for p in model.parameters())

    @classmethod
    def load(cls, path: str | Path | None = None, dtype=None, device=None, *, device_map=None,
             max_memory=None, quantize=None, group_size=None, image_cache_mb: float = 64.0) -> "Owl":
        """Load a model folder (official or owlkit); without a path, the bundled model.

        ``dtype``, ``device``, ``device_map``, ``max_memory``, ``quantize`` and ``group_size`` as
        :func:`owlkit.load_model` (the default dtype: float32 on a CPU when it fits comfortably,
        else bfloat16; ``quantize="int8" | "int4"`` for weight-only quantization).
        ``image_cache_mb``: features of recently seen images are kept, so a multi-turn chat or
        several questions about one image encode it once (0 = off).
        """
        from owlkit.checkpoints import load_model

        if path is None:
            path = bundled_model_path()
            if not (path / "config.json").exists():
                raise OwlError("no bundled model in this installation; pass a model folder (--model PATH)")
        tokenizer_files = ("tokenizer.model", "tokenizer.json")
        if Path(path).is_dir() and not any((Path(path) / f).exists() for f in tokenizer_files):  # before a long load
            raise OwlError(f"{path} has no tokenizer (tokenizer.model or tokenizer.json); copy the release's tokenizer files there")
        model = load_model(path, dtype=dtype, device=device, device_map=device_map, max_memory=max_memory,
                           quantize=quantize, group_size=group_size)
        processor = OwlProcessor.from_pretrained(path, config=model.config)
        model.enable_image_feature_cache(image_cache_mb)
        owl = cls(model, processor)
        # The prepacked layout was measured for float32 on one CPU device only.
        quantized = getattr(model.config, "owlkit_quantization", None)
        if model.device.type == "cpu" and model.dtype == torch.float32 and not quantized \
                and not getattr(model, "hf_device_map", None):
            model.optimize_for_cpu_decoding()
        return owl

    # -- generation plumbing -----------------------------------------------------------------
    def _generate_kwargs(self, opts: dict) -> dict:
        unknown = set(opts) - set(GENERATION_KEYS)
        if unknown:
            raise InputError(f"unknown generation option(s) {sorted(unknown)}; use {', '.join(GENERATION_KEYS)}")
        temperature = float(opts.get("temperature") or 0.0)
        max_new = int(opts.get("max_new_tokens") or 256)
        if max_new <= 0:
            raise InputError("max_new_tokens must be positive")
        kw: dict[str, Any] = {"max_new_tokens": max_new, "do_sample": temperature > 0}
        if temperature > 0:
            kw["temperature"] = temperature
            kw["top_p"] = float(opts.get("top_p") if opts.get("top_p") is not None else 1.0)
            kw["top_k"] = int(opts.get("top_k") or 0)
        if opts.get("repetition_penalty"):
            kw["repetition_penalty"] = float(opts["repetition_penalty"])
        tok = self.processor.tokenizer
        kw["pad_token_id"] = tok.pad_token_id if tok.pad_token_id is not None else 0
        kw["eos_token_id"] = tok.eos_token_id
        stops = self._stops(opts)
        if stops:
            kw["stopping_criteria"] = StoppingCriteriaList([_StopOnStrings(self.processor, stops)])
        if opts.get("seed") is not None:
            torch.manual_seed(int(opts["seed"]))
        return kw

    def _stops(self, opts: dict) -> list[str]:
        extra = opts.get("stop") or []
        if isinstance(extra, str):
            extra = [extra]
        return self.processor.stop_strings + [s for s in extra if s]

    def _inputs(self, conversations, images=None, truncate: bool = False) -> dict:
        """Processor outputs on the model's device; the prompt must leave room for one new token."""
        batch = self.processor(conversations, images=images, reserve=1, truncate=truncate)
        device = self.model.device
        return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}

    def _for_batch(self, batch: dict, kw: dict) -> dict:
        """``generate`` options for this batch: ``max_new_tokens`` clamped to what the context
        leaves after the longest prompt, and the repetition penalty made to count the prompt."""
        limit = self.processor.max_length
        if limit:
            used = max(self.processor.positions(row[mask.bool()].tolist())
                       for row, mask in zip(batch["input_ids"], batch["attention_mask"]))
            kw = {**kw, "max_new_tokens": max(1, min(kw["max_new_tokens"], limit - used))}
        if "repetition_penalty" in kw:
            kw = dict(kw)
            penalty = _PromptRepetitionPenalty(kw.pop("repetition_penalty"), batch["input_ids"],
                                               batch["attention_mask"], self.model.config.text_config.vocab_size)
            kw["logits_processor"] = LogitsProcessorList([penalty])
        return kw

    def special_strings(self) -> list[str]:
        tok = self.processor.tokenizer
        return [tok.id_to_token(i) for i in tok.special_ids]

    def _finish(self, ids, opts) -> str:
        text, _ = cut_at_stop(self.processor.decode(ids, skip_special_tokens=False), self._stops(opts))
        return strip_special(text, self.special_strings()).strip()

    # -- public API ----------------------------------------------------------------------------
    def chat(self, messages, stream: bool = False, images=None, truncate: bool = False, **generation):
        """Reply to an OpenAI-style conversation; ``stream=True`` yields text pieces."""
        kw = self._generate_kwargs(generation)
        batch = self._inputs(messages, None if images is None else [images], truncate)
        kw = self._for_batch(batch, kw)
        if stream:
            return self._stream(batch, kw, generation)
        with torch.inference_mode():
            out = self.model.generate(**batch, **kw)
        return self._finish(out[0, batch["input_ids"].shape[1]:].tolist(), generation)

    def _stream(self, batch, kw, opts) -> Iterator[str]:
        streamer = _TokenQueue()
        errors: list[BaseException] = []

        def work():
            try:
                with torch.inference_mode():
                    self.model.generate(**batch, **kw, streamer=streamer)
            except BaseException as exc:  # surfaced in the consumer
                errors.append(exc)
                streamer.end()

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        reply = ReplyText(lambda ids: self.processor.decode(ids, skip_special_tokens=False), self._stops(opts),
                          self.special_strings())
        eos = self.processor.tokenizer.eos_token_id
        while not reply.stopped:
            piece = streamer.queue.get()
            if piece is None:
                tail = reply.flush()
                if tail:
                    yield tail
                break
            for token in piece:
                if token == eos:
                    continue
                delta = reply.push(token)
                if delta:
                    yield delta
                if reply.stopped:
                    break
        thread.join()
        if errors:
            raise errors[0]

    def ask(self, image, question: str, **generation) -> str:
        """One image (path, bytes, PIL image or array; or None) and one question -> the answer."""
        content: list[dict] = [] if image is None else [{"type": "image", "image": image}]
        content.append({"type": "text", "text": question})
        return self.chat([{"role": "user", "content": content}], **generation)

    def generate_batch(self, conversations: Sequence, batch_size: int = 8, progress: bool = False,
                       truncate: bool = False, **generation) -> list[str]:
        """Replies to many conversations, ``batch_size`` rows at a time.

        Runs on the server's continuous-batching engine (:meth:`Scheduler.run
        <owlkit.serving.scheduler.Scheduler.run>`): prompts of similar length are prefilled
        together, the cache grows in place, and a finished answer's row is refilled with the
        next conversation at once. Greedy answers equal :meth:`chat`'s. With ``seed`` each
        answer is drawn with its own generator seeded with it (independent of its neighbours);
        ``repetition_penalty`` goes through ``transformers``' ``generate`` instead.
        """
        if batch_size <= 0:
            raise InputError("batch_size must be positive")
        self._generate_kwargs(generation)  # validate the options before any work
        encoded = [self.processor.encode(c, reserve=1, truncate=truncate) for c in conversations]
        order = sorted(range(len(conversations)), key=lambda i: self.processor.positions(encoded[i][0]))
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(order), unit="answer")
        try:
            if generation.get("repetition_penalty") not in (None, 1, 1.0):
                return self._generate_batch_hf(conversations, order, batch_size, truncate, generation, bar)
            return self._generate_batch_engine(encoded, order, batch_size, generation, bar)
        finally:
            if bar is not None:
                bar.close()

    def _generate_batch_engine(self, encoded, order, batch_size, generation, bar) -> list[str]:
        from owlkit.serving.scheduler import Job, Scheduler

        settings = {k: generation.get(k) for k in ("temperature", "top_p", "top_k", "seed")}
        wanted = int(generation.get("max_new_tokens") or 256)
        stops = self._stops(generation)
        jobs: dict[int, Job] = {}

        def make_jobs():
            for i in order:
                ids, images = encoded[i]
                jobs[i] = Job.from_encoded(self.processor, ids, images, max_new_tokens=wanted,
                                           dtype=self.model.dtype, stops=stops, **settings)
                yield jobs[i]

        engine = Scheduler(self, max_batch=batch_size)
        if bar is not None:
            engine.on_retire = lambda job: bar.update(1)
        engine.run(make_jobs())
        return [jobs[i].text for i in range(len(encoded))]

    def _generate_batch_hf(self, conversations, order, batch_size, truncate, generation, bar) -> list[str]:
        answers: list[str | None] = [None] * len(conversations)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            batch = self._inputs([conversations[i] for i in idx], truncate=truncate)
            kw = self._for_batch(batch, self._generate_kwargs(generation))
            with torch.inference_mode():
                out = self.model.generate(**batch, **kw)
            width = batch["input_ids"].shape[1]
            for row, i in enumerate(idx):
                answers[i] = self._finish(out[row, width:].tolist(), generation)
            if bar is not None:
                bar.update(len(idx))
        return answers  # type: ignore[return-value]


