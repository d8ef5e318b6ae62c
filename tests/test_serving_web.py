"""The web demo end to end: headless Chromium (Debian's package) driven by Playwright.

Uploads an image, asks, watches the answer stream in, regenerates, clears, and runs a
one-click example. The server runs on 127.0.0.1 (a free port); the browser is allowed no
other address. A screenshot is saved as a test artefact: ``web-demo.png`` in the test's
pytest tmp folder, and also in ``$OWLKIT_TEST_ARTIFACTS`` when that variable names a folder.
"""

from __future__ import annotations

import functools
import os
import shutil
import time
from pathlib import Path

import pytest

from helpers import make_model_folder
from test_serving_utils import live_server, png_bytes

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
BOT = "#owl-chat .message-row.bot-row"
pytestmark = pytest.mark.filterwarnings("ignore:::gradio.queueing")  # Gradio's own pandas calls


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed at /usr/bin/chromium (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import torch

    from owlkit.inference import Owl
    from owlkit.serving.app import create_app
    from owlkit.serving.settings import Limits, ServerSettings

    root = tmp_path_factory.mktemp("web")
    make_model_folder(root / "model", "test-owl2", seed=2)
    (root / "examples").mkdir()
    (root / "examples" / "blue-square.png").write_bytes(png_bytes((30, 40, 210), size=(48, 48)))
    (root / "examples" / "questions.json").write_text(
        '[{"image": "blue-square.png", "question": "What colour is the square?", "answer": "blue"}]')
    owl = Owl.load(root / "model")
    forward = owl.model.forward

    @functools.wraps(forward)  # generate() reads forward's signature
    def slow_forward(*args, **kwargs):  # a few ms per step, so that the stream is visible
        time.sleep(0.03)
        return forward(*args, **kwargs)

    owl.model.forward = slow_forward
    settings = ServerSettings(examples_dir=root / "examples", model_name="tiny", limits=Limits(max_tokens=24))
    app = create_app(owl, settings)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with live_server(app) as url:
            yield url, app.state.scheduler, root
    finally:
        torch.set_num_threads(threads)


def _answer_growth(page, timeout=30.0):
    """Texts the last answer bubble showed while it streamed, and its final text."""
    page.evaluate("""() => {
        window.__owlSeen = [];
        const chat = document.querySelector('#owl-chat');
        new MutationObserver(() => {
            const bots = chat.querySelectorAll('.message-row.bot-row');
            const last = bots.length ? bots[bots.length - 1].innerText : '';
            const seen = window.__owlSeen;
            if (!seen.length || seen[seen.length - 1] !== last) seen.push(last);
        }).observe(chat, {subtree: true, childList: true, characterData: true});
    }""")
    return lambda: page.evaluate("() => window.__owlSeen")


def _wait_done(scheduler, completed_before, page, count=1, timeout=60.0):
    deadline = time.monotonic() + timeout
    while scheduler.stats()["completed"] < completed_before + count:
        assert time.monotonic() < deadline, scheduler.stats()
        page.wait_for_timeout(50)
    page.wait_for_timeout(500)  # the last update reaches the page


def test_web_demo_upload_ask_stream_regenerate_clear_example(browser, server, tmp_path):
    url, scheduler, root = server
    image = tmp_path / "red.png"
    image.write_bytes(png_bytes((220, 20, 20), size=(64, 48)))
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    outside: list[str] = []

    def loopback_only(route):
        if route.request.url.startswith(("http://127.0.0.1", "data:", "blob:")):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", loopback_only)
    try:
        page.goto(url + "/", wait_until="networkidle", timeout=30_000)
        assert "owlkit" in page.title()
        page.get_by_text("Generation settings").click()
        seed_box = page.locator("#owl-seed textarea, #owl-seed input").first
        seed_box.wait_for(timeout=10_000)
        assert seed_box.input_value() == ""  # empty = random, as its label says

        # upload, ask, watch the answer stream in
        page.locator("#owl-input input[type=file]").set_input_files(str(image))
        page.locator("#owl-input img, #owl-input .thumbnail-item").first.wait_for(timeout=10_000)
        seen = _answer_growth(page)
        before = scheduler.stats()["completed"]
        page.locator("#owl-input textarea").fill("what colour is the square")
        page.locator("#owl-input textarea").press("Enter")
        _wait_done(scheduler, before, page)
        growth = [t for t in seen() if t.strip()]
        assert len(growth) >= 3, growth  # several partial answers, each extending the last
        assert all(b.startswith(a[: max(0, len(a) - 2)]) for a, b in zip(growth, growth[1:]))
        answer = page.locator(BOT).last.inner_text()
        assert answer.strip() and page.locator("#owl-chat .message-row.user-row img").count() == 1
        page.screenshot(path=str(tmp_path / "web-demo.png"), full_page=True)

        # regenerate: same greedy answer again; clear: empty chat
        before = scheduler.stats()["completed"]
        page.locator("#owl-regenerate").click()
        _wait_done(scheduler, before, page)
        assert page.locator(BOT).count() == 1 and page.locator(BOT).last.inner_text() == answer
        page.locator("#owl-clear").click()
        page.wait_for_function("() => !document.querySelector('#owl-chat .message-row')", timeout=10_000)

        # a one-click example fills the box; Enter asks it
        page.get_by_text("Example images").wait_for(timeout=10_000)
        page.locator(".gallery-item").first.click()
        page.wait_for_function("() => document.querySelector('#owl-input textarea').value.length > 0", timeout=10_000)
        assert page.locator("#owl-input textarea").input_value() == "What colour is the square?"  # questions.json
        before = scheduler.stats()["completed"]
        page.locator("#owl-input textarea").press("Enter")
        _wait_done(scheduler, before, page)
        assert page.locator(BOT).last.inner_text().strip()

        # a rejected image is taken back out: the next (text-only) question is answered
        page.locator("#owl-clear").click()
        page.wait_for_function("() => !document.querySelector('#owl-chat .message-row')", timeout=10_000)
        bad = tmp_path / "broken.png"
        bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 4)
        page.locator("#owl-input input[type=file]").set_input_files(str(bad))
        page.locator("#owl-input img, #owl-input .thumbnail-item").first.wait_for(timeout=10_000)
        page.locator("#owl-input textarea").fill("what is this")
        page.locator("#owl-input textarea").press("Enter")
        page.get_by_text("cannot").first.wait_for(timeout=10_000)  # the warning toast names the problem
        page.wait_for_function("() => !document.querySelector('#owl-chat .message-row')", timeout=10_000)
        page.wait_for_function("() => !document.querySelector('#owl-input textarea').disabled", timeout=10_000)
        before = scheduler.stats()["completed"]
        page.locator("#owl-input textarea").fill("hello")
        page.locator("#owl-input textarea").press("Enter")
        _wait_done(scheduler, before, page)
        assert page.locator(BOT).count() == 1 and page.locator(BOT).last.inner_text().strip()
        assert outside == []
    finally:
        page.close()
    artefacts = os.environ.get("OWLKIT_TEST_ARTIFACTS")
    if artefacts:
        Path(artefacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / "web-demo.png", Path(artefacts) / "web-demo.png")
    print(f"screenshot: {tmp_path / 'web-demo.png'}")


def test_demo_helpers_seed_rejected_turns_examples_and_upload_cleanup(tmp_path):
    """Without a browser: the seed box's rule, taking a rejected turn back, questions.json's
    questions for the examples, and Gradio's cache cleanup of uploads."""
    from owlkit.serving.errors import ApiError
    from owlkit.serving.web import EXAMPLE_QUESTION, UPLOAD_MAX_AGE_S, drop_unanswered, example_prompts, parse_seed

    assert parse_seed("") is None and parse_seed(None) is None and parse_seed(" 7 ") == 7
    with pytest.raises(ApiError, match="whole number"):
        parse_seed("seven")
    history = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
               {"role": "user", "content": {"path": "x.png"}}, {"role": "user", "content": "what"}]
    assert drop_unanswered(history) == history[:2]
    (tmp_path / "a.png").write_bytes(png_bytes())
    (tmp_path / "b.png").write_bytes(png_bytes())
    (tmp_path / "questions.json").write_text('[{"image": "a.png", "question": "What colour?"}]')
    assert [(p.name, q) for p, q in example_prompts(tmp_path)] == [("a.png", "What colour?"), ("b.png", EXAMPLE_QUESTION)]
    assert UPLOAD_MAX_AGE_S <= 3600
