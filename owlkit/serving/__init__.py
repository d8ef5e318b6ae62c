"""The OpenAI-compatible server and the web demo (``owl serve``, ``owl web``).

Modules, from the edge inwards:

* :mod:`~owlkit.serving.settings`: :class:`ServerSettings` (addresses, key, limits);
* :mod:`~owlkit.serving.errors`: :class:`ApiError` and OpenAI's error JSON;
* :mod:`~owlkit.serving.schema`: the request and response bodies (pydantic);
* :mod:`~owlkit.serving.images`: ``image_url`` values -> decoded, checked images;
* :mod:`~owlkit.serving.prepare`: a validated request -> a :class:`~owlkit.serving.scheduler.Job`;
* :mod:`~owlkit.serving.scheduler`: the asyncio side of the decoding engine (:mod:`owlkit.generation`),
  whose worker thread owns the model;
* :mod:`~owlkit.serving.app`: the FastAPI application (:func:`create_app`);
* :mod:`~owlkit.serving.web`: the Gradio demo mounted at ``/``.

See ``docs/serving.md``.
"""

from __future__ import annotations

from owlkit.serving.settings import ServerSettings

__all__ = ["ServerSettings", "create_app"]


def __getattr__(name: str):
    if name == "create_app":
        from owlkit.serving.app import create_app  # fastapi: heavy, optional (the serve extra)

        return create_app
    raise AttributeError(name)
