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
much as the unfolded form's do, which is what the tests measure. ``lambdas()`` and
``state_dict()`` give :math:`\lambda` itself (:math:`a - \nu W r`), and a
``state_dict()`` leaves the state in that unfolded form until the next step folds it
again, so a checkpoint resumes bit for bit.

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

Three implementations, equal in results: ``_single_tensor_rln`` (plain tensor ops, the
equations as written), ``_multi_tensor_rln`` (foreach ops on cache-sized waves,
arithmetic masks: where and comparisons cost ten multiplies on a CPU) and ``_compiled_rln``
(one fused kernel per copy through ``torch.compile``; equal up to rounding).
"""

from __future__ import annotations

import itertools
import math
import numbers
import warnings
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.optim import Optimizer

from ._dtypes import state_dtype
from ._implementations import CompiledKernel, Implementations
from ._rln_stats import NamedParams, TensorStats, rln_stats
from ._rows import CPU_WAVE, Chunk, Rows, Scratch, rows_of, waves
from ._sharding import Shards, complete_sums_, local, shards_of
from ._wrapper import RegularizedOptimizer
from .checks import check_finite, check_flag, check_int, check_magnitude, shown

__all__ = ["RLNOptimizer", "rln_coefficients", "rln_update"]

_LOG_HALF = math.log(0.5)


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


# ---------------------------------------------------------------------- the eager paths
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


def _gradient_terms_and_sums(
    rows: Rows, reg_lr: float, bounds: list[float], scratch: Scratch, limit: int | None
) -> tuple[Tensor, Tensor]:
    r"""Sweep 1, shared by both eager paths. In place, per element:

    * ``a <- clamp(a - nu w' r_prev)``: the coefficient before the projection,
      :math:`\lambda - \nu (w' - w_{\text{prev}}) r_{\text{prev}}` (non-finite weights count as 0);
    * ``r_prev <- 1.0`` where the weight is finite, ``0.0`` where not (``r_prev`` is spent).

    Returns, per row, the sum of the coefficients over the finite weights and their count
    (float64).
    """
    row_bounds = [b for b, n in zip(bounds, rows.copies, strict=True) for _ in range(n)]
    totals: list[list[Tensor]] = [[] for _ in row_bounds]
    counts: list[list[Tensor]] = [[] for _ in row_bounds]
    for wave in waves(rows, limit):
        weights, accs, shrinks = _chunk_lists(wave)
        clean, finite, _ = scratch.views(wave, accs[0].dtype)
        _copy_finite_(clean, weights)
        _finite_indicator_(finite, weights)
        torch._foreach_addcmul_(accs, clean, shrinks, value=-reg_lr)
        for chunk, acc, ok in zip(wave, accs, finite, strict=True):
            acc.clamp_(-row_bounds[chunk.row], row_bounds[chunk.row])
            totals[chunk.row].append(torch.dot(acc, ok))
            counts[chunk.row].append(ok.sum())
        torch._foreach_copy_(shrinks, finite)
    device = rows.tensors[1][0].device if rows.tensors[1] else torch.device("cpu")
    return _per_row(totals, device), _per_row(counts, device)


def _per_row(parts: list[list[Tensor]], device: torch.device) -> Tensor:
    """The float64 sum of each row's chunk partials (in order)."""
    zero = torch.zeros((), dtype=torch.float64, device=device)
    if not parts:
        return torch.zeros(0, dtype=torch.float64, device=device)
    return torch.stack([torch.stack(p).sum(dtype=torch.float64) if p else zero for p in parts])


def _shifts(
    rows: Rows, total: Tensor, count: Tensor, avg_reg: float, project: bool, shards: Sequence[Shards | None] | None
) -> Tensor:
    """Per row, ``mean(lam) - Theta`` over the finite weights (0 without projection); the
    sums of sharded tensors are all-reduced first, so the mean is over the whole copy."""
    if not project:
        return torch.zeros_like(total)
    if shards is not None and any(s is not None for s in shards):
        offsets = [0]
        for n in rows.copies:
            offsets.append(offsets[-1] + n)
        parts = [torch.stack([total[a:b], count[a:b]]) for a, b in itertools.pairwise(offsets)]
        complete_sums_(
            [p for p, s in zip(parts, shards, strict=True) if s is not None], [s for s in shards if s is not None]
        )
        total = torch.cat([p[0] for p in parts])
        count = torch.cat([p[1] for p in parts])
    return total / count.clamp(min=1.0) - avg_reg


def _prepare(
    params: list[Tensor],
    accs: list[Tensor],
    r_prevs: list[Tensor],
    batch_dims: int,
    reg_lr: float,
    avg_reg: float,
    project: bool,
    shards: Sequence[Shards | None] | None,
    scratch: Scratch,
) -> tuple[Rows, Tensor, int | None]:
    """Rows of the tensors, sweep 1, and each row's shift ``mean - Theta`` (state dtype)."""
    rows = rows_of([params, accs, r_prevs], batch_dims)
    sdt = accs[0].dtype
    bounds = [fold_bound(sdt, p.numel() // max(c, 1)) for p, c in zip(params, rows.copies, strict=True)]
    limit = _wave_limit(params[0].device)
    total, count = _gradient_terms_and_sums(rows, reg_lr, bounds, scratch, limit)
    return rows, _shifts(rows, total, count, avg_reg, project, shards).to(sdt), limit


def _single_tensor_rln(
    params: list[Tensor],
    accs: list[Tensor],
    r_prevs: list[Tensor],
    *,
    norm: int,
    avg_reg: float,
    reg_lr: float,
    project: bool,
    batch_dims: int = 0,
    shards: Sequence[Shards | None] | None = None,
    scratch: Scratch | None = None,
) -> None:
    r"""One RLN update, copy by copy, in the plain form of the equations.

    ``params`` hold :math:`w'` (after the inner step) and receive :math:`W`; ``accs`` hold
    the folded coefficients :math:`a` and ``r_prevs`` the previous shrinks, both updated in
    place (see the module docstring). ``project`` is False on a tensor's first step (no
    gradient term, no projection). ``shards[i]``, when given and not None, says that the
    tensors of index ``i`` are local shards of a sharded tensor, whose mean is over the
    whole tensor. Sweep 1 (the gradient term and the sums) is shared with the foreach path.
    """
    if not params:
        return
    rows, shifts, _ = _prepare(
        params, accs, r_prevs, batch_dims, reg_lr, avg_reg, project, shards, scratch or Scratch(3)
    )
    sdt = accs[0].dtype
    top, limit = max_exponent(sdt), fold_limit(sdt)
    k = 0
    for i, n in enumerate(rows.copies):
        for c in range(n):
            w, acc, r_prev = (role[i][c] for role in rows.rows)
            wf = w.to(sdt)
            finite = torch.isfinite(wf)
            ws = torch.where(finite, wf, 0.0)
            lam = torch.where(finite, acc - shifts[k], acc)  # lam += Theta - mean(lam), mean over finite weights
            size = ws.abs()
            cap = torch.log(size) if norm == 1 else torch.full_like(size, _LOG_HALF)  # log|w / d|
            bound = (lam >= cap) & (size > 0)  # no cap where w / d = 0 / 0
            lam = torch.where(bound, cap, lam)
            e = torch.exp(lam.clamp(max=top))
            shrink = torch.sign(ws) * e if norm == 1 else (2.0 * e).clamp(max=1.0) * ws  # 2 e^lam < 1 if free
            r = torch.where(bound, ws, shrink)  # r = w' exactly where the cap binds
            w.copy_((wf - r).to(w.dtype))
            fold = reg_lr * (ws - r).to(w.dtype).to(sdt) * r  # nu W r, W as the parameter holds it
            keep = fold.abs() < limit
            acc.copy_(lam + torch.where(keep, fold, 0.0))
            r_prev.copy_(torch.where(keep, r, 0.0))
            k += 1
    rows.write_back()


def _multi_tensor_rln(
    params: list[Tensor],
    accs: list[Tensor],
    r_prevs: list[Tensor],
    *,
    norm: int,
    avg_reg: float,
    reg_lr: float,
    project: bool,
    batch_dims: int = 0,
    shards: Sequence[Shards | None] | None = None,
    scratch: Scratch | None = None,
) -> None:
    """The same update as :func:`_single_tensor_rln`, with foreach ops on waves of chunks.

    There is no foreach ``where``, and ``where`` and bool tensors are slow on a CPU, so the
    masks are 0/1 float tensors (a comparison written into a float tensor) and the
    selections are exact arithmetic: ``min(lam, cap)``, and ``r = r (1 - b) + s b`` for the
    binding mask ``b``. Each wave works in three scratch buffers that stay in cache. The
    results equal the per-tensor path's.
    """
    if not params:
        return
    scratch = scratch or Scratch(3)
    rows, shifts, limit = _prepare(params, accs, r_prevs, batch_dims, reg_lr, avg_reg, project, shards, scratch)
    sdt = accs[0].dtype
    for wave in waves(rows, limit):
        weights, lams, shrinks = _chunk_lists(wave)  # shrinks hold the finite indicator (sweep 1)
        clean, cap, mask = scratch.views(wave, sdt)
        _copy_finite_(clean, weights)
        torch._foreach_addcmul_(lams, shrinks, [shifts[c.row] for c in wave], value=-1.0)  # the projection
        _cap_(cap, clean, norm, sdt)
        for lam, c, b in zip(lams, cap, mask, strict=True):
            torch.ge(lam, c, out=b)  # 1 where the cap binds
        torch._foreach_minimum_(lams, cap)
        _shrink_(shrinks, lams, clean, cap, mask, norm, sdt)
        torch._foreach_sub_(weights, shrinks)  # W = w' - r (non-finite weights: r = 0)
        if weights[0].dtype == sdt:
            torch._foreach_sub_(clean, shrinks)
        else:
            _copy_finite_(clean, weights)  # W as rounded to the parameter's dtype
        _fold_(lams, shrinks, clean, cap, reg_lr, fold_limit(sdt))
    rows.write_back()


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
    lams: list[Tensor], shrinks: list[Tensor], weights: list[Tensor], spare: list[Tensor], reg_lr: float, limit: float
) -> None:
    """``a = lam + nu W r`` where ``|nu W r| < limit``; elsewhere ``a = lam`` and ``r_prev = 0``.
    ``weights`` (W) is overwritten."""
    torch._foreach_mul_(weights, reg_lr)
    torch._foreach_mul_(weights, shrinks)  # nu W r
    for t, sp in zip(weights, spare, strict=True):
        t.nan_to_num_(limit, limit, -limit)  # inf * 0 and overflows: dropped below
        torch.lt(torch.abs(t, out=sp), limit, out=sp)
    torch._foreach_mul_(weights, spare)
    torch._foreach_mul_(shrinks, spare)
    torch._foreach_add_(lams, weights)


# ---------------------------------------------------------------------- the compiled path
def _fused_rln_kernel(
    w: Tensor, acc: Tensor, r_prev: Tensor, avg_reg: float, reg_lr: float, l1: float, project: float
) -> None:
    """The update of one copy (a 1-D tensor of at least 2 elements), written for
    ``torch.compile`` to fuse into a reduction loop and one elementwise loop; the same
    results as :func:`_single_tensor_rln` up to rounding.

    The settings are floats, which stay dynamic arguments: ``l1`` is 1.0 for L1 and 0.0 for
    L2 and ``project`` 0.0 on the first step, where a Python branch would compile the kernel
    once more (Dynamo allows 8 compilations of one function per process).
    """
    sdt = acc.dtype
    bound_abs = torch.finfo(sdt).max / (4 * w.numel())
    wf = w.to(sdt)
    finite = (wf - wf) == 0  # an isfinite that vectorizes
    ws = torch.where(finite, wf, 0.0)
    pre = torch.clamp(acc - reg_lr * ws * r_prev, -bound_abs, bound_abs)
    total = torch.where(finite, pre, 0.0).sum()
    count = w.numel() - (~finite).to(sdt).sum()
    shift = project * (total / torch.clamp(count, min=1.0) - avg_reg)
    lam = torch.where(finite, pre - shift, pre)
    size = torch.abs(ws)
    cap = torch.log(size * l1 + 0.5 * (1.0 - l1))  # log|w| (L1) or log(1/2) (L2)
    bound = (lam >= cap) & (size > 0)
    lam = torch.where(bound, cap, lam)
    e = torch.exp(torch.clamp(lam, max=max_exponent(sdt)))
    shrink = torch.sign(ws) * e * (2.0 - l1) * (size * (1.0 - l1) + l1)  # sign(w) e^lam, or (2 e^lam) w
    r = torch.where(bound, ws, shrink)
    w.copy_((wf - r).to(w.dtype))
    fold = reg_lr * (ws - r).to(w.dtype).to(sdt) * r
    keep = torch.abs(fold) < fold_limit(sdt)
    acc.copy_(lam + torch.where(keep, fold, 0.0))
    r_prev.copy_(torch.where(keep, r, 0.0))


_KERNEL = CompiledKernel(_fused_rln_kernel, "RLN")


def compiled_kernel_works(device: torch.device, dtype: torch.dtype, insist: bool = False) -> bool:
    """Whether the compiled RLN kernel runs for parameters of ``dtype`` on ``device`` (probed once)."""
    sdt = state_dtype(dtype)

    def probe_args() -> tuple[Any, ...]:
        w = torch.tensor([0.5, -0.25], device=device).to(dtype)
        return (
            w,
            torch.full((2,), -3.0, device=device, dtype=sdt),
            torch.zeros(2, device=device, dtype=sdt),
            -3.0,
            1.0,
            1.0,
            1.0,
        )

    return _KERNEL.works((device.type, dtype, sdt), probe_args, insist)


def _compiled_rln(
    params: list[Tensor],
    accs: list[Tensor],
    r_prevs: list[Tensor],
    *,
    norm: int,
    avg_reg: float,
    reg_lr: float,
    project: bool,
    batch_dims: int = 0,
    shards: Sequence[Shards | None] | None = None,
    scratch: Scratch | None = None,
) -> None:
    """The update through one compiled, fused kernel per copy.

    The kernel is compiled once per (device type, parameter dtype, state dtype), with
    dynamic shapes and settings, so tensors of any size and any settings reuse it (torch's
    on-disk cache keeps it across runs). Copies of fewer than 2 elements and sharded
    tensors (whose mean needs an all-reduce) take the foreach path.
    """
    rows = rows_of([params, accs, r_prevs], batch_dims)
    rest: list[int] = []
    l1 = 1.0 if norm == 1 else 0.0
    for i, n in enumerate(rows.copies):
        sharded = shards is not None and shards[i] is not None
        per_copy = params[i].numel() // n if n else 0
        if sharded or per_copy < 2:
            rest.append(i)
            continue
        for c in range(n):
            # detach(): an alias without a _base, so Dynamo guards no base shape (no recompiles)
            w, acc, r_prev = (role[i][c].detach() for role in rows.rows)
            _KERNEL(w, acc, r_prev, avg_reg, reg_lr, l1, 1.0 if project else 0.0)
    rows.write_back()
    if rest:
        _multi_tensor_rln(
            [params[i] for i in rest],
            [accs[i] for i in rest],
            [r_prevs[i] for i in rest],
            norm=norm,
            avg_reg=avg_reg,
            reg_lr=reg_lr,
            project=project,
            batch_dims=batch_dims,
            shards=None if shards is None else [shards[i] for i in rest],
            scratch=scratch,
        )


# ---------------------------------------------------------------------- functional API
def rln_update(
    params: list[Tensor],
    accs: list[Tensor],
    r_prevs: list[Tensor],
    *,
    norm: int,
    avg_reg: float,
    reg_lr: float,
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
    :func:`rln_coefficients` unfolds them. Run under ``torch.no_grad()``.
    """
    if compile:
        fn = _compiled_rln
    else:
        fn = _single_tensor_rln if check_flag("foreach", foreach) is False else _multi_tensor_rln
    fn(params, accs, r_prevs, norm=norm, avg_reg=avg_reg, reg_lr=reg_lr, project=not first_step, batch_dims=batch_dims)


def rln_coefficients(
    params: Sequence[Tensor], accs: Sequence[Tensor], r_prevs: Sequence[Tensor], reg_lr: float
) -> list[Tensor]:
    r"""The coefficients :math:`\lambda = a - \nu W r_{\text{prev}}` (new tensors), from the
    current weights and the state :func:`rln_update` keeps."""
    return [_unfolded(p, a, r, reg_lr) for p, a, r in zip(params, accs, r_prevs, strict=True)]


def _unfolded(param: Tensor, acc: Tensor, r_prev: Tensor, reg_lr: float) -> Tensor:
    if reg_lr == 0.0:
        return acc.clone()
    weight = torch.nan_to_num(param.detach().to(acc.dtype), 0.0, 0.0, 0.0)
    return torch.addcmul(acc, weight, r_prev, value=-reg_lr)


def _refold_(param: Tensor, acc: Tensor, r_prev: Tensor, delta: float) -> None:
    """``acc += delta * W * r_prev``: move the fold from one ``reg_lr`` to another (0: unfolded)."""
    if delta != 0.0:
        weight = torch.nan_to_num(param.detach().to(acc.dtype), 0.0, 0.0, 0.0)
        acc.addcmul_(weight, r_prev, value=delta)


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
            ``optimizer`` with ``ndim >= 2``.
        norm: 1 (L1, the paper's choice) or 2.
        avg_reg: :math:`\Theta`, the mean log-coefficient (paper: Theta; Keras callback:
            ``avg_reg``).
        reg_lr: :math:`\nu \ge 0`, the coefficients' learning rate (paper: nu; Keras
            callback: ``learning_rate``).
        batch_dims: the number of leading dimensions that index independent copies of the
            weight, e.g. an ensemble stacked for ``torch.func.vmap`` or a batched matmul:
            the mean projection then runs per copy. 0 (default): one tensor, one mean.
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

    Sharded parameters (FSDP2's ``fully_shard``, ``DTensor``) are updated shard by shard,
    with the mean over the whole tensor (an all-reduce of the shards' sums); their state is
    sharded like them.
    """

    group_defaults: ClassVar[dict[str, Any]] = {"norm": 1, "avg_reg": -7.5, "reg_lr": 6e5, "batch_dims": 0}
    state_key = "rln"
    state_names = ("lam", "r_prev")
    implementations = Implementations(
        _single_tensor_rln,
        _multi_tensor_rln,
        _compiled_rln,
        lambda device, dtype, insist: compiled_kernel_works(device, dtype, insist),
        compile_by_default=True,
    )

    def __init__(
        self,
        optimizer: Optimizer,
        params: Any = None,
        *,
        norm: int = group_defaults["norm"],
        avg_reg: float = group_defaults["avg_reg"],
        reg_lr: float = group_defaults["reg_lr"],
        batch_dims: int = group_defaults["batch_dims"],
        foreach: bool | None = None,
        compile: bool | None = None,
    ) -> None:
        settings = {"norm": norm, "avg_reg": avg_reg, "reg_lr": reg_lr, "batch_dims": batch_dims}
        super().__init__(optimizer, params, settings, foreach=foreach, compile=compile)
        self.folded: dict[Tensor, float] = {}  # per weight: the reg_lr folded into its coefficient
        self._scratch = Scratch(3)

    def validate_group(self, group: dict[str, Any]) -> None:
        norm = group["norm"]
        if isinstance(norm, bool) or norm not in (1, 2):
            raise ValueError(f"Invalid norm: {shown(norm)} (expected 1 or 2)")
        group["norm"] = check_int("norm", norm, "1 or 2")
        group["avg_reg"] = check_finite("avg_reg", group["avg_reg"])
        reg_lr = check_finite("reg_lr", group["reg_lr"])
        if reg_lr < 0:
            raise ValueError(f"Invalid reg_lr: {shown(group['reg_lr'])} (expected >= 0)")
        group["reg_lr"] = reg_lr
        if 0 < reg_lr < 1 and "params" in group:  # a group, not the defaults checked before it
            _warn_small_reg_lr(reg_lr)
        group["batch_dims"] = batch_dims = check_int("batch_dims", group["batch_dims"], "an int >= 0")
        if batch_dims < 0:
            raise ValueError(f"Invalid batch_dims: {batch_dims!r} (expected an int >= 0)")
        for p in group.get("params", ()):
            if isinstance(p, Tensor):
                self._check_against(p, group)

    @staticmethod
    def _check_against(p: Tensor, group: dict[str, Any]) -> None:
        """The group's settings against one tensor: its dims, and what its state dtype holds."""
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
        if not p.is_floating_point():
            return  # refused by the parameter checks, with their own message
        sdt = state_dtype(p.dtype)
        n = p.numel() // max(math.prod(p.shape[:batch_dims]), 1)
        check_magnitude(
            "avg_reg",
            group["avg_reg"],
            fold_bound(sdt, n) / 2,
            f"the coefficients of a tensor of shape {shape} are kept in {sdt}, and their sum over "
            f"{n} elements must stay finite",
        )
        check_magnitude(
            "reg_lr",
            group["reg_lr"],
            torch.finfo(sdt).max,
            f"the coefficients of a tensor of shape {shape} are kept in {sdt}",
        )

    def validate_state(self, key: Any, tensors: dict[str, Tensor]) -> None:
        missing = set(self.state_names) - set(tensors)
        if missing:
            raise ValueError(f"RLNOptimizer: the state of parameter {key!r} lacks {sorted(missing)}")
        super().validate_state(key, tensors)

    # ------------------------------------------------------------------ state in checkpoints
    def export_state(self) -> dict[Tensor, dict[str, Tensor]]:
        """Unfold every coefficient (in place: the next step folds it again) and return the
        state in the checkpoint's terms, ``lam`` and ``r_prev``."""
        for p, state in self.reg_state.items():
            _refold_(local(p), local(state["acc"]), local(state["r_prev"]), -self.folded.get(p, 0.0))
            self.folded[p] = 0.0
        return {p: {"lam": s["acc"], "r_prev": s["r_prev"]} for p, s in self.reg_state.items()}

    def import_state(self, state: dict[Tensor, dict[str, Tensor]], replace: bool = True) -> None:
        """Take checkpoint state (``lam``, ``r_prev``) as this wrapper's (unfolded)."""
        if replace:
            self.reg_state, self.folded = {}, {}
        for p, saved in state.items():
            self.reg_state[p] = {"acc": saved["lam"], "r_prev": saved["r_prev"]}
            self.folded[p] = 0.0

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
        """The current log-coefficients of ``param`` (a copy, shaped like it).

        Before the first step that reaches ``param`` they are all ``avg_reg``.
        """
        group = self._group_of(param)
        self._adopt_state_from_inner()
        state = self.reg_state.get(param)
        if state is None:
            return torch.full_like(param, group["avg_reg"], dtype=state_dtype(param.dtype))
        folded = self.folded.get(param, 0.0)
        if folded == 0.0:
            return state["acc"].clone()
        return _like(state["acc"], _unfolded(local(param), local(state["acc"]), local(state["r_prev"]), folded))

    # ------------------------------------------------------------------ the pass
    def before_inner_step(self, has_closure: bool, grad_scale: Tensor | None) -> None:
        """Fold each coefficient with its group's current ``reg_lr`` against the weight as it
        is now, before the inner step: after a checkpoint (unfolded) or a change of
        ``reg_lr``. Nothing to do otherwise."""
        for group in self.reg_groups:
            nu = group["reg_lr"]
            for p in group["params"]:
                state = self.reg_state.get(p)
                if state is not None and self.folded.get(p, 0.0) != nu:
                    _refold_(local(p), local(state["acc"]), local(state["r_prev"]), nu - self.folded.get(p, 0.0))
                    self.folded[p] = nu

    def after_inner_step(self, context: Any) -> None:
        resting = self._resting_ids()
        update = None
        for group in self.reg_groups:
            stepped = [p for p in group["params"] if p.grad is not None]
            if not stepped:
                continue
            new = self._create_state(stepped, group)
            moving = [p for p in stepped if id(p) not in resting]
            for project in (True, False):
                params = [p for p in moving if (p in new) != project]
                if params:
                    update = update or self._update
                    update(params, group, project)

    def _create_state(self, params: list[Tensor], group: dict[str, Any]) -> set[Tensor]:
        """State for the parameters that have none: ``a = Theta``, ``r_prev = 0``."""
        new = set()
        for p in params:
            if p not in self.reg_state:
                sdt = state_dtype(p.dtype)
                self.reg_state[p] = {
                    "acc": torch.full_like(p, group["avg_reg"], dtype=sdt),
                    "r_prev": torch.zeros_like(p, dtype=sdt),
                }
                self.folded[p] = group["reg_lr"]
                new.add(p)
        return new

    def _update(self, params: list[Tensor], group: dict[str, Any], project: bool) -> None:
        """Run the update on ``params`` of one group, per (device, dtype)."""
        buckets: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
        for p in params:
            buckets.setdefault((local(p).device, p.dtype), []).append(p)
        for (device, dtype), members in buckets.items():
            shards = [shards_of(p, group["batch_dims"]) for p in members]
            sharded = any(s is not None for s in shards)
            fn = self.implementation(device, dtype, sharded)
            fn(
                [local(p) for p in members],
                [local(self.reg_state[p]["acc"]) for p in members],
                [local(self.reg_state[p]["r_prev"]) for p in members],
                norm=group["norm"],
                avg_reg=group["avg_reg"],
                reg_lr=group["reg_lr"],
                project=project,
                batch_dims=group["batch_dims"],
                shards=shards if sharded else None,
                scratch=self._scratch,
            )

    def _resting_ids(self) -> set[int]:
        """The ids of the parameters in inner param groups whose ``lr`` is 0 (a Python number or
        a CPU tensor; a learning rate on an accelerator is not read, which would sync)."""
        resting: set[int] = set()
        for group in self.param_groups:
            lr = group.get("lr")
            if isinstance(lr, Tensor):
                zero = lr.device.type == "cpu" and lr.numel() == 1 and float(lr) == 0.0
            elif isinstance(lr, bool):
                zero = False
            else:
                zero = isinstance(lr, numbers.Real) and lr == 0
            if zero:
                resting.update(id(p) for p in group["params"])
        return resting


def _like(template: Tensor, value: Tensor) -> Tensor:
    """``value`` (a local tensor) placed like ``template`` (a DTensor's local shard, or a plain tensor)."""
    from ._sharding import is_sharded

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
