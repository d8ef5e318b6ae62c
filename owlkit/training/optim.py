"""The optimiser of the papers: AdamW with parameter groups, warmup then cosine decay.

The learning rate at optimiser step ``s`` (0-based) of ``T`` with ``W`` warmup steps is
``peak * scale * f(s)`` where ``scale`` is the group's layer-decay multiplier and

* warmup: ``f(s) = (s + 1) / W`` for ``s < W`` (the first step already moves the weights);
* then, with ``p = (s - W) / max(1, T - W)`` in ``[0, 1)``:
  cosine ``f = m + (1 - m) * (1 + cos(pi p)) / 2``, linear ``f = m + (1 - m) * (1 - p)``,
  constant ``f = 1``; ``m`` is ``optim.min_lr_ratio``.
"""

from __future__ import annotations

import math

import torch


def warmup_steps(optim: dict, total_steps: int) -> int:
    if optim.get("warmup_steps") is not None:
        return int(optim["warmup_steps"])
    return int(math.ceil(float(optim.get("warmup_ratio") or 0.0) * total_steps))


def lr_factor(step: int, total_steps: int, warmup: int, schedule: str = "cosine", min_ratio: float = 0.0) -> float:
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    if schedule == "linear":
        return min_ratio + (1 - min_ratio) * (1 - progress)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_optimizer(groups: list[dict], optim: dict, fused: bool | None = None) -> torch.optim.Optimizer:
    """AdamW over ``groups`` (from :func:`owlkit.training.params.param_groups`).

    ``fused=None`` picks the fused kernel when every parameter is a plain CPU / CUDA float tensor
    (one pass over parameters and moments instead of about eight: much faster on CPU for large
    embeddings, docs/training.md "Speed"); sharded (DTensor) parameters use the multi-tensor
    implementation.
    """
    if fused is None:
        params = [p for g in groups for p in g["params"]]
        fused = all(
            type(p) is torch.nn.Parameter and p.device.type in ("cpu", "cuda") and p.is_floating_point()
            for p in params
        )
    return torch.optim.AdamW(
        groups,
        lr=float(optim["lr"]),
        betas=(float(optim["betas"][0]), float(optim["betas"][1])),
        eps=float(optim["eps"]),
        weight_decay=float(optim["weight_decay"]),
        fused=bool(fused) or None,
    )


def build_scheduler(optimizer: torch.optim.Optimizer, optim: dict, total_steps: int):
    """A :class:`~torch.optim.lr_scheduler.LambdaLR` applying :func:`lr_factor` to every group."""
    warm = warmup_steps(optim, total_steps)
    schedule, min_ratio = optim.get("schedule", "cosine"), float(optim.get("min_lr_ratio") or 0.0)

    def factor(step: int) -> float:
        return lr_factor(step, total_steps, warm, schedule, min_ratio)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
