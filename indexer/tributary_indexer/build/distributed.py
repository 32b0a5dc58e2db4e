"""Process layout under ``torchrun``: which rank does which shard, and collective helpers.

Single-process runs need no setup; under ``torchrun`` (``RANK``/``WORLD_SIZE``/``LOCAL_RANK``
set) :func:`init_distributed` opens a process group (NCCL with CUDA, gloo on CPU; multi-node
through torchrun's own rendezvous). Work splits deterministically: shard ``s`` belongs to rank
``s % world_size``, so every run of the same command assigns the same shards to the same ranks.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def owns(self, shard: int) -> bool:
        return shard % self.world_size == self.rank

    def owned(self, shards: range) -> list[int]:
        """The shards of ``shards`` this rank works on."""
        return [s for s in shards if self.owns(s)]

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.barrier()


def init_distributed() -> DistributedContext:
    """Read torchrun's environment and open the process group if there is more than one rank."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistributedContext()
    import torch.distributed as dist

    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
        logger.info("rank %d/%d joined the %s process group", rank, world, backend)
    return DistributedContext(rank, world, local_rank)


def shutdown_distributed(ctx: DistributedContext) -> None:
    if ctx.active:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
