"""Data-parallel offline training: the torch.distributed glue (torchrun's environment, gloo on CPU).

`learn train` runs as one process, or as N ranks started by torchrun (`learn train --nproc N`
starts them itself, deploy/torchrun.py). Under torchrun every rank reads RANK / WORLD_SIZE /
LOCAL_RANK and the rendezvous address from its environment (`init`); outside it `init` returns the
one-process context and nothing here touches torch.distributed.

The split of the work (trainer/offline.py uses these):
- every rank builds the same shuffled global batches (same seed) and trains on its strided share
  of each (`shard`: rank r takes items r, r+N, ... of the length-sorted batch, so the shares pad
  alike); DistributedDataParallel all-reduces (averages) the gradients;
- each share's loss is weighted by its share of the batch's anchors (`shard_weight`), so the
  averaged gradient is the gradient of the global batch's mean loss, as in one process;
- validation: each rank ranks its share of the users, the ranks are gathered back into the
  original order (`gather_interleaved`), and every rank computes the same metrics from the same
  tensor, so early stopping is decided identically everywhere without a broadcast;
- rank 0 alone encodes the catalogue (one process opens the embedding cache; `broadcast_array`
  hands the vectors to the others), evaluates the baselines and the test split, and writes the
  run directory.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

BACKEND = "gloo"


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job: rank `rank` of `world_size` (one process: 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


SINGLE = DistContext()


def context_from_env(env: Mapping[str, str] = os.environ) -> DistContext:
    """The context torchrun's variables describe (none set: one process)."""
    world = int(env.get("WORLD_SIZE", "1"))
    rank, local = int(env.get("RANK", "0")), int(env.get("LOCAL_RANK", env.get("RANK", "0")))
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"inconsistent torchrun environment: RANK={rank} WORLD_SIZE={world}")
    return DistContext(rank, world, local)


def init(env: Mapping[str, str] = os.environ) -> DistContext:
    """Join the process group torchrun set up (env:// rendezvous, gloo) when there is more than one
    rank; -> this process's context."""
    ctx = context_from_env(env)
    if ctx.active and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(BACKEND)
    return ctx


def cleanup(ctx: DistContext) -> None:
    if ctx.active and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.active:
        torch.distributed.barrier()


def threads_per_rank(nproc: int, cores: int | None = None) -> int:
    """torch intra-op threads for each of `nproc` ranks so that ranks x threads <= cores."""
    return max(1, (cores or os.cpu_count() or 1) // max(1, nproc))


# -- the split of the work (pure) ---------------------------------------------------------------
def shard(items: Sequence, ctx: DistContext) -> list:
    """This rank's strided share of `items` (the shares are disjoint and cover every item)."""
    return list(items[ctx.rank :: ctx.world_size])


def anchors(seqs: Sequence[Sequence[int]], max_len: int) -> int:
    """How many positions the loss averages over: each (capped) sequence's positions with a next item."""
    return sum(max(0, min(len(s), max_len) - 1) for s in seqs)


def shard_weight(local_anchors: int, global_anchors: int, world_size: int) -> float:
    """The factor on a share's mean loss so that DDP's average over ranks of the shares' gradients
    is the gradient of the whole batch's mean: local / global x world (1.0 for one process)."""
    return local_anchors * world_size / global_anchors if global_anchors else 0.0


def interleave(parts: Sequence[torch.Tensor], n: int) -> torch.Tensor:
    """Undo `shard`: parts[r] holds items r, r+N, ... -> the n items in their original order."""
    out = torch.empty(n, dtype=parts[0].dtype)
    for r, p in enumerate(parts):
        out[r :: len(parts)] = p
    return out


# -- collectives (no-ops for one process) -------------------------------------------------------
def gather_interleaved(part: torch.Tensor, n: int, ctx: DistContext) -> torch.Tensor:
    """Every rank's `part` (its `shard` of n items' values), back in the original order, on every rank."""
    if not ctx.active:
        return part
    parts: list = [None] * ctx.world_size
    torch.distributed.all_gather_object(parts, part)
    return interleave(parts, n)


def all_sum(value: float, ctx: DistContext) -> float:
    """The sum of `value` over the ranks (float64)."""
    if not ctx.active:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    torch.distributed.all_reduce(t)
    return float(t.item())


def broadcast_array(array: np.ndarray | None, ctx: DistContext) -> np.ndarray:
    """Rank 0's float32 array on every rank (the others pass None)."""
    if not ctx.active:
        return array
    shape = [None if array is None else array.shape]
    torch.distributed.broadcast_object_list(shape, src=0)
    t = torch.from_numpy(np.ascontiguousarray(array, np.float32)) if ctx.is_main else torch.empty(shape[0])
    torch.distributed.broadcast(t, src=0)
    return t.numpy()


class _LossOf(torch.nn.Module):
    """`model.calculate_loss` as a forward(), which DistributedDataParallel needs to hook the backward."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: dict) -> torch.Tensor:
        return self.model.calculate_loss(batch)


def loss_function(model: torch.nn.Module, ctx: DistContext) -> Callable[[dict], torch.Tensor]:
    """batch -> loss whose backward all-reduces the gradients across ranks (one process: the model's
    own calculate_loss). DDP starts every rank from rank 0's weights and buffers; buffers are not
    re-broadcast each step (the feature step's whitening and the catalogue table never change), and
    parameters a loss does not use (the towers differ by loss) are allowed."""
    if not ctx.active:
        return model.calculate_loss
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(_LossOf(model), forward_sync_buffers=False, static_graph=True)
