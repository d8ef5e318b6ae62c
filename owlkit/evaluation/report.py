"""Evaluation results on disk: JSON + Markdown, and run comparison with a bar chart.

A *run folder* holds ``results.json`` (``{"tasks": {task: {"metrics": {...}, ...}}}``, merged
task by task by :func:`write_results`), ``results.md`` (the same as Markdown tables, rewritten
on every write) and ``<task>_details.json`` (per-question scores and extracted answers, kept out
of the summary). :func:`compare` puts several run folders side by side and draws
``comparison.png`` (matplotlib, imported lazily, Agg canvas; no pyplot state is touched).

The submission files in the benchmarks' official formats are written by each benchmark's
module (:mod:`owlkit.evaluation.benchmarks`).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from owlkit.errors import InputError

__all__ = [
    "DETAIL_KEYS",
    "split_details",
    "scalar_metrics",
    "metrics_markdown",
    "write_results",
    "load_results",
    "compare",
]

DETAIL_KEYS = ("per_question", "per_image", "per_group", "extracted")
_COUNT_KEYS = {"n", "groups", "unparsed", "images", "other_num", "TP", "FP", "TN", "FN"}


def split_details(metrics: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(summary, details): the per-sample entries of :data:`DETAIL_KEYS` go to details."""
    summary = {k: v for k, v in metrics.items() if k not in DETAIL_KEYS}
    details = {k: v for k, v in metrics.items() if k in DETAIL_KEYS}
    return summary, details


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def scalar_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The top-level numeric entries of a metrics dict."""
    return {k: v for k, v in metrics.items() if _is_number(v)}


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or not _is_number(v):
        return "—" if v is None else str(v)
    if isinstance(v, int):
        return str(v)
    return f"{v:.2f}" if abs(v) >= 1 else f"{v:.4f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(c) if not isinstance(c, str) else c.replace("|", "\\|")
                                       for c in row) + " |")
    return "\n".join(lines)


def metrics_markdown(task: str, metrics: Mapping[str, Any]) -> str:
    """Markdown for one task: a metric/value table of the scalars, then one table per nested
    dict (per question type, per category, MME subtasks...)."""
    summary, _ = split_details(metrics)
    out = [f"## {task}", ""]
    scalars = scalar_metrics(summary)
    if scalars:
        out += [_table(["metric", "value"], list(scalars.items())), ""]
    for key, value in summary.items():
        if not isinstance(value, Mapping) or not value:
            continue
        if all(_is_number(v) for v in value.values()):
            out += [f"### {key}", "", _table(["", "value"], list(value.items())), ""]
        elif all(isinstance(v, Mapping) for v in value.values()):
            cols: list[str] = []
            for v in value.values():
                cols += [c for c in v if _is_number(v[c]) and c not in cols]
            rows = [[k] + [v.get(c) for c in cols] for k, v in value.items()]
            out += [f"### {key}", "", _table([""] + cols, rows), ""]
    return "\n".join(out)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def load_results(run_dir: str | Path) -> dict[str, Any]:
    """``results.json`` of a run folder (``{"tasks": {}}`` when absent)."""
    path = Path(run_dir) / "results.json"
    if not path.exists():
        return {"tasks": {}}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InputError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    if not isinstance(data, dict) or not isinstance(data.get("tasks"), dict):
        raise InputError(f"{path}: not an owlkit results file (expected {{\"tasks\": {{...}}}})")
    return data


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return obj.item()
    return obj


def write_results(run_dir: str | Path, task: str, metrics: Mapping[str, Any], *,
                  predictions: Sequence[Mapping[str, Any]] | None = None,
                  info: Mapping[str, Any] | None = None,
                  provenance: Mapping[str, Mapping[str, Any]] | None = None) -> Path:
    """Merge ``task``'s metrics into ``run_dir/results.json`` and rewrite ``results.md``.

    Per-sample entries go to ``<task>_details.json``; ``predictions`` (rows such as
    ``{"id", "prompt", "prediction"}``) to ``<task>_predictions.jsonl``; ``info`` (model,
    settings...) is stored beside the metrics, ``provenance`` (``{metric: {"reference",
    "lenient"}}``: the scorer each number reproduces) under ``"provenance"``. Returns the
    ``results.json`` path.
    """
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    data = load_results(run)
    summary, details = split_details(metrics)
    entry: dict[str, Any] = {"metrics": _jsonable(summary),
                             "updated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    if provenance:
        entry["provenance"] = _jsonable(dict(provenance))
    if info:
        entry["info"] = _jsonable(dict(info))
    data["tasks"][task] = entry
    _atomic_write(run / "results.json", json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    if details:
        _atomic_write(run / f"{task}_details.json", json.dumps(_jsonable(details), ensure_ascii=False) + "\n")
    if predictions is not None:
        _atomic_write(run / f"{task}_predictions.jsonl",
                      "".join(json.dumps(_jsonable(dict(r)), ensure_ascii=False) + "\n" for r in predictions))
    parts = [f"# Evaluation results: {run.name}", ""]
    for name, e in sorted(data["tasks"].items()):
        parts.append(metrics_markdown(name, e.get("metrics", {})))
    _atomic_write(run / "results.md", "\n".join(parts).rstrip() + "\n")
    return run / "results.json"


def _run_names(dirs: Sequence[Path]) -> list[str]:
    names = [d.name or str(d) for d in dirs]
    if len(set(names)) != len(names):
        names = [f"{d.parent.name}/{d.name}" for d in dirs]
    if len(set(names)) != len(names):
        names = [str(d) for d in dirs]
    return names


def compare(dirs: Sequence[str | Path], png: str | Path | None = None,
            stream: IO[str] | None = None) -> dict[str, Any]:
    """Print the scalar metrics of several run folders side by side (Markdown) and write a
    grouped bar chart (one panel per task, counts left out).

    ``png`` defaults to ``comparison.png`` in the folder containing the first run. Returns
    ``{"table": markdown, "png": path or None}`` (no chart when nothing is plottable).
    """
    paths = [Path(d) for d in dirs]
    if not paths:
        raise InputError("compare needs at least one run folder")
    for p in paths:
        if not (p / "results.json").is_file():
            raise InputError(f"{p}: no results.json (expected a run folder written by write_results)")
    names = _run_names(paths)
    results = [load_results(p)["tasks"] for p in paths]
    rows: list[tuple[str, str]] = []
    for r in results:
        for task, entry in r.items():
            for metric in scalar_metrics(entry.get("metrics", {})):
                if (task, metric) not in rows:
                    rows.append((task, metric))
    rows.sort(key=lambda tm: tm[0])
    table_rows = [[task, metric] + [r.get(task, {}).get("metrics", {}).get(metric) for r in results]
                  for task, metric in rows]
    table = _table(["task", "metric"] + names, table_rows)
    print(table, file=stream or sys.stdout)

    plot_rows = [(t, m) for t, m in rows if m not in _COUNT_KEYS]
    out_png: Path | None = None
    if plot_rows:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        tasks = list(dict.fromkeys(t for t, _ in plot_rows))
        width = max(6.0, 1.0 + 0.35 * len(names) * max(sum(1 for t, _ in plot_rows if t == task) for task in tasks))
        fig = Figure(figsize=(width, 2.8 * len(tasks)), constrained_layout=True)
        FigureCanvasAgg(fig)
        axes = fig.subplots(len(tasks), 1, squeeze=False)[:, 0]
        bar = 0.8 / len(names)
        for ax, task in zip(axes, tasks):
            metrics = [m for t, m in plot_rows if t == task]
            for j, (name, r) in enumerate(zip(names, results)):
                vals = [r.get(task, {}).get("metrics", {}).get(m) for m in metrics]
                xs = [i + (j - (len(names) - 1) / 2) * bar for i in range(len(metrics))]
                ax.bar(xs, [v if _is_number(v) else 0 for v in vals], width=bar, label=name)
            ax.set_xticks(range(len(metrics)))
            ax.set_xticklabels(metrics, rotation=20, ha="right", fontsize=8)
            ax.set_title(task)
            ax.grid(axis="y", alpha=0.3)
        axes[0].legend(fontsize=8)
        out_png = Path(png) if png else paths[0].resolve().parent / "comparison.png"
        out_png.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out_png, dpi=100)
    return {"table": table, "png": out_png}
