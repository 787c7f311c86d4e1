"""One configuration of the RLN experiment as torch objects: the stacked model of its
repeats, its optimizer (RMSprop, wrapped by RLN for ``rln``) and its L1 penalty, and what
is read off the trained model (Keras' penalty, the eliminated inputs)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from torch_rln import RLNOptimizer

from ..common.stacked import StackedMLP, geometric_widths

Penalty = Callable[[], torch.Tensor]


def compile_works(device: str) -> bool:
    """Whether ``RLNOptimizer(compile=True)`` runs here (torch.compile needs a C++ compiler on CPU)."""
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # "No CUDA runtime" on CPU builds
    try:
        w = torch.nn.Parameter(torch.randn(2, 3, device=device))
        opt = RLNOptimizer(torch.optim.SGD([w], lr=0.1), compile=True)
        for _ in range(2):
            w.grad = torch.ones_like(w)
            opt.step()
        return True
    except Exception:  # noqa: BLE001 - any failure means: use the eager path
        return False


def build(
    config: dict[str, Any], input_dim: int, repeats: int, generator: torch.Generator, device: str, compile: bool
) -> tuple[StackedMLP, torch.optim.Optimizer, Penalty | None]:
    """The stacked model of ``repeats`` copies, its optimizer and the training penalty (L1) of ``config``."""
    sizes = [input_dim, *geometric_widths(input_dim, config["depth"]), 1]
    model = StackedMLP(sizes, repeats, generator).to(device)
    optimizer: torch.optim.Optimizer = torch.optim.RMSprop(model.parameters(), lr=1e-3, alpha=0.9, eps=1e-7)
    if config["model"] == "l1":
        first, strength = model.weights[0], config["l1"]
        return model, optimizer, lambda: strength * first.abs().sum()  # Keras' l1(strength), per repeat, summed
    if config["model"] == "rln":
        optimizer = RLNOptimizer(
            optimizer,
            params=[model.weights[0]],
            norm=1,
            avg_reg=config["theta"],
            reg_lr=10.0 ** config["log10_nu"],
            batch_dims=1,
            compile=compile,
        )
    return model, optimizer, None


def keras_penalty(model: StackedMLP, config: dict[str, Any]) -> torch.Tensor:
    """The regularization loss Keras adds to ``evaluate()``, per repeat: ``l1 * sum|W1|``
    for L1 (``keras.regularizers.l1``), 0 for none and RLN (its callback adds no loss)."""
    w = model.weights[0].detach()
    if config["model"] == "l1":
        penalty: torch.Tensor = config["l1"] * w.abs().sum(dim=(1, 2))
        return penalty
    return torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)


def eliminated_inputs(model: StackedMLP, optimizer: torch.optim.Optimizer) -> np.ndarray:
    """``(R, inputs)`` bool: the inputs whose whole first-layer column is exactly 0. RLN's
    own statistics (``RLNOptimizer.stats``) where it ran, the same test on the weights otherwise."""
    if isinstance(optimizer, RLNOptimizer):
        mask = optimizer.stats({"W1": model.weights[0]})["W1"].eliminated_mask
        assert mask is not None  # a weight (out, in) per repeat always has one
    else:
        mask = (model.weights[0].detach() == 0).all(dim=1)
    out: np.ndarray = mask.cpu().numpy()
    return out
