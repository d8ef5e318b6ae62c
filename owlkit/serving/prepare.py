"""A validated request -> a :class:`~owlkit.serving.scheduler.Job` ready for the scheduler.

:func:`job_from_request` (the API) fetches and decodes the images of an OpenAI request and
checks the limits; :func:`build_job` (shared with the web demo) encodes a conversation whose
images are already decoded, and fixes the generation settings. Every problem is an
:class:`~owlkit.serving.errors.ApiError` (400 unless said otherwise) with a one-line message.
"""

from __future__ import annotations

import asyncio
from typing import Any, Sequence

from owlkit.errors import OwlError
from owlkit.config import IMAGE_PLACEHOLDERS as PLACEHOLDERS
from owlkit.generation.stops import reply_stops
from owlkit.serving.errors import ApiError
from owlkit.serving.images import decode_image, fetch_image_bytes
from owlkit.serving.scheduler import Job
from owlkit.serving.schema import ChatCompletionRequest
from owlkit.serving.settings import Limits, ServerSettings

CHARS_PER_TOKEN = 32  # a prompt with more characters than this per allowed token is refused unread


def _check_text(text: str, where: str) -> None:
    for p in PLACEHOLDERS:
        if p in text:
            raise ApiError(400, f"{where}: text may not contain {p!r}; send images as image_url parts", param="messages")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(400, f"{where}: text is not valid Unicode (unpaired surrogate)", param="messages") from None


def stop_strings(stop: str | Sequence[str] | None, limits: Limits) -> list[str]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > limits.max_stop:
        raise ApiError(400, f"at most {limits.max_stop} stop strings are allowed, got {len(stops)}", param="stop")
    for s in stops:
        if len(s) > limits.max_stop_chars:
            raise ApiError(400, f"stop strings may have at most {limits.max_stop_chars} characters", param="stop")
        _check_text(s, "stop")
    return [s for s in stops if s]


def build_job(owl, conversation: list[dict], *, limits: Limits, max_tokens: int | None = None,
              temperature: float = 0.0, top_p: float | None = None, top_k: int | None = None,
              seed: int | None = None, stop: Sequence[str] = ()) -> Job:
    """Encode ``conversation`` (images as decoded PIL images) into a :class:`Job`."""
    processor = owl.processor
    chars = sum(len(p.get("text", "")) for m in conversation for p in m["content"] if isinstance(p, dict))
    if chars > limits.max_prompt_tokens * CHARS_PER_TOKEN:
        raise ApiError(400, f"the prompt has {chars} characters, far over the limit of {limits.max_prompt_tokens} "
                       "tokens", param="messages", code="context_length_exceeded")
    if max_tokens is not None and max_tokens > limits.max_tokens:
        raise ApiError(400, f"max_tokens is {max_tokens}, over the server's limit of {limits.max_tokens}",
                       param="max_tokens")
    try:
        ids, images = processor.encode(conversation, reserve=1)
    except OwlError as exc:
        message = str(exc).split(" or allow truncation")[0]  # the CLI's advice does not apply here
        raise ApiError(400, message, param="messages",
                       code="context_length_exceeded" if "context" in message else None) from None
    used = processor.positions(ids)
    if used > limits.max_prompt_tokens:
        raise ApiError(400, f"the prompt is {used} tokens (images included), over the server's limit of "
                       f"{limits.max_prompt_tokens}", param="messages", code="context_length_exceeded")
    wanted = max_tokens if max_tokens is not None else limits.default_max_tokens
    return Job.from_encoded(processor, ids, images, max_new_tokens=wanted, temperature=temperature, top_p=top_p,
                            top_k=top_k, seed=seed, stops=reply_stops(processor.template, stop))


async def job_from_request(body: ChatCompletionRequest, owl, settings: ServerSettings) -> Job:
    """Check an OpenAI request against the limits, fetch its images, and build its job."""
    limits = settings.limits
    if body.logprobs:
        raise ApiError(400, "logprobs are not supported by this server", param="logprobs")
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(body, name):
            raise ApiError(400, f"{name} is not supported by this server (only 0)", param=name)
    if len(body.messages) > limits.max_messages:
        raise ApiError(400, f"at most {limits.max_messages} messages are allowed, got {len(body.messages)}",
                       param="messages")
    stops = stop_strings(body.stop, limits)
    urls = [(i, part.image_url.url) for i, m in enumerate(body.messages) if isinstance(m.content, list)
            for part in m.content if part.type == "image_url"]
    if len(urls) > limits.max_images:
        raise ApiError(400, f"at most {limits.max_images} images are allowed in a request, got {len(urls)}",
                       param="messages")
    conversation: list[dict[str, Any]] = []
    for i, message in enumerate(body.messages):
        role = "system" if message.role == "developer" else message.role
        parts: list[dict[str, Any]] = []
        content = message.content
        if content is None:
            content = ""
        if isinstance(content, str):
            _check_text(content, f"messages[{i}]")
            parts.append({"type": "text", "text": content})
        else:
            for part in content:
                if part.type == "text":
                    _check_text(part.text, f"messages[{i}]")
                    parts.append({"type": "text", "text": part.text})
                else:
                    if role != "user":
                        raise ApiError(400, f"messages[{i}]: only user messages may hold images", param="messages")
                    data = await fetch_image_bytes(part.image_url.url, settings)
                    image = await asyncio.to_thread(decode_image, data, limits.max_pixels)
                    parts.append({"type": "image", "image": image})
        conversation.append({"role": role, "content": parts})
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    return await asyncio.to_thread(
        build_job, owl, conversation, limits=limits, max_tokens=max_tokens, temperature=body.temperature or 0.0,
        top_p=body.top_p, top_k=body.top_k, seed=body.seed, stop=stops,
    )
