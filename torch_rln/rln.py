r"""Regularization Learning (Shavitt & Segal, NeurIPS 2018) as an optimizer wrapper.

Every regularized weight :math:`w` has its own log-scale coefficient :math:`\lambda`.
After each step of the inner optimizer, for each regularized tensor :math:`W` (each copy
of it, with ``batch_dims``):

.. math::

    w' &= W \text{ after the inner step}, \qquad
        w_{\text{prev}} = W \text{ as the previous RLN pass left it} \\
    \lambda &\leftarrow \lambda - \nu\, (w' - w_{\text{prev}})\, r_{\text{prev}}
        \quad\text{(the counterfactual-loss gradient; from the second step on)} \\
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
device inside ``step()``; like the callback, :math:`w_{\text{prev}}` is the weight the
previous pass wrote.

**The folded coefficient.** The first line needs :math:`w_{\text{prev}}`, which the inner
step overwrites. Instead of a copy of every weight before each step, the state holds

.. math::

    a = \lambda + \nu\, W\, r \qquad (W, r: \text{what this pass wrote})

and the next pass gets :math:`\lambda - \nu (w' - w_{\text{prev}}) r_{\text{prev}} = a - \nu\,
w'\, r_{\text{prev}}` from the weight the inner step wrote. A pass then reads the weight and
the two state tensors once for the mean and once for the rest, and writes each once.
Rounding: :math:`a` holds :math:`\lambda + \nu W r` to the precision of its dtype, so the
gradient term carries an absolute error of about ``eps * |nu W r|`` (float32:
``6e-8 * |nu W r|``) where the reference computes :math:`w' - w_{\text{prev}}` first. It
is small beside the term itself (``|nu (w' - W) r|``) unless a step moves a weight by less
than ~1e-5 of its value; trajectories in float32 drift from a float64 reference about as
much as the unfolded form's do, which is what the tests measure. ``lambdas()`` gives
:math:`\lambda` itself (:math:`a - \nu W r`, computed into a new tensor); ``state_dict()``
holds both :math:`\lambda` (``rln_lam``, for readers) and :math:`a` (``rln_folded``, from
which a resumed run continues bit for bit). Neither changes the state.

Numerics:

* Where :math:`w' = 0` (a weight a dead unit keeps at 0), :math:`d = 0`: the shrink is
  exactly 0 and :math:`\lambda` has no cap, so the projection may push it past 88, where
  ``exp`` overflows float32. The exponent is clamped below the overflow point of the
  state dtype, so ``0 * exp(lambda)`` is 0, never NaN.
* ``d`` is never formed for L2: the shrink is ``(2 e^lambda) w'``, and ``2 e^lambda < 1``
  wherever the cap does not bind, so weights up to the largest float stay finite.
* A weight that the inner step made NaN or +-Inf is left out: it counts as 0 (no gradient
  term, no shrink), its coefficient stays as it is, and the mean is over the other
  elements of the tensor (each copy), so it cannot reach them. The weight itself is left
  as the inner optimizer made it. No host sync.
* The folded coefficient and the gradient term are clamped to
  :math:`\pm \text{max} / (4 n)` (``n`` elements per copy; 1e31 for a float32 tensor of
  ten million elements): nothing a real coefficient reaches, but it keeps the sums and
  the fold finite for weights near the largest float, where the fold's products would
  overflow.
* The coefficients and the previous shrink are kept in float32 for float16/bfloat16
  parameters (in the parameter's dtype otherwise); the update runs in that dtype, and the
  fold uses the weight as rounded to the parameter's dtype.

Per-copy settings: with ``batch_dims``, ``avg_reg`` and ``reg_lr`` may give one value per
copy (a sequence as long as the number of copies), so that one stacked model trains
several settings at once, each copy exactly as a separate optimizer with its own
:math:`\Theta` and :math:`\nu` would.

Three implementations: ``_single_tensor_rln`` (copy by copy, plain tensor ops, the
equations as written), ``_multi_tensor_rln`` (foreach ops on cache-sized waves,
arithmetic masks: where and comparisons cost ten multiplies on a CPU; equal to the first
bit for bit) and ``_compiled_rln`` (one fused kernel per tensor, all its copies at once,
through ``torch.compile``; equal up to rounding). Each pass reads the state first and
writes it only in its last sweep.
"""

from __future__ import annotations

import itertools
import math
import numbers
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.optim import Optimizer

from ._checkpoint import placed_like
from ._dtypes import state_dtype
from ._implementations import CompiledKernel, Implementations
from ._rln_stats import NamedParams, TensorStats, rln_stats
from ._rows import CPU_WAVE, Chunk, Rows, Scratch, dense_in_memory_order, rows_of, waves
from ._sharding import Shards, complete_sums_, is_sharded, local, shards_of
from ._wrapper import RegularizedOptimizer
from .checks import check_finite, check_flag, check_int, check_magnitude, shown

__all__ = ["RLNOptimizer", "rln_coefficients", "rln_update"]

_LOG_HALF = math.log(0.5)

Setting = float | tuple[float, ...]  # one value, or one per copy


# ---------------------------------------------------------------------- constants
def max_exponent(dtype: torch.dtype) -> float:
    """The largest whole exponent whose ``exp`` is finite in ``dtype`` (88 for float32)."""
    return float(math.floor(math.log(torch.finfo(dtype).max)))


def fold_bound(dtype: torch.dtype, n: int) -> float:
    """The clamp of the coefficient before the projection, for ``n`` elements per copy:
    ``max / (4 n)``, so that a sum over a copy stays finite."""
    return torch.finfo(dtype).max / (4 * max(n, 1))


def fold_limit(dtype: torch.dtype) -> float:
    """The largest fold ``|nu W r|`` kept: ``1000 / eps`` (8.4e9 in float32), where the fold's
    rounding alone would move the coefficient by 1000."""
    return 1000.0 / torch.finfo(dtype).eps


def _wave_limit(device: torch.device) -> int | None:
    return CPU_WAVE if device.type == "cpu" else None


def per_copy(value: float | Sequence[float], copies: int) -> list[float]:
    """A setting as one float per copy (a single value is every copy's)."""
    if isinstance(value, numbers.Real):
        return [float(value)] * copies
    return [float(v) for v in value]  # type: ignore[union-attr]


# ---------------------------------------------------------------------- what both eager paths share
@dataclass
class _Plan:
    """What an eager pass derives from its tensors and settings, kept between steps: the
    rows, the settings of each row, and the chunks of the rows in waves."""

    rows: Rows
    avg_regs: list[float]  # per row
    theta: float | Tensor  # the same, as one float or a float64 tensor on the device (made once)
    reg_lrs: list[float]  # per row
    bounds: list[float]  # per row: the clamp of the coefficient (fold_bound)
    waves: list[list[Chunk]]
    limit: int | None


def _plan(
    params: list[Tensor],
    folded: list[Tensor],
    r_prevs: list[Tensor],
    batch_dims: int,
    avg_reg: float | Sequence[float],
    reg_lr: float | Sequence[float],
    cache: dict[str, Any] | None,
) -> _Plan:
    """The :class:`_Plan` of these tensors, from ``cache`` when nothing it was made from changed."""
    storage = [(p.data_ptr(), f.data_ptr(), r.data_ptr()) for p, f, r in zip(params, folded, r_prevs, strict=True)]
    key = (batch_dims, avg_reg, reg_lr, storage)
    if cache is not None:
        hit = cache.get("plan")
        if hit is not None and _same_key(hit[0], key):
            plan: _Plan = hit[1]
            plan.rows.refresh()
            return plan
    # detach(): views of a detached alias hold no reference to the parameter itself, which
    # would stop torch.utils.swap_tensors (module.to() in swap mode) from swapping it
    rows = rows_of([[p.detach() for p in params], folded, r_prevs], batch_dims)
    sdt = folded[0].dtype
    avg_regs, reg_lrs, bounds = [], [], []
    for p, copies in zip(params, rows.copies, strict=True):
        avg_regs += per_copy(avg_reg, copies)
        reg_lrs += per_copy(reg_lr, copies)
        bounds += [fold_bound(sdt, p.numel() // max(copies, 1))] * copies
    limit = _wave_limit(params[0].device)
    plan = _Plan(rows, avg_regs, _theta(avg_regs, folded[0].device), reg_lrs, bounds, list(waves(rows, limit)), limit)
    if cache is not None:
        cache["plan"] = (key, plan)
    return plan


def _theta(avg_regs: list[float], device: torch.device) -> float | Tensor:
    """Theta per row: one float if every row shares it (no copy to the device), else a tensor."""
    if len(set(avg_regs)) <= 1:
        return avg_regs[0] if avg_regs else 0.0
    return torch.tensor(avg_regs, dtype=torch.float64, device=device)


def _same_key(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    """Keys of plans: settings compared by identity first (a group's settings are replaced,
    never edited in place), the rest by value."""
    return all(x is y or x == y for x, y in zip(a, b, strict=True))


def _copy_finite_(out: list[Tensor], weights: list[Tensor]) -> None:
    """``out = w`` in the state dtype, with NaN and +-Inf replaced by 0."""
    for o, w in zip(out, weights, strict=True):
        if o.dtype == w.dtype:
            torch.nan_to_num(w, 0.0, 0.0, 0.0, out=o)
        else:
            o.copy_(w).nan_to_num_(0.0, 0.0, 0.0)


def _finite_indicator_(out: list[Tensor], weights: list[Tensor]) -> None:
    """``out = 1.0`` where the weight is finite and ``0.0`` where it is NaN or +-Inf."""
    for o, w in zip(out, weights, strict=True):
        if o.dtype == w.dtype:
            torch.abs(w, out=o)
        else:
            o.copy_(w).abs_()
        torch.lt(o, math.inf, out=o)  # a comparison into a float tensor: 1.0 / 0.0 (bool tensors are slow on CPU)


def _chunk_lists(wave: list[Chunk]) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    return [c.views[0] for c in wave], [c.views[1] for c in wave], [c.views[2] for c in wave]


def _coefficients_before_projection_(
    out: list[Tensor], folded: list[Tensor], clean: list[Tensor], r_prevs: list[Tensor], wave: list[Chunk], plan: _Plan
) -> None:
    """``out = clamp(a - (w' r_prev) nu)``: :math:`\\lambda - \nu (w' - w_{\text{prev}}) r_{\text{prev}}`,
    clamped to the row's bound. ``out`` may be ``clean`` (its values are then spent) but not
    ``folded``. As in :func:`_gradient_step`: the product ``w' r_prev`` comes first, and a row
    with ``nu = 0`` has no term."""
    if out is not clean:
        torch._foreach_copy_(out, clean)
    torch._foreach_mul_(out, r_prevs)
    torch._foreach_mul_(out, [-plan.reg_lrs[c.row] for c in wave])
    if 0.0 in plan.reg_lrs:  # nu = 0: no term (w' r_prev may be inf, and inf * 0 is NaN)
        for chunk, o in zip(wave, out, strict=True):
            if not plan.reg_lrs[chunk.row]:
                o.zero_()
    torch._foreach_add_(out, folded)
    for chunk, o in zip(wave, out, strict=True):
        bound = plan.bounds[chunk.row]
        o.clamp_(-bound, bound)


def _sums(plan: _Plan, sdt: torch.dtype, scratch: Scratch) -> tuple[Tensor, Tensor]:
    """Sweep 1 (reads only): per row, the sum of the coefficients before the projection over
    the finite weights, and their count (float64, summed chunk by chunk)."""
    totals: list[list[Tensor]] = [[] for _ in plan.avg_regs]
    counts: list[list[Tensor]] = [[] for _ in plan.avg_regs]
    for wave in plan.waves:
        weights, folded, r_prevs = _chunk_lists(wave)
        clean, finite = scratch.views(wave, sdt)[:2]
        _copy_finite_(clean, weights)
        _finite_indicator_(finite, weights)
        _coefficients_before_projection_(clean, folded, clean, r_prevs, wave, plan)  # clean now holds them
        for chunk, values, ok in zip(wave, clean, finite, strict=True):
            totals[chunk.row].append(torch.dot(values, ok))
            counts[chunk.row].append(ok.sum())
    device = plan.rows.tensors[1][0].device
    return _per_row(totals, device), _per_row(counts, device)


def _per_row(parts: list[list[Tensor]], device: torch.device) -> Tensor:
    """The float64 sum of each row's chunk partials (in order)."""
    if not parts:
        return torch.zeros(0, dtype=torch.float64, device=device)
    zero = torch.zeros((), dtype=torch.float64, device=device)
    return torch.stack([torch.stack(p).sum(dtype=torch.float64) if p else zero for p in parts])


def _shifts(
    copies: list[int],
    total: Tensor,
    count: Tensor,
    theta: float | Tensor,
    project: bool,
    shards: Sequence[Shards | None] | None,
    sdt: torch.dtype,
) -> Tensor:
    """Per row, ``mean(lam) - Theta`` over the finite weights (0 without projection), in the
    state dtype; the sums of sharded tensors are all-reduced first, so the mean is over the
    whole copy."""
    if not project:
        return torch.zeros_like(total).to(sdt)
    if shards is not None and any(s is not None for s in shards):
        offsets = [0, *itertools.accumulate(copies)]
        parts = [torch.stack([total[a:b], count[a:b]]) for a, b in itertools.pairwise(offsets)]
        complete_sums_(
            [p for p, s in zip(parts, shards, strict=True) if s is not None], [s for s in shards if s is not None]
        )
        total = torch.cat([p[0] for p in parts])
        count = torch.cat([p[1] for p in parts])
    return (total / count.clamp(min=1.0) - theta).to(sdt)


# ---------------------------------------------------------------------- the reference
def _gradient_step(ws: Tensor, a: Tensor, r_prev: Tensor, nu: float) -> Tensor:
    """``a - nu w' r_prev``, with the product ``w' r_prev`` first (0 where the shrink was 0,
    however large ``nu w'`` would be), and no term at all where ``nu = 0`` (``w' r_prev`` may
    overflow to inf, and ``inf * 0`` is NaN)."""
    return (ws * r_prev) * -nu + a if nu else a.clone()


def _single_tensor_rln(
    params: list[Tensor],
    folded: list[Tensor],
    r_prevs: list[Tensor],
    *,
    norm: int,
    avg_reg: float | Sequence[float],
    reg_lr: float | Sequence[float],
    project: bool,
    batch_dims: int = 0,
    shards: Sequence[Shards | None] | None = None,
    scratch: Scratch | None = None,
    cache: dict[str, Any] | None = None,
) -> None:
    r"""One RLN update, copy by copy, in the plain form of the equations.

    ``params`` hold :math:`w'` (after the inner step) and receive :math:`W`; ``folded`` hold
    the folded coefficients :math:`a` and ``r_prevs`` the previous shrinks, both updated in
    place (see the module docstring). ``avg_reg`` and ``reg_lr``: one value, or one per copy.
    ``project`` is False on a tensor's first step (no gradient term, no projection).
    ``shards[i]``, when given and not None, says that the tensors of index ``i`` are local
    shards of a sharded tensor, whose mean is over the whole tensor. The sums are taken in
    cache-sized chunks, in the order the foreach path takes them, so the two agree bit for
    bit. ``scratch`` and ``cache`` are not used (the faster paths take the same arguments).
    """
    if not params:
        return
    rows = rows_of([params, folded, r_prevs], batch_dims)
    sdt = folded[0].dtype
    limit = _wave_limit(params[0].device)
    top, fold_max = max_exponent(sdt), fold_limit(sdt)
    thetas: list[float] = []
    nus: list[float] = []
    bounds: list[float] = []
    totals: list[list[Tensor]] = []
    counts: list[list[Tensor]] = []
    for i, copies in enumerate(rows.copies):  # sweep 1: the sums (reads only)
        thetas += per_copy(avg_reg, copies)
        nus += per_copy(reg_lr, copies)
        bounds += [fold_bound(sdt, params[i].numel() // max(copies, 1))] * copies
        for c in range(copies):
            k = len(totals)  # the row
            w, a, r_prev = (role[i][c] for role in rows.rows)
            wf = w.to(sdt)
            finite = torch.isfinite(wf)
            ws = torch.where(finite, wf, 0.0)
            pre = _gradient_step(ws, a, r_prev, nus[k]).clamp(-bounds[k], bounds[k])
            ok = finite.to(sdt)
            step = max(pre.numel() if limit is None else limit, 1)
            starts = range(0, pre.numel(), step)
            totals.append([torch.dot(pre[s : s + step], ok[s : s + step]) for s in starts])
            counts.append([ok[s : s + step].sum() for s in starts])
    device = folded[0].device
    shifts = _shifts(
        rows.copies, _per_row(totals, device), _per_row(counts, device), _theta(thetas, device), project, shards, sdt
    )
    k = 0
    for i, copies in enumerate(rows.copies):  # sweep 2: the update (writes)
        for c in range(copies):
            w, a, r_prev = (role[i][c] for role in rows.rows)
            wf = w.to(sdt)
            finite = torch.isfinite(wf)
            ws = torch.where(finite, wf, 0.0)
            pre = _gradient_step(ws, a, r_prev, nus[k]).clamp(-bounds[k], bounds[k])  # as in sweep 1
            lam = torch.where(finite, pre - shifts[k], pre)  # lam += Theta - mean(lam), over the finite weights
            size = ws.abs()
            cap = torch.log(size) if norm == 1 else torch.full_like(size, _LOG_HALF)  # log|w / d|
            bind = (lam >= cap) & (size > 0)  # no cap where w / d = 0 / 0
            lam = torch.where(bind, cap, lam)
            e = torch.exp(lam.clamp(max=top))
            shrink = torch.sign(ws) * e if norm == 1 else (2.0 * e).clamp(max=1.0) * ws  # 2 e^lam < 1 if free
            r = torch.where(bind, ws, shrink)  # r = w' exactly where the cap binds
            w.copy_((wf - r).to(w.dtype))
            fold = nus[k] * (ws - r).to(w.dtype).to(sdt) * r  # nu W r, W as the parameter holds it
            keep = fold.abs() < fold_max
            a.copy_(lam + torch.where(keep, fold, 0.0))
            r_prev.copy_(torch.where(keep, r, 0.0))
            k += 1
    rows.write_back()


# ---------------------------------------------------------------------- the foreach path
def _multi_tensor_rln(
    params: list[Tensor],
    folded: list[Tensor],
    r_prevs: list[Tensor],
    *,
    norm: int,
    avg_reg: float | Sequence[float],
    reg_lr: float | Sequence[float],
    project: bool,
    batch_dims: int = 0,
    shards: Sequence[Shards | None] | None = None,
    scratch: Scratch | None = None,
    cache: dict[str, Any] | None = None,
) -> None:
    """The same update as :func:`_single_tensor_rln`, with foreach ops on waves of chunks.

    There is no foreach ``where``, and ``where`` and bool tensors are slow on a CPU, so the
    masks are 0/1 float tensors (a comparison written into a float tensor) and the
    selections are exact arithmetic: ``min(lam, cap)``, and ``r = r (1 - b) + s b`` for the
    binding mask ``b``. Each wave works in four scratch buffers that stay in cache. Sweep 1
    computes the sums and writes nothing; sweep 2 computes everything again and writes the
    weights and the state, wave by wave. The results equal the per-tensor path's.
    ``cache``: a dict the caller keeps between calls, for the rows and waves (rebuilt when
    a tensor's storage or a setting changes).
    """
    if not params:
        return
    scratch = scratch or Scratch(4)
    plan = _plan(params, folded, r_prevs, batch_dims, avg_reg, reg_lr, cache)
    sdt = folded[0].dtype
    total, count = _sums(plan, sdt, scratch)
    shifts = _shifts(plan.rows.copies, total, count, plan.theta, project, shards, sdt)
    for wave in plan.waves:
        weights, lams, shrinks = _chunk_lists(wave)  # lams: the folded coefficients, becoming lam then a
        clean, finite, cap, mask = scratch.views(wave, sdt)
        _copy_finite_(clean, weights)
        _finite_indicator_(finite, weights)
        _coefficients_before_projection_(cap, lams, clean, shrinks, wave, plan)
        torch._foreach_copy_(lams, cap)
        torch._foreach_addcmul_(lams, finite, [shifts[c.row] for c in wave], value=-1.0)  # the projection
        _cap_(cap, clean, norm, sdt)
        for lam, c, b in zip(lams, cap, mask, strict=True):
            torch.ge(lam, c, out=b)  # 1 where the cap binds
        torch._foreach_minimum_(lams, cap)
        _shrink_(shrinks, lams, clean, cap, mask, norm, sdt)  # shrinks: r_prev becomes r
        torch._foreach_sub_(weights, shrinks)  # W = w' - r (non-finite weights: r = 0)
        if weights[0].dtype == sdt:
            torch._foreach_sub_(clean, shrinks)
        else:
            _copy_finite_(clean, weights)  # W as rounded to the parameter's dtype
        _fold_(lams, shrinks, clean, cap, [plan.reg_lrs[c.row] for c in wave], fold_limit(sdt))
    plan.rows.write_back()


def _cap_(cap: list[Tensor], clean: list[Tensor], norm: int, sdt: torch.dtype) -> None:
    """``cap = log|w / d|``, and the largest float (no cap) where the weight is 0."""
    for c, s in zip(cap, clean, strict=True):
        if norm == 2:
            torch.sign(s, out=c).abs_().mul_(0.5)  # log(1/2), or log 0 where w = 0
        else:
            torch.abs(s, out=c)
    torch._foreach_log_(cap)
    largest = torch.finfo(sdt).max
    for c in cap:
        c.nan_to_num_(0.0, largest, largest)  # log 0 = -inf: no cap there


def _shrink_(
    shrinks: list[Tensor],
    lams: list[Tensor],
    clean: list[Tensor],
    spare: list[Tensor],
    binds: list[Tensor],
    norm: int,
    sdt: torch.dtype,
) -> None:
    """``shrinks = d e^lam`` where the cap does not bind and the weight where it does
    (``binds`` = 1); ``spare`` is overwritten."""
    top = max_exponent(sdt)
    for r, lam in zip(shrinks, lams, strict=True):
        torch.clamp(lam, max=top, out=r)
    torch._foreach_exp_(shrinks)
    if norm == 1:
        for sp, s in zip(spare, clean, strict=True):
            torch.sign(s, out=sp)
        torch._foreach_mul_(shrinks, spare)
    else:
        torch._foreach_mul_(shrinks, 2.0)
        torch._foreach_clamp_max_(shrinks, 1.0)  # 2 e^lam < 1 where the cap does not bind; no overflow where it does
        torch._foreach_mul_(shrinks, clean)
    for sp, b in zip(spare, binds, strict=True):
        torch.mul(b, -1.0, out=sp).add_(1.0)  # 1 where the cap does not bind
    torch._foreach_mul_(shrinks, spare)
    torch._foreach_addcmul_(shrinks, clean, binds)


def _fold_(
    lams: list[Tensor],
    shrinks: list[Tensor],
    weights: list[Tensor],
    spare: list[Tensor],
    reg_lrs: list[float],
    limit: float,
) -> None:
    """``a = lam + nu W r`` where ``|nu W r| < limit``; elsewhere ``a = lam`` and ``r_prev = 0``.
    ``weights`` (W) and ``spare`` are overwritten."""
    torch._foreach_mul_(weights, reg_lrs)
    torch._foreach_mul_(weights, shrinks)  # nu W r
    for t, sp in zip(weights, spare, strict=True):
        t.nan_to_num_(limit, limit, -limit)  # inf * 0 and overflows: dropped below
        torch.lt(torch.abs(t, out=sp), limit, out=sp)
    torch._foreach_mul_(weights, spare)
    torch._foreach_mul_(shrinks, spare)
    torch._foreach_add_(lams, weights)


# ---------------------------------------------------------------------- the compiled path
_COLUMNS = ("avg_reg", "reg_lr", "bound", "count", "l1", "project")  # the kernel's settings, one row per copy


def _coefficients_before_projection(
    w: Tensor, folded: Tensor, r_prev: Tensor, reg_lr: Tensor, bound: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(w', finite, w' with 0 for NaN/Inf, clamp(a - nu w' r_prev))``, for both kernels."""
    wf = w.to(folded.dtype)
    finite = (wf - wf) == 0  # an isfinite that vectorizes
    ws = torch.where(finite, wf, 0.0)
    term = torch.where(reg_lr == 0.0, 0.0, (ws * r_prev) * reg_lr)  # w' r_prev first; nu = 0: no inf * 0
    pre = folded - term
    return wf, finite, ws, torch.minimum(torch.maximum(pre, -bound), bound)


def _rln_sums_kernel(w: Tensor, folded: Tensor, r_prev: Tensor, settings: Tensor) -> Tensor:
    """Per copy of ``(copies, n)`` tensors: the sum of the coefficients before the projection
    over the finite weights, and the number of the others (``(copies, 2)``). The first of the
    two compiled kernels (a reduction and an elementwise update compiled apart fuse into
    one loop each)."""
    _, finite, _, pre = _coefficients_before_projection(w, folded, r_prev, settings[:, 1:2], settings[:, 2:3])
    total = torch.where(finite, pre, 0.0).sum(dim=-1, keepdim=True)
    return torch.cat([total, (~finite).to(pre.dtype).sum(dim=-1, keepdim=True)], dim=1)


def _rln_update_kernel(w: Tensor, folded: Tensor, r_prev: Tensor, settings: Tensor, sums: Tensor) -> None:
    """The update of every copy of ``(copies, n)`` tensors (``n >= 2``) given their sums
    (:func:`_rln_sums_kernel`); the same results as :func:`_single_tensor_rln` up to rounding.

    ``settings`` holds, per copy, the columns of ``_COLUMNS``: Theta, nu, the clamp of the
    coefficient, the number of elements, ``l1`` (1.0 for L1, 0.0 for L2) and ``project``
    (0.0 on the first step). Being tensors, they never make the kernel compile again.
    """
    sdt = folded.dtype
    avg_reg, reg_lr, bound, n, l1, project = (settings[:, k : k + 1] for k in range(len(_COLUMNS)))
    wf, finite, ws, pre = _coefficients_before_projection(w, folded, r_prev, reg_lr, bound)
    shift = project * (sums[:, 0:1] / torch.clamp(n - sums[:, 1:2], min=1.0) - avg_reg)
    lam = torch.where(finite, pre - shift, pre)
    size = torch.abs(ws)
    cap = torch.log(size * l1 + 0.5 * (1.0 - l1))  # log|w| (L1) or log(1/2) (L2)
    bind = (lam >= cap) & (size > 0)
    lam = torch.where(bind, cap, lam)
    e = torch.exp(torch.clamp(lam, max=max_exponent(sdt)))
    shrink = torch.sign(ws) * e * (2.0 - l1) * (size * (1.0 - l1) + l1)  # sign(w) e^lam, or (2 e^lam) w
    r = torch.where(bind, ws, shrink)
    new_w = (wf - r).to(w.dtype)
    fold = reg_lr * new_w.to(sdt) * r  # nu W r, W as the parameter holds it (dropped below where w' was not finite)
    keep = torch.abs(fold) < fold_limit(sdt)
    # Written last: a write before a read of the same tensor keeps Inductor from fusing the loop
    w.copy_(new_w)
    folded.copy_(lam + torch.where(keep, fold, 0.0))
    r_prev.copy_(torch.where(keep, r, 0.0))


def _fused_rln_kernel(w: Tensor, folded: Tensor, r_prev: Tensor, settings: Tensor) -> None:
    """The whole update of ``(copies, n)`` tensors: the two kernels in turn (what an outer
    ``torch.compile`` traces)."""
    _rln_update_kernel(w, folded, r_prev, settings, _rln_sums_kernel(w, folded, r_prev, settings))


_SUMS = CompiledKernel(_rln_sums_kernel, "RLN")
_UPDATE = CompiledKernel(_rln_update_kernel, "RLN")


def _settings_rows(
    copies: int, n: int, norm: int, avg_reg: Any, reg_lr: Any, project: bool, sdt: torch.dtype, device: torch.device
) -> Tensor:
    rows = [
        [theta, nu, fold_bound(sdt, n), float(n), 1.0 if norm == 1 else 0.0, 1.0 if project else 0.0]
        for theta, nu in zip(per_copy(avg_reg, copies), per_copy(reg_lr, copies), strict=True)
    ]
    return torch.tensor(rows, dtype=torch.float64).to(device=device, dtype=sdt)


def _kernel_works(device: torch.device, dtype: torch.dtype, insist: bool) -> bool:
    return compiled_kernel_works(device, dtype, insist)  # looked up when called (tests replace it)


def compiled_kernel_works(device: torch.device, dtype: torch.dtype, insist: bool = False) -> bool:
    """Whether the compiled RLN kernels run for parameters of ``dtype`` on ``device`` (probed
    once): compiled on 3 copies of 5 elements (sizes no argument shares with another, so the
    kernels stay generic in both), and checked against the plain function on one copy."""
    sdt = state_dtype(dtype)
    key = _kernel_key(device, dtype)

    def state(rows: int, n: int) -> tuple[Tensor, ...]:
        w = torch.linspace(-1.0, 1.0, rows * n, device=device).view(rows, n).to(dtype)
        folded = torch.full((rows, n), -1.0, device=device, dtype=sdt)
        return w, folded, torch.full_like(folded, 0.25), _settings_rows(rows, n, 1, -1.0, 1.0, True, sdt, device)

    def probe_sums() -> tuple[Tensor, ...]:
        return state(3, 5)

    def probe_update() -> tuple[Tensor, ...]:
        args = state(3, 5)
        return (*args, _rln_sums_kernel(*args))

    works = _SUMS.works(key, probe_sums, insist) and _UPDATE.works(key, probe_update, insist)
    if works and key not in _CHECKED:
        _CHECKED[key] = _agrees_on_one_copy(key, state(1, 7), insist)
    return works and _CHECKED[key]


_CHECKED: dict[tuple[Any, ...], bool] = {}


def _agrees_on_one_copy(key: tuple[Any, ...], args: tuple[Tensor, ...], insist: bool) -> bool:
    """Whether the compiled kernels, called directly on one copy, give the plain function's
    results (they were compiled for several copies)."""
    expected = [t.clone() for t in args]
    _fused_rln_kernel(*expected)
    _UPDATE(key, *args, _SUMS(key, *args))
    if all(torch.allclose(a.float(), b.float(), rtol=1e-3, atol=1e-5) for a, b in zip(args, expected, strict=True)):
        return True
    message = f"torch-rln: the compiled RLN kernels disagree with the plain function for {key}"
    if insist:
        raise RuntimeError(message)
    warnings.warn(message + "; the RLN update runs eagerly", RuntimeWarning, stacklevel=4)
    return False


def _kernel_key(device: torch.device, dtype: torch.dtype) -> tuple[str, torch.dtype, torch.dtype]:
    return (device.type, dtype, state_dtype(dtype))


def _matrix(t: Tensor, copies: int, batch_dims: int) -> Tensor | None:
    """``t`` as a ``(copies, n)`` view in memory order (detached), or None if its layout has gaps."""
    if t.is_contiguous():
        return t.detach().view(copies, -1)
    if not dense_in_memory_order(t, batch_dims):
        return None
    n = t.numel() // max(copies, 1)
    return t.detach().as_strided((copies, n), (n, 1), t.storage_offset())


def _compiled_rln(
    params: list[Tensor],
    folded: list[Tensor],
    r_prevs: list[Tensor],
    *,
    norm: int,
    avg_reg: float | Sequence[float],
    reg_lr: float | Sequence[float],
    project: bool,
    batch_dims: int = 0,
    shards: Sequence[Shards | None] | None = None,
    scratch: Scratch | None = None,
    cache: dict[str, Any] | None = None,
) -> None:
    """The update through two compiled kernels per tensor (all its copies in one call each):
    the sums of the mean projection, then the elementwise update.

    Each kernel is compiled once per (device type, parameter dtype, state dtype), with
    dynamic shapes and settings as tensors, so tensors of any size, any number of copies
    and any settings reuse it, and it is then called without Dynamo (see
    :mod:`torch_rln._implementations`). ``cache``: a dict the caller keeps between calls,
    for the views and the settings as tensors (rebuilt when a tensor's storage or a
    setting changes). Copies of fewer than 2 elements, sharded tensors (whose mean needs
    an all-reduce) and layouts with gaps take the foreach path.
    """
    rest: list[int] = []
    for i, p in enumerate(params):
        call = _kernel_call(i, p, folded[i], r_prevs[i], norm, avg_reg, reg_lr, project, batch_dims, shards, cache)
        if call is None:
            rest.append(i)
        else:
            _UPDATE(*call, _SUMS(*call))
    if rest:
        _multi_tensor_rln(
            [params[i] for i in rest],
            [folded[i] for i in rest],
            [r_prevs[i] for i in rest],
            norm=norm,
            avg_reg=avg_reg,
            reg_lr=reg_lr,
            project=project,
            batch_dims=batch_dims,
            shards=None if shards is None else [shards[i] for i in rest],
            scratch=scratch,
            cache=None if cache is None else cache.setdefault("rest", {}),
        )


def _kernel_call(
    i: int,
    p: Tensor,
    folded: Tensor,
    r_prev: Tensor,
    norm: int,
    avg_reg: Any,
    reg_lr: Any,
    project: bool,
    batch_dims: int,
    shards: Sequence[Shards | None] | None,
    cache: dict[Any, Any] | None,
) -> tuple[Any, ...] | None:
    """The kernel's key and arguments for tensor ``i``, from ``cache`` when nothing they were
    made from changed; None where the kernel does not apply."""
    key = (norm, avg_reg, reg_lr, project, batch_dims, p.data_ptr(), folded.data_ptr(), r_prev.data_ptr())
    entry = None if cache is None else cache.get(i)
    if entry is not None and _same_key(entry[0], key):
        return entry[1]  # type: ignore[no-any-return]
    args = None
    copies = math.prod(p.shape[:batch_dims])
    n = p.numel() // copies if copies else 0
    sharded = shards is not None and shards[i] is not None
    if not sharded and n >= 2 and p.stride() == folded.stride() == r_prev.stride():
        views = [_matrix(t, copies, batch_dims) for t in (p, folded, r_prev)]
        if all(v is not None for v in views):
            settings = _settings_rows(copies, n, norm, avg_reg, reg_lr, project, folded.dtype, folded.device)
            args = (_kernel_key(p.device, p.dtype), *views, settings)
    if cache is not None:
        cache[i] = (key, args)
    return args


# ---------------------------------------------------------------------- functional API
def rln_update(
    params: list[Tensor],
    accs: list[Tensor],
    r_prevs: list[Tensor],
    *,
    norm: int,
    avg_reg: float | Sequence[float],
    reg_lr: float | Sequence[float],
    first_step: bool = False,
    batch_dims: int = 0,
    foreach: bool | None = None,
    compile: bool = False,
) -> None:
    r"""Functional RLN update (see the module docstring for the equations).

    ``params`` hold the weights after the inner optimizer's step and are updated in place;
    ``accs`` hold the folded coefficients :math:`a = \lambda + \nu W r_{\text{prev}}`
    (:math:`\Theta` before the first step) and ``r_prevs`` the previous shrinks (zeros
    before the first step), both in the state dtype and updated in place.
    ``avg_reg`` and ``reg_lr``: one value, or with ``batch_dims`` one per copy.
    :func:`rln_coefficients` unfolds them. Run under ``torch.no_grad()``.
    """
    if compile:
        fn = _compiled_rln
    else:
        fn = _single_tensor_rln if check_flag("foreach", foreach) is False else _multi_tensor_rln
    fn(params, accs, r_prevs, norm=norm, avg_reg=avg_reg, reg_lr=reg_lr, project=not first_step, batch_dims=batch_dims)


def rln_coefficients(
    params: Sequence[Tensor],
    accs: Sequence[Tensor],
    r_prevs: Sequence[Tensor],
    reg_lr: float | Sequence[float],
    batch_dims: int = 0,
) -> list[Tensor]:
    r"""The coefficients :math:`\lambda = a - \nu W r_{\text{prev}}` (new tensors), from the
    current weights and the state :func:`rln_update` keeps."""
    return [_refolded(p, a, r, reg_lr, 0.0, batch_dims) for p, a, r in zip(params, accs, r_prevs, strict=True)]


def _refolded(
    param: Tensor, folded: Tensor, r_prev: Tensor, old: Any, new: Any, batch_dims: int, out: bool = True
) -> Tensor:
    """``folded + (new - old) W r_prev``: the fold moved from ``reg_lr = old`` to ``new`` (0:
    unfolded), copy by copy; into a new tensor (``out``) or in place."""
    copies = math.prod(param.shape[:batch_dims])
    deltas = [b - a for a, b in zip(per_copy(old, copies), per_copy(new, copies), strict=True)]
    target = folded.clone() if out else folded
    if not any(deltas):
        return target
    product = torch.nan_to_num(param.detach().to(folded.dtype), 0.0, 0.0, 0.0).mul_(r_prev)  # W r_prev: no inf * 0
    if len(set(deltas)) == 1:
        return target.add_(product, alpha=deltas[0])
    rows = rows_of([[target], [product]], batch_dims)
    for c, delta in enumerate(deltas):
        if delta:
            rows.rows[0][0][c].add_(rows.rows[1][0][c], alpha=delta)
    rows.write_back()
    return target


def _warn_small_reg_lr(reg_lr: float) -> None:
    warnings.warn(
        f"RLNOptimizer: reg_lr={reg_lr!r} is below 1. reg_lr is nu, the learning rate of the "
        "log-coefficients, not the optimizer's learning rate; useful values are far larger (the "
        "paper's grid: 1e5 to 1e7 for standardized data). If you mean it, silence this with "
        "warnings.filterwarnings('ignore', message='RLNOptimizer: reg_lr'); otherwise pass reg_lr >= 1",
        UserWarning,
        stacklevel=6,  # the caller of RLNOptimizer(...)
    )


# ---------------------------------------------------------------------- the optimizer
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
            ``optimizer`` with ``ndim >= 2`` and at least two elements per copy.
        norm: 1 (L1, the paper's choice) or 2.
        avg_reg: :math:`\Theta`, the mean log-coefficient (paper: Theta; Keras callback:
            ``avg_reg``). With ``batch_dims``, a sequence gives one value per copy.
        reg_lr: :math:`\nu \ge 0`, the coefficients' learning rate (paper: nu; Keras
            callback: ``learning_rate``). With ``batch_dims``, a sequence gives one value
            per copy.
        batch_dims: the number of leading dimensions that index independent copies of the
            weight, e.g. an ensemble stacked for ``torch.func.vmap`` or a batched matmul:
            the mean projection then runs per copy, and each copy trains exactly as a
            separate optimizer would. 0 (default): one tensor, one mean.
        foreach: the eager path with foreach ops (``None``, ``True``; the default) or the
            per-tensor one (``False``); both give the same results.
        compile: ``None`` (default): the fused kernel compiled with
            ``torch.compile(fullgraph=True, dynamic=True)`` wherever that works (probed
            once per process, device and dtype; elsewhere one warning, then the eager
            path); ``True``: insist (an error where it cannot compile); ``False``: eager.
            The first compile takes seconds, once per process for every model, shape and
            setting; torch caches it on disk for later processes.

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

    The settings of a group can be changed between steps, in ``reg_groups[i]`` (checked
    when set: a bad value raises before anything changes) or by writing the wrapper's keys
    (``avg_reg``, ...) into the inner ``param_groups[i]``, as schedulers and skorch do: they
    then apply, from the next step, to the regularized tensors of that param group.

    Sharded parameters (FSDP2's ``fully_shard``, ``DTensor``) are updated shard by shard,
    with the mean over the whole tensor (an all-reduce of the shards' sums); their state is
    sharded like them.
    """

    group_defaults: ClassVar[dict[str, Any]] = {"norm": 1, "avg_reg": -7.5, "reg_lr": 6e5, "batch_dims": 0}
    implementations = Implementations(
        _single_tensor_rln, _multi_tensor_rln, _compiled_rln, _kernel_works, compile_by_default=True
    )
    state_key = "rln"
    state_names = ("lam", "r_prev", "folded")

    def __init__(
        self,
        optimizer: Optimizer,
        params: Any = None,
        *,
        norm: int = group_defaults["norm"],
        avg_reg: float | Sequence[float] = group_defaults["avg_reg"],
        reg_lr: float | Sequence[float] = group_defaults["reg_lr"],
        batch_dims: int = group_defaults["batch_dims"],
        foreach: bool | None = None,
        compile: bool | None = None,
    ) -> None:
        settings = {"norm": norm, "avg_reg": avg_reg, "reg_lr": reg_lr, "batch_dims": batch_dims}
        self._fold_nu: dict[Tensor, Setting] = {}  # per weight: the reg_lr folded into its coefficients
        self._scratch = Scratch(4)
        self._caches: dict[Any, dict[str, Any]] = {}  # what each pass keeps between steps
        super().__init__(optimizer, params, settings, foreach=foreach, compile=compile)

    # ------------------------------------------------------------------ settings
    def validate_group(self, group: dict[str, Any]) -> None:
        norm = group["norm"]
        if isinstance(norm, bool) or norm not in (1, 2):
            raise ValueError(f"Invalid norm: {shown(norm)} (expected 1 or 2)")
        group["norm"] = check_int("norm", norm, "1 or 2")
        group["batch_dims"] = batch_dims = check_int("batch_dims", group["batch_dims"], "an int >= 0")
        if batch_dims < 0:
            raise ValueError(f"Invalid batch_dims: {batch_dims!r} (expected an int >= 0)")
        group["avg_reg"] = _setting("avg_reg", group["avg_reg"], batch_dims)
        group["reg_lr"] = reg_lr = _setting("reg_lr", group["reg_lr"], batch_dims)
        for nu in per_copy(reg_lr, 1) if isinstance(reg_lr, float) else reg_lr:
            if nu < 0:
                raise ValueError(f"Invalid reg_lr: {shown(nu)} (expected >= 0)")
        params = [p for p in group.get("params", ()) if isinstance(p, Tensor)]
        for p in params:
            self._check_against(p, group)
        if params and any(0 < nu < 1 for nu in ((reg_lr,) if isinstance(reg_lr, float) else reg_lr)):
            _warn_small_reg_lr(reg_lr if isinstance(reg_lr, float) else min(v for v in reg_lr if v > 0))

    @staticmethod
    def _check_against(p: Tensor, group: dict[str, Any]) -> None:
        """The group's settings against one tensor: its dims, its copies, and what its state dtype holds."""
        batch_dims, shape = group["batch_dims"], tuple(p.shape)
        if p.ndim == 0:
            raise ValueError(
                f"cannot regularize a 0-d tensor (shape (), dtype {p.dtype}) with RLN: the mean projection "
                "would pin its one coefficient at avg_reg"
            )
        if p.ndim <= batch_dims:
            raise ValueError(
                f"Invalid batch_dims: {batch_dims} for a tensor of shape {shape} "
                "(it needs at least one dimension beyond the batch dimensions)"
            )
        copies = math.prod(p.shape[:batch_dims])
        n = p.numel() // copies if copies else 0
        if p.numel() and n < 2:
            raise ValueError(
                f"cannot regularize a tensor of shape {shape} (dtype {p.dtype}, batch_dims={batch_dims}) with RLN: "
                "each copy has one element, and the mean projection would pin its one coefficient at avg_reg"
            )
        for name in ("avg_reg", "reg_lr"):
            value = group[name]
            if not isinstance(value, float) and len(value) != copies:
                raise ValueError(
                    f"Invalid {name}: {len(value)} values for a tensor of shape {shape} with batch_dims={batch_dims} "
                    f"({copies} copies): give one value, or one per copy"
                )
        if not p.is_floating_point():
            return  # refused by the parameter checks, with their own message
        sdt = state_dtype(p.dtype)
        for theta in per_copy(group["avg_reg"], 1) if isinstance(group["avg_reg"], float) else group["avg_reg"]:
            check_magnitude(
                "avg_reg",
                theta,
                fold_bound(sdt, n) / 2,
                f"the coefficients of a tensor of shape {shape} are kept in {sdt}, and their sum over "
                f"{n} elements must stay finite",
            )
        for nu in per_copy(group["reg_lr"], 1) if isinstance(group["reg_lr"], float) else group["reg_lr"]:
            check_magnitude(
                "reg_lr", nu, torch.finfo(sdt).max, f"the coefficients of a tensor of shape {shape} are kept in {sdt}"
            )

    def can_regularize(self, tensor: Tensor) -> bool:
        """What ``params=None`` takes: tensors with at least two elements per copy at the
        default ``batch_dims`` (or none at all)."""
        batch_dims = self.reg_defaults.get("batch_dims", 0)
        if not isinstance(batch_dims, int) or tensor.ndim <= batch_dims or tensor.numel() == 0:
            return True  # validate_group says what is wrong with too few dims
        return tensor.numel() // math.prod(tensor.shape[:batch_dims]) >= 2

    def validate_state(self, key: Any, tensors: dict[str, Tensor]) -> None:
        missing = {"lam", "r_prev"} - set(tensors)
        if missing:
            raise ValueError(f"RLNOptimizer: the state of parameter {key!r} lacks {sorted(missing)}")
        super().validate_state(key, tensors)

    # ------------------------------------------------------------------ state in checkpoints
    def export_state(self) -> dict[Tensor, dict[str, Tensor]]:
        """Each weight's state as checkpoints hold it, without changing it: ``lam`` (the
        coefficients, a new tensor), ``r_prev``, and ``folded`` (the folded coefficients with the
        group's ``reg_lr``: what a resumed run continues from, bit for bit)."""
        out = {}
        for p, state in self.reg_state.items():
            group = self._group_of(p)
            nu, batch_dims = group["reg_lr"], group["batch_dims"]
            folded_now = state["folded"]
            if not _same_setting(self._fold_nu[p], nu):
                folded_now = _like(folded_now, _refolded(*self._locals(p), self._fold_nu[p], nu, batch_dims))
            lam = _like(state["folded"], _refolded(*self._locals(p), self._fold_nu[p], 0.0, batch_dims))
            out[p] = {"lam": lam, "r_prev": state["r_prev"], "folded": folded_now}
        return out

    def import_state(self, state: dict[Tensor, dict[str, Tensor]], replace: bool = True) -> None:
        """Take checkpoint state as this wrapper's: ``folded`` where the checkpoint has it (it
        is folded with the group's ``reg_lr``), else ``lam`` (unfolded; a checkpoint of
        torch-rln 0.1, or one whose ``rln_folded`` was dropped to load edited coefficients)."""
        if replace:
            self.reg_state, self._fold_nu = {}, {}
        for p, saved in state.items():
            if "folded" in saved:
                self.reg_state[p] = {"folded": saved["folded"], "r_prev": saved["r_prev"]}
                self._fold_nu[p] = self._group_of(p)["reg_lr"]
            else:
                self.reg_state[p] = {"folded": saved["lam"], "r_prev": saved["r_prev"]}
                self._fold_nu[p] = 0.0
        self._caches.clear()

    def _locals(self, p: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        state = self.reg_state[p]
        return local(p), local(state["folded"]), local(state["r_prev"])

    # ------------------------------------------------------------------ reading
    def stats(self, names: NamedParams | None = None) -> dict[str, TensorStats]:
        """What RLN did to each regularized tensor: the fraction of weights exactly 0, the
        inputs eliminated (all-zero columns of a weight ``(out, in)``: a count and a boolean
        mask), the coefficients' mean, std, min and max, and the last shrink's norm.

        All tensors (per copy with ``batch_dims``), computed without a host sync; keyed by
        the parameter's name (from ``names``, e.g. ``model.named_parameters()``, or the
        names the inner optimizer was given) or else its index in ``state_dict()["state"]``.
        :func:`torch_rln.log_stats` logs them. See :mod:`torch_rln._rln_stats`.
        """
        return rln_stats(self, names)

    def lambdas(self, param: Tensor) -> Tensor:
        """The current log-coefficients of ``param`` (a new tensor, shaped like it).

        Before the first step that reaches ``param`` they are ``avg_reg`` (per copy).
        """
        group = self._group_of(param)
        self._adopt_state_from_inner()
        if param not in self.reg_state:
            return self._initial_coefficients(param, group)
        folded = self.reg_state[param]["folded"]
        return _like(folded, _refolded(*self._locals(param), self._fold_nu[param], 0.0, group["batch_dims"]))

    # ------------------------------------------------------------------ the pass
    def before_inner_step(self, has_closure: bool, grad_scale: Tensor | None) -> None:
        """Fold each coefficient with its group's current ``reg_lr`` against the weight as it
        is now, before the inner step: after a checkpoint of torch-rln 0.1 (unfolded) or a
        change of ``reg_lr``. Nothing to do otherwise."""
        for group in self.reg_groups:
            nu = group["reg_lr"]
            for p in group["params"]:
                old = self._fold_nu.get(p)
                if old is not None and not _same_setting(old, nu):
                    _refolded(*self._locals(p), old, nu, group["batch_dims"], out=False)
                    self._fold_nu[p] = nu

    def after_inner_step(self, context: Any) -> None:
        resting = self.resting_ids()
        held = self.held_ids()
        for index, group in enumerate(self.reg_groups):
            stepped = [p for p in group["params"] if p.grad is not None and id(p) in held]
            if not stepped:
                continue
            new = self._create_state(stepped, group)
            moving = [p for p in stepped if id(p) not in resting]
            for project in (True, False):
                params = [p for p in moving if (p in new) != project]
                if params:
                    self._update(index, params, group, project)

    def _create_state(self, params: list[Tensor], group: dict[str, Any]) -> set[Tensor]:
        """State for the parameters that have none (``a = Theta``, ``r_prev = 0``); the state
        of the others follows its parameter to another device. Returns the new ones."""
        new = set()
        for p in params:
            state = self.reg_state.get(p)
            if state is None:
                self.reg_state[p] = {
                    "folded": self._initial_coefficients(p, group),
                    "r_prev": torch.zeros_like(p, dtype=state_dtype(p.dtype)),
                }
                self._fold_nu[p] = group["reg_lr"]
                new.add(p)
            elif state["folded"].device != p.device:
                self.reg_state[p] = {k: placed_like(v, p) for k, v in state.items()}
        return new

    @staticmethod
    def _initial_coefficients(p: Tensor, group: dict[str, Any]) -> Tensor:
        """``avg_reg`` (per copy), shaped and placed like ``p``, in its state dtype."""
        theta = group["avg_reg"]
        if isinstance(theta, float):
            return torch.full_like(p, theta, dtype=state_dtype(p.dtype))
        out = torch.empty_like(p, dtype=state_dtype(p.dtype))
        rows = rows_of([[local(out)]], group["batch_dims"])
        for row, value in zip(rows.rows[0][0], theta, strict=True):
            row.fill_(value)
        rows.write_back()
        return out

    def _update(self, index: int, params: list[Tensor], group: dict[str, Any], project: bool) -> None:
        """Run the update on ``params`` of group ``index``, per (device, dtype)."""
        buckets: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
        for p in params:
            buckets.setdefault((local(p).device, p.dtype), []).append(p)
        for (device, dtype), members in buckets.items():
            shards = [shards_of(p, group["batch_dims"]) for p in members]
            sharded = any(s is not None for s in shards)
            fn = self.implementation(device, dtype, sharded)
            fn(
                [local(p) for p in members],
                [local(self.reg_state[p]["folded"]) for p in members],
                [local(self.reg_state[p]["r_prev"]) for p in members],
                norm=group["norm"],
                avg_reg=group["avg_reg"],
                reg_lr=group["reg_lr"],
                project=project,
                batch_dims=group["batch_dims"],
                shards=shards if sharded else None,
                scratch=self._scratch,
                cache=self._caches.setdefault((index, device, dtype, project, fn), {}),
            )

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_caches"] = {}  # views of this object's tensors: a copy derives its own
        return state


def _setting(name: str, value: Any, batch_dims: int) -> Setting:
    """A setting as a float, or (with ``batch_dims``) a tuple of floats, one per copy (from a
    sequence or a 1-D NumPy array)."""
    if isinstance(value, (numbers.Real, Tensor, str, bytes)) or not hasattr(value, "__len__"):
        return check_finite(name, value)
    if not batch_dims:
        raise ValueError(f"Invalid {name}: {shown(value)} (one value per copy needs batch_dims >= 1)")
    values = tuple(check_finite(f"{name}[{k}]", v) for k, v in enumerate(value))
    if not values:
        raise ValueError(f"Invalid {name}: {shown(value)} (expected a number, or one per copy)")
    return values


def _same_setting(a: Setting, b: Setting) -> bool:
    return a is b or a == b


def _like(template: Tensor, value: Tensor) -> Tensor:
    """``value`` (a local tensor) placed like ``template`` (a DTensor's local shard, or a plain tensor)."""
    if is_sharded(template):
        from torch.distributed.tensor import DTensor

        return DTensor.from_local(
            value,
            template.device_mesh,
            template.placements,
            run_check=False,
            shape=template.shape,
            stride=template.stride(),
        )
    return value
