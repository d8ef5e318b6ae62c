"""Continuing a run from a checkpoint (:mod:`owlkit.training.checkpoint` describes the folder).

The weights are restored before the model is wrapped (every rank holds the full model then),
the optimiser state, the schedule and each rank's RNG after; the data position follows from
the step (:class:`~owlkit.training.sampling.StepSampler`).
"""

from __future__ import annotations

from pathlib import Path

from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

from owlkit.weight_files import read_state_dict
from owlkit.errors import ConfigError, OwlError
from owlkit.training import checkpoint as ckpt
from owlkit.training import distributed as D
from owlkit.training.lora import ADAPTER_DIR, load_adapter_state
from owlkit.training.setup import OptimizerParts, say


def resume_point(out: Path, resume, info: D.DistInfo) -> Path | None:
    """The checkpoint to continue from: ``resume`` is False, True / "latest" or a folder."""
    if not resume:
        if ckpt.list_checkpoints(out):  # every rank sees the same folder: all stop
            raise ConfigError(
                f"{out} already holds checkpoints; pass --resume to continue that run or choose another output_dir"
            )
        return None
    if isinstance(resume, (str, Path)) and str(resume) not in ("latest", "True"):
        path = Path(resume)
        if not (path / "state.pt").exists():
            raise ConfigError(f"{path} is not a complete checkpoint folder (no state.pt)")
        return path
    path = ckpt.latest_checkpoint(out)
    if path is None:
        say(info, f"no checkpoint in {out / ckpt.CHECKPOINTS}; starting from the beginning")
    return path


def restore_weights(inner: nn.Module, path: Path, lora: bool) -> None:
    if lora:
        load_adapter_state(inner, path / ADAPTER_DIR)
        return
    state = read_state_dict(path / "model")
    own = inner.state_dict()
    missing = [k for k in own if k not in state]
    if missing:
        raise OwlError(f"checkpoint {path} does not match the model: missing {', '.join(missing[:4])}")
    inner.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True)


def restore_optimizer(wrapped: nn.Module, optim: OptimizerParts, path: Path, state: dict, info: D.DistInfo) -> None:
    """Optimiser state, schedule (that of *this* recipe at the restored step) and this rank's RNG."""
    osd = ckpt.load_torch(path / "optimizer.pt")
    saved = [g.get("name") for g in osd.get("param_groups", [])]
    wanted = [g["name"] for g in optim.groups]
    if saved != wanted:
        only_saved = [str(n) for n in saved if n not in wanted] or ["none"]
        only_wanted = [n for n in wanted if n not in saved] or ["none"]
        raise ConfigError(
            f"the checkpoint {path} was written with other optimiser groups (only there: "
            f"{', '.join(only_saved)}; only in this recipe: {', '.join(only_wanted)}): the trainable "
            "parameters or optim.lr_scales changed; resume with the recipe that wrote it, or start a "
            "new run from its weights (model.init)"
        )
    set_optimizer_state_dict(wrapped, optim.optimizer, optim_state_dict=osd,
                             options=StateDictOptions(full_state_dict=True))
    scheduler = optim.scheduler
    scheduler.load_state_dict(state["scheduler"])
    # The schedule of *this* recipe at the restored step (same numbers unless steps changed).
    factor = scheduler.lr_lambdas[0](scheduler.last_epoch)
    for g, base in zip(optim.optimizer.param_groups, scheduler.base_lrs):
        g["lr"] = base * factor
    scheduler._last_lr = [g["lr"] for g in optim.optimizer.param_groups]
    rng_file = path / f"rng-rank{info.rank}.pt"
    if rng_file.exists():
        ckpt.set_rng_state(ckpt.load_torch(rng_file))
    else:
        say(info, f"warning: {rng_file.name} missing (different number of processes?); RNG not restored")
