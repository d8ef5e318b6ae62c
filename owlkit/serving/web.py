"""The web demo (Gradio), mounted at ``/`` of the server or run alone by ``owl web``.

Upload one or more images, chat over several turns with the answer streamed, set the
generation controls, clear the chat or regenerate the last answer; the images in
``owlkit/assets/examples/`` (when that folder exists) are offered as one-click examples, with
the questions of its ``questions.json`` (the bundled model answers those). Work goes through the
same :class:`~owlkit.serving.scheduler.Scheduler` as the API, so web users and API clients are
batched together and under the same limits. A rejected turn (a bad image, a full queue) is taken
back out of the chat with a warning, so the next question is not rejected for it again.
Uploads are deleted from Gradio's cache folder an hour after they arrive.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
from pathlib import Path
from typing import Any

from owlkit.serving.errors import ApiError
from owlkit.serving.images import decode_image
from owlkit.serving.prepare import build_job
from owlkit.serving.scheduler import QueueFull, Scheduler, SchedulerClosed
from owlkit.serving.settings import ServerSettings

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
EXAMPLE_QUESTION = "What is in this image?"  # for example images that questions.json does not cover
TITLE = "owlkit: chat about images"
UPLOAD_MAX_AGE_S = 3600  # uploads older than this are deleted (checked as often)


def examples_dir() -> Path:
    """Where the bundled example images live (it may not exist)."""
    return Path(__file__).resolve().parents[1] / "assets" / "examples"


def example_images(folder: Path | None) -> list[Path]:
    folder = examples_dir() if folder is None else Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())[:12]


def example_prompts(folder: Path | None) -> list[tuple[Path, str]]:
    """(image, question) pairs for the one-click examples: ``questions.json``'s, else a generic one."""
    images = example_images(folder)
    folder = examples_dir() if folder is None else Path(folder)
    questions: dict[str, str] = {}
    try:
        for item in json.loads((folder / "questions.json").read_text(encoding="utf-8")):
            questions.setdefault(str(item["image"]), str(item["question"]))
    except (OSError, ValueError, KeyError, TypeError):
        pass  # no (readable) questions file: the generic question
    return [(p, questions.get(p.name, EXAMPLE_QUESTION)) for p in images]


def parse_seed(text) -> int | None:
    """The seed box: empty means a random seed; anything else must be a whole number."""
    if text is None or str(text).strip() == "":
        return None
    try:
        return int(str(text).strip())
    except ValueError:
        raise ApiError(400, f"the seed must be a whole number or empty (random), got {str(text)[:20]!r}") from None


def drop_unanswered(history: list) -> list:
    """``history`` without the user entries after the last answer (the turn being rejected)."""
    history = list(history)
    while history and history[-1].get("role") == "user":
        history.pop()
    return history


def _inside(path: Path, roots: list[Path]) -> bool:
    real = Path(os.path.realpath(path))
    return any(real == r or r in real.parents for r in roots)


def conversation_from_history(history: list[dict], roots: list[Path], settings: ServerSettings) -> list[dict]:
    """Chatbot messages (Gradio's normalised format) -> a conversation with decoded images.

    Files must lie in Gradio's upload folder or the examples folder (``roots``).
    """
    limits = settings.limits
    conversation: list[dict[str, Any]] = []
    n_images = 0
    for message in history:
        role = message.get("role")
        if role not in ("user", "assistant"):
            continue
        content = message.get("content")
        items = content if isinstance(content, list) else [content]
        parts: list[dict[str, Any]] = []
        for item in items:
            if isinstance(item, str):
                parts.append({"type": "text", "text": item})
            elif isinstance(item, dict) and item.get("type") == "text":
                parts.append({"type": "text", "text": str(item.get("text", ""))})
            elif isinstance(item, dict) and (item.get("type") == "file" or "path" in item):
                if role != "user":
                    continue
                path = Path((item.get("file") or item).get("path", ""))
                if not _inside(path, roots):
                    raise ApiError(400, "an image is not among the uploaded files")
                n_images += 1
                if n_images > limits.max_images:
                    raise ApiError(400, f"at most {limits.max_images} images fit in one conversation; clear the chat")
                data = path.read_bytes()[: limits.max_image_bytes + 1]
                if len(data) > limits.max_image_bytes:
                    raise ApiError(400, f"an image is over the limit of {limits.max_image_bytes} bytes")
                parts.append({"type": "image", "image": decode_image(data, limits.max_pixels)})
        if parts:
            conversation.append({"role": role, "content": parts})
    return conversation


def build_demo(owl, scheduler: Scheduler, settings: ServerSettings):
    """The Gradio Blocks of the demo (see module doc)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    limits = settings.limits
    examples = example_prompts(settings.examples_dir)
    roots = [Path(os.path.realpath(gr.utils.get_upload_folder()))]
    if examples:
        roots.append(Path(os.path.realpath(examples[0][0].parent)))

    def add_message(history: list, message: dict):
        history = list(history or [])
        for f in (message or {}).get("files") or []:
            path = f if isinstance(f, str) else (f.get("path") if isinstance(f, dict) else getattr(f, "path", None))
            if path:
                history.append({"role": "user", "content": {"path": path}})
        text = ((message or {}).get("text") or "").strip()
        if text:
            history.append({"role": "user", "content": text})
        return history, gr.MultimodalTextbox(value=None, interactive=False)

    async def respond(history: list, temperature: float, top_p: float, max_tokens: float, seed):
        history = list(history or [])
        if not history or history[-1].get("role") != "user":
            yield history
            return
        try:
            conversation = await asyncio.to_thread(conversation_from_history, history, roots, settings)
            job = await asyncio.to_thread(
                build_job, owl, conversation, limits=limits, max_tokens=int(max_tokens), temperature=float(temperature),
                top_p=float(top_p), seed=parse_seed(seed),
            )
            scheduler.submit(job)
        except (ApiError, QueueFull, SchedulerClosed) as exc:
            gr.Warning(getattr(exc, "message", str(exc)))
            yield drop_unanswered(history)  # else every later question would be rejected for it again
            return
        history.append({"role": "assistant", "content": ""})
        text = ""
        try:
            async for kind, value in job.events():
                if kind == "delta":
                    text += value
                    history[-1] = {"role": "assistant", "content": text}
                    yield history
                elif kind == "error":
                    gr.Warning(value)
            history[-1] = {"role": "assistant", "content": job.text or text}
            yield history
        finally:
            job.cancel()  # the page went away or the user pressed stop

    def unlock():
        return gr.MultimodalTextbox(interactive=True)

    def drop_last_answer(history: list):
        history = list(history or [])
        while history and history[-1].get("role") == "assistant":
            history.pop()
        return history

    with gr.Blocks(title=TITLE, analytics_enabled=False, delete_cache=(UPLOAD_MAX_AGE_S, UPLOAD_MAX_AGE_S)) as demo:
        gr.Markdown(f"## {TITLE}\nModel: `{settings.model_name}`. Upload images (PNG, JPEG, WebP), ask, and "
                    "follow up; the answer streams in.")
        chatbot = gr.Chatbot(elem_id="owl-chat", label="Chat", height=440, buttons=["copy"])
        box = gr.MultimodalTextbox(
            elem_id="owl-input", file_types=list(IMAGE_SUFFIXES), file_count="multiple", sources=["upload"],
            placeholder="Upload images and ask a question, then press Enter", show_label=False,
        )
        with gr.Row():
            regenerate = gr.Button("Regenerate", elem_id="owl-regenerate", variant="secondary")
            clear = gr.Button("Clear", elem_id="owl-clear", variant="secondary")
        with gr.Accordion("Generation settings", open=False):
            temperature = gr.Slider(0.0, 2.0, value=0.0, step=0.05, label="Temperature (0 = greedy)")
            top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="Top-p")
            max_tokens = gr.Slider(1, limits.max_tokens, value=min(128, limits.max_tokens), step=1,
                                   label="Max new tokens")
            seed = gr.Textbox(value="", elem_id="owl-seed", label="Seed (sampling only; empty = random)",
                              placeholder="empty = random")
        if examples:
            gr.Examples(examples=[[{"text": question, "files": [str(p)]}] for p, question in examples],
                        inputs=[box], label="Example images")
        controls = [chatbot, temperature, top_p, max_tokens, seed]
        box.submit(add_message, [chatbot, box], [chatbot, box], queue=False).then(
            respond, controls, chatbot, concurrency_limit=None).then(unlock, None, box)
        regenerate.click(drop_last_answer, chatbot, chatbot, queue=False).then(
            respond, controls, chatbot, concurrency_limit=None)
        clear.click(lambda: ([], None), None, [chatbot, box], queue=False)
    return demo


def mount_demo(app, owl, scheduler: Scheduler, settings: ServerSettings, path: str = "/"):
    """Mount the demo on a FastAPI app (with ``--api-key``, a login page asks for it)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    demo = build_demo(owl, scheduler, settings)
    auth = None
    if settings.api_key:
        key = settings.api_key

        def auth(username: str, password: str) -> bool:  # any user name; the API key as password
            return hmac.compare_digest(str(password).encode(), key.encode())

    examples = example_images(settings.examples_dir)
    return gr.mount_gradio_app(
        app, demo, path=path, auth=auth, auth_message="Password: the server's API key" if auth else None,
        ssr_mode=False, max_file_size=settings.limits.max_image_bytes, server_name=settings.host,
        server_port=settings.port, footer_links=[], mcp_server=False,
        allowed_paths=[str(examples[0].parent)] if examples else None,
    )
