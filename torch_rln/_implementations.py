"""Which implementation of a regularizer's update runs: per-tensor, foreach, or compiled.

Every wrapper makes this choice the same way, here (:func:`choose_implementation`), per
device and dtype:

* ``compile=None`` (the default) runs the fused, compiled kernel wherever
  ``torch.compile`` works for the device and dtypes at hand, if the regularizer compiles
  by default (RLN does; RMSLN's eager path is already its floor). Where it works is probed
  once per process and (kernel, device type, dtypes) by compiling and running the kernel
  on small tensors; where it fails (no C++ compiler on CPU, no Triton on CUDA, a dtype the
  compiler does not take), one warning says why and the eager path runs instead.
  ``compile=True`` insists (a failure raises); ``compile=False`` never compiles.
* ``foreach=None`` or ``True`` runs the eager path with foreach ops; ``foreach=False`` the
  per-tensor one. Both give the same results.
* Sharded tensors (``DTensor``), tensors with fewer than two elements per copy, and calls
  made while an outer ``torch.compile`` is tracing take the eager path or the kernel's
  plain function.

**Calling the compiled kernel without Dynamo.** On the small tensors of tabular models a
call through ``torch.compile``'s entry (guard evaluation, then the AOTAutograd runtime
wrappers) costs several times the kernel. So :class:`CompiledKernel` compiles through
``torch.compile`` once per key (device type and dtypes), with a backend that hands
Inductor the graph and keeps what Inductor returns, and calls that artifact directly
afterwards. The artifact is generic in the sizes (every dimension dynamic, probed on
sizes that no two dimensions share); the guards it was built under are what every later
call of the same key satisfies by construction: the same device type and dtypes,
contiguous inputs, the same number of dimensions. Sizes of 1, which Dynamo would compile
again for, reach the artifact directly (a regularizer checks that once per key). Building the
argument list reads Dynamo's description of the graph inputs (``node.meta["grapharg"]``,
an internal of torch): where that is not available, the kernel is called through
``torch.compile`` as usual, which is slower, not different.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["CompiledKernel", "Implementations", "choose_implementation"]

# Where a graph input comes from, as Dynamo names it: ``L['w']`` or ``L['w'].size()[1]``.
_SOURCE = re.compile(r"L\['(\w+)'\](?:\.size\(\)\[(\d+)\])?")

Getter = tuple[int, int]  # (argument index, dimension; -1 for the tensor itself)


class CompiledKernel:
    """A kernel function of tensors, compiled once per key with ``torch.compile(dynamic=True,
    fullgraph=True)`` and then called directly (see the module docstring).

    ``function(*tensors)`` must take tensors only (settings as tensors too), update some of
    them in place, and return one tensor or None. ``works(key, make_args, insist)`` probes a key (device type and
    dtypes) once per process by compiling and running the kernel on ``make_args()``;
    ``kernel(key, *tensors)`` runs it on tensors of that key.
    """

    def __init__(self, function: Callable[..., Any], name: str) -> None:
        self.function = function
        self.name = name
        self._arg_names = list(function.__code__.co_varnames[: function.__code__.co_argcount])
        self._compiled: Callable[..., Any] | None = None
        self._capturing: Any = None  # the key whose artifact the backend is about to build
        self._direct: dict[Any, Callable[..., Any]] = {}
        self._failures: dict[Any, Exception | None] = {}

    def __call__(self, key: Any, *args: torch.Tensor) -> Any:
        direct = self._direct.get(key)
        if direct is not None and not torch.compiler.is_compiling():
            return direct(*args)
        return self._slow_call(key, args)

    def _slow_call(self, key: Any, args: Sequence[torch.Tensor]) -> Any:
        if torch.compiler.is_compiling():
            return self.function(*args)  # an outer torch.compile traces the plain function
        if self._compiled is None:
            self._compiled = torch.compile(self.function, dynamic=True, fullgraph=True, backend=self._backend)
        self._capturing = key
        try:
            return self._compiled(*args)
        finally:
            self._capturing = None

    def _backend(self, graph: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable[..., Any]:
        """Compile ``graph`` with Inductor and keep the artifact for direct calls.

        With float16 or bfloat16 inputs, ``emulate_precision_casts``: a cast to the low
        precision and back rounds, as in eager mode (the RLN fold must use the weight as the
        parameter holds it). Not otherwise: it keeps Inductor from fusing the loops."""
        from torch._inductor import config as inductor_config
        from torch._inductor.compile_fx import compile_fx

        low = any(getattr(x, "dtype", None) in (torch.float16, torch.bfloat16) for x in example_inputs)
        with inductor_config.patch(emulate_precision_casts=low):
            artifact = compile_fx(graph, example_inputs)
        getters = self._getters(graph)
        if self._capturing is not None and getters is not None and callable(artifact):
            self._direct[self._capturing] = _direct_call(artifact, getters)
        return artifact  # type: ignore[return-value]

    def _getters(self, graph: torch.fx.GraphModule) -> list[Getter] | None:
        """For each graph input, the argument (and dimension) it is; None if unknown."""
        getters = []
        for node in graph.graph.nodes:
            if node.op != "placeholder":
                continue
            grapharg = node.meta.get("grapharg")
            source = getattr(getattr(grapharg, "source", None), "name", None)
            match = _SOURCE.fullmatch(source) if isinstance(source, str) else None
            if match is None or match.group(1) not in self._arg_names:
                return None
            dim = match.group(2)
            getters.append((self._arg_names.index(match.group(1)), -1 if dim is None else int(dim)))
        return getters

    def works(self, key: Any, make_args: Callable[[], tuple[torch.Tensor, ...]], insist: bool) -> bool:
        """Whether the compiled kernel runs for ``key`` (probed once per process).

        Where it does not, ``insist`` (``compile=True``) raises; otherwise the first call for
        ``key`` warns and the caller runs the eager path.
        """
        if key not in self._failures:
            try:
                self(key, *make_args())
                self._failures[key] = None
            except Exception as failure:  # noqa: BLE001 - any failure to compile means: run eagerly
                self._failures[key] = failure
                if not insist:
                    warnings.warn(
                        f"torch-rln: torch.compile does not work here for {key} ({_describe(failure)}); "
                        f"the {self.name} update runs eagerly (the same math, slower). "
                        "Pass compile=False to choose the eager path and silence this warning.",
                        RuntimeWarning,
                        stacklevel=4,
                    )
        error = self._failures[key]
        if error is not None and insist:
            raise RuntimeError(
                f"torch-rln: torch.compile cannot build the {self.name} kernel for {key} ({_describe(error)}); "
                "use compile=None (compile where it works) or compile=False"
            ) from error
        return error is None

    def __getstate__(self) -> dict[str, Any]:
        return {"function": self.function, "name": self.name}  # compiled artifacts stay in their process

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["function"], state["name"])  # type: ignore[misc]


def _direct_call(artifact: Callable[..., Any], getters: list[Getter]) -> Callable[..., Any]:
    def call(*args: torch.Tensor) -> Any:
        outputs = artifact(*[args[i] if d < 0 else args[i].shape[d] for i, d in getters])
        return outputs[0] if outputs else None  # the graph's outputs: the kernel's one tensor, or none

    return call


def _describe(error: Exception) -> str:
    first_line = next((line for line in str(error).splitlines() if line.strip()), "")
    return f"{type(error).__name__}: {first_line[:200]}"


@dataclass(frozen=True)
class Implementations:
    """A regularizer's three implementations of one update, which take the same arguments:
    ``single`` (per tensor, the plain reference), ``multi`` (foreach ops) and ``compiled``
    (a fused kernel); ``kernel_works(device, dtype, insist)`` says where the compiled one
    runs, and ``compile_by_default`` whether ``compile=None`` uses it."""

    single: Callable[..., Any]
    multi: Callable[..., Any]
    compiled: Callable[..., Any]
    kernel_works: Callable[[torch.device, torch.dtype, bool], bool]
    compile_by_default: bool


def choose_implementation(
    implementations: Implementations,
    *,
    foreach: bool | None,
    compile: bool | None,
    device: torch.device,
    dtype: torch.dtype,
    sharded: bool,
) -> Callable[..., Any]:
    """The implementation for tensors of one device and dtype (see the module docstring).
    Sharded tensors never take the compiled kernel: their sums need an all-reduce."""
    wanted = compile is True or (compile is None and implementations.compile_by_default)
    if wanted and not sharded and implementations.kernel_works(device, dtype, compile is True):
        return implementations.compiled
    return implementations.single if foreach is False else implementations.multi
