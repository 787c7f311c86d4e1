"""``--investigate``: where the write-up's figures come from, its batch size and the
definition of its RMS penalty.

The write-up gives its tuned parameters and final validation losses
(:data:`~.protocol.PUBLISHED`) but neither its batch nor the exact form of its penalty.
Two measurements, with those parameters, over the first :data:`SEEDS` final seeds:

* **the batch**: the baseline at the whole training set (100 Adam steps in 100 epochs),
  1000, 512 and 128;
* **the penalty**, at full batch: the library's definition (:class:`torch_rln.RMSLNWrapper`,
  :math:`\\lambda \\sum_l (\\operatorname{rms}(W_l) - 1)^2` over the weight matrices, coupled:
  its gradient joins Adam's), the same as a loss term (a check: it must agree), decoupled,
  plain Adam at the RMSLN lr (the control), and the candidate definitions below, each
  written here as a loss term: ``RMSLNWrapper`` itself is never changed to fit a number.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from torch_rln import RMSLNWrapper

from ..common.stats import mean_std
from .data import Data
from .protocol import PUBLISHED, Settings
from .training import Penalty, fit, make_model

SEEDS = 3  # the investigation's seeds: the first final seeds, at most this many
BATCHES: tuple[int | None, ...] = (None, 1000, 512, 128)  # None: the whole training set


def _weights(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p for p in model.parameters() if p.ndim >= 2]


def _rms(p: torch.Tensor) -> torch.Tensor:
    return p.pow(2).mean().sqrt()


def rms_penalty(
    params: Callable[[torch.nn.Module], Sequence[torch.Tensor]] = _weights,
    size: Callable[[torch.Tensor], torch.Tensor] = _rms,
    target: float = 1.0,
    reduce: str = "sum",
    reg_lambda: float = PUBLISHED["rmsln"]["params"]["reg_lambda"],
) -> Penalty:
    """``reg_lambda * reduce_l (size(p_l) - target)^2`` over ``params(model)``, as a loss term."""

    def penalty(model: torch.nn.Module) -> torch.Tensor:
        terms = torch.stack([(size(p) - target) ** 2 for p in params(model)])
        return reg_lambda * (terms.sum() if reduce == "sum" else terms.mean())

    return penalty


# name -> (description, penalty or None, wrapper settings or None)
Candidate = tuple[str, Penalty | None, dict[str, Any] | None]


def candidates() -> dict[str, Candidate]:
    """The definitions measured, by name: ``(what it is, loss term, RMSLNWrapper settings)``."""
    return {
        "library": ("RMSLNWrapper, coupled: sum over weight matrices of (rms(W) - 1)^2", None, {"decoupled": False}),
        "library_as_loss": ("the same penalty as a loss term (must agree with the row above)", rms_penalty(), None),
        "decoupled": ("RMSLNWrapper, decoupled", None, {"decoupled": True}),
        "adam": ("plain Adam at the RMSLN lr, no penalty (the control)", None, None),
        "biases_included": (
            "every parameter, biases included",
            rms_penalty(params=lambda m: list(m.parameters())),
            None,
        ),
        "sum_in_root": (
            "a sum instead of a mean inside the RMS: (||W||_2 - 1)^2",
            rms_penalty(size=torch.linalg.norm),
            None,
        ),
        "sum_of_squares": ("no root: (sum W^2 - 1)^2", rms_penalty(size=lambda p: p.pow(2).sum()), None),
        "mean_over_layers": ("the mean over layers instead of the sum", rms_penalty(reduce="mean"), None),
        "target_0": ("target 0: sum of rms(W)^2 (a weight decay per layer)", rms_penalty(target=0.0), None),
        "target_0.1": ("target 0.1 (about the RMS of torch's default initialization)", rms_penalty(target=0.1), None),
    }


def _runs(
    data: Data,
    settings: Settings,
    seeds: Sequence[int],
    lr: float,
    batch: int,
    candidate: Candidate,
    on_run: Callable[[], None],
) -> list[float]:
    """The final validation loss of one setting, per seed."""
    _, penalty, wrapper = candidate
    out = []
    for seed in seeds:
        model = make_model(settings.hidden, seed, data.train[0].device)
        optimizer: torch.optim.Optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        if wrapper is not None:
            reg_lambda = PUBLISHED["rmsln"]["params"]["reg_lambda"]
            optimizer = RMSLNWrapper(optimizer, reg_lambda=reg_lambda, target=1.0, **wrapper)
        losses, _ = fit(model, optimizer, data, batch_size=batch, epochs=settings.epochs, seed=seed, penalty=penalty)
        out.append(losses[-1])
        on_run()
    return out


def _row(values: list[float], **fields: Any) -> dict[str, Any]:
    mean, std = mean_std(values)
    return {**fields, "final_val_loss": values, "mean": mean, "std": std}


def investigate(data: Data, settings: Settings, seeds: Sequence[int], on_run: Callable[[], None]) -> dict[str, Any]:
    """The batch table (baseline, the write-up's lr) and the candidate definitions (full batch,
    the write-up's RMSLN parameters), each over ``seeds``; ``on_run()`` after every training run."""
    n = len(data.train[0])
    base_lr, rmsln_lr = PUBLISHED["baseline"]["params"]["lr"], PUBLISHED["rmsln"]["params"]["lr"]
    adam: Candidate = ("Adam", None, None)
    batches = [
        _row(_runs(data, settings, seeds, base_lr, b or n, adam, on_run), batch=b or n, full=b is None) for b in BATCHES
    ]
    definitions = []
    for name, candidate in candidates().items():
        values = _runs(data, settings, seeds, rmsln_lr, n, candidate, on_run)
        definitions.append(_row(values, name=name, description=candidate[0]))
    target = PUBLISHED["rmsln"]["final_val_loss"]
    closest = min(definitions, key=lambda d: abs(d["mean"] - target))
    return {
        "seeds": list(seeds),
        "epochs": settings.epochs,
        "batches": batches,
        "definitions": definitions,
        "closest": {"name": closest["name"], "mean": closest["mean"], "distance": closest["mean"] - target},
    }


def runs_planned(seeds: int) -> int:
    """The training runs of an investigation over ``seeds`` seeds."""
    return seeds * (len(BATCHES) + len(candidates()))
