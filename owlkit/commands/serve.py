"""``owl serve [--model PATH] [--host 127.0.0.1] [--port 8000] [--api-key KEY]``: the OpenAI-compatible server.

``POST /v1/chat/completions`` (text and ``image_url`` parts, streaming), ``GET /v1/models``,
``GET /health``, and the web demo at ``/`` (``--no-web`` leaves it out). Binds to loopback
unless ``--host`` says otherwise; ``--port 0`` picks a free port (the line ``listening on
http://HOST:PORT`` on stderr tells which). The API key may also come from ``OWL_API_KEY``.
See docs/serving.md.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

from owlkit.commands._generation import add_model_argument, load_owl
from owlkit.errors import InputError
from owlkit.serving.settings import Limits, ServerSettings
from owlkit.zoo.bundled import model_name


def add_server_arguments(parser, api: bool = True) -> None:
    add_model_argument(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000 if api else 7860, help="port (0: any free port)")
    parser.add_argument("--api-key", default=os.environ.get("OWL_API_KEY"),
                        help="require 'Authorization: Bearer KEY' (default: $OWL_API_KEY; the web demo asks for it "
                             "as its password)")
    parser.add_argument("--model-name", default=None, help="name reported by /v1/models (default: the folder's name)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    g = parser.add_argument_group("batching")
    g.add_argument("--max-batch", type=int, default=8, help="requests per batched generation (default 8)")
    g.add_argument("--max-wait-ms", type=float, default=10.0, help="wait after the first request for more (default 10)")
    g = parser.add_argument_group("limits")
    g.add_argument("--image-dir", default=None, help="allow local image paths, only inside this folder")
    g.add_argument("--allow-remote-images", action="store_true", help="download http(s) image URLs (bounded)")
    g.add_argument("--max-tokens", type=int, default=1024, help="largest max_tokens a request may ask (default 1024)")
    g.add_argument("--max-images", type=int, default=8, help="images per request (default 8)")
    g.add_argument("--max-pixels", type=int, default=16_000_000, help="pixels per image (default 16M)")
    g.add_argument("--max-prompt-tokens", type=int, default=8192, help="prompt positions, images included")
    g.add_argument("--max-body-mb", type=float, default=20.0, help="request body size (default 20 MB)")
    g.add_argument("--max-queue", type=int, default=256, help="requests waiting for the model; more get 429")
    g.add_argument("--image-cache-mb", type=float, default=256.0,
                   help="features of recently seen images, so a repeated image skips the vision encoder (0 = off)")
    if api:
        parser.add_argument("--no-web", action="store_true", help="serve the API only (no demo at /)")
    parser.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"])


def add_arguments(parser) -> None:
    add_server_arguments(parser, api=True)


def settings_from_args(args, api: bool = True, web: bool = True):
    for name in ("max_batch", "max_tokens", "max_images", "max_pixels", "max_prompt_tokens", "max_queue"):
        if getattr(args, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be at least 1")
    if args.max_body_mb <= 0 or args.max_wait_ms < 0 or args.image_cache_mb < 0:
        raise InputError("--max-body-mb must be positive, --max-wait-ms and --image-cache-mb not negative")
    if not 0 <= args.port <= 65535:
        raise InputError(f"--port must be in 0..65535, got {args.port}")
    image_dir = None
    if args.image_dir:
        image_dir = Path(args.image_dir)
        if not image_dir.is_dir():
            raise InputError(f"--image-dir {args.image_dir} is not a folder")
    limits = Limits(
        max_body_bytes=int(args.max_body_mb * 1024 * 1024), max_images=args.max_images, max_pixels=args.max_pixels,
        max_tokens=args.max_tokens, default_max_tokens=min(256, args.max_tokens),
        max_prompt_tokens=args.max_prompt_tokens, max_queue=args.max_queue,
    )
    name = args.model_name or model_name(args.model)
    return ServerSettings(
        host=args.host, port=args.port, api_key=args.api_key or None, model_name=name, image_dir=image_dir,
        allow_remote_images=args.allow_remote_images, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
        api=api, web=web, limits=limits, image_cache_mb=args.image_cache_mb,
    )


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise InputError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another --port or --host") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(args, api: bool = True, web: bool = True) -> int:
    settings = settings_from_args(args, api=api, web=web)
    sock = _bind(settings.host, settings.port)  # fail before the model loads
    try:
        import torch
        import uvicorn

        from owlkit.serving.app import create_app  # fastapi + torch: import only when the command runs

        if args.threads:
            torch.set_num_threads(args.threads)
        owl = load_owl(args)
        app = create_app(owl, settings)
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        if settings.host not in ("127.0.0.1", "localhost", "::1") and not settings.api_key:
            print(f"owl {'serve' if api else 'web'}: warning: listening on {settings.host} without --api-key: anyone "
                  "who can reach this address can use the model", file=sys.stderr)
        print(f"owl {'serve' if api else 'web'}: listening on http://{shown}:{port}"
              + (" (API under /v1" + (", web demo at /)" if web else ")") if api else " (web demo at /)"),
              file=sys.stderr, flush=True)
        config = uvicorn.Config(app, log_level=args.log_level, timeout_graceful_shutdown=5, access_log=False)
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
    return 0


def run(args) -> int:
    return serve(args, api=True, web=not args.no_web)
