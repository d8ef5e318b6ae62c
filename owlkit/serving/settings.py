"""Server settings: where it listens, who may call it, and the limits on each request."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Limits:
    """Per-request limits; a request over one gets a 400 (413 for the body) naming the limit."""

    max_body_bytes: int = 20 * 1024 * 1024  # whole request body (413 above)
    max_images: int = 8  # images in one request (all messages together)
    max_image_bytes: int = 10 * 1024 * 1024  # one encoded image (data URL, file or download)
    max_pixels: int = 16_000_000  # one decoded image, width x height
    max_tokens: int = 1024  # the largest ``max_tokens`` a request may ask for
    default_max_tokens: int = 256  # when a request gives none (clamped to the context)
    max_prompt_tokens: int = 8192  # decoder positions of the prompt (images included)
    max_messages: int = 256
    max_stop: int = 4  # stop strings per request (as OpenAI)
    max_stop_chars: int = 64  # characters per stop string
    remote_timeout_s: float = 10.0  # one remote image download, connect to last byte
    body_timeout_s: float = 10.0  # the whole request body, from the headers to its last byte (408 after)
    max_queue: int = 256  # requests waiting for the model; more get 429


@dataclass
class ServerSettings:
    """Everything ``owl serve`` takes on its command line (see docs/serving.md)."""

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    model_name: str = "owl"
    image_dir: Path | None = None  # local image paths allowed only under this folder
    allow_remote_images: bool = False
    max_batch: int = 8
    max_wait_ms: float = 10.0
    api: bool = True  # the OpenAI routes under /v1
    web: bool = True  # mount the Gradio demo at "/"
    examples_dir: Path | None = None  # example images for the demo (default: owlkit/assets/examples)
    image_cache_mb: float = 256.0  # features of recently seen images (0 = off); see models/feature_cache.py
    limits: Limits = field(default_factory=Limits)
