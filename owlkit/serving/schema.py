"""Request bodies of the OpenAI chat API, as far as this server implements it (pydantic v2).

Unknown fields are ignored (clients send many optional ones); fields we know are checked for
type and range, so a bad value is a 400 naming the field, never a 500. Types are strict, as
JSON gives them: ``"max_tokens": "5"`` or ``true`` and ``"stream": "yes"`` are refused, never
coerced (an integer is accepted where a number is expected).
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

_FLOAT = dict(allow_inf_nan=False)


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class ImageURL(_Model):
    url: str = Field(max_length=64 * 1024 * 1024)
    detail: str | None = None


class TextPart(_Model):
    type: Literal["text"]
    text: str


class ImagePart(_Model):
    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[Union[TextPart, ImagePart], Field(discriminator="type")]


class Message(_Model):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None
    name: str | None = None


class StreamOptions(_Model):
    include_usage: bool = False


class ChatCompletionRequest(_Model):
    """``POST /v1/chat/completions``. Sampling is greedy unless ``temperature`` > 0."""

    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2, **_FLOAT)
    top_p: float | None = Field(None, gt=0, le=1, **_FLOAT)
    top_k: int | None = Field(None, ge=0, le=100_000)  # an extension (vLLM and others have it)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2**63), lt=2**64)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(None, ge=1, le=1, description="only 1 is supported")
    presence_penalty: float | None = Field(None, ge=-2, le=2, **_FLOAT)
    frequency_penalty: float | None = Field(None, ge=-2, le=2, **_FLOAT)
    logprobs: bool | None = None
    user: str | None = None
