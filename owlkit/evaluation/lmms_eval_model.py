"""owlkit as an lmms-eval model: ``lmms-eval --model owlkit --model_args pretrained=PATH --tasks ...``.

lmms-eval (``pip install 'owlkit[lmms]'``) finds models through the entry-point group
``lmms_eval.models``; owlkit's entry point (``pyproject.toml``) is :func:`manifest`, which names
the class ``OwlLmms`` of this module. The class subclasses lmms-eval's ``lmms`` base, so it is
built on first access (module ``__getattr__``): importing this module does not import
lmms-eval, and owlkit never needs it otherwise.

``model_args``: ``pretrained`` (a model folder or a bundled model's name; default the bundled
one), ``device``, ``dtype``, ``batch_size`` (rows per generation batch, default 8),
``max_new_tokens`` (when a task gives none, default 256).

How requests are answered (lmms-eval's "simple" model protocol: text context, the task's
``doc_to_visual`` images, generation settings):

* ``generate_until``: one user message per request, its images first (or where the context
  writes ``<image>`` / ``<|image|>``, one marker per image), through
  :meth:`owlkit.Owl.generate_batch` (the model's chat template, continuous batches), requests
  with the same settings together. ``until`` become stop strings; greedy unless ``do_sample``
  (or a temperature above 0); ``num_beams`` must be 1.
* ``loglikelihood`` (:func:`continuation_logprob`): the same user message rendered with the
  chat template up to the assistant's turn, then the continuation; one forward pass of the
  model scores the continuation's tokens (those past what the prompt alone encodes to). The
  answer is ``(loss, greedy)``: the mean negative log-likelihood per continuation token, as
  lmms-eval's own models return it and as its multiple-choice scoring expects (it takes the
  option of smallest value), and whether greedy decoding would produce those tokens.
* ``generate_until_multi_round``: round 0 answers the context; each later round asks the
  task's ``doc_to_text(doc, previous_output, round_idx, previous_round_info)`` for the next
  images and context until it signals the end; the result is the list of the rounds' answers.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
from tqdm import tqdm

from owlkit.config import IGNORE_INDEX
from owlkit.errors import InputError
from owlkit.evaluation.runner import common_prefix
from owlkit.inference import Owl
from owlkit.processing.templates import render
from owlkit.processing.tokenizer import encode_prompt

__all__ = ["MODEL_ID", "manifest", "conversation", "generation_options", "Continuation", "continuation_logprob",
           "OwlLmms"]

MODEL_ID = "owlkit"
_IMAGE_MARKERS = re.compile(r"<\|image\|>|<image>")


def manifest():
    """The ``lmms_eval.models`` entry point: owlkit's ``ModelManifest`` (a simple model)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=f"{__name__}.OwlLmms")


def _images(visuals: Any) -> list[Any]:
    """``doc_to_visual``'s result as a flat list of images (None and empty lists are none)."""
    if visuals is None:
        return []
    if not isinstance(visuals, (list, tuple)):
        visuals = [visuals]
    flat = []
    for v in visuals:
        if isinstance(v, (list, tuple)):
            flat += _images(v)
        elif v is not None:
            if isinstance(v, str) or not hasattr(v, "size"):
                raise InputError(f"owlkit answers about images; this task gives {type(v).__name__} "
                                 f"visuals ({str(v)[:60]!r}): videos and audio are not supported")
            flat.append(v)
    return flat


def conversation(context: str, visuals: Any = None) -> list[dict[str, Any]]:
    """One user message: the images where ``context`` marks them (``<image>`` or
    ``<|image|>``, as many markers as images), else first, then the text."""
    images = _images(visuals)
    pieces = _IMAGE_MARKERS.split(context)
    parts: list[dict[str, Any]] = []
    if images and len(pieces) == len(images) + 1:
        for k, piece in enumerate(pieces):
            if k:
                parts.append({"type": "image", "image": images[k - 1]})
            if piece:
                parts.append({"type": "text", "text": piece})
    else:
        parts = [{"type": "image", "image": im} for im in images] + [{"type": "text", "text": context}]
    return [{"role": "user", "content": parts}]


def generation_options(gen_kwargs: Mapping[str, Any] | None, max_new_tokens: int) -> dict[str, Any]:
    """lmms-eval's ``generation_kwargs`` as :meth:`owlkit.Owl.generate_batch` options."""
    kw = dict(gen_kwargs or {})
    if int(kw.get("num_beams") or 1) != 1:
        raise InputError(f"owlkit decodes greedily or by sampling: num_beams must be 1, not {kw['num_beams']}")
    until = kw.get("until")
    stops = [until] if isinstance(until, str) else [s for s in (until or []) if s]
    temperature = float(kw.get("temperature") or 0.0)
    options: dict[str, Any] = {"max_new_tokens": int(kw.get("max_new_tokens") or max_new_tokens)}
    if stops:
        options["stop"] = stops
    if kw.get("do_sample", temperature > 0):
        options["temperature"] = temperature or 1.0
        if kw.get("top_p") is not None:
            options["top_p"] = float(kw["top_p"])
    return options


class Continuation(NamedTuple):
    """How a model scores a continuation of a prompt."""

    logprob: float    # summed log-probability of its tokens
    greedy: bool      # whether greedy decoding produces exactly those tokens
    tokens: int       # how many tokens it has


def continuation_logprob(owl, messages: Sequence[Mapping[str, Any]], continuation: str) -> Continuation:
    """How the model scores ``continuation`` after ``messages`` rendered up to the
    assistant's turn.

    The continuation's tokens are those of ``encode(prompt + continuation)`` past the ids it
    shares with ``encode(prompt)`` (so a leading space goes with the continuation); one
    forward pass with the images, the prompt's labels ignored.
    """
    proc, model = owl.processor, owl.model
    rendered = render(messages, proc.template, add_generation_prompt=True)
    images = [im for im in rendered.images if im is not None]

    def encode(text: str) -> list[int]:
        return encode_prompt(text, proc.owl_version, proc.tokenizer, proc.image_token_id)

    context, full = encode(rendered.prompt), encode(rendered.prompt + continuation)
    start = max(1, common_prefix(context, full))
    if start >= len(full):
        raise InputError(f"the continuation {continuation[:40]!r} adds no token to the prompt")
    if proc.max_length and proc.positions(full) > proc.max_length:
        raise InputError(f"the prompt and continuation need {proc.positions(full)} positions but the model's "
                         f"context is {proc.max_length}")
    device = model.device
    pixel_values = proc.image_processor(images).to(device, model.dtype) if images else None
    labels = [IGNORE_INDEX] * start + full[start:]
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([full], device=device), pixel_values=pixel_values,
                    labels=torch.tensor([labels], device=device))
    targets = out.labels[0, 1:].to(out.logits.device)   # the labels with every image expanded
    keep = targets != IGNORE_INDEX
    logits = out.logits[0, :-1][keep].float()
    wanted = targets[keep]
    logp = torch.log_softmax(logits, dim=-1).gather(1, wanted[:, None]).sum()
    return Continuation(float(logp), bool((logits.argmax(-1) == wanted).all()), int(wanted.numel()))


# ---------------------------------------------------------------------------------------------
# the lmms-eval model class, built when lmms-eval asks for it


def _pair_response() -> Any:
    """How a ``(loss, greedy)`` pair must be returned to survive lmms-eval's
    ``unwrap_generation_output``: 0.7.3 turns a plain pair into its ``str`` (breaking every
    multiple-choice task); a ``GenerationResult`` carrying it passes through unchanged."""
    from lmms_eval.api import instance

    if instance.unwrap_generation_output((0.0, True))[0] == (0.0, True) or not hasattr(instance, "GenerationResult"):
        return tuple
    return lambda pair: instance.GenerationResult(text=tuple(pair))


def _build_model_class() -> type:
    from lmms_eval.api.model import lmms

    as_response = _pair_response()

    class OwlLmms(lmms):
        """An :class:`owlkit.Owl` answering lmms-eval's requests (see the module's doc)."""

        is_simple = True

        def __init__(self, pretrained: str | None = None, device: str | None = None, dtype: str | None = None,
                     batch_size: int | str = 8, max_new_tokens: int | str = 256, **unused: Any) -> None:
            super().__init__()
            self.owl = Owl.load(pretrained, dtype=dtype, device=device)
            self.batch_size = max(1, int(batch_size or 1))
            self.max_new_tokens = int(max_new_tokens)

        def _doc(self, task: str, split: str, doc_id: int) -> Any:
            return self.task_dict[task][split][doc_id]

        def _answer(self, prompts: Sequence[tuple[str, Any, Mapping[str, Any] | None]]) -> list[str]:
            """Answers to ``(context, visuals, gen_kwargs)``, batched by generation settings."""
            groups: dict[str, list[int]] = {}
            options = [generation_options(g, self.max_new_tokens) for _, _, g in prompts]
            for i, opts in enumerate(options):
                groups.setdefault(repr(sorted(opts.items())), []).append(i)
            answers = [""] * len(prompts)
            for members in groups.values():
                convs = [conversation(prompts[i][0], prompts[i][1]) for i in members]
                outs = self.owl.generate_batch(convs, batch_size=self.batch_size, truncate=True, **options[members[0]])
                for i, out in zip(members, outs):
                    answers[i] = out
            return answers

        def generate_until(self, requests) -> list[str]:
            prompts = []
            for context, gen_kwargs, doc_to_visual, doc_id, task, split in (r.args for r in requests):
                prompts.append((context, doc_to_visual(self._doc(task, split, doc_id)), gen_kwargs))
            answers = []
            with tqdm(total=len(prompts), disable=self.rank != 0, desc="owlkit answering") as bar:
                for start in range(0, len(prompts), 8 * self.batch_size):  # progress as batches finish
                    answers += self._answer(prompts[start:start + 8 * self.batch_size])
                    bar.update(min(8 * self.batch_size, len(prompts) - start))
            for (context, _, gen_kwargs), answer in zip(prompts, answers):
                self.cache_hook.add_partial("generate_until", (context, gen_kwargs), answer)
            return answers

        def loglikelihood(self, requests) -> list[Any]:
            results = []
            for context, target, doc_to_visual, doc_id, task, split in (r.args for r in tqdm(
                    requests, disable=self.rank != 0, desc="owlkit scoring")):
                doc = self._doc(task, split, doc_id)
                continuation = target if isinstance(target, str) else target(doc)
                visuals = doc_to_visual(doc) if doc_to_visual is not None else None
                scored = continuation_logprob(self.owl, conversation(context, visuals), continuation)
                results.append(as_response((-scored.logprob / scored.tokens, scored.greedy)))
            return results

        def generate_until_multi_round(self, requests) -> list[list[str]]:
            results = []
            for context, gen_kwargs, doc_to_visual, doc_to_text, doc_id, task, split in (r.args for r in requests):
                doc = self._doc(task, split, doc_id)
                visuals, outputs, info, round_idx = doc_to_visual(doc), [], None, 0
                while True:
                    if round_idx:
                        visuals, context, terminal, outputs, info = doc_to_text(
                            doc, previous_output=list(outputs), round_idx=round_idx, previous_round_info=info)
                        outputs = list(outputs)
                        if terminal:
                            break
                    outputs.append(self._answer([(context, visuals, gen_kwargs)])[0])
                    round_idx += 1
                results.append(outputs)
            return results

    OwlLmms.__module__, OwlLmms.__qualname__ = __name__, "OwlLmms"
    return OwlLmms


def __getattr__(name: str) -> Any:
    if name == "OwlLmms":
        try:
            cls = _build_model_class()
        except ImportError as exc:
            raise ImportError(f"owlkit's lmms-eval model needs lmms-eval: pip install 'owlkit[lmms]' ({exc})") from None
        globals()["OwlLmms"] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
