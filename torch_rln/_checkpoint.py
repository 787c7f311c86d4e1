"""Reading a wrapper's checkpoint: the layout checks and the placement of saved tensors.

A wrapper's ``state_dict()`` is the inner optimizer's, in torch's layout, with the
wrapper's per-parameter tensors under prefixed keys (``state[i]["rln_lam"]``) and its
groups under one top-level key (``"rln_groups"``). ``torch.distributed.checkpoint`` keeps
only ``"state"`` and ``"param_groups"`` and keys parameters by name.
"""

from __future__ import annotations

from typing import Any

import torch

from ._dtypes import state_dtype
from ._sharding import distribute_tensor, is_sharded, local

__all__ = ["is_by_name", "placed_like", "split_state"]


def is_by_name(state_dict: dict[str, Any]) -> bool:
    """Whether ``state_dict`` keys its parameters by name (torch.distributed.checkpoint's layout)."""
    return any(isinstance(k, str) for g in state_dict.get("param_groups", []) for k in g.get("params", ()))


def split_state(saved_state: dict[Any, Any], prefix: str) -> tuple[dict[Any, Any], dict[Any, dict[str, Any]]]:
    """Each saved entry split into the inner optimizer's keys and this wrapper's (``prefix``
    stripped): ``(inner state, {key: {name: value}})``, the latter only for entries that have some."""
    inner: dict[Any, Any] = {}
    ours: dict[Any, dict[str, Any]] = {}
    for key, entry in saved_state.items():
        mine = {k[len(prefix) :]: v for k, v in entry.items() if isinstance(k, str) and k.startswith(prefix)}
        rest = {k: v for k, v in entry.items() if not (isinstance(k, str) and k.startswith(prefix))}
        if rest:
            inner[key] = rest
        if mine:
            ours[key] = mine
    return inner, ours


def placed_like(value: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """A new copy of a saved state tensor, in the state dtype of ``param``, on its device,
    with its memory layout, and sharded as it is (a saved whole tensor is split locally, a
    saved sharded one resharded or gathered: every rank loads, as with any distributed
    checkpoint)."""
    dtype = state_dtype(param.dtype)
    value = value.detach()
    if is_sharded(param):
        if is_sharded(value):
            if value.device_mesh != param.device_mesh or value.placements != param.placements:
                value = value.redistribute(param.device_mesh, param.placements)
            return value.to(dtype=dtype, copy=True)
        whole = value.to(device=local(param).device, dtype=dtype, copy=True)
        return distribute_tensor(whole, param.device_mesh, param.placements, src_data_rank=None)
    if is_sharded(value):
        value = value.full_tensor()
    # empty_like keeps the parameter's strides (channels_last weights): state and weight
    # must share a layout for the update to see them element by element.
    return torch.empty_like(param, dtype=dtype).copy_(value)


def all_finite(value: torch.Tensor) -> bool:
    """Whether every element of a saved tensor is finite (a collective for a sharded one)."""
    whole = value.full_tensor() if is_sharded(value) else value
    return bool(torch.isfinite(whole).all())
