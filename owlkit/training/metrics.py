"""Run outputs people read: ``metrics.jsonl``, TensorBoard, PNG curves.

``metrics.jsonl`` holds one JSON object per optimiser step: ``step``, ``loss``, ``lr`` (of the
groups at the peak multiplier, i.e. outside the vision encoder), ``grad_norm`` (before clipping),
``samples_per_s``, ``tokens`` (sequence positions processed, text and image, without padding),
``positions`` (the same with padding: what the decoder computed), ``supervised_tokens``, ``samples``, ``skipped_samples`` (running total of samples dropped, every reason), ``dropped_bad_image`` and ``dropped_no_reply`` (the same by reason) and ``time`` (seconds since
the start of this process).
"""

from __future__ import annotations

import json
from pathlib import Path

from owlkit.errors import OwlError

METRICS = "metrics.jsonl"


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by a crash
    return rows


class MetricsLogger:
    """Append-only metrics of the main rank (a no-op elsewhere)."""

    def __init__(self, run_dir: str | Path, enabled: bool, tensorboard: bool = False, resume_step: int = 0):
        self.enabled = enabled
        self.path = Path(run_dir) / METRICS
        self.writer = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # A resumed run repeats the steps after its checkpoint: drop their old lines.
        kept = [r for r in read_metrics(run_dir) if r.get("step", 0) <= resume_step] if resume_step else []
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        self.file = self.path.open("a")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # heavy, optional (tensorboard)

            self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"), purge_step=resume_step + 1)

    def log(self, row: dict) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        if self.writer is not None:
            for key in ("loss", "lr", "grad_norm", "samples_per_s", "tokens"):
                if row.get(key) is not None:
                    self.writer.add_scalar(f"train/{key}", row[key], row["step"])

    def close(self) -> None:
        if not self.enabled:
            return
        self.file.close()
        if self.writer is not None:
            self.writer.close()


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> list[Path]:
    """Write ``loss.png`` and ``lr.png`` (into ``out`` or the run folder); returns the paths."""
    rows = read_metrics(run_dir)
    if not rows:
        raise OwlError(f"no {METRICS} in {run_dir}; is it a training output folder?")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out) if out is not None else Path(run_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    steps = [r["step"] for r in rows]
    written = []
    for key, label, log_scale in (("loss", "training loss", False), ("lr", "learning rate", False)):
        values = [r.get(key) for r in rows]
        pairs = [(s, v) for s, v in zip(steps, values) if v is not None]
        if not pairs:
            continue
        fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
        ax.plot([p[0] for p in pairs], [p[1] for p in pairs], lw=1.2, label=label)
        if key == "loss" and len(pairs) >= 20:
            k = max(5, len(pairs) // 50)
            ys = [p[1] for p in pairs]
            smooth = [sum(ys[max(0, i - k + 1): i + 1]) / len(ys[max(0, i - k + 1): i + 1]) for i in range(len(ys))]
            ax.plot([p[0] for p in pairs], smooth, lw=2, label=f"mean of {k} steps")
            ax.legend()
        ax.set_xlabel("optimiser step")
        ax.set_ylabel(label)
        ax.set_title(f"{label}: {Path(run_dir).name}")
        if log_scale:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = out_dir / f"{key}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written
