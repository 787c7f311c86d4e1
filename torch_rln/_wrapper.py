"""The machinery shared by every torch-rln wrapper.

A wrapper is a :class:`torch.optim.Optimizer` that holds another optimizer (the
*inner* one) and adds a regularization pass around the inner ``step()``. The inner
optimizer stays in charge of its own parameters, hyperparameters and state:
``param_groups``, ``state`` and ``defaults`` are properties that read it, so an LR
scheduler that changes ``param_groups[i]["lr"]`` drives the inner learning rate, and
nothing goes stale after ``load_state_dict``.

A wrapper regularizes a subset of the inner parameters, organised in its own
*regularization groups* (``reg_groups``), each with its own hyperparameters, and keeps
its per-parameter tensors in its own ``reg_state`` (never in the inner state: inner
optimizers such as AdamW initialise their state lazily when it is empty, and
``Optimizer.load_state_dict`` would cast our float32 state to a bfloat16 parameter's
dtype). ``state_dict()`` merges both into torch's layout: the wrapper's tensors sit in
``state[i]`` under prefixed keys beside the inner ones, and its groups under one extra
top-level key, so a checkpoint loads with ``torch.load(weights_only=True)``.

Wrappers nest: ``RMSLNWrapper(RLNOptimizer(Adam(...)))`` works because every wrapper is
itself an Optimizer whose ``param_groups``, ``state`` and ``state_dict`` follow torch's
conventions.
"""

from __future__ import annotations

import math
import numbers
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import Optimizer

from ._sharding import distribute_tensor, is_sharded, local

__all__ = ["RegularizedOptimizer"]


def check_finite(name: str, value: Any) -> float:
    """Return ``value`` as a Python float, or raise ``ValueError`` naming it if it is not
    a finite real number (Python and NumPy numbers are accepted; bools and tensors are not)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise ValueError(f"Invalid {name}: {value!r} (expected a finite number)")
    return float(value)


def check_int(name: str, value: Any, allowed: str) -> int:
    """Return ``value`` as a Python int, or raise ``ValueError`` naming it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"Invalid {name}: {value!r} (expected {allowed})")
    return int(value)


def _tensors_of(params: Any) -> list[Any]:
    """The tensors of a param group's ``params``: a tensor, tensors, or (name, tensor) pairs."""
    if isinstance(params, torch.Tensor):
        return [params]
    return [p[1] if isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str) else p for p in params]


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a wrapper keeps its state in: float32 at least, the parameter's dtype above that."""
    return dtype if torch.finfo(dtype).bits >= 32 else torch.float32


class RegularizedOptimizer(Optimizer):
    """Base class of the torch-rln wrappers (not used directly).

    Subclasses set:

    * ``group_defaults``: the regularization hyperparameters and their default values;
    * ``state_key``: the prefix of the wrapper's per-parameter keys in ``state_dict()``
      and the name of the top-level key that holds its groups;
    * ``state_names``: the names of its per-parameter state tensors (none for a stateless one);
    * ``validate_group(group)``: raise ``ValueError`` naming any bad value, and turn the
      good ones into plain Python numbers in place (so checkpoints stay weights_only-safe);
    * ``before_inner_step(has_closure)`` / ``after_inner_step(context)``: the regularization pass;
      optionally ``wrap_closure(closure)``.

    Skips ``Optimizer.__init__`` on purpose (it would build param groups of its own),
    and sets the hook dictionaries that the base class methods rely on.
    """

    group_defaults: dict[str, Any] = {}
    state_key: str = "reg"
    state_names: tuple[str, ...] = ()

    def __init__(
        self,
        optimizer: Optimizer,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]] | None,
        defaults: dict[str, Any],
    ) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(
                f"{type(self).__name__} wraps a torch.optim.Optimizer, "
                f"got {type(optimizer).__module__}.{type(optimizer).__qualname__}"
            )
        for inner in _inner_chain(optimizer):
            if type(inner) is type(self):
                raise ValueError(
                    f"{type(self).__name__} already wraps an {type(self).__name__}: "
                    "give one wrapper several regularization groups instead"
                )
        reg_defaults = dict(defaults)
        self.validate_group(reg_defaults)
        reg_groups = self._build_groups(optimizer, params, reg_defaults)

        # Everything is validated: from here on nothing can fail.
        self.optimizer = optimizer
        self.reg_defaults = reg_defaults
        self.reg_groups: list[dict[str, Any]] = reg_groups
        self.reg_state: dict[torch.Tensor, dict[str, torch.Tensor]] = {}
        self._regularize_new_groups = params is None
        self._optimizer_step_pre_hooks: OrderedDict = OrderedDict()
        self._optimizer_step_post_hooks: OrderedDict = OrderedDict()
        self._optimizer_state_dict_pre_hooks: OrderedDict = OrderedDict()
        self._optimizer_state_dict_post_hooks: OrderedDict = OrderedDict()
        self._optimizer_load_state_dict_pre_hooks: OrderedDict = OrderedDict()
        self._optimizer_load_state_dict_post_hooks: OrderedDict = OrderedDict()
        self._patch_step_function()

    # ------------------------------------------------------------------ hooks for subclasses
    def validate_group(self, group: dict[str, Any]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def before_inner_step(self, has_closure: bool) -> Any:
        """Runs under ``no_grad`` before the inner step; its result goes to ``after_inner_step``.

        ``has_closure``: the step was given a closure, so the gradients are yet to come.
        """
        return None

    def after_inner_step(self, context: Any) -> None:
        """Runs under ``no_grad`` after the inner step."""

    def wrap_closure(self, closure: Callable[[], Any]) -> Callable[[], Any]:
        return closure

    # ------------------------------------------------------------------ delegation
    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return self.optimizer.param_groups

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        self.optimizer.param_groups = value

    @property
    def state(self):  # type: ignore[override]
        return self.optimizer.state

    @state.setter
    def state(self, value) -> None:
        self.optimizer.state = value

    @property
    def defaults(self) -> dict[str, Any]:  # type: ignore[override]
        return self.optimizer.defaults

    @defaults.setter
    def defaults(self, value: dict[str, Any]) -> None:
        self.optimizer.defaults = value

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group to the inner optimizer.

        If this wrapper was built with ``params=None`` (regularize every weight), the new
        group's parameters with ``ndim >= 2`` are regularized too, with the default settings.
        """
        param_group = dict(param_group)
        params = param_group["params"]
        param_group["params"] = [params] if isinstance(params, torch.Tensor) else list(params)
        new_group = None
        if self._regularize_new_groups:
            new = [p for p in _tensors_of(param_group["params"]) if isinstance(p, torch.Tensor) and p.ndim >= 2]
            if new:
                new_group = {"params": new, **self.reg_defaults}
                self.validate_group(new_group)
                self._check_params([new_group], self.optimizer, already=self._regularized_ids(), adding=new)
        self.optimizer.add_param_group(param_group)
        if new_group is not None:
            self.reg_groups.append(new_group)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """Run the regularization pass around one step of the inner optimizer."""
        self._adopt_state_from_inner()
        with torch.no_grad():
            context = self.before_inner_step(closure is not None)
        if closure is None:
            loss = self.optimizer.step()
        else:
            loss = self.optimizer.step(self.wrap_closure(closure))
        with torch.no_grad():
            self.after_inner_step(context)
        return loss

    # ------------------------------------------------------------------ parameters
    def regularized_params(self) -> list[torch.Tensor]:
        return [p for g in self.reg_groups for p in g["params"]]

    def _regularized_ids(self) -> set[int]:
        return {id(p) for p in self.regularized_params()}

    def _group_of(self, param: torch.Tensor) -> dict[str, Any]:
        for group in self.reg_groups:
            if any(p is param for p in group["params"]):
                return group
        raise ValueError(
            f"{type(self).__name__} does not regularize this tensor "
            f"(shape {tuple(param.shape)}, dtype {param.dtype})"
        )

    def _build_groups(self, optimizer, params, reg_defaults) -> list[dict[str, Any]]:
        if params is None:
            chosen = [p for g in optimizer.param_groups for p in g["params"] if p.ndim >= 2]
            groups = [{"params": chosen, **reg_defaults}] if chosen else []
            for group in groups:
                self.validate_group(group)
        else:
            if isinstance(params, torch.Tensor):
                raise TypeError(
                    "params should be an iterable of Tensors or dicts, but got a single "
                    f"{torch.typename(params)}: wrap it in a list"
                )
            items = list(params)
            if not items:
                raise ValueError("params is empty: give the tensors to regularize, or None for every matrix")
            if not all(isinstance(x, dict) for x in items):
                if any(isinstance(x, dict) for x in items):
                    raise TypeError("params mixes tensors and dicts: give one or the other")
                items = [{"params": items}]
            groups = []
            for item in items:
                group = dict(item)
                if "params" not in group:
                    raise ValueError(f"a regularization group has no 'params' key: {sorted(group)}")
                group["params"] = _tensors_of(group["params"])
                unknown = set(group) - set(reg_defaults) - {"params"}
                if unknown:
                    raise ValueError(
                        f"unknown setting(s) {sorted(unknown)} in a regularization group "
                        f"(known: {sorted(reg_defaults)})"
                    )
                for key, value in reg_defaults.items():
                    group.setdefault(key, value)
                self.validate_group(group)
                groups.append(group)
        self._check_params(groups, optimizer, already=set())
        return groups

    @staticmethod
    def _check_params(groups, optimizer, already: set[int], adding: list[torch.Tensor] = ()) -> None:
        """Check the tensors to regularize: strided real floating point, held by ``optimizer``
        (or among ``adding``, about to join it), and not regularized yet."""
        held = [p for g in optimizer.param_groups for p in g["params"]]
        inner_index = {id(p): i for i, p in enumerate([*held, *adding])}
        seen = set(already)
        for group in groups:
            for p in group["params"]:
                if not isinstance(p, torch.Tensor):
                    raise TypeError(f"regularized params must be tensors, got {torch.typename(p)}")
                desc = f"shape {tuple(p.shape)}, dtype {p.dtype}"
                if p.is_sparse or p.layout != torch.strided:
                    raise ValueError(f"cannot regularize a sparse tensor ({desc}, layout {p.layout})")
                if p.is_complex():
                    raise ValueError(f"cannot regularize a complex tensor ({desc})")
                if not p.is_floating_point():
                    raise ValueError(f"cannot regularize a non-floating-point tensor ({desc})")
                if id(p) not in inner_index:
                    raise ValueError(
                        f"a regularized tensor ({desc}) is not a parameter of the inner optimizer"
                    )
                if id(p) in seen:
                    raise ValueError(
                        f"parameter {inner_index[id(p)]} of the inner optimizer ({desc}) "
                        "is regularized twice"
                    )
                seen.add(id(p))

    def _inner_index(self) -> dict[int, int]:
        """Parameter id -> the integer key it has in ``state_dict()['state']`` (torch's order)."""
        index: dict[int, int] = {}
        for p in (p for g in self.param_groups for p in g["params"]):
            index.setdefault(id(p), len(index))
        return index

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The inner optimizer's state dict with this wrapper's state merged in.

        Per parameter ``i``, the wrapper's tensors are ``state[i]["<state_key>_<name>"]``;
        the regularization groups (hyperparameters and parameter indices, in torch's
        ``param_groups`` form) are under the top-level key ``"<state_key>_groups"``.
        """
        for hook in self._optimizer_state_dict_pre_hooks.values():
            hook(self)
        self._adopt_state_from_inner()
        inner = self.optimizer.state_dict()
        index = self._inner_index()
        state = dict(inner["state"])
        for p, tensors in self.export_state().items():
            i = index[id(p)]
            entry = dict(state.get(i, {}))
            entry.update({f"{self.state_key}_{k}": v for k, v in tensors.items()})
            state[i] = entry
        groups = [
            {**{k: v for k, v in g.items() if k != "params"}, "params": [index[id(p)] for p in g["params"]]}
            for g in self.reg_groups
        ]
        state_dict = {**inner, "state": state, f"{self.state_key}_groups": groups}
        for hook in self._optimizer_state_dict_post_hooks.values():
            result = hook(self, state_dict)
            if result is not None:
                state_dict = result
        return state_dict

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a checkpoint written by ``state_dict()`` of a wrapper built the same way.

        Everything is checked before anything changes: the regularized parameters (by
        position), the shapes of the saved tensors, and the saved hyperparameters. The saved
        hyperparameters replace the current ones, as in torch.

        A state dict that went through ``torch.distributed.checkpoint``
        (``get_optimizer_state_dict`` / ``set_optimizer_state_dict``) keeps only
        ``"state"`` and ``"param_groups"``, keyed by parameter names: the wrapper's tensors
        come back from ``"state"`` (saved sharded tensors are resharded like their
        parameters) and the regularization settings stay those the wrapper was built with.
        """
        state_dict = dict(state_dict)
        for hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = hook(self, state_dict)
            if result is not None:
                state_dict = result
        name = type(self).__name__
        groups_key = f"{self.state_key}_groups"
        prefix = f"{self.state_key}_"
        saved_state = state_dict.get("state", {})
        if groups_key not in state_dict:
            # Only torch.distributed.checkpoint drops our groups key, and it keys the
            # parameters by name; any other state dict without it is not ours.
            by_name = any(isinstance(k, str) for g in state_dict.get("param_groups", []) for k in g.get("params", ()))
            ours_saved = any(
                isinstance(k, str) and k.startswith(prefix) for entry in saved_state.values() for k in entry
            )
            if not by_name or (self.state_names and saved_state and not ours_saved):
                raise ValueError(
                    f"this state_dict has no {groups_key!r}"
                    + (f" and no {name} state" if self.state_names else "")
                    + f": it was not saved by {name} (or it went through torch.distributed.checkpoint with "
                    "flatten_optimizer_state_dict=True, which keeps only the inner optimizer's keys: use the "
                    f"default options). To load a checkpoint of the inner optimizer, use {name}.optimizer.load_state_dict"
                )
        saved_groups = state_dict.pop(groups_key, None)
        index = self._inner_index()
        params_by_index = {i: p for p, i in ((p, index[id(p)]) for g in self.param_groups for p in g["params"])}
        # Saved keys -> positions in the param groups' order (torch's own rule, which also
        # maps the parameter names that torch.distributed.checkpoint uses as keys).
        position = {
            key: n for n, key in enumerate(k for g in state_dict.get("param_groups", []) for k in g["params"])
        }
        new_settings = []
        if saved_groups is not None:
            if len(saved_groups) != len(self.reg_groups):
                raise ValueError(
                    f"{name}: the state_dict has {len(saved_groups)} regularization group(s), "
                    f"this optimizer {len(self.reg_groups)}"
                )
            for k, (saved, group) in enumerate(zip(saved_groups, self.reg_groups)):
                ours = [index[id(p)] for p in group["params"]]
                theirs = list(saved.get("params", []))
                if ours != theirs:
                    only_ours = sorted(set(ours) - set(theirs))
                    only_theirs = sorted(set(theirs) - set(ours))
                    raise ValueError(
                        f"{name}: regularization group {k} holds parameters {ours} here but "
                        f"{theirs} in the state_dict (here only: {only_ours}, saved only: {only_theirs})"
                    )
                settings = {key: saved.get(key, group[key]) for key in self.group_defaults}
                checked = {**settings, "params": group["params"]}
                self.validate_group(checked)
                new_settings.append({key: checked[key] for key in self.group_defaults})

        regularized = {index[id(p)] for p in self.regularized_params()}
        inner_state: dict[Any, Any] = {}
        ours_state: dict[torch.Tensor, dict[str, torch.Tensor]] = {}
        for key, entry in saved_state.items():
            mine = {k[len(prefix):]: v for k, v in entry.items() if isinstance(k, str) and k.startswith(prefix)}
            rest = {k: v for k, v in entry.items() if not (isinstance(k, str) and k.startswith(prefix))}
            if rest:
                inner_state[key] = rest
            if not mine:
                continue
            i = position.get(key, key)
            if i not in regularized:
                raise ValueError(
                    f"{name}: the state_dict holds {name} state for parameter {key!r}, which is not regularized here"
                )
            param = params_by_index[i]
            ours_state[param] = self._checked_state(key, param, mine)

        self.optimizer.load_state_dict({**state_dict, "state": inner_state})
        for group, settings in zip(self.reg_groups, new_settings):
            group.update(settings)
        self.import_state(ours_state)
        for hook in self._optimizer_load_state_dict_post_hooks.values():
            hook(self)

    def _checked_state(self, key: Any, param: torch.Tensor, saved: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Saved state tensors of ``param`` (checked) as new tensors placed like it."""
        for k, value in saved.items():
            if not isinstance(value, torch.Tensor) or value.shape != param.shape:
                shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise ValueError(
                    f"{type(self).__name__}: state {k!r} of parameter {key!r} has shape {shape}, "
                    f"the parameter {tuple(param.shape)}"
                )
        self.validate_state(key, saved)
        return {k: _placed_like(value, param) for k, value in saved.items()}

    def _adopt_state_from_inner(self) -> None:
        """Take over this wrapper's tensors found in the inner optimizer's state.

        ``state_dict()`` merges them into the inner entries; code that writes such entries
        straight into ``optimizer.state[p]`` instead of calling ``load_state_dict``
        (``ZeroRedundancyOptimizer.load_state_dict`` does, for the optimizer it built) leaves
        them there. They are checked, moved into ``reg_state`` and removed from the inner
        state, before anything else changes. A few dict lookups per regularized parameter.
        """
        if not self.state_names:
            return
        prefix = f"{self.state_key}_"
        keys = [prefix + name for name in self.state_names]
        inner_state = self.optimizer.state
        found: dict[torch.Tensor, dict[str, Any]] = {}
        for p in self.regularized_params():
            entry = inner_state.get(p)
            if entry and any(k in entry for k in keys):
                found[p] = {k: v for k, v in entry.items() if isinstance(k, str) and k.startswith(prefix)}
        if not found:
            return
        index = self._inner_index()
        adopted = {p: self._checked_state(index[id(p)], p, {k[len(prefix):]: v for k, v in saved.items()})
                   for p, saved in found.items()}
        for p, saved in found.items():
            for k in saved:
                del inner_state[p][k]
        self.import_state(adopted, replace=False)

    def validate_state(self, index: Any, tensors: dict[str, torch.Tensor]) -> None:
        """Check the saved state of the parameter with key ``index`` (its position, or its name
        in a torch.distributed.checkpoint state dict) before loading."""

    def export_state(self) -> dict[torch.Tensor, dict[str, torch.Tensor]]:
        """The per-parameter state as checkpoints hold it (keys: ``state_names``)."""
        return self.reg_state

    def import_state(self, state: dict[torch.Tensor, dict[str, torch.Tensor]], replace: bool = True) -> None:
        """Take checkpoint state (keys: ``state_names``, checked and placed) as this wrapper's:
        all of it (``replace``), or for the parameters given (state found in the inner optimizer)."""
        if replace:
            self.reg_state = {}
        self.reg_state.update(state)

    # ------------------------------------------------------------------ misc
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        # An LR scheduler patches ``step`` on the instance; like torch's optimizers, a copy
        # or a pickle gets the class's own step, not a function bound to this object.
        state.pop("step", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self.reg_groups):
            settings = ", ".join(f"{k}={group[k]}" for k in self.group_defaults)
            lines.append(f"  reg group {i}: {len(group['params'])} tensor(s), {settings}")
        inner = repr(self.optimizer).replace("\n", "\n  ")
        lines.append(f"  inner: {inner}")
        lines.append(")")
        return "\n".join(lines)


def _placed_like(value: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """A new copy of a saved state tensor, in the state dtype of ``param``, on its device, and
    sharded as it is (a saved whole tensor is split locally, a saved sharded one resharded
    or gathered: every rank loads, as with any distributed checkpoint)."""
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


def _inner_chain(optimizer: Optimizer):
    """The optimizer and every optimizer it wraps, outermost first."""
    while optimizer is not None:
        yield optimizer
        optimizer = getattr(optimizer, "optimizer", None) if isinstance(optimizer, RegularizedOptimizer) else None
