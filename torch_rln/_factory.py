"""Optimizer classes that frameworks can build: ``RLNOptimizer.factory(Adam, ...)``.

Frameworks that train for you take an optimizer *class* and keyword arguments and build
the optimizer from the model's parameters: skorch (``optimizer=``, ``optimizer__*``), HF
``Trainer(optimizer_cls_and_kwargs=...)``, ``ZeroRedundancyOptimizer(optimizer_class=...)``.
``Wrapper.factory(inner_cls, **settings)`` returns such a class: a subclass of the wrapper
(so ``issubclass(cls, torch.optim.Optimizer)`` holds, as transformers checks), whose
constructor is ``(params, **kwargs)``:

* ``kwargs`` (over the factory's ``settings``, which are their defaults) are split by name:
  the wrapper's own settings (``norm``, ``avg_reg``, ``reg_lr``, ``batch_dims``,
  ``compile`` for RLN; ``reg_lambda``, ``target``, ``decoupled``, ``compile`` for RMSLN)
  and ``select`` go to the wrapper; ``foreach`` goes to both (it chooses the
  implementation of each, where the inner optimizer takes it); everything else goes to the
  inner optimizer. So skorch's ``optimizer__avg_reg`` and a grid search over it work.
* ``params`` is what torch optimizers take: tensors, ``(name, tensor)`` pairs, or param
  group dicts. The inner optimizer is built first, from ``params`` as given, so its own
  validation and errors come first, as they would without the wrapper. A param group dict
  may also hold the wrapper's group settings (``{"params": ..., "reg_lr": 1e6}``) and a
  ``select`` of its own; they are taken out before the inner optimizer sees the group.
* ``select`` chooses the tensors to regularize: ``select(name, tensor) -> bool``, with
  ``name`` None where the framework passes no names (skorch strips them; HF passes
  groups of bare tensors); ``True`` or ``False`` for all or none; ``None`` (default):
  every tensor with ``ndim >= 2``. A group added later with ``add_param_group`` is
  selected the same way. To be pickled, ``select`` must be picklable (a module-level
  function, not a lambda).
* Nothing selected (a model without matrices, a rank of ``ZeroRedundancyOptimizer``
  whose partition holds only biases): the optimizer is built, regularizes nothing, and
  behaves as the inner optimizer; a ``UserWarning`` says so.

The classes pickle and deep-copy (instances too) and survive ``sklearn.base.clone``: a
class is pickled as the recipe ``(wrapper, inner class, settings)`` (registered with
:mod:`copyreg` for their metaclass), and the same recipe gives back the same class
object within a process (a cache keyed by the recipe, where the settings are hashable),
so ``factory(...) is factory(...)`` for equal hashable settings and a deep copy is the
class itself. Their ``repr`` is the call that builds them.
"""

from __future__ import annotations

import copyreg
import inspect
import warnings
from collections.abc import Callable, Iterable
from typing import Any, cast

from torch import Tensor
from torch.optim import Optimizer

from ._groups import why_unregularizable
from ._wrapper import RegularizedOptimizer

__all__ = ["FactoryClass", "build_factory"]

Select = Callable[[str | None, Tensor], bool] | bool | None

_CACHE: dict[Any, FactoryClass] = {}


class FactoryClass(type):
    """The metaclass of the classes that ``factory`` builds: it holds the recipe.

    ``wrapper_class``: the wrapper (e.g. ``RLNOptimizer``); ``inner_class``: the inner
    optimizer class (or any callable ``(params, **kwargs) -> Optimizer``);
    ``factory_settings``: the factory's keyword arguments.
    """

    wrapper_class: type[RegularizedOptimizer]
    inner_class: Callable[..., Optimizer]
    factory_settings: dict[str, Any]

    def __repr__(cls) -> str:
        args = [_describe(cls.inner_class), *(f"{k}={v!r}" for k, v in cls.factory_settings.items())]
        return f"{cls.wrapper_class.__name__}.factory({', '.join(args)})"


def _reduce_factory(cls: FactoryClass) -> str | tuple[Callable[..., Any], tuple[Any, ...]]:
    """A class ``factory`` made pickles as its recipe; a user's subclass of one (defined in a
    module) by its name, as any class."""
    if "factory_settings" not in vars(cls):
        return cls.__qualname__
    return build_factory, (cls.wrapper_class, cls.inner_class, dict(cls.factory_settings))


copyreg.pickle(FactoryClass, _reduce_factory)


def _describe(fn: Callable[..., Any]) -> str:
    module = getattr(fn, "__module__", None) or ""
    name = getattr(fn, "__qualname__", None) or repr(fn)
    if isinstance(fn, FactoryClass):
        return repr(fn)
    return f"{module}.{name}" if module and module != "builtins" else name


def build_factory(
    wrapper: type[RegularizedOptimizer], inner: Callable[..., Optimizer], settings: dict[str, Any]
) -> FactoryClass:
    """The class for ``wrapper.factory(inner, **settings)`` (see the module docstring)."""
    if isinstance(wrapper, FactoryClass):  # factory() called on a class it made
        wrapper = cast(FactoryClass, wrapper).wrapper_class
    if not callable(inner):
        raise TypeError(f"{wrapper.__name__}.factory needs an optimizer class or callable, got {inner!r}")
    if "params" in settings:
        raise TypeError(f"{wrapper.__name__}.factory takes settings, not params (given {settings['params']!r})")
    _check_select(settings.get("select"))
    key = _cache_key(wrapper, inner, settings)
    if key is not None and key in _CACHE:
        return _CACHE[key]
    name = f"{wrapper.__name__}[{getattr(inner, '__name__', type(inner).__name__)}]"
    namespace = {
        "__module__": __name__,
        "__qualname__": name,
        "__doc__": f"{wrapper.__name__} around {_describe(inner)}, built as ``cls(params, **kwargs)``.",
        "wrapper_class": wrapper,
        "inner_class": inner,
        "factory_settings": dict(settings),
    }
    cls = FactoryClass(name, (_Built, wrapper), namespace)
    if key is not None:
        _CACHE[key] = cls
    return cls


def _cache_key(wrapper: type, inner: Any, settings: dict[str, Any]) -> Any:
    key = (wrapper, inner, tuple(settings.items()))
    try:
        hash(key)
    except TypeError:
        return None
    return key


def _check_select(select: Any) -> None:
    if select is not None and not isinstance(select, bool) and not callable(select):
        raise TypeError(f"Invalid select: {select!r} (expected select(name, tensor) -> bool, True, False or None)")


# ---------------------------------------------------------------------- building an instance
class _Built(RegularizedOptimizer):
    """The constructor ``(params, **kwargs)`` shared by every class ``factory`` builds."""

    _select: Select

    def __init__(self, params: Any, **kwargs: Any) -> None:
        recipe = cast(FactoryClass, type(self))
        merged = {**recipe.factory_settings, **kwargs}
        select = merged.pop("select", None)
        _check_select(select)
        wrapper_kwargs, inner_kwargs = _split(recipe.wrapper_class, recipe.inner_class, merged)
        given, overrides = _take_group_settings(params, recipe.wrapper_class.group_defaults)
        inner = recipe.inner_class(given, **inner_kwargs)
        self.reg_defaults = {**recipe.wrapper_class.group_defaults, **wrapper_kwargs}  # for can_regularize
        groups = _reg_groups(inner, overrides, select, self.can_regularize)
        cast(Any, super()).__init__(inner, groups, **wrapper_kwargs)
        self._select = select
        self._regularize_new_groups = True
        if not any(group["params"] for group in groups):
            warnings.warn(_nothing_selected(recipe, inner), UserWarning, stacklevel=2)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """As the wrapper's, with the group's own ``select`` (if it has one) choosing its tensors
        instead of the factory's; ``select`` is taken out of the group, so the inner optimizer
        never holds it (its checkpoints then load with ``weights_only=True``)."""
        group = dict(param_group)
        select = group.pop("select", self._select)
        _check_select(select)
        self._adding_select = select
        try:
            super().add_param_group(group)
        finally:
            del self._adding_select

    def _new_regularized(self, params: list[Any], settings: dict[str, Any]) -> list[Tensor]:
        seen = self._regularized_ids()
        select = getattr(self, "_adding_select", self._select)
        chosen: list[Tensor] = []
        for name, p in _named(params):
            if id(p) not in seen and _selected(select, name, p, self.can_regularize):
                seen.add(id(p))
                chosen.append(p)
        return chosen


def _keyword_names(fn: Callable[..., Any]) -> tuple[set[str], bool]:
    """The names ``fn`` takes as keywords, and whether it takes any (``**kwargs``)."""
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return set(), True
    names = {p.name for p in parameters if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    return names, any(p.kind == p.VAR_KEYWORD for p in parameters)


def _split(
    wrapper: type[RegularizedOptimizer], inner: Callable[..., Optimizer], kwargs: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``kwargs`` split into the wrapper's settings and the inner optimizer's; ``foreach``
    goes to both, where the inner optimizer takes it."""
    wrapper_names = {
        p.name for p in inspect.signature(wrapper.__init__).parameters.values() if p.kind == p.KEYWORD_ONLY
    }
    inner_names, inner_takes_any = _keyword_names(inner)
    ours = {k: v for k, v in kwargs.items() if k in wrapper_names}
    theirs = {k: v for k, v in kwargs.items() if k not in wrapper_names}
    if "foreach" in kwargs and (inner_takes_any or "foreach" in inner_names):
        theirs["foreach"] = kwargs["foreach"]
    return ours, theirs


def _take_group_settings(params: Any, group_keys: Iterable[str]) -> tuple[Any, list[dict[str, Any]] | None]:
    """``params`` for the inner optimizer, and per param group the wrapper's settings (and
    ``select``) taken out of it; None where ``params`` holds no group dicts.

    Anything that is not an iterable of parameters (a single tensor, None) is passed on
    unchanged, for the inner optimizer to refuse with its own error."""
    if isinstance(params, Tensor) or not isinstance(params, Iterable):
        return params, None
    items = list(params)
    if not items or not all(isinstance(item, dict) for item in items):
        return items, None
    keys = {*group_keys, "select"}
    given, overrides = [], []
    for item in items:
        group = dict(item)
        overrides.append({k: group.pop(k) for k in list(group) if k in keys})
        given.append(group)
    return given, overrides


def _named(params: Any) -> list[tuple[str | None, Tensor]]:
    """``(name or None, tensor)`` for a param group's ``params`` (a tensor, tensors or pairs)."""
    if isinstance(params, Tensor):
        return [(None, params)]
    out: list[tuple[str | None, Tensor]] = []
    for item in params:
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
            out.append((item[0], item[1]))
        elif isinstance(item, Tensor):
            out.append((None, item))
    return out


def _selected(select: Select, name: str | None, param: Tensor, can_regularize: Callable[[Tensor], bool]) -> bool:
    if select is None:
        return param.ndim >= 2 and why_unregularizable(param) is None and can_regularize(param)
    if isinstance(select, bool):
        return select
    return bool(select(name, param))


def _reg_groups(
    inner: Optimizer, overrides: list[dict[str, Any]] | None, select: Select, can_regularize: Callable[[Tensor], bool]
) -> list[dict[str, Any]]:
    """The wrapper's regularization groups: the selected tensors of each inner param group
    (each once), grouped by the group settings given with them; one empty group if none."""
    if overrides is not None and len(overrides) != len(inner.param_groups):
        raise ValueError(
            f"the inner optimizer made {len(inner.param_groups)} param groups of the {len(overrides)} given"
        )
    by_settings: dict[tuple[tuple[str, Any], ...], dict[str, Any]] = {}
    seen: set[int] = set()
    for k, group in enumerate(inner.param_groups):
        settings = dict(overrides[k]) if overrides is not None else {}
        chooser = settings.pop("select", select)
        _check_select(chooser)
        names = group.get("param_names") or [None] * len(group["params"])
        chosen = []
        for name, p in zip(names, group["params"], strict=True):
            if id(p) not in seen and _selected(chooser, name, p, can_regularize):
                seen.add(id(p))
                chosen.append(p)
        if chosen:
            key = tuple(sorted(settings.items(), key=lambda item: item[0]))
            by_settings.setdefault(key, {"params": [], **settings})["params"].extend(chosen)
    return list(by_settings.values()) or [{"params": []}]


def _nothing_selected(recipe: FactoryClass, inner: Optimizer) -> str:
    shapes = [tuple(p.shape) for g in inner.param_groups for p in g["params"]][:6]
    return (
        f"{recipe!r}: no parameter was selected to regularize (the parameters' shapes: {shapes}"
        f"{', ...' if len(shapes) == 6 else ''}); the optimizer regularizes nothing and runs as "
        f"{_describe(recipe.inner_class)}. The default select takes tensors with ndim >= 2; ZeRO-style "
        "frameworks such as DeepSpeed hand optimizers flat 1-D partitions. Pass select= to choose "
        "the tensors, or silence this with warnings.filterwarnings('ignore', 'no parameter was selected')"
    )
