"""Scale-out on PyTorch's own engine: process groups, DDP / FSDP2 wrapping, launchers.

``torchrun --nproc_per_node N -m owlkit.training RECIPE`` (or ``owl train RECIPE --nproc N``, see
:mod:`owlkit.training.launch`) starts N processes; each reads ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` from the environment and joins
one process group (NCCL on CUDA, gloo on CPU). ``train.distributed`` selects the wrapper:

* ``ddp``: :class:`~torch.nn.parallel.DistributedDataParallel`. Every trainable parameter takes
  part in every forward (the loop gives image-less micro-batches a dummy image row, see
  :func:`owlkit.training.loss.with_dummy_image`), so no unused-parameter search is needed;
* ``fsdp2``: :func:`torch.distributed.fsdp.fully_shard` on every vision, abstractor and decoder
  layer, then on the root (parameters, gradients and optimiser state sharded).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel

from owlkit.errors import ConfigError
from owlkit.models.abstractor import AbstractorLayer
from owlkit.models.decoder import DecoderLayer
from owlkit.models.vision import VisionLayer


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    created_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def pick_device(preference: str, local_rank: int = 0) -> torch.device:
    if preference == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if preference == "cuda":
        raise ConfigError("train.device is cuda but no CUDA device is available; use train.device=auto or cpu")
    return torch.device("cpu")


def init_distributed(device_preference: str = "auto") -> DistInfo:
    """Join the process group described by the environment (torchrun), if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    if dist.is_available() and dist.is_initialized():
        world, rank = dist.get_world_size(), dist.get_rank()
    device = pick_device(device_preference, local)
    created = False
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world)
        created = True
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=device, created_group=created)


def resolve_mode(mode: str, info: DistInfo) -> str:
    if mode == "auto":
        return "ddp" if info.active else "none"
    if mode != "none" and not info.active:
        return "none"  # one process: nothing to distribute (documented)
    if mode == "none" and info.active:
        raise ConfigError(
            f"train.distributed is none but {info.world_size} processes were launched; set train.distributed=ddp or fsdp2"
        )
    return mode


def wrap(module: torch.nn.Module, mode: str, info: DistInfo) -> torch.nn.Module:
    """Wrap the loss module for ``mode`` (``none`` | ``ddp`` | ``fsdp2``)."""
    if mode == "none":
        return module
    if mode == "ddp":
        # vit_eos's gradient comes out of an expand with non-contiguous strides; DDP copies it
        # into its bucket correctly and only warns about speed (one tiny tensor).
        warnings.filterwarnings("ignore", message=r"Grad strides do not match bucket view strides")

        ids = [info.device.index] if info.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids)
    if mode == "fsdp2":
        # Our layers return reshaped outputs that are never modified in place: the warning is moot.
        warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")

        for sub in list(module.modules()):
            if isinstance(sub, (DecoderLayer, VisionLayer, AbstractorLayer)):
                fully_shard(sub)
        fully_shard(module)
        return module
    raise ConfigError(f"unknown train.distributed {mode!r}")


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.active:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier(info: DistInfo) -> None:
    if info.active:
        dist.barrier()


def broadcast_object(obj, info: DistInfo):
    if not info.active:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shutdown(info: DistInfo) -> None:
    if info.created_group and dist.is_initialized():
        dist.destroy_process_group()
