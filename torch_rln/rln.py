r"""Regularization Learning (Shavitt & Segal, NeurIPS 2018) as an optimizer wrapper.

Every regularized weight :math:`w` has its own log-scale coefficient :math:`\lambda`.
After each step of the inner optimizer, for each regularized tensor :math:`W`:

.. math::

    w' &= W \text{ after the inner step}, \qquad
        \delta = w' - w_{\text{prev}} \quad (w_{\text{prev}}: W \text{ just before the inner step}) \\
    \lambda &\leftarrow \lambda - \nu\, \delta\, r_{\text{prev}}
        \quad\text{(from the second step on: the counterfactual-loss gradient)} \\
    \lambda &\leftarrow \lambda + \Theta - \operatorname{mean}(\lambda)
        \quad\text{(projection: the mean over the tensor stays } \Theta) \\
    d &= \operatorname{sign}(w') \ (L_1) \quad\text{or}\quad 2 w' \ (L_2) \\
    \lambda &\leftarrow \min\big(\lambda, \log|w'/d|\big)
        \quad\text{(no cap where } w'/d = 0/0) \\
    r &= d\, e^{\lambda}, \qquad W \leftarrow w' - r, \qquad r_{\text{prev}} \leftarrow r

with :math:`\lambda = \Theta` at the start. Where the cap binds
(:math:`\lambda \ge \log|w'/d|`), the shrink is the weight itself: :math:`r = w'` and
:math:`W` becomes exactly 0 (computing :math:`d\,e^{\log|w'|}` instead would leave
rounding residues such as 3e-35, whose caps of about -79 then pull the mean).

Names: :math:`\Theta` is ``avg_reg`` (the paper's Theta, the Keras callback's
``avg_reg``); :math:`\nu` is ``reg_lr`` (the paper's nu, the Keras callback's
``learning_rate``). This is the math of the published Keras ``RLNCallback``, done on the
device inside ``step()``.

Numerics:

* Where :math:`w' = 0` (a weight a dead unit keeps at 0), :math:`d = 0`: the shrink is
  exactly 0 and :math:`\lambda` has no cap, so the projection may push it past 88, where
  ``exp`` overflows float32. The exponent is clamped below the overflow point of the
  state dtype, so ``0 * exp(lambda)`` is 0, never NaN.
* Where the inner step produced NaN or +-Inf, the element counts as 0 for the coefficient
  update: it adds no gradient term (on that step, and on the next, whose
  :math:`w_{\text{prev}}` is non-finite), its coefficient only follows the projection,
  its shrink is 0, and the weight is left as the inner optimizer made it. No other
  coefficient of the tensor is touched by it beyond the projection. No host sync.
* The coefficients and the previous shrink are kept in float32 for float16/bfloat16
  parameters (in the parameter's dtype otherwise); the update runs in that dtype.

Persistent state per regularized weight: ``lam`` (the coefficients) and ``r_prev`` (the
previous shrink, whose sign cannot be recovered from a weight that was set to 0). The
weight before the inner step is a temporary copy taken inside ``step()``.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.utils._foreach_utils import _group_tensors_by_device_and_dtype

from ._sharding import Shards, complete_sums_, local, shards_of
from ._wrapper import RegularizedOptimizer, check_finite, check_int, state_dtype

__all__ = ["RLNOptimizer", "rln_update"]

_LOG_HALF = math.log(0.5)


def max_exponent(dtype: torch.dtype) -> float:
    """The largest whole exponent whose ``exp`` is finite in ``dtype`` (88 for float32)."""
    return float(math.floor(math.log(torch.finfo(dtype).max)))


def _mean(lam: Tensor, batch_dims: int) -> Tensor:
    """The mean of ``lam`` over the whole tensor, or per index of its ``batch_dims`` leading dims."""
    if batch_dims == 0:
        return lam.mean()
    return lam.mean(dim=tuple(range(batch_dims, lam.ndim)), keepdim=True)


def _sum(lam: Tensor, batch_dims: int) -> Tensor:
    """The sum that :func:`_mean` divides (0 for an empty shard)."""
    if batch_dims == 0:
        return lam.sum()
    return lam.sum(dim=tuple(range(batch_dims, lam.ndim)), keepdim=True)


def _whole_means(lams: list[Tensor], batch_dims: int, shards: list[Shards | None] | None) -> list[Tensor]:
    """:func:`_mean` of each tensor, where ``lams[i]`` may be the local shard of a sharded
    tensor (``shards[i]`` not None): its mean is then the all-reduced sum of the shards over
    the whole tensor's element count."""
    if shards is None or all(s is None for s in shards):
        return [_mean(lam, batch_dims) for lam in lams]
    sums = [None if s is None else _sum(lam, batch_dims) for lam, s in zip(lams, shards)]
    complete_sums_([t for t in sums if t is not None], [s for s in shards if s is not None])
    return [_mean(lam, batch_dims) if total is None else total.div_(s.count)
            for lam, s, total in zip(lams, shards, sums)]


def _finite_copy(tensor: Tensor, dtype: torch.dtype) -> Tensor:
    """``tensor`` in ``dtype`` with NaN and +-Inf replaced by 0 (a new tensor)."""
    if tensor.dtype != dtype:
        tensor = tensor.to(dtype)
        return torch.nan_to_num_(tensor, nan=0.0, posinf=0.0, neginf=0.0)
    return torch.nan_to_num(tensor.detach(), nan=0.0, posinf=0.0, neginf=0.0)


def _drop_non_finite_(tensor: Tensor) -> Tensor:
    """Set NaN and +-Inf entries to 0, in place."""
    return torch.nan_to_num_(tensor, nan=0.0, posinf=0.0, neginf=0.0)


def _single_tensor_rln(
    params: list[Tensor],
    prevs: list[Tensor] | None,
    lams: list[Tensor],
    r_prevs: list[Tensor],
    *,
    norm: int,
    avg_reg: float,
    reg_lr: float,
    first_step: bool,
    batch_dims: int = 0,
    shards: list[Shards | None] | None = None,
) -> None:
    """One RLN update, tensor by tensor, in the plain form of the equations.

    ``params`` hold :math:`w'` (after the inner step) and receive :math:`W`;
    ``prevs`` are :math:`w_{\\text{prev}}` in the state dtype (unused, may be None, on
    the first step); ``lams`` and ``r_prevs`` are updated in place. A non-finite gradient
    term (from a NaN/Inf in :math:`w'` or :math:`w_{\\text{prev}}`) counts as 0.
    ``shards[i]``, when given and not None, says that the tensors of index ``i`` are local
    shards of a sharded tensor, whose mean is over the whole tensor.
    """
    for i, param in enumerate(params):
        lam, r_prev = lams[i], r_prevs[i]
        w = _finite_copy(param, lam.dtype)
        if not first_step:
            assert prevs is not None
            term = _drop_non_finite_((prevs[i] - param) * r_prev)
            lam.add_(term, alpha=reg_lr)  # lam -= nu * delta * r_prev
            mean = _whole_means([lam], batch_dims, None if shards is None else [shards[i]])[0]
            lam.sub_(mean - avg_reg)  # lam += Theta - mean(lam)
        d = torch.sign(w) if norm == 1 else 2 * w
        cap = torch.log(torch.abs(w / d))  # NaN where w == 0 (0/0): no cap there
        bound = lam >= cap  # False against NaN
        lam.copy_(torch.where(bound, cap, lam))
        shrink = d * torch.exp(lam.clamp(max=max_exponent(lam.dtype)))
        r = torch.where(bound, w, shrink)
        r_prev.copy_(r)
        param.sub_(r)


def _multi_tensor_rln(
    params: list[Tensor],
    prevs: list[Tensor] | None,
    lams: list[Tensor],
    r_prevs: list[Tensor],
    *,
    norm: int,
    avg_reg: float,
    reg_lr: float,
    first_step: bool,
    batch_dims: int = 0,
    shards: list[Shards | None] | None = None,
) -> None:
    """The same update as :func:`_single_tensor_rln`, with foreach ops per device and dtype.

    ``where`` and comparisons are slow on CPU (a ``torch.where`` costs ten multiplies) and
    have no foreach form, so the masks are formed exactly in arithmetic, and temporaries
    are reused in place (a fresh large tensor costs page faults):

    * ``m = |sign w| - 1`` is 0 where ``w != 0`` and -1 where ``w == 0``;
    * ``cap = log(|w| - m) - m * MAX`` is ``log|w|`` exactly where ``w != 0`` and the
      largest float (no cap) where ``w == 0``; for norm 2, ``log(0.5) - m * MAX``;
    * ``free = sign(max(cap - lam, 0))`` is 1 where the cap does not bind and 0 where it does;
    * ``r = d exp(lam) free + w (1 - free)`` is ``w`` exactly where the cap binds.

    The results equal the per-tensor path's.
    """
    tensor_lists: list[list[Any]] = [params, lams, r_prevs]
    if not first_step:
        assert prevs is not None
        tensor_lists.append(prevs)
    grouped = _group_tensors_by_device_and_dtype(tensor_lists, with_indices=True)
    for (device_params, device_lams, device_r_prevs, *rest), indices in grouped.values():
        sdtype = device_lams[0].dtype
        largest = torch.finfo(sdtype).max
        ws = [_finite_copy(p, sdtype) for p in device_params]
        if not first_step:
            scratch = rest[0]  # w_prev, overwritten in place with (w_prev - w') r_prev
            torch._foreach_sub_(scratch, device_params)
            torch._foreach_mul_(scratch, device_r_prevs)
            for term in scratch:
                _drop_non_finite_(term)
            torch._foreach_add_(device_lams, scratch, alpha=reg_lr)  # lam -= nu * delta * r_prev
            excess = _whole_means(device_lams, batch_dims, None if shards is None else [shards[i] for i in indices])
            torch._foreach_sub_(excess, avg_reg)
            torch._foreach_sub_(device_lams, excess)  # lam += Theta - mean(lam)

        d = torch._foreach_sign(ws)
        m = torch._foreach_abs(d)
        torch._foreach_sub_(m, 1.0)  # 0 where w != 0, -1 where w == 0
        if norm == 1:
            cap = torch._foreach_abs(ws)
            torch._foreach_sub_(cap, m)
            torch._foreach_log_(cap)
        else:
            torch._foreach_copy_(d, ws)  # reuse: d = 2 w'
            torch._foreach_mul_(d, 2.0)
            cap = torch._foreach_mul(m, 0.0)
            torch._foreach_add_(cap, _LOG_HALF)
        torch._foreach_add_(cap, m, alpha=-largest)  # log|w/d|, or no cap where w == 0

        free = m  # reuse: 1 where lam < cap, 0 where the cap binds
        torch._foreach_copy_(free, cap)
        torch._foreach_sub_(free, device_lams)
        torch._foreach_clamp_min_(free, 0.0)
        torch._foreach_sign_(free)
        torch._foreach_minimum_(device_lams, cap)  # lam = min(lam, cap)

        r = device_r_prevs  # reuse: r_prev is spent; it becomes this step's shrink
        torch._foreach_copy_(r, device_lams)
        torch._foreach_clamp_max_(r, max_exponent(sdtype))
        torch._foreach_exp_(r)
        torch._foreach_mul_(r, d)
        torch._foreach_mul_(r, free)
        bound = free  # reuse: 1 - free
        torch._foreach_neg_(bound)
        torch._foreach_add_(bound, 1.0)
        torch._foreach_addcmul_(r, ws, bound)  # r = w' exactly where the cap binds
        torch._foreach_sub_(device_params, r)


def _fused_rln_kernel(
    w: Tensor, prev: Tensor, lam: Tensor, r_prev: Tensor, avg_reg: float, reg_lr: float, l1: float, max_exp: float
) -> None:
    """The five steps for one 1-D tensor, written for ``torch.compile`` to fuse into one loop
    (plus the mean's): the same results as :func:`_single_tensor_rln` up to rounding.

    ``l1`` is 1.0 for norm 1 and 0.0 for norm 2: a float, which stays a dynamic argument,
    where a Python branch on the norm would compile the kernel once more (Dynamo allows 8
    compilations of one function per process, shared by every dtype pair and norm).
    """
    wf = w.to(lam.dtype)
    term = (prev - wf) * r_prev
    lam_new = lam + reg_lr * torch.where(torch.isfinite(term), term, 0.0)  # lam -= nu * delta * r_prev
    lam_new = lam_new - (lam_new.mean() - avg_reg)  # lam += Theta - mean(lam)
    ws = torch.where(torch.isfinite(wf), wf, 0.0)
    d = torch.sign(ws) * l1 + ws * (2.0 * (1.0 - l1))  # exactly sign(w) or 2 w; no 2 w = inf for L1
    cap = torch.log(torch.abs(ws / d))  # NaN where w == 0: no cap there
    bound = lam_new >= cap
    lam_new = torch.where(bound, cap, lam_new)
    r = torch.where(bound, ws, d * torch.exp(torch.clamp(lam_new, max=max_exp)))
    lam.copy_(lam_new)
    r_prev.copy_(r)
    w.copy_((wf - r).to(w.dtype))


_compiled_kernel = None


def _compiled_rln(
    params: list[Tensor],
    prevs: list[Tensor] | None,
    lams: list[Tensor],
    r_prevs: list[Tensor],
    *,
    norm: int,
    avg_reg: float,
    reg_lr: float,
    first_step: bool,
    batch_dims: int = 0,
    shards: list[Shards | None] | None = None,
) -> None:
    """The update through one compiled, fused kernel per tensor (per copy with ``batch_dims``).

    The kernel is compiled once per (parameter dtype, state dtype), with dynamic shapes and
    dynamic float arguments, so tensors of any size and any settings reuse it (torch's
    on-disk cache keeps it across runs). The first step (no gradient term, no projection),
    non-contiguous tensors, copies of fewer than 2 elements (Dynamo specializes sizes 0
    and 1) and sharded tensors (whose mean needs an all-reduce) take the foreach path.
    """
    global _compiled_kernel
    if first_step or (shards is not None and any(s is not None for s in shards)):
        _multi_tensor_rln(params, prevs, lams, r_prevs, norm=norm, avg_reg=avg_reg, reg_lr=reg_lr,
                          first_step=first_step, batch_dims=batch_dims, shards=shards)
        return
    assert prevs is not None
    if _compiled_kernel is None:
        _compiled_kernel = torch.compile(_fused_rln_kernel, dynamic=True, fullgraph=True)
    rest: list[list[Tensor]] = [[], [], [], []]
    for w, prev, lam, r_prev in zip(params, prevs, lams, r_prevs):
        copies = math.prod(w.shape[:batch_dims])
        contiguous = all(t.is_contiguous() for t in (w, prev, lam, r_prev))
        if not contiguous or w.numel() < 2 * max(copies, 1):  # sizes 0 and 1 would compile once more
            for bucket, t in zip(rest, (w, prev, lam, r_prev)):
                bucket.append(t)
            continue
        views = [t.view(copies, -1) for t in (w, prev, lam, r_prev)]
        for k in range(copies):
            # detach(): an alias without a _base, so Dynamo guards no base shape (no recompiles)
            tensors = (v[k].detach() for v in views)
            _compiled_kernel(*tensors, avg_reg, reg_lr, float(norm == 1), max_exponent(lam.dtype))
    if rest[0]:
        _multi_tensor_rln(*rest, norm=norm, avg_reg=avg_reg, reg_lr=reg_lr, first_step=False, batch_dims=batch_dims)


def rln_update(
    params: list[Tensor],
    prevs: list[Tensor] | None,
    lams: list[Tensor],
    r_prevs: list[Tensor],
    *,
    norm: int,
    avg_reg: float,
    reg_lr: float,
    first_step: bool,
    batch_dims: int = 0,
    foreach: bool = True,
) -> None:
    """Functional RLN update (see the module docstring for the equations).

    ``params`` hold the weights after the inner optimizer's step and are updated in
    place; ``prevs`` hold the weights just before it, in the state dtype (they are
    overwritten); ``lams`` and ``r_prevs`` are the state,
    updated in place. On the first step ``prevs`` is unused and ``lams`` should hold
    ``avg_reg``.
    """
    fn = _multi_tensor_rln if foreach else _single_tensor_rln
    fn(
        params, prevs, lams, r_prevs,
        norm=norm, avg_reg=avg_reg, reg_lr=reg_lr, first_step=first_step, batch_dims=batch_dims,
    )


class RLNOptimizer(RegularizedOptimizer):
    r"""Wrap any ``torch.optim`` optimizer with Regularization Learning.

    After every inner step, each regularized weight is shrunk by
    :math:`r = d\,e^{\lambda}` (``d = sign(w)`` for ``norm=1``, ``2w`` for ``norm=2``)
    with a coefficient :math:`\lambda` of its own, learned from the
    counterfactual-loss gradient and projected so that its mean over the tensor stays
    :math:`\Theta`. See :mod:`torch_rln.rln` for the equations and the numerics.

    Args:
        optimizer: the inner optimizer; it keeps its own parameters, hyperparameters and
            state, and LR schedulers given this wrapper drive it.
        params: the tensors to regularize, or dicts ``{"params": [...], "norm": ...,
            "avg_reg": ..., "reg_lr": ...}`` with per-group settings; each must be a
            parameter of ``optimizer``. ``None`` (default): every parameter of
            ``optimizer`` with ``ndim >= 2``.
        norm: 1 (L1, the paper's choice) or 2.
        avg_reg: :math:`\Theta`, the mean log-coefficient (paper: Theta; Keras callback:
            ``avg_reg``).
        reg_lr: :math:`\nu \ge 0`, the coefficients' learning rate (paper: nu; Keras
            callback: ``learning_rate``).
        batch_dims: the number of leading dimensions that index independent copies of the
            weight, e.g. an ensemble stacked for ``torch.func.vmap`` or a batched matmul:
            the mean projection then runs per copy. 0 (default): one tensor, one mean.
        foreach: use the foreach implementation (default) rather than the per-tensor one.
        compile: run the update as one fused kernel per tensor, compiled with
            ``torch.compile(fullgraph=True, dynamic=True)``: about 2.5x faster than the
            foreach path on CPU. The first step after the first one pays the compile time
            (seconds; torch caches it on disk), once for all tensors and settings.

    Example::

        base = torch.optim.RMSprop(model.parameters(), lr=1e-3, alpha=0.9, eps=1e-7)
        opt = RLNOptimizer(base, params=[model[0].weight], norm=1, avg_reg=-10.0, reg_lr=1e6)
        opt.zero_grad(); loss.backward(); opt.step()
        opt.lambdas(model[0].weight)  # the current log-coefficients

    A parameter whose ``.grad`` is None after the inner step is skipped, as torch
    optimizers skip it: no shrink, no coefficient update. So is a parameter whose inner
    learning rate is 0 (a Python number, or a CPU tensor; one on an accelerator is not
    read, as that would sync): a frozen layer, or the step at lr 0 that
    ``torch.distributed.checkpoint`` runs to build the state. The shrink is a training step
    of the regularizer, as AdamW's decay (``lr * weight_decay``) is.

    Sharded parameters (FSDP2's ``fully_shard``, ``DTensor``) are updated shard by shard,
    with the mean over the whole tensor (an all-reduce of the shards' sums); their state is
    sharded like them.
    """

    group_defaults = {"norm": 1, "avg_reg": -7.5, "reg_lr": 6e5, "batch_dims": 0}
    state_key = "rln"
    state_names = ("lam", "r_prev")

    def __init__(
        self,
        optimizer: Optimizer,
        params=None,
        *,
        norm: int = 1,
        avg_reg: float = -7.5,
        reg_lr: float = 6e5,
        batch_dims: int = 0,
        foreach: bool | None = None,
        compile: bool = False,
    ) -> None:
        if foreach is not None and not isinstance(foreach, bool):
            raise TypeError(f"Invalid foreach: {foreach!r} (expected True, False or None)")
        super().__init__(
            optimizer, params, {"norm": norm, "avg_reg": avg_reg, "reg_lr": reg_lr, "batch_dims": batch_dims}
        )
        self.foreach = True if foreach is None else foreach
        self.compile = bool(compile)

    def validate_group(self, group: dict[str, Any]) -> None:
        norm = group["norm"]
        if isinstance(norm, bool) or norm not in (1, 2):
            raise ValueError(f"Invalid norm: {norm!r} (expected 1 or 2)")
        group["norm"] = check_int("norm", norm, "1 or 2")
        group["avg_reg"] = check_finite("avg_reg", group["avg_reg"])
        reg_lr = check_finite("reg_lr", group["reg_lr"])
        if reg_lr < 0:
            raise ValueError(f"Invalid reg_lr: {group['reg_lr']!r} (expected >= 0)")
        group["reg_lr"] = reg_lr
        batch_dims = group["batch_dims"]
        group["batch_dims"] = batch_dims = check_int("batch_dims", batch_dims, "an int >= 0")
        if batch_dims < 0:
            raise ValueError(f"Invalid batch_dims: {batch_dims!r} (expected an int >= 0)")
        for p in group.get("params", ()):
            if isinstance(p, Tensor) and p.ndim <= batch_dims:
                raise ValueError(
                    f"Invalid batch_dims: {batch_dims} for a tensor of shape {tuple(p.shape)} "
                    "(it needs at least one dimension beyond the batch dimensions)"
                )

    def validate_state(self, index: Any, tensors: dict[str, Tensor]) -> None:
        missing = set(self.state_names) - set(tensors)
        if missing:
            raise ValueError(f"RLNOptimizer: the state of parameter {index} lacks {sorted(missing)}")

    def lambdas(self, param: Tensor) -> Tensor:
        """The current log-coefficients of ``param`` (a copy, shaped like it).

        Before the first step that reaches ``param`` they are all ``avg_reg``.
        """
        group = self._group_of(param)
        self._adopt_state_from_inner()
        state = self.reg_state.get(param)
        if state is None:
            return torch.full_like(param, group["avg_reg"], dtype=state_dtype(param.dtype))
        return state["lam"].clone()

    def before_inner_step(self, has_closure: bool) -> tuple[dict[Tensor, Tensor], set[int]]:
        """Copy the weights that already have RLN state: they are :math:`w_{\\text{prev}}`
        (the local shard of a sharded weight); note the weights whose learning rate is 0.

        Without a closure, a weight with no gradient will be skipped, so it is not copied.
        """
        resting = self._resting_ids()
        prevs = {
            p: local(p).detach().to(local(self.reg_state[p]["lam"]).dtype, copy=True)
            for group in self.reg_groups
            for p in group["params"]
            if p in self.reg_state and id(p) not in resting and (has_closure or p.grad is not None)
        }
        return prevs, resting

    def after_inner_step(self, context: tuple[dict[Tensor, Tensor], set[int]]) -> None:
        prevs, resting = context
        update = self._update()
        for group in self.reg_groups:
            settings = {k: group[k] for k in self.group_defaults}
            stepped = [p for p in group["params"] if p.grad is not None]
            new: set[int] = set()
            for p in stepped:
                if p not in self.reg_state:
                    new.add(id(p))
                    self.reg_state[p] = {
                        "lam": torch.full_like(p, group["avg_reg"], dtype=state_dtype(p.dtype)),
                        "r_prev": torch.zeros_like(p, dtype=state_dtype(p.dtype)),
                    }
            moving = [p for p in stepped if id(p) not in resting]
            for first_step in (False, True):
                params = [p for p in moving if (id(p) in new) == first_step]
                if not params:
                    continue
                shards = [shards_of(p, group["batch_dims"]) for p in params]
                update(
                    [local(p) for p in params],
                    None if first_step else [prevs[p] for p in params],
                    [local(self.reg_state[p]["lam"]) for p in params],
                    [local(self.reg_state[p]["r_prev"]) for p in params],
                    first_step=first_step,
                    shards=None if all(s is None for s in shards) else shards,
                    **settings,
                )

    def _resting_ids(self) -> set[int]:
        """The ids of the parameters in inner param groups whose ``lr`` is 0 (a Python number or
        a CPU tensor; a learning rate on an accelerator is not read, which would sync)."""
        resting: set[int] = set()
        for group in self.param_groups:
            lr = group.get("lr")
            if isinstance(lr, Tensor):
                zero = lr.device.type == "cpu" and lr.numel() == 1 and float(lr) == 0.0
            else:
                zero = isinstance(lr, numbers.Real) and not isinstance(lr, bool) and lr == 0
            if zero:
                resting.update(id(p) for p in group["params"])
        return resting

    def _update(self):
        if self.compile:
            return _compiled_rln
        return _multi_tensor_rln if self.foreach else _single_tensor_rln

