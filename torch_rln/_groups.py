"""Regularization groups: which of the inner optimizer's parameters a wrapper regularizes,
and with which settings.

A regularization group is a dict like a torch param group: ``{"params": [tensors],
<setting>: <value>, ...}`` with the wrapper's settings (``group_defaults``). Groups are
built from the ``params`` argument of a wrapper (tensors, ``(name, tensor)`` pairs or
dicts), or, with ``params=None``, from every parameter of the inner optimizer that can be
regularized and has ``ndim >= 2``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import Optimizer

__all__ = [
    "RegGroup",
    "build_groups",
    "check_params",
    "default_choice",
    "param_positions",
    "tensors_of",
    "why_unregularizable",
]

Validate = Callable[[dict[str, Any]], None]
Choose = Callable[[torch.Tensor], bool]


class RegGroup(dict[str, Any]):
    """A regularization group whose settings are checked when they change.

    ``group[key] = value`` (and ``update``, ``setdefault``) validates the group as it would
    be with the change, and changes it only if that passes: a bad value raises an error
    that names it, and the group (and every step after) is as before. Settings cannot be
    deleted. Reading is a plain dict's.
    """

    def __init__(self, data: dict[str, Any], validate: Validate) -> None:
        super().__init__(data)
        self._validate = validate

    def _change(self, changes: dict[str, Any]) -> None:
        if "params" in changes:
            raise TypeError(
                "a regularization group's params are fixed; add tensors with add_param_group, or build "
                "the wrapper with the groups you want"
            )
        trial = {**self, **changes}
        self._validate(trial)  # raises, naming the bad value; normalizes the good ones
        for key in changes:
            dict.__setitem__(self, key, trial[key])

    def __setitem__(self, key: str, value: Any) -> None:
        self._change({key: value})

    def update(self, *args: Any, **kwargs: Any) -> None:
        self._change(dict(*args, **kwargs))

    def setdefault(self, key: str, default: Any = None) -> Any:
        if key not in self:
            self._change({key: default})
        return self[key]

    def _refuse(self, *args: Any) -> Any:
        raise TypeError("a regularization group's settings can be changed, not deleted")

    __delitem__ = pop = popitem = clear = _refuse

    def __reduce__(self) -> tuple[Any, ...]:
        return RegGroup, (dict(self), self._validate)

    def __copy__(self) -> RegGroup:
        return RegGroup(dict(self), self._validate)


_NO_MATRIX = (
    "{name}(params=None) regularizes the inner optimizer's real floating-point parameters with "
    "ndim >= 2, and it has none. ZeRO-style frameworks such as DeepSpeed hand optimizers flat "
    "1-D partitions of the weights; pass params= explicitly (the tensors to regularize), or use "
    "{name}.factory(...) where a framework builds the optimizer"
)


def why_unregularizable(tensor: torch.Tensor) -> str | None:
    """Why ``tensor`` cannot be regularized, or None if it can: the wrappers take strided,
    real, floating-point tensors."""
    desc = f"shape {tuple(tensor.shape)}, dtype {tensor.dtype}"
    if tensor.is_sparse or tensor.layout != torch.strided:
        return f"cannot regularize a sparse tensor ({desc}, layout {tensor.layout})"
    if tensor.is_complex():
        return f"cannot regularize a complex tensor ({desc})"
    if not tensor.is_floating_point():
        return f"cannot regularize a non-floating-point tensor ({desc})"
    return None


def param_positions(param_groups: Iterable[dict[str, Any]]) -> dict[int, int]:
    """Parameter id -> its integer key in ``state_dict()["state"]``: its position in the
    param groups, each tensor counted once (torch's numbering)."""
    positions: dict[int, int] = {}
    for group in param_groups:
        for p in group["params"]:
            positions.setdefault(id(p), len(positions))
    return positions


def tensors_of(params: Any) -> list[Any]:
    """The tensors of a param group's ``params``: a tensor, tensors, or (name, tensor) pairs."""
    if isinstance(params, torch.Tensor):
        return [params]
    return [p[1] if isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str) else p for p in params]


def default_choice(tensors: Iterable[Any], can_regularize: Choose = lambda tensor: True) -> list[torch.Tensor]:
    """What ``params=None`` regularizes among ``tensors``: each tensor with ``ndim >= 2``
    that can be regularized (complex, integer and sparse ones are skipped) and that the
    wrapper takes (``can_regularize``), once."""
    chosen: list[torch.Tensor] = []
    seen: set[int] = set()
    for p in tensors:
        if (
            isinstance(p, torch.Tensor)
            and p.ndim >= 2
            and why_unregularizable(p) is None
            and can_regularize(p)
            and id(p) not in seen
        ):
            seen.add(id(p))
            chosen.append(p)
    return chosen


def build_groups(
    optimizer: Optimizer, params: Any, defaults: dict[str, Any], validate: Validate, name: str, can_regularize: Choose
) -> list[dict[str, Any]]:
    """The regularization groups for a wrapper's ``params`` argument, validated and checked
    against ``optimizer``'s parameters (see :func:`check_params`). ``name``: the wrapper's,
    for the error when ``params=None`` finds nothing."""
    if params is None:
        chosen = default_choice((p for g in optimizer.param_groups for p in g["params"]), can_regularize)
        if not chosen:
            raise ValueError(_NO_MATRIX.format(name=name))
        groups = [{"params": chosen, **defaults}]
    else:
        groups = [_group_from(item, defaults) for item in _items(params)]
    for group in groups:
        validate(group)
    check_params(groups, optimizer, already=set())
    return groups


def _items(params: Any) -> list[dict[str, Any]]:
    """``params`` as a list of group dicts (a list of tensors is one group)."""
    if isinstance(params, torch.Tensor):
        raise TypeError(
            "params should be an iterable of Tensors or dicts, but got a single "
            f"{torch.typename(params)}: wrap it in a list"
        )
    items = list(params)
    if not items:
        raise ValueError("params is empty: give the tensors to regularize, or None for every matrix")
    if all(isinstance(x, dict) for x in items):
        return items
    if any(isinstance(x, dict) for x in items):
        raise TypeError("params mixes tensors and dicts: give one or the other")
    return [{"params": items}]


def _group_from(item: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    group = dict(item)
    if "params" not in group:
        raise ValueError(f"a regularization group has no 'params' key: {sorted(group)}")
    group["params"] = tensors_of(group["params"])
    unknown = set(group) - set(defaults) - {"params"}
    if unknown:
        raise ValueError(f"unknown setting(s) {sorted(unknown)} in a regularization group (known: {sorted(defaults)})")
    for key, value in defaults.items():
        group.setdefault(key, value)
    return group


def check_params(
    groups: list[dict[str, Any]], optimizer: Optimizer, already: set[int], adding: Iterable[torch.Tensor] = ()
) -> None:
    """Check the tensors to regularize: tensors that can be regularized, held by ``optimizer``
    (or among ``adding``, about to join it), and not regularized yet (ids in ``already``)."""
    held = [p for g in optimizer.param_groups for p in g["params"]]
    inner_index: dict[int, int] = {}
    for p in [*held, *adding]:
        inner_index.setdefault(id(p), len(inner_index))
    seen = set(already)
    for group in groups:
        for p in group["params"]:
            if not isinstance(p, torch.Tensor):
                raise TypeError(f"regularized params must be tensors, got {torch.typename(p)}")
            problem = why_unregularizable(p)
            if problem is not None:
                raise ValueError(problem)
            desc = f"shape {tuple(p.shape)}, dtype {p.dtype}"
            if id(p) not in inner_index:
                raise ValueError(f"a regularized tensor ({desc}) is not a parameter of the inner optimizer")
            if id(p) in seen:
                raise ValueError(f"parameter {inner_index[id(p)]} of the inner optimizer ({desc}) is regularized twice")
            seen.add(id(p))
