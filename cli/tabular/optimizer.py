"""The optimizers of the stacked MLPs: RMSprop with per-copy settings, and RLN on the first layer.

:class:`StackedRMSprop` is Keras' RMSprop (``rho`` 0.9, ``eps`` 1e-7, as the RLN tutorial)
for weights whose leading dimension indexes copies, with a learning rate and a weight
decay per copy. Each copy trains exactly as ``torch.optim.RMSprop(lr=lr[c],
alpha=0.9, eps=1e-7, weight_decay=wd[c])`` alone would (weight decay on the weight
matrices, not the biases). It is a ``torch.optim.Optimizer``, so ``RLNOptimizer`` wraps it.

:func:`rln_groups` is the one place that decides how RLN's settings reach the copies: one
first-layer tensor holds the RLN copies, and ``RLNOptimizer`` takes their Theta and nu as
lists, one value per copy (``batch_dims=1``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from torch_rln import RLNOptimizer


class StackedRMSprop(torch.optim.Optimizer):
    """RMSprop over stacked copies: ``lr`` and ``weight_decay`` are tensors, one value per copy.

    Each param group holds tensors with the same leading copy dimension ``n`` and its own
    ``lr`` and ``weight_decay`` of shape ``(n,)`` (the copies that group's tensors hold).
    """

    def __init__(self, groups: Sequence[dict[str, Any]], alpha: float = 0.9, eps: float = 1e-7) -> None:
        super().__init__(list(groups), {"alpha": alpha, "eps": eps, "weight_decay": None})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            alpha, eps = group["alpha"], group["eps"]
            lr: Tensor = group["lr"]
            decay: Tensor | None = group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                shape = (-1,) + (1,) * (p.ndim - 1)
                grad = p.grad if decay is None else p.grad.addcmul(p, decay.view(shape))
                state = self.state[p]
                if not state:
                    state["square_avg"] = torch.zeros_like(p)
                square_avg: Tensor = state["square_avg"]
                square_avg.mul_(alpha).addcmul_(grad, grad, value=1 - alpha)
                p.addcdiv_(grad * lr.view(shape), square_avg.sqrt().add_(eps), value=-1)
        return loss


RlnSettings = dict[int, tuple[float, float]]  # copy -> (Theta, log10 nu)


def rln_parts(copies: int, rln: RlnSettings) -> list[int]:
    """How the first layer's copies are split into tensors: each run of consecutive RLN
    copies is one tensor (the protocol stacks them consecutively, so they are one), the
    runs of other copies lie between. Sizes, in order, summing to ``copies``."""
    cuts = {0, copies}
    for c in range(copies):
        if (c in rln) != (c - 1 in rln):
            cuts.add(c)  # a run of RLN copies, or of other copies, starts here
    return [b - a for a, b in itertools.pairwise(sorted(cuts))]


def rln_groups(first: Sequence[Tensor], parts: Sequence[int], rln: RlnSettings) -> list[dict[str, Any]]:
    """The ``RLNOptimizer`` param groups for the first-layer tensors ``first`` (split as
    :func:`rln_parts` says): one group per tensor of RLN copies, with a Theta and a nu per
    copy (``batch_dims=1``), so that each copy trains exactly as a separate optimizer would."""
    groups, start = [], 0
    for tensor, size in zip(first, parts, strict=True):
        if start in rln:
            settings = [rln[c] for c in range(start, start + size)]
            theta = [t for t, _ in settings]
            nu = [10.0**n for _, n in settings]
            groups.append({"params": [tensor], "avg_reg": theta, "reg_lr": nu, "batch_dims": 1})
        start += size
    return groups


def make_optimizer(
    model: Any,
    lr: Tensor,
    weight_decay: Tensor | None,
    parts: Sequence[int],
    rln: RlnSettings,
    compile_rln: bool = False,
) -> torch.optim.Optimizer:
    """RMSprop with each copy's ``lr`` and ``weight_decay`` over every tensor of ``model``
    (a :class:`~.network.StackedMLP`), wrapped with RLN on the first-layer parts that
    ``rln`` names. ``compile_rln``: RLN's update compiled where torch.compile works (the
    same math; the first compile costs seconds, repaid over a run of minutes), else eager."""
    groups: list[dict[str, Any]] = []
    start = 0
    for tensor, size in zip(model.first, parts, strict=True):
        sl = slice(start, start + size)
        groups.append(
            {"params": [tensor], "lr": lr[sl], "weight_decay": None if weight_decay is None else weight_decay[sl]}
        )
        start += size
    groups.append({"params": list(model.weights), "lr": lr, "weight_decay": weight_decay})
    groups.append({"params": list(model.biases), "lr": lr, "weight_decay": None})
    inner = StackedRMSprop(groups)
    if not rln:
        return inner
    return RLNOptimizer(inner, params=rln_groups(list(model.first), parts, rln), compile=None if compile_rln else False)
