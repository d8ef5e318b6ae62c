"""The OpenAI-compatible server: API shape, dynamic batching, cancellation, limits and safety.

In-process tests use httpx's ASGI transport; those that need real sockets (the official
``openai`` client, client disconnects) run uvicorn on 127.0.0.1 with a free port.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import os
import threading
import time

import httpx
import pytest

from helpers import make_model_folder
from owlkit.inference import Owl
from owlkit.serving.app import create_app
from owlkit.serving.scheduler import Job, Scheduler
from owlkit.serving.settings import Limits, ServerSettings
from test_serving_utils import data_url, live_server, png_bytes, user

RED, GREEN = png_bytes((200, 30, 30)), png_bytes((20, 200, 40), size=(30, 50))


@pytest.fixture(scope="module")
def owl(tmp_path_factory):
    folder = tmp_path_factory.mktemp("serving") / "model"
    make_model_folder(folder, "test-owl2", seed=3)
    return Owl.load(folder)


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    (root / "inside").mkdir()
    (root / "inside" / "red.png").write_bytes(RED)
    (root / "outside.png").write_bytes(RED)
    os.symlink(root / "outside.png", root / "inside" / "link.png")
    (root / "inside" / "anim.gif").write_bytes(png_bytes(fmt="GIF"))
    return root


def make_app(owl, **kw):
    limits = kw.pop("limits", None) or Limits(max_tokens=64, default_max_tokens=8, max_images=2, max_pixels=100_000,
                                              max_body_bytes=200_000, max_prompt_tokens=100)
    settings = ServerSettings(web=False, max_wait_ms=kw.pop("max_wait_ms", 20), limits=limits, **kw)
    return create_app(owl, settings)


@pytest.fixture(scope="module")
def app(owl, image_dir):
    app = make_app(owl, image_dir=image_dir / "inside", model_name="tiny")
    yield app
    app.state.scheduler.close()


def call(app, *requests):
    """Send requests (method, path, kwargs) concurrently in-process; the responses in order."""

    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as client:
            return await asyncio.gather(*(client.request(m, p, **kw) for m, p, kw in requests))

    return asyncio.run(go())


def post(app, body, **kw):
    return call(app, ("POST", "/v1/chat/completions", {"json": body, **kw}))[0]


def sse_events(text: str) -> list:
    events = [line[len("data: "):] for line in text.split("\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def expected(owl, text, *images, n=6):
    content = [{"type": "image", "image": im} for im in images] + [{"type": "text", "text": text}]
    return owl.chat([{"role": "user", "content": content}], max_new_tokens=n)


# -- the API ---------------------------------------------------------------------------------


def test_models_health_and_chat_answers_as_the_python_api(app, owl):
    models, health = call(app, ("GET", "/v1/models", {}), ("GET", "/health", {}))
    assert models.json()["data"][0]["id"] == "tiny" and models.json()["object"] == "list"
    assert health.json()["status"] == "ok"
    r = post(app, {"model": "tiny", "messages": user("what colour is it", data_url(RED)), "max_tokens": 6})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["choices"][0]["message"]["role"] == "assistant"
    assert body["choices"][0]["message"]["content"] == expected(owl, "what colour is it", RED)
    assert body["choices"][0]["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    conv = [{"role": "user", "content": [{"type": "image", "image": RED}, {"type": "text", "text": "what colour is it"}]}]
    ids, _ = owl.processor.encode(conv, reserve=1)
    assert usage["prompt_tokens"] == owl.processor.positions(ids)
    assert 1 <= usage["completion_tokens"] <= 6 and usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    # text-only, string content, system message, multi-turn
    conv = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"},
            {"role": "assistant", "content": "hi"}, {"role": "user", "content": "what is this"}]
    r = post(app, {"messages": conv, "max_tokens": 5})
    assert r.json()["choices"][0]["message"]["content"] == owl.chat(conv, max_new_tokens=5)
    # the same image again: its features come from the server's image cache
    again = post(app, {"model": "tiny", "messages": user("what colour is it", data_url(RED)), "max_tokens": 6})
    assert again.json()["choices"][0]["message"]["content"] == body["choices"][0]["message"]["content"]
    cache = call(app, ("GET", "/health", {}))[0].json()["image_cache"]
    assert cache["hits"] >= 1 and cache["images"] >= 1


def test_streaming_is_openai_chunks_ending_with_done(app):
    body = {"messages": user("describe the image", data_url(GREEN)), "max_tokens": 8}
    plain = post(app, body).json()["choices"][0]["message"]["content"]
    r = post(app, {**body, "stream": True, "stream_options": {"include_usage": True}})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    chunks = sse_events(r.text)
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text.strip() == plain
    finals = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finals) == 1 and finals[0]["choices"][0]["finish_reason"] in ("stop", "length")
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] >= 1


def test_concurrent_requests_are_batched_and_answer_as_alone(owl):
    app = make_app(owl, max_wait_ms=200)
    try:
        prompts = [("what colour", (RED,)), ("hello world", ()), ("how many", (GREEN,)), ("describe it", (RED,)),
                   ("what shape", ()), ("is it red", (GREEN,))]
        reqs = [("POST", "/v1/chat/completions", {"json": {
            "messages": user(t, *(data_url(i) for i in ims)), "max_tokens": 4 + k, "stream": k % 2 == 1}})
            for k, (t, ims) in enumerate(prompts)]
        responses = call(app, *reqs)
        for k, ((text, ims), r) in enumerate(zip(prompts, responses)):
            assert r.status_code == 200, r.text
            if k % 2:
                got = "".join(c["choices"][0]["delta"].get("content", "") for c in sse_events(r.text) if c["choices"])
            else:
                got = r.json()["choices"][0]["message"]["content"]
            assert got.strip() == expected(owl, text, *ims, n=4 + k)
        stats = app.state.scheduler.stats()
        assert stats["mean_batch_size"] > 1.5, stats
    finally:
        app.state.scheduler.close()


def test_stop_strings_seed_and_mixed_sampling(app, owl):
    base = {"messages": user("hello world"), "max_tokens": 12}
    full = post(app, base).json()["choices"][0]["message"]["content"]
    assert len(full) > 3
    stop = full[2:4]
    cut = post(app, {**base, "stop": [stop]}).json()["choices"][0]
    assert cut["message"]["content"] == full[:full.find(stop)].strip() and cut["finish_reason"] == "stop"
    sampled = [post(app, {**base, "temperature": 1.3, "top_p": 0.9, "seed": 7}).json()["choices"][0]["message"]["content"]
               for _ in range(2)]
    assert sampled[0] == sampled[1]
    # greedy rows batched with sampling rows keep their greedy answer
    reqs = [("POST", "/v1/chat/completions", {"json": {**base, "temperature": t, "top_k": 20}}) for t in (0, 1.0, 0, 0.7)]
    out = [r.json()["choices"][0]["message"]["content"] for r in call(app, *reqs)]
    assert out[0] == out[2] == full


def test_scheduler_joins_rows_mid_flight_and_cancel_frees_the_slot(owl):
    ids, _ = owl.processor.encode([{"role": "user", "content": "hello"}], reserve=1)
    stops = owl.processor.stop_strings

    async def drain(job):
        async for _ in job.events():
            pass

    async def joins():  # a job arriving while another runs joins its batch and finishes first
        long = scheduler.submit(Job(list(ids), max_new_tokens=150))
        async for kind, _ in long.events():
            break
        short = scheduler.submit(Job(list(ids), max_new_tokens=3, stops=stops))
        await drain(short)
        assert long.finished_at is None and short.finish_reason in ("stop", "length")
        await drain(long)
        return long, short

    async def frees():  # one slot: a waiting job starts as soon as the running one's client leaves
        long = scheduler.submit(Job(list(ids), max_new_tokens=200))
        waiting = [scheduler.submit(Job(list(ids), max_new_tokens=3)) for _ in range(2)]
        waiting[1].cancel()  # gone before it starts: never takes a slot
        async for kind, _ in long.events():
            if kind == "delta":
                long.cancel()  # the client of the long job hangs up mid-stream
                break
        await drain(long)
        await asyncio.wait_for(drain(waiting[0]), 30)
        await drain(waiting[1])
        return long, waiting

    scheduler = Scheduler(owl, max_batch=2, max_wait_ms=1).start()
    try:
        long, short = asyncio.run(joins())
        assert short.started_at > long.started_at and short.finished_at < long.finished_at
    finally:
        scheduler.close()
    scheduler = Scheduler(owl, max_batch=1, max_wait_ms=1).start()
    try:
        long, waiting = asyncio.run(frees())
        assert long.finish_reason == "cancelled" and long.completion_tokens < 50
        assert waiting[0].finish_reason in ("stop", "length") and waiting[0].started_at >= long.finished_at
        assert waiting[1].finish_reason == "cancelled" and waiting[1].started_at is None
        deadline = time.monotonic() + 10
        while scheduler.stats()["cancelled"] < 2 or scheduler.stats()["running"]:
            assert time.monotonic() < deadline, scheduler.stats()
            time.sleep(0.01)
    finally:
        scheduler.close()


# -- limits and safety -----------------------------------------------------------------------


def test_api_key_is_required_when_set(owl):
    app = make_app(owl, api_key="s3cret")
    try:
        body = {"messages": user("hi"), "max_tokens": 2}
        no_key, wrong, ok, health = call(
            app, ("POST", "/v1/chat/completions", {"json": body}),
            ("GET", "/v1/models", {"headers": {"authorization": "Bearer nope"}}),
            ("POST", "/v1/chat/completions", {"json": body, "headers": {"authorization": "Bearer s3cret"}}),
            ("GET", "/health", {}))
        assert no_key.status_code == wrong.status_code == 401
        assert no_key.json()["error"]["type"] == "authentication_error"
        assert ok.status_code == 200 and health.status_code == 200
    finally:
        app.state.scheduler.close()


@pytest.mark.parametrize("mutate, status, words", [
    (lambda b: b.update(max_tokens=65), 400, "max_tokens"),
    (lambda b: b.update(max_tokens=0), 400, "max_tokens"),
    (lambda b: b.update(temperature=-1), 400, "temperature"),
    (lambda b: b.update(temperature="hot"), 400, "temperature"),
    (lambda b: b.update(n=2), 400, "n"),
    (lambda b: b.update(stop=["a", "b", "c", "d", "e"]), 400, "stop"),
    (lambda b: b.update(messages=[]), 400, "messages"),
    (lambda b: b.update(messages=[{"role": "robot", "content": "x"}]), 400, "role"),
    (lambda b: b.update(messages=[{"role": "assistant", "content": "x"}]), 400, "user message"),
    (lambda b: b.update(messages=user("x " * 300)), 400, "context is 256"),
    (lambda b: b.update(messages=user("hello world " * 30)), 400, "limit of 100"),
    (lambda b: b.update(messages=user("<|image|> what")), 400, "image_url"),
    (lambda b: b.update(messages=user("x", data_url(RED), data_url(RED), data_url(RED))), 400, "at most 2 images"),
    (lambda b: b.update(messages=user("x", data_url(png_bytes(size=(400, 300))))), 400, "megapixels"),
    (lambda b: b.update(messages=user("x", data_url(png_bytes(fmt="GIF"), "image/gif"))), 400, "image/gif"),
    (lambda b: b.update(messages=user("x", data_url(png_bytes(fmt="GIF")))), 400, "PNG, JPEG or WebP"),
    (lambda b: b.update(messages=user("x", "data:image/png;base64,@@@")), 400, "base64"),
    (lambda b: b.update(messages=user("x", data_url(b"\x89PNG\r\n\x1a\nbroken"))), 400, "image"),
    (lambda b: b.update(messages=user("x", "http://127.0.0.1:9/a.png")), 400, "--allow-remote-images"),
    (lambda b: b.update(messages=user("x", "ftp://host/a.png")), 400, "scheme"),
    (lambda b: b.update(messages=user("x", "red.png")), 200, ""),
    (lambda b: b.update(messages=user("x", "file:///etc/passwd")), 403, "outside"),
    (lambda b: b.update(messages=user("x", "../outside.png")), 403, "outside"),
    (lambda b: b.update(messages=user("x", "link.png")), 403, "outside"),
    (lambda b: b.update(messages=user("x", "missing.png")), 400, "no image file"),
    (lambda b: b.update(messages=user("x", "anim.gif")), 400, "PNG, JPEG or WebP"),
])
def test_bad_requests_get_openai_errors(app, mutate, status, words):
    body = {"messages": user("hello"), "max_tokens": 2}
    mutate(body)
    r = post(app, body)
    assert r.status_code == status, r.text
    if status != 200:
        err = r.json()["error"]
        assert words in err["message"] and err["type"] in ("invalid_request_error", "permission_error")
        assert "\n" not in err["message"]


def test_body_limits_json_and_routes(app):
    async def chunks():
        for _ in range(300):
            yield b"x" * 1000

    big = json.dumps({"messages": user("x" * 250_000)})
    responses = call(
        app,
        ("POST", "/v1/chat/completions", {"content": big, "headers": {"content-type": "application/json"}}),
        ("POST", "/v1/chat/completions", {"content": chunks()}),  # chunked, no Content-Length
        ("POST", "/v1/chat/completions", {"content": b"{not json", "headers": {"content-type": "application/json"}}),
        ("POST", "/v1/chat/completions", {"content": b"[1, 2]", "headers": {"content-type": "application/json"}}),
        ("POST", "/v1/chat/completions", {"content": b""}),
        ("GET", "/v1/chat/completions", {}),
        ("GET", "/v1/nothing", {}),
        ("GET", "/v1/models/other", {}),
    )
    assert [r.status_code for r in responses] == [413, 413, 400, 400, 400, 405, 404, 404]
    for r in responses:
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_remote_images_only_when_allowed_and_bounded(owl, tmp_path):
    (tmp_path / "red.png").write_bytes(RED)
    (tmp_path / "big.png").write_bytes(RED + b"\0" * 300_000)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(tmp_path), **kw)

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    limits = Limits(max_image_bytes=100_000, max_tokens=8, remote_timeout_s=5)
    allowed, refused = make_app(owl, allow_remote_images=True, limits=limits), make_app(owl, limits=limits)
    try:
        ok = post(allowed, {"messages": user("what", f"{base}/red.png"), "max_tokens": 3})
        assert ok.status_code == 200, ok.text
        too_big = post(allowed, {"messages": user("what", f"{base}/big.png"), "max_tokens": 3})
        assert too_big.status_code == 400 and "limit" in too_big.json()["error"]["message"]
        missing = post(allowed, {"messages": user("what", f"{base}/none.png"), "max_tokens": 3})
        assert missing.status_code == 400 and "404" in missing.json()["error"]["message"]
        assert post(refused, {"messages": user("what", f"{base}/red.png"), "max_tokens": 3}).status_code == 400
    finally:
        server.shutdown()
        allowed.state.scheduler.close()
        refused.state.scheduler.close()


# -- a real server ---------------------------------------------------------------------------


def test_openai_client_and_disconnects_on_a_live_server(owl):
    import openai

    app = make_app(owl, api_key="k", limits=Limits(max_tokens=200))
    with live_server(app) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0, timeout=30)
        assert [m.id for m in client.models.list()] == ["owl"]
        messages = user("what colour is it", data_url(RED))
        done = client.chat.completions.create(model="owl", messages=messages, max_tokens=6)
        assert done.choices[0].message.content == expected(owl, "what colour is it", RED)
        assert done.usage.completion_tokens >= 1
        stream = client.chat.completions.create(model="owl", messages=messages, max_tokens=6, stream=True)
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert text.strip() == done.choices[0].message.content
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model="owl", messages=messages, max_tokens=201)

        # a streaming client that hangs up after the first piece frees its slot
        headers = {"authorization": "Bearer k"}
        body = {"messages": user("hello"), "max_tokens": 200, "stream": True}
        with httpx.Client(base_url=url, headers=headers, timeout=30) as http:
            with http.stream("POST", "/v1/chat/completions", json=body) as r:
                for line in r.iter_lines():
                    if '"content"' in line and '"content": ""' not in line:
                        break
            # and a non-streaming client that gives up
            with pytest.raises(httpx.ReadTimeout):
                # 200 tokens take this model 0.25-0.65 s here: a 0.05 s client gives up long before
                http.post("/v1/chat/completions", json={**body, "stream": False}, timeout=0.05)
            deadline = time.monotonic() + 20
            while True:
                stats = http.get("/health").json()
                if stats["cancelled"] >= 2 and stats["running"] == 0:
                    break
                assert time.monotonic() < deadline, stats
                time.sleep(0.05)
            assert stats["completion_tokens"] < 3 * 200


def test_cli_help_and_bad_options(capsys, tmp_path):
    from owlkit.cli import main

    for command in ("serve", "web"):
        with pytest.raises(SystemExit) as exit_:
            main([command, "--help"])
        assert exit_.value.code == 0 and "--api-key" in capsys.readouterr().out
    assert main(["serve", "--image-dir", str(tmp_path / "missing"), "--port", "0"]) == 2
    assert "--image-dir" in capsys.readouterr().err
    assert main(["serve", "--max-batch", "0"]) == 2


def test_owl_serve_without_a_model_says_so(capsys):
    from owlkit.cli import main
    from owlkit.inference import bundled_model_path

    if (bundled_model_path() / "config.json").exists():
        pytest.skip("this installation has a bundled model")
    assert main(["serve", "--port", "0", "--no-web"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--model" in err[0]
