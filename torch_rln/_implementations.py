"""Which implementation of a regularizer's update runs: per-tensor, foreach, or compiled.

Every wrapper makes this choice the same way, here (:func:`choose_implementation`), per
device and dtype:

* ``compile=None`` (the default) runs the fused, compiled kernel wherever
  ``torch.compile`` works for the device and dtypes at hand, if the regularizer compiles
  by default (RLN does; RMSLN's eager path is already its floor). Where it works is probed
  once per process and (kernel, device type, dtypes) by compiling and running the kernel
  on a two-element tensor; where it fails (no C++ compiler on CPU, no Triton on CUDA, a
  dtype the compiler does not take), one warning says why and the eager path runs
  instead. ``compile=True`` insists (a failure raises); ``compile=False`` never compiles.
* ``foreach=None`` or ``True`` runs the eager path with foreach ops; ``foreach=False`` the
  per-tensor one. Both give the same results.
* Sharded tensors (``DTensor``), tensors with fewer than two elements per copy (Dynamo
  specializes sizes 0 and 1 and would compile again), and calls made while an outer
  ``torch.compile`` is tracing take the eager path or the kernel's plain function, so
  that the compiled kernel is compiled exactly once per (device type, dtypes).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["CompiledKernel", "Implementations", "choose_implementation"]


class CompiledKernel:
    """A kernel function compiled once per process with ``torch.compile(dynamic=True,
    fullgraph=True)``, and the record of where it works.

    ``probe(key, make_args)`` compiles and runs it on small arguments the first time a key
    (device type, dtypes) is seen; the answer is kept for the process.
    """

    def __init__(self, function: Callable[..., Any], name: str) -> None:
        self.function = function
        self.name = name
        self._compiled: Callable[..., Any] | None = None
        self._failures: dict[tuple[Any, ...], Exception | None] = {}

    def __call__(self, *args: Any) -> Any:
        if torch.compiler.is_compiling():
            return self.function(*args)  # an outer torch.compile traces the plain function
        if self._compiled is None:
            # emulate_precision_casts: a cast to bfloat16 and back rounds, as in eager mode (the
            # RLN fold must use the weight as the parameter holds it).
            self._compiled = torch.compile(
                self.function, dynamic=True, fullgraph=True, options={"emulate_precision_casts": True}
            )
        return self._compiled(*args)

    def works(self, key: tuple[Any, ...], make_args: Callable[[], tuple[Any, ...]], insist: bool) -> bool:
        """Whether the compiled kernel runs for ``key`` (probed once per process).

        Where it does not, ``insist`` (``compile=True``) raises; otherwise the first call for
        ``key`` warns and the caller runs the eager path.
        """
        if key not in self._failures:
            try:
                self(*make_args())
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
