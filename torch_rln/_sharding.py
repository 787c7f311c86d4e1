"""Whole-tensor reductions for sharded parameters.

Under FSDP2 (``torch.distributed.fsdp.fully_shard``) and tensor parallelism, a parameter is
a ``DTensor``: each rank holds one shard (``to_local()``, possibly empty when the shards are
uneven), and the wrappers run their element-wise math on the local shards. Two quantities
are not element-wise: RLN's mean of the coefficients and RMSLN's norm. Each is a sum over
the whole tensor, so each rank sums its shard and the partial sums are all-reduced over the
mesh dimensions that split the summed elements (``Shard(d)`` placements; ``Replicate``
ones hold the same elements on every rank and add nothing).

The all-reduces of one step go out as one flat buffer per process group and dtype, in the
order of the tensors, which every rank shares. No host sync: the collectives are queued
like any other op (on NCCL, on the current stream).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeGuard

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["Shards", "complete_sums_", "distribute_tensor", "grad_placed_like_", "is_sharded", "local", "shards_of"]

if TYPE_CHECKING or dist.is_available():
    from torch.distributed.tensor import DTensor, Shard, distribute_tensor

    _DTENSOR: type | None = DTensor
else:  # pragma: no cover - builds without torch.distributed
    _DTENSOR = None
    distribute_tensor = None


def is_sharded(tensor: object) -> TypeGuard[DTensor]:
    """Whether ``tensor`` is a ``DTensor`` (a parameter split or replicated across ranks)."""
    return _DTENSOR is not None and isinstance(tensor, _DTENSOR)


def local(tensor: Tensor) -> Tensor:
    """The part of ``tensor`` this rank holds: its local shard (sharing storage) for a
    ``DTensor``, the tensor itself otherwise."""
    return tensor.to_local() if is_sharded(tensor) else tensor


def grad_placed_like_(param: Tensor) -> Tensor:
    """``param.grad``, redistributed first (and stored back) if it is a ``DTensor`` placed
    unlike ``param``: tensor parallelism can leave a ``Partial`` gradient (a sum still to
    reduce) on a replicated weight, whose local values are not its elements. A no-op for
    plain tensors and for FSDP2, whose gradients are sharded like their parameters."""
    grad = param.grad
    assert grad is not None, "called for a parameter with a gradient"
    if is_sharded(grad) and is_sharded(param) and grad.placements != param.placements:
        param.grad = grad = grad.redistribute(param.device_mesh, param.placements)
    return grad


@dataclass(frozen=True)
class Shards:
    """How the summed elements of one sharded tensor are spread over the ranks.

    ``groups``: the process groups (one per mesh dimension that splits them) across which
    the local partial sums add up to the whole sum; ``count``: the number of elements of
    the whole tensor in each sum (its ``numel``, divided by the copies along its batch
    dimensions).
    """

    groups: tuple[Any, ...]
    count: int


def shards_of(tensor: Tensor, batch_dims: int = 0) -> Shards | None:
    """The :class:`Shards` of a ``DTensor`` whose sums run over its dimensions from
    ``batch_dims`` on, or None for a plain tensor.

    A shard along a batch dimension holds whole copies, so its sums are already complete.
    A ``Partial`` placement (a pending reduction, never a parameter's) raises ``ValueError``.
    """
    if not is_sharded(tensor):
        return None
    groups = []
    for mesh_dim, placement in enumerate(tensor.placements):
        if placement.is_partial():
            raise ValueError(
                f"cannot regularize a DTensor with a Partial placement ({tensor.placements}, "
                f"shape {tuple(tensor.shape)}): its local values are not its elements"
            )
        if isinstance(placement, Shard) and placement.dim >= batch_dims:
            groups.append(tensor.device_mesh.get_group(mesh_dim))
    copies = math.prod(tensor.shape[:batch_dims])
    return Shards(tuple(groups), tensor.numel() // copies if copies else 0)


def complete_sums_(sums: list[Tensor], shards: list[Shards | None]) -> None:
    """Turn local partial sums into whole-tensor sums, in place.

    ``sums[i]`` is this rank's partial sum (any shape, the same on every rank of its
    groups) for a tensor with ``shards[i]``; entries with None, or with no groups, are
    already whole. One all-reduce per (process groups, dtype, device).
    """
    buckets: dict[tuple[Any, ...], list[Tensor]] = {}
    for partial, where in zip(sums, shards, strict=True):
        if where is not None and where.groups:
            buckets.setdefault((where.groups, partial.dtype, partial.device), []).append(partial)
    for (groups, _, _), members in buckets.items():
        flat = torch.cat([m.reshape(-1) for m in members])
        for group in groups:
            dist.all_reduce(flat, group=group)
        offset = 0
        for m in members:
            m.copy_(flat[offset : offset + m.numel()].view_as(m))
            offset += m.numel()
