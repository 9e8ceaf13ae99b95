"""Data-parallel training: the process group that `torchrun` sets up, and DDP around the model.

Launch with ``torchrun --nproc_per_node 2 -m dualhrq train --config ...`` (gloo on CPU, NCCL on CUDA). Each
rank runs its own slice of the global batch's slots (see dualhrq.train.batches), DDP averages gradients,
and rank 0 alone writes checkpoints and logs. A plain ``dualhrq train`` is the one-rank case of the same code.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from dualhrq.errors import ConfigurationError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, global_batch: int) -> slice:
        """This rank's slots of a global batch; the batch must split evenly so every rank's mean weighs alike."""
        if global_batch % self.world_size:
            raise ConfigurationError(f"train.batch_size: {global_batch} does not split evenly over "
                                     f"{self.world_size} data-parallel processes")
        per = global_batch // self.world_size
        return slice(self.rank * per, (self.rank + 1) * per)

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return values
        out = values.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out


def resolve_device(preference: str, local_rank: int = 0) -> torch.device:
    """'auto' picks CUDA when present; 'cuda' without a GPU is a configuration error, not a crash later."""
    if preference == "cpu" or (preference == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigurationError("train.device: cuda requested but torch sees no CUDA device")
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def init_distributed(device_preference: str) -> DistContext:
    """Join the process group described by torchrun's environment (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_*),
    or return the single-process context when there is none."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(0, 1, resolve_device(device_preference))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_preference, local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    log.info("data-parallel rank %d of %d on %s", rank, world, device)
    return DistContext(rank, world, device)


def wrap_model(model: nn.Module, ctx: DistContext) -> nn.Module:
    """DDP around the model on more than one rank (it also broadcasts rank 0's initial weights)."""
    if ctx.world_size == 1:
        return model
    return DistributedDataParallel(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)


def shutdown(ctx: DistContext) -> None:
    if ctx.world_size > 1 and dist.is_initialized():
        dist.destroy_process_group()
