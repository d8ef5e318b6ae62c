"""The server at the byte level, on a live uvicorn (127.0.0.1): no input gives a 500 or a hang.

Raw HTTP/1.1 over sockets: malformed JSON, a wrong type for every field, huge and negative
numbers, odd image names and URLs, chunked bodies over the limit, bodies that stall or never
come. Every request gets an answer with a status below 500 within a bounded time, errors carry
``param``/``code`` where they name a field or a limit, and the server still answers afterwards.
"""

from __future__ import annotations

import json
import socket
import struct
import time
import zlib

import pytest

from helpers import make_model_folder
from owlkit.inference import Owl
from owlkit.serving.app import create_app
from owlkit.serving.settings import Limits, ServerSettings
from test_serving_utils import data_url, live_server, png_bytes, user

BODY_TIMEOUT = 1.0
PNG = png_bytes()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (what a decompression bomb looks like)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bytes") / "model"
    make_model_folder(folder, "test-owl2", seed=6)
    images = tmp_path_factory.mktemp("bytes-images")
    (images / "red.png").write_bytes(PNG)
    limits = Limits(max_tokens=3, default_max_tokens=3, max_images=2, max_pixels=50_000, max_body_bytes=50_000,
                    max_prompt_tokens=200, body_timeout_s=BODY_TIMEOUT)
    settings = ServerSettings(web=False, max_wait_ms=0, image_dir=images, limits=limits, api_key="k3y")
    app = create_app(Owl.load(folder), settings)
    with live_server(app) as url:
        host, port = url.removeprefix("http://").split(":")
        yield host, int(port)
    app.state.scheduler.close()


def exchange(server, raw: bytes, timeout: float = 20.0, pause_after: int | None = None) -> tuple[int, dict, bytes, bool]:
    """Send ``raw`` (optionally stalling after ``pause_after`` bytes); (status, headers, body, closed)."""
    with socket.create_connection(server, timeout=timeout) as s:
        if pause_after is None:
            s.sendall(raw)
        else:
            s.sendall(raw[:pause_after])
        data = b""
        started = time.monotonic()
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            assert chunk, f"connection closed without a response: {raw[:200]!r}"
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            chunk = s.recv(65536)
            if not chunk:
                break
            body += chunk
        s.settimeout(max(0.5, timeout - (time.monotonic() - started)))
        try:
            closed = s.recv(1) == b""
        except (socket.timeout, ConnectionResetError):
            closed = False
        return status, headers, body, closed


def request(body: bytes, path: str = "/v1/chat/completions", method: str = "POST", headers: dict | None = None,
            key: str | None = "k3y", length: bool = True) -> bytes:
    h = {"host": "127.0.0.1", "content-type": "application/json", "connection": "close", **(headers or {})}
    if key:
        h["authorization"] = f"Bearer {key}"
    if length:
        h["content-length"] = str(len(body))
    return (f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items()) + "\r\n").encode() + body


def chat(server, payload, **kw):
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    status, headers, body, _ = exchange(server, request(raw, **kw))
    return status, json.loads(body) if body.startswith(b"{") else body


def base(**extra) -> dict:
    return {"messages": user("hello"), "max_tokens": 2, **extra}


@pytest.mark.parametrize("field, value", [
    ("max_tokens", "5"), ("max_tokens", True), ("max_tokens", 2.5), ("max_tokens", -1), ("max_tokens", 2**80),
    ("stream", "yes"), ("stream", 1), ("temperature", "0.5"), ("temperature", 1e308), ("temperature", False),
    ("top_p", "1"), ("top_k", 2.0), ("seed", "42"), ("seed", -(2**64)), ("stop", 5), ("stop", [1, 2]),
    ("n", "1"), ("messages", "hello"), ("messages", [{"role": "user", "content": 5}]),
    ("messages", [{"role": 1, "content": "x"}]), ("stream_options", {"include_usage": "yes"}),
    ("max_completion_tokens", [3]), ("presence_penalty", "0"), ("logprobs", "no"),
])
def test_wrong_types_are_refused_with_the_field_named(server, field, value):
    status, body = chat(server, base(**{field: value}))
    assert status == 400, body
    err = body["error"]
    assert err["param"] and err["param"].split(".")[0] == field, err
    assert field in err["message"] and "\n" not in err["message"]


def test_a_long_image_name_is_a_400_not_a_500(server):
    for name in ("a" * 300 + ".png", "d/" * 2100 + "x.png", "%00.png"):
        status, body = chat(server, base(messages=user("x", name)))
        assert status == 400, (name[:20], body)


def test_image_error_messages(server):
    status, body = chat(server, base(messages=user("x", data_url(_png_header_only(20_000, 20_000)))))
    assert status == 400 and "over the limit of 0.05 megapixels" in body["error"]["message"], body
    assert "178956970" not in body["error"]["message"]
    jpeg = png_bytes(size=(200, 200), fmt="JPEG")
    status, body = chat(server, base(messages=user("x", data_url(jpeg[: len(jpeg) // 2], "image/jpeg"))))
    message = body["error"]["message"]
    assert status == 400 and message.count("truncated") == 1, message
    status, body = chat(server, base(messages=user("x", "FILE:///red.png")))  # upper-case scheme: a file URL
    assert status == 403 and "outside" in body["error"]["message"], body  # /red.png is not in the image folder
    status, body = chat(server, base(messages=user("x", "FILE:red.png")))
    assert status == 200, body


def test_the_docs_are_behind_the_api_key(server):
    for path in ("/docs", "/openapi.json"):
        status, _, _, _ = exchange(server, request(b"", path=path, method="GET", key=None))
        assert status == 401
        status, _, body, _ = exchange(server, request(b"", path=path, method="GET"))
        assert status == 200 and body


def test_a_chunked_body_over_the_limit_is_a_413_with_its_code(server):
    chunk = b"x" * 10_000
    body = b"".join(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n" for _ in range(8)) + b"0\r\n\r\n"
    status, _, data, _ = exchange(server, request(body, headers={"transfer-encoding": "chunked"}, length=False))
    assert status == 413 and json.loads(data)["error"]["code"] == "request_too_large"


def test_a_body_that_never_comes_is_a_408_and_the_connection_closes(server):
    raw = request(json.dumps(base()).encode())
    head_end = raw.index(b"\r\n\r\n") + 4
    for pause_after in (head_end, head_end + 10):  # headers only; part of the body, then silence
        started = time.monotonic()
        status, headers, data, closed = exchange(server, raw, pause_after=pause_after, timeout=BODY_TIMEOUT + 10)
        assert status == 408 and json.loads(data)["error"]["code"] == "request_timeout"
        assert closed and time.monotonic() - started < BODY_TIMEOUT + 5


def test_byte_level_garbage_never_gets_a_500_and_the_server_keeps_answering(server):
    cases = [
        b"", b"{", b"}", b"[]", b"null", b"1e999999", b'{"messages": [', b'{"messages": [}]}', b"\xff\xfe\x00",
        b'{"messages": "\xff"}', b'{"messages": [{"role": "user", "content": "\\ud800"}], "max_tokens": 1}',
        json.dumps(base(max_tokens=10**30)).encode(), json.dumps(base(temperature=-1e300)).encode(),
        b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 1' + b" " * 40_000 + b"}",
        b'{"a": ' * 5000 + b"1" + b"}" * 5000,  # deeply nested
        b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 1, "max_tokens": "1"}',
    ]
    statuses = []
    for raw in cases:
        status, _, _, _ = exchange(server, request(raw))
        statuses.append(status)
    for headers in ({"content-type": "text/plain"}, {"content-length": "abc"}, {"content-length": "-5"}):
        status, _, _, _ = exchange(server, request(b"{}", headers=headers))
        statuses.append(status)
    assert all(s < 500 for s in statuses), statuses
    status, body = chat(server, base())
    assert status == 200 and body["choices"][0]["message"]["role"] == "assistant"
