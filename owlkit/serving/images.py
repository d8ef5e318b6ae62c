"""``image_url`` values -> checked RGB images.

* ``data:image/png|jpeg|webp;base64,...``: always accepted;
* a local path (``file://`` URL, absolute path or a path relative to ``--image-dir``): only
  with ``--image-dir``, and only for files inside it once every symbolic link is resolved;
* ``http(s)://``: only with ``--allow-remote-images``; the download is bounded in bytes
  (``max_image_bytes``) and time (``remote_timeout_s``), redirects at most 3.

Whatever the source, the bytes must be a PNG, JPEG or WebP file (checked by their signature),
at most ``max_image_bytes`` long and ``max_pixels`` large once decoded. Every refusal is an
:class:`~owlkit.serving.errors.ApiError` 400 with a one-line message.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import os
from pathlib import Path
from urllib.parse import unquote, urlsplit

from owlkit.errors import InputError
from owlkit.processing.images import load_image
from owlkit.serving.errors import ApiError
from owlkit.serving.settings import ServerSettings

FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/jpg": "JPEG", "image/webp": "WEBP"}


def sniff(data: bytes) -> str | None:
    """``PNG``, ``JPEG`` or ``WEBP`` from the file signature; None for anything else."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def _bad(message: str) -> ApiError:
    return ApiError(400, message, param="messages", code="invalid_image")


def _short(url: str) -> str:
    return url if len(url) <= 80 else url[:50] + "..." + url[-20:]


def decode_data_url(url: str, max_bytes: int) -> bytes:
    header, comma, payload = url.partition(",")
    if not comma:
        raise _bad("data URL without a comma: use data:image/png;base64,<data>")
    parts = header[len("data:"):].split(";")
    media = parts[0].strip().lower()
    if media not in FORMATS:
        raise _bad(f"data URL media type {media[:40]!r} is not supported; send image/png, image/jpeg or image/webp")
    if "base64" not in [p.strip().lower() for p in parts[1:]]:
        raise _bad("data URL images must be base64-encoded (data:image/png;base64,<data>)")
    payload = payload.strip()
    if len(payload) // 4 * 3 > max_bytes:
        raise _bad(f"an image is over the limit of {max_bytes} bytes")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise _bad("data URL: the base64 payload is malformed") from None


def resolve_local(url: str, image_dir: Path | None) -> Path:
    """The file a local ``image_url`` names, which must lie inside ``image_dir``."""
    if image_dir is None:
        raise _bad("local image paths are disabled; send data: URLs (or start the server with --image-dir)")
    text = url
    if text[:5].lower() == "file:":
        split = urlsplit(text)
        if split.netloc not in ("", "localhost"):
            raise _bad("file: URLs must name a local file (file:///path)")
        text = unquote(split.path)
    if not text or "\x00" in text:
        raise _bad("the image path is empty or holds a NUL character")
    root = Path(os.path.realpath(image_dir))
    candidate = Path(text)
    candidate = candidate if candidate.is_absolute() else root / candidate
    try:
        real = Path(os.path.realpath(candidate))
    except (OSError, ValueError):
        raise _bad("the image path cannot be resolved") from None
    if real != root and root not in real.parents:
        raise ApiError(403, "the image path is outside the server's image folder", param="messages", code="path_not_allowed")
    try:
        found = real.is_file()
    except OSError as exc:  # a name too long for the file system, ...
        raise _bad(f"the image path cannot be used ({exc.strerror or type(exc).__name__})") from None
    if not found:
        raise _bad(f"no image file at {_short(text)!r} in the server's image folder")
    return real


def _read_local(path: Path, max_bytes: int) -> bytes:
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise _bad(f"an image is over the limit of {max_bytes} bytes")
        with path.open("rb") as f:
            return f.read(max_bytes + 1)
    except OSError:
        raise _bad("the image file cannot be read") from None


async def download(url: str, settings: ServerSettings) -> bytes:
    """GET a remote image, bounded in bytes and time."""
    import httpx

    limits = settings.limits
    max_bytes = limits.max_image_bytes

    async def fetch() -> bytes:
        async with httpx.AsyncClient(follow_redirects=True, max_redirects=3, timeout=limits.remote_timeout_s,
                                     trust_env=False) as client:
            async with client.stream("GET", url) as response:
                if response.status_code != 200:
                    raise _bad(f"the image URL answered HTTP {response.status_code}")
                declared = response.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > max_bytes:
                    raise _bad(f"an image is over the limit of {max_bytes} bytes")
                chunks, total = [], 0
                async for chunk in response.aiter_bytes():
                    total += len(chunk)
                    if total > max_bytes:
                        raise _bad(f"an image is over the limit of {max_bytes} bytes")
                    chunks.append(chunk)
                return b"".join(chunks)

    try:
        return await asyncio.wait_for(fetch(), limits.remote_timeout_s)
    except ApiError:
        raise
    except (asyncio.TimeoutError, TimeoutError):
        raise _bad(f"the image download took over {limits.remote_timeout_s:g} s") from None
    except Exception as exc:  # noqa: BLE001  (httpx errors, invalid URLs)
        raise _bad(f"the image could not be downloaded ({type(exc).__name__})") from None


async def fetch_image_bytes(url: str, settings: ServerSettings) -> bytes:
    """The encoded bytes an ``image_url`` value names (see module doc)."""
    limits = settings.limits
    scheme = url.split(":", 1)[0].lower() if ":" in url[:12] else ""
    if scheme == "data":
        data = decode_data_url(url, limits.max_image_bytes)
    elif scheme in ("http", "https"):
        if not settings.allow_remote_images:
            raise _bad("remote image URLs are disabled; send data: URLs (or start the server with --allow-remote-images)")
        data = await download(url, settings)
    elif scheme in ("", "file") or len(scheme) == 1:  # a path (or a Windows drive letter)
        path = resolve_local(url, settings.image_dir)
        data = await asyncio.to_thread(_read_local, path, limits.max_image_bytes)
    else:
        raise _bad(f"unsupported image URL scheme {scheme[:20]!r}; use data:, a local path or http(s)")
    if len(data) > limits.max_image_bytes:
        raise _bad(f"an image is over the limit of {limits.max_image_bytes} bytes")
    return data


def decode_image(data: bytes, max_pixels: int):
    """Encoded PNG/JPEG/WebP bytes -> RGB PIL image (400 for anything else or too large)."""
    if not data:
        raise _bad("an image is empty")
    if sniff(data) is None:
        raise _bad("an image is not PNG, JPEG or WebP")
    try:
        return load_image(data, max_pixels=max_pixels)
    except InputError as exc:
        raise _bad(str(exc).replace("<%d bytes>: " % len(data), "image: ")) from None
    except Exception as exc:  # noqa: BLE001  (a decoder failure is the client's broken file)
        raise _bad(f"image: cannot decode ({type(exc).__name__})") from None
