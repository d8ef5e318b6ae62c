"""The benchmarks of ``owl eval``: one module per benchmark, each one :class:`Benchmark` record.

A benchmark module holds everything about its benchmark: the reader of its local file
layout, its prompt and generation settings (:class:`~owlkit.evaluation.prompts.TaskPrompt`),
its metric (calling the shared scorers of :mod:`~owlkit.evaluation.vqa`,
:mod:`~owlkit.evaluation.choice`, :mod:`~owlkit.evaluation.captioning`,
:mod:`~owlkit.evaluation.yesno`) and the writer of its submission file, and ends with the
record::

    BENCHMARK = Benchmark("vqav2", read_vqa, VQA_PROMPT, metric=vqa_accuracy, ...)

(``BENCHMARKS = (...)`` where one module holds variants that differ only by their data, as
the caption sets). Every module of this package whose name does not start with ``_`` is
imported here and its records make :data:`BENCHMARKS`, in ``order``: adding a benchmark
means adding one file. No torch here.

How the model answers is the record's ``kind``:

* ``generate``: greedy generation on the official prompt string (VQA, captions, yes/no and
  letter-answer multiple choice);
* ``loglik``: text multiple choice scored by the log-likelihood of each option letter (MMLU);
* ``dialogue``: chat conversations, several turns per image (OwlEval).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

from owlkit.errors import InputError
from owlkit.evaluation.prompts import TaskPrompt
from owlkit.evaluation.references import LENIENT_SUFFIX
from owlkit.evaluation.samples import EvalSample

__all__ = ["Benchmark", "RunFolder", "KINDS", "first_samples", "BENCHMARKS", "get_benchmark", "read_task",
           "build_prompt", "score", "discover", "module_benchmarks"]

KINDS = ("generate", "loglik", "dialogue")


@dataclass(frozen=True)
class RunFolder:
    """Where a submission writer writes: the run folder and what the run was made from."""

    path: Path            # the run folder (--output)
    name: str             # the benchmark's name: the prefix of its files
    data: Path            # --data as given
    model_id: str = "owlkit"
    html_embed: str = "relative"  # OwlEval HTML images: "relative" links or "base64" thumbnails

    def file(self, suffix: str) -> Path:
        """``<run folder>/<name><suffix>``."""
        return self.path / f"{self.name}{suffix}"


def first_samples(samples: list[EvalSample], limit: int | None) -> list[EvalSample]:
    """The first ``limit`` samples (all when ``limit`` is None): what ``--limit`` keeps."""
    return samples[:limit] if limit else samples


@dataclass(frozen=True)
class Benchmark:
    """One benchmark: how to read it, prompt for it, score it and write its submission.

    ``reader(path, **options)`` returns the samples; ``options`` maps the command options
    that apply (``images``, ``split``, ``annotations``) to the reader's keywords.
    ``metric(samples, predictions)`` returns the metrics dict, scored exactly like the
    scorer behind the published numbers, which ``reference`` names (one string, or one per
    metric name); ``lenient`` is the same metric with owlkit's forgiving answer parsing
    (``owl eval --lenient``, reported under ``*_lenient`` names). ``metric=None`` needs
    ``no_metric``, the reason (a judge model that cannot run offline). ``submission(samples, predictions, run)`` writes the files the benchmark's
    server or official tool takes and returns their paths. ``select(samples, limit)`` is
    what ``--limit`` keeps. ``data_file``: glob patterns of the one file the reader wants
    when ``--data`` is a folder. ``layout`` says what ``--data`` should be (messages,
    ``--help``); ``order`` places the benchmark in the list of ``owl eval``.
    """

    name: str                 # the command-line name (also the results.json key and file prefix)
    reader: Callable[..., list[EvalSample]]
    prompt: TaskPrompt
    metric: Callable[..., dict[str, Any]] | None = None
    reference: str | Mapping[str, str] = ""
    lenient: Callable[..., dict[str, Any]] | None = None
    no_metric: str = ""
    java: Callable[..., dict[str, Any]] | None = None  # the metric by pycocoevalcap's jars (--java)
    kind: str = "generate"
    options: Mapping[str, str] = field(default_factory=dict)
    submission: Callable[[Sequence[EvalSample], dict[Any, str], RunFolder], list[Path]] | None = None
    select: Callable[[list[EvalSample], int | None], list[EvalSample]] = first_samples
    data_file: tuple[str, ...] = ()
    layout: str = ""
    order: int = 1000

    def resolve_data(self, data: str | Path) -> Path:
        """``--data`` as the reader wants it: for readers that take one file (captions,
        MMBench), a folder holding exactly one matching file is accepted too."""
        path = Path(data).expanduser()
        if not path.exists():
            raise InputError(f"{path}: not found; expected {self.layout}")
        if self.data_file and path.is_dir():
            for pattern in self.data_file:
                found = sorted(p for p in path.glob(pattern) if p.is_file())
                if len(found) == 1:
                    return found[0]
                if len(found) > 1:
                    raise InputError(f"{path}: several {pattern} files ({', '.join(p.name for p in found)}); "
                                     "pass the file itself as --data")
            raise InputError(f"{path}: no {' or '.join(self.data_file)} file found; expected {self.layout}")
        return path

    def score(self, samples: Sequence[EvalSample], predictions: Mapping[Any, str], lenient: bool = False,
              java: bool = False) -> dict[str, Any]:
        """The metrics of ``predictions``; ``java`` scores with :attr:`java`; ``lenient`` scores
        with :attr:`lenient` (the metric itself where the benchmark has no forgiving variant)
        and renames every summary metric ``<name>_lenient``."""
        if self.metric is None:
            raise InputError(f"{self.name} has no automatic metric: {self.no_metric}")
        if java:
            if self.java is None:
                raise InputError(f"--java applies to the caption tasks only, not to {self.name}")
            return self.java(samples, predictions)
        if not lenient:
            return self.metric(samples, predictions)
        metrics = (self.lenient or self.metric)(samples, predictions)
        return {k if k in _UNRENAMED else k + LENIENT_SUFFIX: v for k, v in metrics.items()}

    def provenance(self, metrics: Mapping[str, Any], lenient: bool = False) -> dict[str, dict[str, Any]]:
        """``{metric: {"reference": scorer, "lenient": bool}}`` for the summary metrics."""
        out = {}
        for key in metrics:
            if key in _UNRENAMED:
                continue
            base = key[: -len(LENIENT_SUFFIX)] if lenient and key.endswith(LENIENT_SUFFIX) else key
            ref = self.reference.get(base, "") if isinstance(self.reference, Mapping) else self.reference
            out[key] = {"reference": ref, "lenient": bool(lenient)}
        return out


# what --lenient never renames: counts and per-sample details
_UNRENAMED = frozenset({"n", "groups", "unparsed", "images", "other_num", "per_question", "per_image",
                        "per_group", "extracted"})


# ---------------------------------------------------------------------------------------------
# the table


def module_benchmarks(module: ModuleType) -> tuple[Benchmark, ...]:
    """The records a benchmark module defines: its ``BENCHMARK`` or its ``BENCHMARKS``."""
    records = getattr(module, "BENCHMARKS", None) or (getattr(module, "BENCHMARK", None),)
    if not all(isinstance(r, Benchmark) for r in records):
        raise TypeError(f"{module.__name__} defines no Benchmark: end it with BENCHMARK = Benchmark(...)")
    return tuple(records)


def discover(path: Iterable[str] | None = None) -> dict[str, Benchmark]:
    """``{name: Benchmark}`` from every module of this package (``path``: the package's
    folders, by default ``__path__``) whose name does not start with ``_``, in ``order``."""
    records: list[Benchmark] = []
    for info in pkgutil.iter_modules(list(__path__ if path is None else path)):
        if not info.name.startswith("_"):
            records += module_benchmarks(importlib.import_module(f"{__name__}.{info.name}"))
    table: dict[str, Benchmark] = {}
    for record in sorted(records, key=lambda r: (r.order, r.name)):
        if record.name in table:
            raise ValueError(f"two benchmarks are named {record.name!r}")
        if record.kind not in KINDS:
            raise ValueError(f"benchmark {record.name!r}: kind must be one of {', '.join(KINDS)}")
        if record.metric is None and record.kind != "dialogue" and not record.no_metric:
            raise ValueError(f"benchmark {record.name!r} needs a metric, or no_metric saying why it has none")
        table[record.name] = record
    return table


def get_benchmark(name: str) -> Benchmark:
    """The benchmark of a command-line name; an unknown name lists the valid ones."""
    if name not in BENCHMARKS:
        raise InputError(f"unknown task {name!r}; choose one of: {', '.join(BENCHMARKS)} (or 'compare')")
    return BENCHMARKS[name]


def read_task(name: str, path: str | Path, **kwargs: Any) -> list[EvalSample]:
    """``BENCHMARKS[name].reader(path, **kwargs)`` with a clear error for an unknown name."""
    if name not in BENCHMARKS:
        raise InputError(f"unknown evaluation task {name!r}; known: {', '.join(sorted(BENCHMARKS))}")
    return BENCHMARKS[name].reader(path, **kwargs)


def build_prompt(name: str, sample: Any) -> str:
    """The prompt of benchmark ``name`` for one sample (``BENCHMARKS[name].prompt.build``)."""
    if name not in BENCHMARKS:
        raise KeyError(f"no prompt for task {name!r}; known: {', '.join(sorted(BENCHMARKS))}")
    return BENCHMARKS[name].prompt.build(sample)


def score(name: str, samples: Sequence[EvalSample], predictions: Any, **kwargs: Any) -> dict[str, Any]:
    """``BENCHMARKS[name].metric(samples, predictions)``; OwlEval has no automatic metric."""
    metric = BENCHMARKS[name].metric if name in BENCHMARKS else None
    if metric is None:
        known = sorted(n for n, b in BENCHMARKS.items() if b.metric is not None)
        raise InputError(f"no automatic metric for task {name!r}; known: {', '.join(known)}")
    return metric(samples, predictions, **kwargs)


#: every benchmark, by command-line name, in the order ``owl eval`` lists them
BENCHMARKS: dict[str, Benchmark] = discover()
