"""What RLN did to each regularized tensor, as tensors, for logging: ``RLNOptimizer.stats()``.

The paper's headline is interpretability: an input whose whole first-layer column is
exactly 0 no longer reaches the network, it is *eliminated*. :func:`rln_stats` reports,
per regularized tensor (per copy, with ``batch_dims``):

* ``zero_fraction``: the fraction of its weights that are exactly 0;
* ``eliminated`` and ``eliminated_mask``: for a weight shaped ``(out, in)`` (beyond its
  batch dimensions), the number of inputs whose column ``W[:, j]`` is entirely 0, and a
  boolean mask over the inputs, True where eliminated (``mask.nonzero()`` gives the
  indices; it syncs, so it is left to the reader). None for other shapes;
* ``coef_mean``, ``coef_std``, ``coef_min``, ``coef_max``: of the log-coefficients
  :math:`\\lambda` (``lambdas()``; the std is the population one). The projection sets
  the mean to ``avg_reg``, then the cap :math:`\\lambda \\le \\log|w|` lowers the
  coefficients of the weights it sets to 0, so the mean reads below ``avg_reg`` by how
  much the cap bound. Large coefficients mark the weights RLN pushes to 0;
* ``shrink_norm``: the L2 norm of the last shrink ``r = d exp(lambda)`` that RLN
  subtracted (0 before the first step): how hard the regularizer pulled on that step.

Every value is a tensor on the parameter's device (0-d, or shaped like the batch
dimensions): computing them queues kernels and never waits for them, so nothing syncs
with the host until the values are read. :func:`log_stats` hands them to any
``log(name, value)`` callable (Lightning's ``self.log``, TensorBoard's ``add_scalar``).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ._groups import param_positions

if TYPE_CHECKING:  # pragma: no cover
    from .rln import RLNOptimizer

__all__ = ["TensorStats", "log_stats", "rln_stats"]


@dataclass(frozen=True)
class TensorStats:
    """RLN's statistics of one regularized tensor (see :meth:`torch_rln.RLNOptimizer.stats`).

    Each field is a tensor of the batch shape (``()`` without ``batch_dims``);
    ``eliminated_mask`` has one more dimension, the inputs.
    """

    zero_fraction: Tensor
    coef_mean: Tensor
    coef_std: Tensor
    coef_min: Tensor
    coef_max: Tensor
    shrink_norm: Tensor
    eliminated: Tensor | None = None
    eliminated_mask: Tensor | None = None

    def scalars(self) -> Iterator[tuple[str, Tensor]]:
        """``(field, value)`` for every field but the mask (the fields one logs)."""
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None and f.name != "eliminated_mask":
                yield f.name, value


def _per_copy(t: Tensor, batch_dims: int) -> Tensor:
    """``t`` as ``(*batch shape, elements of one copy)``."""
    return t.reshape(*t.shape[:batch_dims], -1)


def tensor_stats(weight: Tensor, lam: Tensor, shrink: Tensor | None, batch_dims: int) -> TensorStats:
    """The statistics of one tensor from its weight, coefficients and last shrink (None:
    no step yet)."""
    w = weight.detach()
    zeros = _per_copy(w == 0, batch_dims)
    coefs = _per_copy(lam, batch_dims)
    norm = (
        torch.zeros(w.shape[:batch_dims], dtype=lam.dtype, device=lam.device)
        if shrink is None
        else torch.linalg.vector_norm(_per_copy(shrink, batch_dims), dim=-1)
    )
    eliminated = mask = None
    if w.ndim - batch_dims == 2:
        mask = (w == 0).all(dim=-2)  # column j of (out, in) entirely 0
        eliminated = mask.sum(dim=-1)
    return TensorStats(
        zero_fraction=zeros.to(lam.dtype).mean(dim=-1),
        coef_mean=coefs.mean(dim=-1),
        coef_std=coefs.std(dim=-1, correction=0),
        coef_min=_extreme(coefs, torch.amin),
        coef_max=_extreme(coefs, torch.amax),
        shrink_norm=norm,
        eliminated=eliminated,
        eliminated_mask=mask,
    )


def _extreme(coefs: Tensor, reduce: Callable[..., Tensor]) -> Tensor:
    """``reduce`` over each copy's coefficients; NaN for a copy of no elements (as its mean)."""
    if coefs.shape[-1] == 0:
        return torch.full(coefs.shape[:-1], math.nan, dtype=coefs.dtype, device=coefs.device)
    return reduce(coefs, dim=-1)


NamedParams = Mapping[str, Tensor] | Iterable[tuple[str, Tensor]]


def param_labels(optimizer: RLNOptimizer, names: NamedParams | None = None) -> dict[int, str]:
    """Parameter id -> its label: the name in ``names`` (e.g. ``model.named_parameters()``),
    else the name the inner optimizer was given, else its index in ``state_dict()["state"]``."""
    labels: dict[int, str] = {}
    for group in optimizer.param_groups:
        for name, p in zip(group.get("param_names") or [], group["params"], strict=False):  # names are optional
            labels.setdefault(id(p), name)
    if names is not None:
        pairs = names.items() if isinstance(names, Mapping) else names
        labels.update({id(p): name for name, p in pairs})
    for p_id, i in param_positions(optimizer.param_groups).items():
        labels.setdefault(p_id, str(i))
    return labels


def rln_stats(optimizer: RLNOptimizer, names: NamedParams | None = None) -> dict[str, TensorStats]:
    """:class:`TensorStats` of every tensor ``optimizer`` regularizes, keyed by its label
    (see :func:`param_labels`), in the order of the regularization groups. Two tensors
    under one label are both kept, as ``label[i]`` with ``i`` their index in
    ``state_dict()["state"]``."""
    labels = param_labels(optimizer, names)
    positions = param_positions(optimizer.param_groups)
    regularized = [(p, group) for group in optimizer.reg_groups for p in group["params"]]
    shared = Counter(labels[id(p)] for p, _ in regularized)
    out: dict[str, TensorStats] = {}
    with torch.no_grad():
        for p, group in regularized:
            label = labels[id(p)]
            if shared[label] > 1:  # two tensors under one name: both kept, told apart by their index
                label = f"{label}[{positions[id(p)]}]"
            state = optimizer.reg_state.get(p)
            shrink = None if state is None else state["r_prev"]
            out[label] = tensor_stats(p, optimizer.lambdas(p), shrink, group["batch_dims"])
    return out


def log_stats(stats: Mapping[str, TensorStats], log: Callable[[str, Any], Any], prefix: str = "rln") -> None:
    """Hand every statistic to ``log(name, value)``, named ``{prefix}/{label}/{field}``
    (``.../{field}/{k}`` for copy ``k`` with ``batch_dims``), counts as floats (Lightning
    averages what it logs). The values stay tensors: a
    logger that reads them (``add_scalar`` calls ``.item()``) syncs then, not before.

    Lightning: ``log_stats(opt.stats(), self.log)`` in a hook; TensorBoard:
    ``log_stats(opt.stats(), lambda name, v: writer.add_scalar(name, v, step))``.
    """
    for label, tensor_stats_ in stats.items():
        for field, value in tensor_stats_.scalars():
            name = f"{prefix}/{label}/{field}"
            if not value.is_floating_point():
                value = value.to(torch.get_default_dtype())  # counts: loggers that average want floats
            if value.ndim == 0:
                log(name, value)
            else:
                for k, item in enumerate(value.reshape(-1)):
                    log(f"{name}/{k}", item)
