"""``AutoModelForCausalLM.from_pretrained(owlkit_folder)`` after a plain ``import owlkit``.

owlkit's classes register themselves with transformers' Auto classes at the end of
:mod:`owlkit.config.model` (AutoConfig) and :mod:`owlkit.models.owl` (AutoModel,
AutoModelForCausalLM); the model lookups import :mod:`owlkit.checkpoints`, which imports the
model and gives its ``from_pretrained`` the folder reader. Importing those costs seconds,
which ``import owlkit`` must not (the ``owl`` command imports it), and importing them *while* transformers loads its Auto modules
would re-enter half-initialised modules. So ``import owlkit`` only installs this hook: once
transformers has loaded ``configuration_auto`` / ``auto_factory``, their two lookup tables
(``CONFIG_MAPPING``, every ``_model_mapping``) learn that an owlkit model type or config class
means "import the owlkit module that registers it first". The import thus happens at the first
lookup of an owlkit type, i.e. inside ``from_pretrained``, never during an import.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys

_CONFIGS = "transformers.models.auto.configuration_auto"
_FACTORY = "transformers.models.auto.auto_factory"
MODEL_TYPES = ("owlkit", "owlkit_vision", "owlkit_abstractor")  # owlkit.config.model's model_type values


def _ensure(module: str) -> None:
    if module not in sys.modules:  # one being imported registers when it finishes
        importlib.import_module(module)


def _wrap_lookups(cls, module: str, is_ours) -> None:
    """``key in mapping`` and ``mapping[key]`` import ``module`` first when ``key`` is owlkit's."""
    if getattr(cls, "_owlkit_hooked", False):
        return
    contains, getitem = cls.__contains__, cls.__getitem__

    def __contains__(self, key):
        if is_ours(key):
            _ensure(module)
        return contains(self, key)

    def __getitem__(self, key):
        if is_ours(key):
            _ensure(module)
        return getitem(self, key)

    cls.__contains__, cls.__getitem__, cls._owlkit_hooked = __contains__, __getitem__, True


def _patch(name: str) -> None:
    mod = sys.modules[name]
    if name == _CONFIGS:
        _wrap_lookups(mod._LazyConfigMapping, "owlkit.config.model", lambda key: key in MODEL_TYPES)
    else:
        _wrap_lookups(mod._LazyAutoMapping, "owlkit.checkpoints",
                      lambda key: getattr(key, "model_type", None) in MODEL_TYPES)


class _PatchAfter(importlib.abc.Loader):
    def __init__(self, loader: importlib.abc.Loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        self.loader.exec_module(module)
        _patch(module.__name__)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname not in (_CONFIGS, _FACTORY):
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _PatchAfter(spec.loader)
        return spec


def install() -> None:
    for name in (_CONFIGS, _FACTORY):
        if name in sys.modules:
            _patch(name)
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
