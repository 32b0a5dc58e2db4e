"""Streaming projected empirical Fisher, block-diagonal over modules (DESIGN §2).

``F_m = (1/N) Σ_z g_m(z) g_m(z)ᵀ``. Sums are float64 and additive, so partial accumulators from
different processes, shards or resumed runs merge exactly (:meth:`FisherAccumulator.merge`,
:meth:`FisherAccumulator.all_reduce`). Memory is ``Σ_m (k_out·k_in)²`` doubles: 16×16 ranks give
512 KiB per module, 64×64 give 128 MiB per module.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .projector import Block


class FisherAccumulator:
    """Per-block sums of outer products ``Σ g_m g_mᵀ`` and the number of examples."""

    def __init__(self, blocks: Sequence[Block], device: torch.device | str = "cpu"):
        self.blocks = list(blocks)
        self.sums = [torch.zeros(b.size, b.size, dtype=torch.float64, device=device) for b in self.blocks]
        self.count = 0

    @property
    def dim(self) -> int:
        return self.blocks[-1].stop if self.blocks else 0

    def update(self, vectors: torch.Tensor) -> None:
        """Add the per-example vectors ``[B, D]`` of one batch."""
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"expected vectors of shape [B, {self.dim}], got {tuple(vectors.shape)}")
        v = vectors.to(device=self.sums[0].device, dtype=torch.float64)
        for block, acc in zip(self.blocks, self.sums):
            vb = v[:, block.start : block.stop]  # [B, D_m]
            acc.addmm_(vb.T, vb)
        self.count += int(v.shape[0])

    def merge(self, other: FisherAccumulator) -> None:
        """Add another accumulator's sums (same blocks) into this one."""
        if [(b.name, b.size) for b in other.blocks] != [(b.name, b.size) for b in self.blocks]:
            raise ValueError("cannot merge Fisher accumulators over different module blocks")
        for acc, theirs in zip(self.sums, other.sums):
            acc += theirs.to(acc.device)
        self.count += other.count

    def all_reduce(self, group: Any = None) -> None:
        """Sum the accumulators of every process of ``torch.distributed`` in place."""
        import torch.distributed as dist

        flat = torch.cat([s.reshape(-1) for s in self.sums] + [torch.tensor([float(self.count)], dtype=torch.float64, device=self.sums[0].device)])
        if dist.get_backend(group) == "nccl" and flat.device.type != "cuda":
            moved = flat.cuda()
            dist.all_reduce(moved, group=group)
            flat = moved.cpu()
        else:
            dist.all_reduce(flat, group=group)
        offset = 0
        for acc in self.sums:
            n = acc.numel()
            acc.copy_(flat[offset : offset + n].reshape(acc.shape))
            offset += n
        self.count = int(round(float(flat[-1])))

    def means(self) -> list[torch.Tensor]:
        """``F_m`` per block."""
        if self.count == 0:
            raise ValueError("the Fisher has seen no example; accumulate at least one batch first")
        return [s / self.count for s in self.sums]

    def save(self, path: str | Path) -> None:
        tensors = {f"fisher.{i}": s.cpu().contiguous() for i, s in enumerate(self.sums)}
        meta = {"blocks": [[b.name, b.start, b.stop] for b in self.blocks], "count": self.count}
        save_file(tensors, str(path), metadata={"tributary.fisher": json.dumps(meta)})

    @classmethod
    def load(cls, path: str | Path) -> FisherAccumulator:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})["tributary.fisher"])
        tensors = load_file(str(path))
        acc = cls([Block(n, s, e) for n, s, e in meta["blocks"]])
        acc.sums = [tensors[f"fisher.{i}"] for i in range(len(acc.blocks))]
        acc.count = int(meta["count"])
        return acc
