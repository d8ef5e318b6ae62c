"""The FastAPI application: OpenAI's chat API, ``/health`` and (optionally) the web demo at ``/``.

``create_app(owl, settings)`` builds it around one :class:`~owlkit.serving.scheduler.Scheduler`
(started with the app, stopped at shutdown). Every error is OpenAI's error JSON with the right
status: 400 for a bad request (bad JSON and bad types included, ``param`` naming the field), 401
without the API key (which then also guards ``/docs`` and ``/openapi.json``), 403 for a path
outside ``--image-dir``, 404/405 for unknown routes and methods, 408 for a body that does not
arrive within ``body_timeout_s`` (the connection is closed), 413 for a body over the limit, 429
when too many requests wait, 503 while shutting down.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from owlkit.errors import OwlError
from owlkit.serving.errors import ApiError, error_body
from owlkit.serving.prepare import job_from_request
from owlkit.serving.scheduler import Job, QueueFull, Scheduler, SchedulerClosed
from owlkit.serving.schema import ChatCompletionRequest
from owlkit.serving.settings import ServerSettings
from owlkit.serving.web import mount_demo

log = logging.getLogger("owlkit.serving")

API_PREFIX = "/v1"
API_ROUTES = {"/v1/models": {"GET"}, "/v1/chat/completions": {"POST"}}
DOC_ROUTES = ("/docs", "/docs/oauth2-redirect", "/openapi.json")  # behind the API key too
#: OpenAI-style ``code`` of the errors Starlette raises by status.
STATUS_CODES = {404: "not_found", 405: "method_not_allowed", 408: "request_timeout", 413: "request_too_large"}


class _BodyTooLarge(StarletteHTTPException):
    pass


class _BodyTimeout(StarletteHTTPException):
    pass


class ApiGuard:
    """ASGI middleware for ``/v1/...`` (and the API docs): the Bearer key (401), the body size
    limit (413) and the body time limit (408), checked before the body is read or parsed."""

    def __init__(self, app, settings: ServerSettings):
        self.app = app
        self.key = settings.api_key.encode() if settings.api_key else None
        self.max_body = settings.limits.max_body_bytes
        self.body_timeout = settings.limits.body_timeout_s

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "")
        guarded = path == API_PREFIX or path.startswith(API_PREFIX + "/") or (self.key is not None and path in DOC_ROUTES)
        if scope["type"] != "http" or not guarded:
            return await self.app(scope, receive, send)
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        if self.key is not None:
            given = headers.get(b"authorization", b"")
            scheme, _, token = given.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.key):
                return await _send_json(send, 401, error_body(401, "a valid API key is required (Authorization: Bearer KEY)",
                                                              code="invalid_api_key"),
                                        [(b"www-authenticate", b'Bearer realm="owl"')])
        declared = headers.get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                return await _send_json(send, 400, error_body(400, "bad Content-Length header"))
            if int(declared) > self.max_body:
                return await _send_json(send, 413, _too_large(self.max_body))
        seen, complete = 0, False
        max_body, timeout = self.max_body, self.body_timeout
        deadline = asyncio.get_running_loop().time() + timeout

        async def guarded_receive():
            nonlocal seen, complete
            if complete:  # after the body only a disconnect can come: no time limit
                return await receive()
            left = deadline - asyncio.get_running_loop().time()
            try:
                message = await asyncio.wait_for(receive(), max(left, 0.0))
            except asyncio.TimeoutError:
                raise _BodyTimeout(408, f"the request body did not arrive within {timeout:g} s",
                                   headers={"connection": "close"}) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > max_body:
                    raise _BodyTooLarge(413, _too_large(max_body)["error"]["message"])
                complete = not message.get("more_body", False)
            return message

        return await self.app(scope, guarded_receive, send)


def _too_large(limit: int) -> dict:
    return error_body(413, f"the request body is over the limit of {limit} bytes", code="request_too_large")


async def _send_json(send, status: int, body: dict, extra_headers: list | None = None) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + (extra_headers or [])})
    await send({"type": "http.response.body", "body": data})


def _validation_param(errors: list[dict]) -> str | None:
    """The field the first problem is about (``max_tokens``, ``messages.0.content``), as OpenAI's ``param``."""
    if not errors or errors[0].get("type") == "json_invalid":
        return None
    # pydantic names union members and tagged parts in the location ("str", "list[...]", "text"):
    # keep the path of the request's own keys and list indices.
    loc = [str(x) for x in errors[0].get("loc", ()) if x != "body"]
    keep: list[str] = []
    for part in loc:
        if part.isdigit() or part.isidentifier():
            keep.append(part)
        else:
            break
    return ".".join(keep) or None


def _validation_message(errors: list[dict]) -> str:
    if not errors:
        return "invalid request"
    first = errors[0]
    if first.get("type") == "json_invalid":
        return "the request body is not valid JSON"
    loc = ".".join(str(x) for x in first.get("loc", ()) if x != "body") or "body"
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    return f"{loc}: {first.get('msg', 'invalid value')}{more}"


def _error(status: int, message: str, param: str | None = None, code: str | None = None, headers=None):
    return JSONResponse(error_body(status, message, param, code), status_code=status, headers=headers)


def _sse(data: Any) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def create_app(owl, settings: ServerSettings | None = None, scheduler: Scheduler | None = None) -> FastAPI:
    """The server around a loaded :class:`~owlkit.inference.Owl` (see module doc)."""
    settings = settings or ServerSettings()
    limits = settings.limits
    owl.model.enable_image_feature_cache(settings.image_cache_mb)
    scheduler = scheduler or Scheduler(owl, settings.max_batch, settings.max_wait_ms, limits.max_queue)
    scheduler.start()
    started = int(time.time())
    name = settings.model_name

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        scheduler.start()
        try:
            yield
        finally:
            scheduler.close()

    app = FastAPI(title="owlkit", version="1", lifespan=lifespan, docs_url="/docs",
                  redoc_url=None)
    app.state.scheduler = scheduler
    app.state.settings = settings
    app.state.owl = owl
    app.add_middleware(ApiGuard, settings=settings)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(OwlError)
    async def _owl_error(request: Request, exc: OwlError):
        return _error(400, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        code = "invalid_json" if errors and errors[0].get("type") == "json_invalid" else "invalid_value"
        return _error(400, _validation_message(errors), param=_validation_param(errors), code=code)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        return _error(exc.status_code, message, code=STATUS_CODES.get(exc.status_code),
                      headers=getattr(exc, "headers", None))

    @app.get("/health")
    async def health():
        if not scheduler.alive:
            return _error(503, "the model worker is not running")
        cache = getattr(owl.model, "image_feature_cache", None)
        return {"status": "ok", "model": name, **scheduler.stats(), **({"image_cache": cache.stats()} if cache else {})}

    def model_card() -> dict:
        return {"id": name, "object": "model", "created": started, "owned_by": "owlkit"}

    if settings.api:
        _api_routes(app, owl, settings, scheduler, model_card)
    if settings.web:
        mount_demo(app, owl, scheduler, settings)
    return app


def _api_routes(app: FastAPI, owl, settings: ServerSettings, scheduler: Scheduler, model_card) -> None:
    name = settings.model_name

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str):
        if model_id != name:
            return _error(404, f"the model {model_id[:100]!r} does not exist; this server has {name!r}",
                          param="model", code="model_not_found")
        return model_card()

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        job = await job_from_request(body, owl, settings)
        try:
            scheduler.submit(job)
        except QueueFull as exc:
            return _error(429, str(exc), code="queue_full", headers={"retry-after": "1"})
        except SchedulerClosed as exc:
            return _error(503, str(exc))
        meta = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": name}
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(_stream(job, meta, include_usage), media_type="text/event-stream",
                                     headers={"cache-control": "no-cache", "x-accel-buffering": "no"})
        return await _complete(job, meta, request)

    @app.api_route("/v1/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"],
                   include_in_schema=False)
    async def unknown(rest: str, request: Request):
        path = "/v1/" + rest
        if path in API_ROUTES:
            return _error(405, f"{request.method} is not allowed on {path}; use {', '.join(sorted(API_ROUTES[path]))}",
                          headers={"allow": ", ".join(sorted(API_ROUTES[path]))})
        return _error(404, f"no route {path[:100]!r}; this server has {', '.join(sorted(API_ROUTES))}",
                      code="not_found")


def _usage(job: Job) -> dict:
    return {"prompt_tokens": job.prompt_tokens, "completion_tokens": job.completion_tokens,
            "total_tokens": job.prompt_tokens + job.completion_tokens}


def _reason(reason: str | None) -> str:
    return reason if reason in ("stop", "length") else "stop"


async def _complete(job: Job, meta: dict, request: Request) -> JSONResponse:
    async def watch():  # a client that hangs up cancels its job
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                job.cancel()
                return

    watcher = asyncio.create_task(watch())
    try:
        async for kind, value in job.events():
            if kind == "error":
                return _error(500, value, code="generation_failed")
    finally:
        watcher.cancel()
        job.cancel()  # no-op when finished; stops the job when this handler is cancelled
    return JSONResponse({
        **meta, "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": job.text}, "logprobs": None,
                     "finish_reason": _reason(job.finish_reason)}],
        "usage": _usage(job),
    })


async def _stream(job: Job, meta: dict, include_usage: bool) -> AsyncIterator[str]:
    base = {**meta, "object": "chat.completion.chunk"}

    def chunk(delta: dict, finish: str | None = None) -> str:
        return _sse({**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]})

    try:
        yield chunk({"role": "assistant", "content": ""})
        async for kind, value in job.events():
            if kind == "delta":
                yield chunk({"content": value})
            elif kind == "done":
                yield chunk({}, _reason(value))
            else:
                yield _sse(error_body(500, value, code="generation_failed"))
        if include_usage:
            yield _sse({**base, "choices": [], "usage": _usage(job)})
        yield "data: [DONE]\n\n"
    finally:
        job.cancel()  # the client went away (or the stream ended): free the slot
