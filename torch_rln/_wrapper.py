"""The machinery shared by every torch-rln wrapper.

A wrapper is a :class:`torch.optim.Optimizer` that holds another optimizer (the
*inner* one) and adds a regularization pass around the inner ``step()``. The inner
optimizer stays in charge of its own parameters, hyperparameters and state:
``param_groups``, ``state`` and ``defaults`` are properties that read it, so an LR
scheduler that changes ``param_groups[i]["lr"]`` drives the inner learning rate, and
nothing goes stale after ``load_state_dict``.

A wrapper regularizes a subset of the inner parameters, organised in its own
*regularization groups* (``reg_groups``, see :mod:`torch_rln._groups`), each with its own
hyperparameters, and keeps its per-parameter tensors in its own ``reg_state`` (never in
the inner state: inner optimizers such as AdamW initialise their state lazily when it is
empty, and ``Optimizer.load_state_dict`` would cast our float32 state to a bfloat16
parameter's dtype). ``state_dict()`` merges both into torch's layout: the wrapper's tensors
sit in ``state[i]`` under prefixed keys beside the inner ones, and its groups under one
extra top-level key, so a checkpoint loads with ``torch.load(weights_only=True)``.

Wrappers nest: ``RMSLNWrapper(RLNOptimizer(Adam(...)))`` works because every wrapper is
itself an Optimizer whose ``param_groups``, ``state`` and ``state_dict`` follow torch's
conventions. torch's global step hooks (``register_optimizer_step_pre_hook``) fire once per
``step()``, for the outermost optimizer: the inner step is run without them (and with its
own step hooks), never by touching torch's process-wide hook registry.

A step is all or nothing under Ctrl-C: in the main thread, a SIGINT that arrives during the
regularization passes (and, without a closure, during the inner step) is held until the
step has finished, then handed to the handler that was in place (a ``KeyboardInterrupt``
by default).
"""

from __future__ import annotations

import contextlib
import numbers
import signal
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from typing import Any, ClassVar

import torch
from torch.optim import Optimizer

from ._checkpoint import all_finite, is_by_name, placed_like, split_state
from ._groups import RegGroup, build_groups, check_params, default_choice, param_positions, tensors_of
from ._implementations import Implementations, choose_implementation
from .checks import check_flag

__all__ = ["RegularizedOptimizer"]

State = dict[torch.Tensor, dict[str, torch.Tensor]]


# The signal module's own functions, without the enum conversions of its Python wrappers
# (they cost more than the rest of a small model's step).
_signals: Any = getattr(signal, "_signal", signal)
_SIGINT = int(signal.SIGINT)


@contextlib.contextmanager
def _interrupts_deferred(active: bool = True) -> Iterator[None]:
    """Hold a SIGINT (Ctrl-C) that arrives inside the block until it ends, then hand it to the
    handler that was in place: the block runs to its end. Only in the main thread (the only
    one Python delivers signals to) and where a Python-level handler is installed."""
    if not active or torch.compiler.is_compiling() or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = _signals.getsignal(_SIGINT)
    if not callable(previous):  # SIG_IGN, SIG_DFL, or a handler not installed from Python
        yield
        return
    held: list[tuple[int, Any]] = []
    _signals.signal(_SIGINT, lambda signum, frame: held.append((signum, frame)))
    try:
        yield
    finally:
        _signals.signal(_SIGINT, previous)
        if held:
            previous(*held[0])


def _inner_step(inner: Optimizer, closure: Callable[[], Any] | None) -> Any:
    """``inner.step(closure)`` without torch's global step hooks (they fire once per step, for
    the outermost optimizer), with the inner optimizer's own step hooks, as torch runs them."""
    patched = vars(inner).get("step")  # an instance attribute: an LR scheduler's counter, or a user's patch
    if patched is not None and not getattr(patched, "_wrapped_by_lr_sched", False):
        return patched() if closure is None else patched(closure)
    if patched is not None:
        inner._opt_called = True  # type: ignore[attr-defined]  # what the scheduler's counter records
    step = type(inner).step
    raw = getattr(step, "__wrapped__", None) if getattr(step, "hooked", False) else None
    args: tuple[Any, ...] = (inner,) if closure is None else (inner, closure)
    if raw is None:
        return step(*args)
    kwargs: dict[str, Any] = {}
    with (
        torch.autograd.profiler.record_function(f"Optimizer.step#{type(inner).__name__}.step")
        if (torch.autograd._profiler_enabled())
        else contextlib.nullcontext()
    ):
        for pre_hook in list(inner._optimizer_step_pre_hooks.values()):
            result = pre_hook(inner, args, kwargs)
            if result is not None:
                if not (isinstance(result, tuple) and len(result) == 2):
                    raise RuntimeError(
                        f"{raw} must return None or a tuple of (new_args, new_kwargs), but got {result}."
                    )
                args, kwargs = result
        out = raw(*args, **kwargs)
        inner._optimizer_step_code()
        for post_hook in list(inner._optimizer_step_post_hooks.values()):
            post_hook(inner, args, kwargs)
    return out


@contextlib.contextmanager
def _amp_attributes_forwarded(inner: Optimizer, grad_scale: Any, found_inf: Any) -> Iterator[None]:
    """``grad_scale`` and ``found_inf`` (GradScaler's protocol for optimizers that advertise
    ``_step_supports_amp_scaling``) set on the inner optimizer for its step, then removed."""
    if grad_scale is None and found_inf is None:
        yield
        return
    inner.grad_scale, inner.found_inf = grad_scale, found_inf  # type: ignore[attr-defined]
    try:
        yield
    finally:
        del inner.grad_scale, inner.found_inf  # type: ignore[attr-defined]


class RegularizedOptimizer(Optimizer):
    """Base class of the torch-rln wrappers: subclass it to write a regularizer (the
    worked example in CONTRIBUTING.md is tested); it is not used directly.

    Subclasses set:

    * ``group_defaults``: the regularization hyperparameters and their default values;
    * ``state_key``: the prefix of the wrapper's per-parameter keys in ``state_dict()``
      and the name of the top-level key that holds its groups (``<state_key>_groups``);
    * ``state_names``: the names of its per-parameter tensors in checkpoints (none for a
      stateless wrapper);
    * ``implementations``: its per-tensor, foreach and compiled update functions
      (:class:`torch_rln.Implementations`), chosen per device and dtype by
      ``implementation()``;

    and override:

    * ``validate_group(group)``: raise ``ValueError`` naming any bad value, and turn the
      good ones into plain Python numbers in place (so checkpoints stay weights_only-safe);
      ``group["params"]``, when present, holds the group's tensors;
    * ``can_regularize(tensor)``: whether ``params=None`` takes a tensor (beyond the
      default rule: real floating point, ``ndim >= 2``);
    * ``validate_state(key, tensors)``: check a parameter's saved tensors before loading
      (the default refuses non-finite values);
    * ``export_state()`` / ``import_state(state, replace)``: the per-parameter state as
      checkpoints hold it, when the live form differs (RLN folds its coefficients);
    * ``before_inner_step(has_closure, grad_scale)`` / ``after_inner_step(context)``: the
      regularization pass, both under ``no_grad``; ``inner_step_failed(context)`` undoes the
      first if the inner step raises; optionally ``wrap_closure(closure)``.
      ``held_ids()`` and ``resting_ids()`` say which parameters the inner optimizer holds
      now and which of them have a learning rate of 0.

    The regularization groups (``reg_groups``) are :class:`torch_rln._groups.RegGroup`
    dicts: a setting changed there is checked by ``validate_group`` before it takes
    effect. A setting written into an inner param group (``param_groups[i]["avg_reg"]``,
    as schedulers and skorch do) applies from the next step to the regularized tensors of
    that param group.

    Skips ``Optimizer.__init__`` on purpose (it would build param groups of its own),
    and sets the hook dictionaries that the base class methods rely on.
    """

    group_defaults: ClassVar[dict[str, Any]] = {}
    state_key: ClassVar[str] = "reg"
    state_names: ClassVar[tuple[str, ...]] = ()
    implementations: ClassVar[Implementations]
    wrappers_by_key: ClassVar[dict[str, type[RegularizedOptimizer]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "state_key" in cls.__dict__:
            RegularizedOptimizer.wrappers_by_key[cls.state_key] = cls

    def __init__(
        self,
        optimizer: Optimizer,
        params: Any,
        defaults: dict[str, Any],
        foreach: bool | None = None,
        compile: bool | None = None,
    ) -> None:
        check_flag("foreach", foreach)
        check_flag("compile", compile)
        if not isinstance(optimizer, Optimizer):
            raise TypeError(
                f"{type(self).__name__} wraps a torch.optim.Optimizer, "
                f"got {type(optimizer).__module__}.{type(optimizer).__qualname__}"
            )
        for inner in _inner_chain(optimizer):
            if isinstance(inner, RegularizedOptimizer) and inner.state_key == self.state_key:
                raise ValueError(
                    f"{type(self).__name__} already wraps an {type(self).__name__}: "
                    "give one wrapper several regularization groups instead"
                )
        reg_defaults = dict(defaults)
        self.validate_group(reg_defaults)
        self.reg_defaults = reg_defaults  # can_regularize may read them
        reg_groups = build_groups(
            optimizer, params, reg_defaults, self.validate_group, type(self).__name__, self.can_regularize
        )

        # Everything is validated: from here on nothing can fail.
        self.optimizer = optimizer
        self.foreach = foreach
        self.compile = compile
        self.reg_groups: list[dict[str, Any]] = [RegGroup(g, self.validate_group) for g in reg_groups]
        self.reg_state: State = {}
        self._regularize_new_groups = params is None
        self._inner_view: tuple[Any, set[int], list[set[int]]] = ((), set(), [])
        self._written: dict[tuple[int, str], Any] = {}  # settings read from inner param groups
        self._chosen: dict[tuple[Any, ...], Callable[..., Any]] = {}  # implementation per device and dtype
        self._optimizer_step_pre_hooks: OrderedDict[int, Callable[..., Any]] = OrderedDict()
        self._optimizer_step_post_hooks: OrderedDict[int, Callable[..., Any]] = OrderedDict()
        self._optimizer_state_dict_pre_hooks: OrderedDict[int, Callable[..., Any]] = OrderedDict()
        self._optimizer_state_dict_post_hooks: OrderedDict[int, Callable[..., Any]] = OrderedDict()
        self._optimizer_load_state_dict_pre_hooks: OrderedDict[int, Callable[..., Any]] = OrderedDict()
        self._optimizer_load_state_dict_post_hooks: OrderedDict[int, Callable[..., Any]] = OrderedDict()
        self._patch_step_function()

    # ------------------------------------------------------------------ hooks for subclasses
    def validate_group(self, group: dict[str, Any]) -> None:  # pragma: no cover - abstract
        """Check one regularization group's settings in place (also the defaults, without
        ``"params"``): raise ``ValueError`` naming a bad value, store the good ones as plain
        Python numbers (:mod:`torch_rln.checks` helps)."""
        raise NotImplementedError

    def can_regularize(self, tensor: torch.Tensor) -> bool:
        """Whether ``params=None`` (and a group added without a choice) takes ``tensor``, among
        the real floating-point tensors with ``ndim >= 2``. Every one, by default."""
        return True

    def validate_state(self, key: Any, tensors: dict[str, torch.Tensor]) -> None:
        """Check the saved state of the parameter with key ``key`` (its position, or its name
        in a torch.distributed.checkpoint state dict) before loading: every value finite."""
        for name, value in tensors.items():
            if not all_finite(value):
                raise ValueError(
                    f"{type(self).__name__}: state {self.state_key}_{name} of parameter {key!r} holds "
                    "NaN or Inf values; a non-finite coefficient would reach every other one of its tensor"
                )

    def export_state(self) -> State:
        """The per-parameter state as checkpoints hold it (keys: ``state_names``)."""
        return self.reg_state

    def import_state(self, state: State, replace: bool = True) -> None:
        """Take checkpoint state (keys: ``state_names``, checked and placed) as this wrapper's:
        all of it (``replace``), or for the parameters given (state found in the inner optimizer)."""
        if replace:
            self.reg_state = {}
        self.reg_state.update(state)

    def before_inner_step(self, has_closure: bool, grad_scale: torch.Tensor | None) -> Any:
        """Runs under ``no_grad`` before the inner step; its result goes to ``after_inner_step``.

        ``has_closure``: the step was given a closure, so the gradients are yet to come.
        ``grad_scale``: GradScaler's scale when the gradients are still scaled (a fused inner
        optimizer unscales them itself), else None.
        """
        return None

    def after_inner_step(self, context: Any) -> None:
        """Runs under ``no_grad`` after the inner step."""

    def inner_step_failed(self, context: Any) -> None:
        """Runs under ``no_grad`` when the inner step raised, before the error propagates: undo
        what ``before_inner_step`` did (its result is ``context``), so that the failed step
        changes nothing."""

    def wrap_closure(self, closure: Callable[[], Any]) -> Callable[[], Any]:
        """The closure the inner step gets in place of ``closure`` (coupled RMSLN adds its
        penalty there); the default returns it unchanged."""
        return closure

    # ------------------------------------------------------------------ delegation
    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        self.optimizer.param_groups = value

    @property
    def state(self) -> Any:
        return self.optimizer.state

    @state.setter
    def state(self, value: Any) -> None:
        self.optimizer.state = value

    @property
    def defaults(self) -> dict[str, Any]:
        return self.optimizer.defaults

    @defaults.setter
    def defaults(self, value: dict[str, Any]) -> None:
        self.optimizer.defaults = value

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group to the inner optimizer.

        This wrapper's settings in ``param_group`` (e.g. ``avg_reg`` for RLN) are taken out
        of it and regularize the group's tensors that can be regularized and have
        ``ndim >= 2``, with the other settings at their defaults; a wrapper built with
        ``params=None`` does the same for a group without settings. Everything is checked
        before anything changes; torch's own checks (a tensor already held, ...) apply.
        """
        inner_group = dict(param_group)
        params = inner_group["params"]
        inner_group["params"] = [params] if isinstance(params, torch.Tensor) else list(params)
        settings = {k: inner_group.pop(k) for k in list(inner_group) if k in self.group_defaults}
        new_group = None
        chosen = self._new_regularized(inner_group["params"], settings)
        if chosen:
            new_group = {"params": chosen, **self.reg_defaults, **settings}
            self.validate_group(new_group)
            held = {id(p) for g in self.param_groups for p in g["params"]}
            fresh = [p for p in chosen if id(p) not in held]  # torch refuses the others below
            check_params([{**new_group, "params": fresh}], self.optimizer, self._regularized_ids(), fresh)
        self.optimizer.add_param_group(inner_group)
        if new_group is not None:
            self.reg_groups.append(RegGroup(new_group, self.validate_group))

    def _new_regularized(self, params: list[Any], settings: dict[str, Any]) -> list[torch.Tensor]:
        """The tensors of a group being added (tensors or ``(name, tensor)`` pairs) that this
        wrapper regularizes: the default choice if the group came with settings or this
        wrapper was built with ``params=None``, else none. The classes that :meth:`factory`
        builds choose with their ``select``."""
        if not settings and not self._regularize_new_groups:
            return []
        return default_choice(tensors_of(params), self.can_regularize)

    @classmethod
    def factory(cls, optimizer_cls: Callable[..., Optimizer], /, **settings: Any) -> type[Any]:
        """An optimizer class that builds ``optimizer_cls`` and this wrapper around it in one
        call, ``(params, **kwargs)``, for frameworks that take an optimizer class and keyword
        arguments (skorch, HF Trainer, ZeroRedundancyOptimizer). ``settings`` are defaults
        for those keyword arguments: this wrapper's settings, ``select``, and the inner
        optimizer's. See :mod:`torch_rln._factory`."""
        from ._factory import build_factory

        return build_factory(cls, optimizer_cls, settings)

    @property
    def _step_supports_amp_scaling(self) -> bool:
        """As the inner optimizer (fused SGD/Adam/AdamW): then ``torch.amp.GradScaler`` leaves
        the gradients scaled and sets ``grad_scale`` and ``found_inf`` on this wrapper, which
        hands them to the inner step."""
        return bool(getattr(self.optimizer, "_step_supports_amp_scaling", False))

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Run the regularization pass around one step of the inner optimizer.

        Under GradScaler's protocol for fused optimizers (``grad_scale`` / ``found_inf`` set
        on this wrapper), a step with inf/NaN gradients (``found_inf``, read once from the
        device, as GradScaler's own unfused path does) leaves the regularizer alone, as the
        fused inner step leaves the weights. Ctrl-C waits for the passes (and, without a
        closure, for the inner step) to finish.
        """
        self._adopt_state_from_inner()
        self._read_param_groups()
        grad_scale, found_inf = getattr(self, "grad_scale", None), getattr(self, "found_inf", None)
        regularize = found_inf is None or not bool(found_inf)
        forwarded = _amp_attributes_forwarded(self.optimizer, grad_scale, found_inf)
        if closure is None:  # one block: the step finishes, or nothing happened
            with _interrupts_deferred(), torch.no_grad(), forwarded:
                context = self.before_inner_step(False, grad_scale) if regularize else None
                try:
                    loss = _inner_step(self.optimizer, None)
                except BaseException:
                    self.inner_step_failed(context)
                    raise
                if regularize:
                    self.after_inner_step(context)
            return loss
        context = None
        if regularize:
            with _interrupts_deferred(), torch.no_grad():
                context = self.before_inner_step(True, grad_scale)
        with forwarded:  # a closure may run long: Ctrl-C stops it
            try:
                loss = _inner_step(self.optimizer, self.wrap_closure(closure) if regularize else closure)
            except BaseException:
                with torch.no_grad():
                    self.inner_step_failed(context)
                raise
        if regularize:
            with _interrupts_deferred(), torch.no_grad():
                self.after_inner_step(context)
        return loss

    # ------------------------------------------------------------------ the inner param groups
    def _read_param_groups(self) -> None:
        """Once per step: which parameters each inner param group holds (kept while the
        groups keep their lists and lengths), and this wrapper's settings written into them."""
        groups = self.param_groups
        key = tuple((id(g), id(g["params"]), len(g["params"])) for g in groups)
        if key != self._inner_view[0]:
            members = [{id(p) for p in g["params"]} for g in groups]
            self._inner_view = (key, set().union(*members), members)
        for index, group in enumerate(groups):
            for name in self.group_defaults:
                if name in group and not _same(self._written.get((id(group), name), _UNSET), group[name]):
                    self._take_written_setting(index, name, group[name])
                    self._written[(id(group), name)] = group[name]

    def _take_written_setting(self, index: int, name: str, value: Any) -> None:
        """Apply ``param_groups[index][name] = value`` to the regularization groups of the
        tensors that param group holds (checked first; an error names the value)."""
        members = self._inner_view[2][index]
        touched = [g for g in self.reg_groups if any(id(p) in members for p in g["params"])]
        if not touched:
            warnings.warn(
                f"{type(self).__name__}: param_groups[{index}] holds no tensor this wrapper regularizes: "
                f"{name}={value!r} written there has no effect",
                UserWarning,
                stacklevel=4,
            )
            return
        partial = [g for g in touched if not all(id(p) in members for p in g["params"])]
        if partial:
            raise ValueError(
                f"{type(self).__name__}: {name}={value!r} was written into param_groups[{index}], but a "
                "regularization group spans it and other param groups; give that param group a "
                "regularization group of its own (params=[{'params': [...], ...}, ...]), or set "
                f"{name} in reg_groups"
            )
        for group in touched:
            group[name] = value  # RegGroup: checked before it changes

    def held_ids(self) -> set[int]:
        """The ids of the parameters the inner optimizer holds now (as of this step)."""
        return self._inner_view[1]

    def resting_ids(self) -> set[int]:
        """The ids of the parameters in inner param groups whose ``lr`` is 0 (a Python number or
        a CPU tensor; a learning rate on an accelerator is not read, which would sync)."""
        resting: set[int] = set()
        for group, members in zip(self.param_groups, self._inner_view[2], strict=False):
            lr = group.get("lr")
            if type(lr) is float:
                zero = lr == 0.0
            elif isinstance(lr, torch.Tensor):
                zero = lr.device.type == "cpu" and lr.numel() == 1 and float(lr) == 0.0
            elif isinstance(lr, bool):
                zero = False
            else:
                zero = isinstance(lr, numbers.Real) and lr == 0
            if zero:
                resting |= members
        return resting

    def implementation(self, device: torch.device, dtype: torch.dtype, sharded: bool) -> Callable[..., Any]:
        """The update function for tensors of one device and dtype (see
        :mod:`torch_rln._implementations`)."""
        return choose_implementation(
            self.implementations,
            foreach=self.foreach,
            compile=self.compile,
            device=device,
            dtype=dtype,
            sharded=sharded,
        )

    # ------------------------------------------------------------------ parameters
    def regularized_params(self) -> list[torch.Tensor]:
        """The tensors this wrapper regularizes, group by group."""
        return [p for g in self.reg_groups for p in g["params"]]

    def _regularized_ids(self) -> set[int]:
        return {id(p) for p in self.regularized_params()}

    def _group_of(self, param: torch.Tensor) -> dict[str, Any]:
        for group in self.reg_groups:
            if any(p is param for p in group["params"]):
                return group
        raise ValueError(
            f"{type(self).__name__} does not regularize this tensor (shape {tuple(param.shape)}, dtype {param.dtype})"
        )

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
        index = param_positions(self.param_groups)
        state = dict(inner["state"])
        for p, tensors in self.export_state().items():
            i = index[id(p)]
            state[i] = {**state.get(i, {}), **{f"{self.state_key}_{k}": v for k, v in tensors.items()}}
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
        """Load a checkpoint written by ``state_dict()`` of the same stack of wrappers.

        Everything is checked before anything changes: that the checkpoint is this
        wrapper's (and holds no other torch-rln wrapper's settings that this stack cannot
        take), the regularized parameters (by position), the shapes and values of the saved
        tensors, and the saved hyperparameters, which replace the current ones, as in torch.

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
        saved_groups = self._saved_groups(state_dict)
        self._refuse_foreign_groups(state_dict)
        settings = [] if saved_groups is None else self._checked_settings(saved_groups)
        inner_state, ours = split_state(state_dict.get("state", {}), f"{self.state_key}_")
        placed = self._placed_state(ours, state_dict)
        self.optimizer.load_state_dict({**state_dict, "state": inner_state})
        for group, values in zip(self.reg_groups, settings, strict=saved_groups is not None):
            group.update(values)  # no saved settings in torch.distributed.checkpoint's layout
        self.import_state(placed)
        for hook in self._optimizer_load_state_dict_post_hooks.values():
            hook(self)

    def _saved_groups(self, state_dict: dict[str, Any]) -> list[dict[str, Any]] | None:
        """Pop and return this wrapper's saved groups; None for a torch.distributed.checkpoint
        state dict (which drops them); an error for a state dict that is not this wrapper's."""
        groups_key, prefix, name = f"{self.state_key}_groups", f"{self.state_key}_", type(self).__name__
        if groups_key in state_dict:
            return list(state_dict.pop(groups_key))
        saved_state = state_dict.get("state", {})
        ours_saved = any(isinstance(k, str) and k.startswith(prefix) for entry in saved_state.values() for k in entry)
        if not is_by_name(state_dict) or (self.state_names and saved_state and not ours_saved):
            raise ValueError(
                f"this state_dict has no {groups_key!r}"
                + (f" and no {name} state" if self.state_names else "")
                + f": it was not saved by {name} (or it went through torch.distributed.checkpoint with "
                "flatten_optimizer_state_dict=True, which keeps only the inner optimizer's keys: use the "
                f"default options). To load a checkpoint of the inner optimizer, use {name}.optimizer.load_state_dict"
            )
        return None

    def _refuse_foreign_groups(self, state_dict: dict[str, Any]) -> None:
        """Refuse the settings of a torch-rln wrapper that this stack of wrappers lacks (a
        checkpoint of ``RMSLNWrapper(RLNOptimizer(...))`` loaded into an ``RLNOptimizer``)."""
        ours = {w.state_key for w in _inner_chain(self) if isinstance(w, RegularizedOptimizer)}
        for key, cls in self.wrappers_by_key.items():
            if f"{key}_groups" in state_dict and key not in ours:
                raise ValueError(
                    f"this state_dict holds {key + '_groups'!r}, the settings of a {cls.__name__}, but this "
                    f"{type(self).__name__} has no {cls.__name__} in its stack: load it into the same stack of "
                    f"wrappers it was saved from"
                )

    def _checked_settings(self, saved_groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The saved settings of each group, validated against its tensors."""
        name = type(self).__name__
        if len(saved_groups) != len(self.reg_groups):
            raise ValueError(
                f"{name}: the state_dict has {len(saved_groups)} regularization group(s), "
                f"this optimizer {len(self.reg_groups)}"
            )
        index = param_positions(self.param_groups)
        settings = []
        for k, (saved, group) in enumerate(zip(saved_groups, self.reg_groups, strict=True)):
            here = [index[id(p)] for p in group["params"]]
            there = list(saved.get("params", []))
            if here != there:
                raise ValueError(
                    f"{name}: regularization group {k} holds parameters {here} here but {there} in the state_dict "
                    f"(here only: {sorted(set(here) - set(there))}, saved only: {sorted(set(there) - set(here))})"
                )
            checked = {**{key: saved.get(key, group[key]) for key in self.group_defaults}, "params": group["params"]}
            self.validate_group(checked)
            settings.append({key: checked[key] for key in self.group_defaults})
        return settings

    def _placed_state(self, saved: dict[Any, dict[str, Any]], state_dict: dict[str, Any]) -> State:
        """The saved per-parameter tensors (keyed as in ``state``), checked and placed like
        their parameters."""
        index = param_positions(self.param_groups)
        params_by_index = {index[id(p)]: p for g in self.param_groups for p in g["params"]}
        # Saved keys -> positions in the param groups' order (torch's own rule, which also
        # maps the parameter names that torch.distributed.checkpoint uses as keys).
        position = {key: n for n, key in enumerate(k for g in state_dict.get("param_groups", []) for k in g["params"])}
        regularized = {index[id(p)] for p in self.regularized_params()}
        placed: State = {}
        for key, tensors in saved.items():
            i = position.get(key, key)
            if i not in regularized:
                raise ValueError(
                    f"{type(self).__name__}: the state_dict holds {type(self).__name__} state for parameter {key!r}, "
                    "which is not regularized here"
                )
            param = params_by_index[i]
            placed[param] = self._checked_state(key, param, tensors)
        return placed

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
        return {k: placed_like(value, param) for k, value in saved.items()}

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
        index = param_positions(self.param_groups)
        adopted = {
            p: self._checked_state(index[id(p)], p, {k[len(prefix) :]: v for k, v in saved.items()})
            for p, saved in found.items()
        }
        for p, saved in found.items():
            for k in saved:
                del inner_state[p][k]
        self.import_state(adopted, replace=False)

    # ------------------------------------------------------------------ misc
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        # An LR scheduler patches ``step`` on the instance; like torch's optimizers, a copy
        # or a pickle gets the class's own step, not a function bound to this object.
        state.pop("step", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._inner_view = ((), set(), [])  # ids of the tensors of another process or copy

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self.reg_groups):
            settings = ", ".join(f"{k}={group[k]}" for k in self.group_defaults)
            lines.append(f"  reg group {i}: {len(group['params'])} tensor(s), {settings}")
        inner = repr(self.optimizer).replace("\n", "\n  ")
        lines.append(f"  inner: {inner}")
        lines.append(")")
        return "\n".join(lines)


_UNSET = object()


def _same(a: Any, b: Any) -> bool:
    return a is b or (type(a) is type(b) and a == b)


def _inner_chain(optimizer: Optimizer) -> Iterable[Optimizer]:
    """The optimizer and every optimizer it wraps, outermost first."""
    current: Optimizer | None = optimizer
    while current is not None:
        yield current
        current = current.optimizer if isinstance(current, RegularizedOptimizer) else None
