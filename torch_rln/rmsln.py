r"""RMS-norm regularization (the RMSLN experiment) as an optimizer wrapper.

The penalty, over the regularized weight tensors :math:`W_l`:

.. math::

    R(W) = \lambda \sum_l \big(\operatorname{rms}(W_l) - \tau\big)^2, \qquad
    \operatorname{rms}(W) = \frac{\lVert W \rVert_2}{\sqrt{n}} \quad (n = \text{numel}(W))

and its gradient, tensor by tensor:

.. math::

    \frac{\partial R}{\partial W} = \frac{2 \lambda (\operatorname{rms} - \tau)}{\sqrt{n}}
        \cdot \frac{W}{\lVert W \rVert_2}
    = \frac{2 \lambda (\operatorname{rms} - \tau)}{n \operatorname{rms}}\, W,
    \qquad 0 \text{ where } \operatorname{rms} = 0.

Names: :math:`\lambda` is ``reg_lambda``, :math:`\tau` is ``target`` (1.0 in the
experiment). :func:`rms_penalty` computes :math:`R` (differentiable, for the loss or for
logging), :func:`rms_penalty_grad` its gradient, :func:`rmsln_update` the in-place
update the wrapper runs, and :class:`RMSLNWrapper` applies it around any optimizer.

Numerics:

* The gradient is computed per tensor as ``scale * W`` with the 0-d
  ``scale = 2 lambda (rms - tau) / (sqrt(n) norm)``. Where the norm is not a normal,
  finite number the tensor gets no gradient (exactly 0, never NaN): a norm of 0 (or one
  that underflows below the smallest normal float, every weight subnormal, where
  ``scale`` would overflow), a norm that overflows (a weight beyond the square root of
  the largest float: 1.8e19 in float32), and a norm that is NaN or Inf because a weight
  is. So a non-finite weight changes nothing else in its tensor; autograd of
  :func:`rms_penalty` would spread it (as it would through the loss). A ``scale`` that
  overflows (a normal norm below ``|2 lambda (rms - tau)| / (sqrt(n) max)``, about 1e-38
  in float32: one tiny weight) gives no gradient either, where autograd would give one of
  magnitude ``|2 lambda (rms - tau)| / sqrt(n)``; the compiled kernel divides the weights
  by the norm elementwise and gives autograd's.
* Norms and the update run in float32 for float16/bfloat16 weights (in the weights'
  dtype otherwise); the result is rounded once into the gradient or weight, saturated at
  the dtype's largest finite value where it was finite before (a float16 weight above
  about 3e4 at ``reg_lambda`` 1 has a penalty gradient beyond float16's range). This takes
  a float32 copy of such weights for the duration of the update.
* Empty tensors are ignored: no gradient, no penalty term.
* No host sync: all per-tensor quantities stay 0-d tensors on the weights' device.

There is no persistent state: everything is recomputed from the weights at each step.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.utils._foreach_utils import _group_tensors_by_device_and_dtype

from ._dtypes import state_dtype
from ._implementations import CompiledKernel, Implementations
from ._sharding import Shards, complete_sums_, grad_placed_like_, is_sharded, local, shards_of
from ._wrapper import RegularizedOptimizer
from .checks import check_finite, check_magnitude

__all__ = ["RMSLNWrapper", "rms_penalty", "rms_penalty_grad", "rmsln_update"]

Alpha = float | Tensor


def _check_settings(reg_lambda: Any, target: Any) -> tuple[float, float]:
    """``(reg_lambda, target)`` as floats, or ``ValueError`` naming a bad one."""
    values = []
    for name, value in (("reg_lambda", reg_lambda), ("target", target)):
        number = check_finite(name, value)
        if number < 0:
            raise ValueError(f"Invalid {name}: {value!r} (expected >= 0)")
        values.append(number)
    return values[0], values[1]


def _whole_norms(
    norms: list[Tensor], ws: list[Tensor], shards: list[Shards | None] | None
) -> tuple[list[Tensor], list[float]]:
    """The norms and :math:`\\sqrt{n}` of the whole tensors, from the norms of ``ws``.

    ``ws[i]`` is a whole tensor, or (``shards[i]`` not None) the local shard of a sharded
    one: its norm is then the square root of the all-reduced sum of the shards' squared
    norms, and :math:`n` the whole tensor's element count.
    """
    if shards is None:
        return norms, [math.sqrt(w.numel()) for w in ws]
    squares = [n * n for n, s in zip(norms, shards, strict=True) if s is not None]
    complete_sums_(squares, [s for s in shards if s is not None])
    whole = iter(squares)
    norms = [n if s is None else next(whole).sqrt_() for n, s in zip(norms, shards, strict=True)]
    return norms, [math.sqrt(w.numel() if s is None else s.count) for w, s in zip(ws, shards, strict=True)]


def _single_tensor_rmsln(
    params: list[Tensor],
    outs: list[Tensor],
    *,
    reg_lambdas: list[float],
    targets: list[float],
    alphas: list[Alpha] | None,
    shards: list[Shards | None] | None = None,
) -> list[Tensor]:
    """``outs[i] += alphas[i] * dR/dW_i``, tensor by tensor, in the plain form of the equations.

    ``params`` must be non-empty; ``outs[i]`` is shaped like ``params[i]`` (it may be
    ``params[i]`` itself); ``alphas`` None means 1. ``shards[i]``, when given and not
    None, says that ``params[i]`` and ``outs[i]`` are the local shards of a sharded tensor,
    whose norm is over the whole tensor. Returns the rms of each tensor (0-d, in the
    compute dtype, on its device).
    """
    rms_list = []
    for i, param in enumerate(params):
        w = param.detach()
        ws = w.to(state_dtype(w.dtype))
        (norm,), (sqrt_n,) = _whole_norms([torch.linalg.vector_norm(ws)], [ws], None if shards is None else [shards[i]])
        rms = norm / sqrt_n
        coef = reg_lambdas[i] * (2.0 * (rms - targets[i])) / sqrt_n
        if alphas is not None:
            coef = coef * alphas[i]
        scale = _finite_scale(coef, norm)  # dR/dW = scale * W
        _add_scaled_(outs[i], w, ws, scale)
        rms_list.append(rms)
    return rms_list


def _add_scaled_(out: Tensor, w: Tensor, ws: Tensor, scale: Tensor) -> None:
    """``out += scale * w`` in one pass, computed in the state dtype and rounded once into
    ``out`` (a float16/bfloat16 weight goes through its float32 copy ``ws``)."""
    if w.dtype == scale.dtype:
        out.addcmul_(w, scale)
    else:
        _add_saturated_([out], [ws * scale])


def _add_saturated_(outs: list[Tensor], terms: list[Tensor]) -> None:
    """``outs += terms`` for float16/bfloat16 ``outs`` and float32 ``terms``, computed in float32
    and rounded once, saturated at the largest finite value of ``outs``' dtype where ``out``
    was finite: a penalty's gradient beyond float16's range (a weight above ~3e4 at
    reg_lambda 1) is clipped to it instead of making the weight inf. A non-finite value
    already in ``out`` (an overflowed loss gradient) stays."""
    for out, term in zip(outs, terms, strict=True):
        limit = torch.finfo(out.dtype).max
        total = term.add_(out).clamp_(-limit, limit)
        out.copy_(torch.where(torch.isfinite(out), total, out))


def _finite_scale(coef: Tensor, norm: Tensor) -> Tensor:
    """``coef / norm``, and 0 where the norm is not a normal, finite number (0, subnormal, Inf,
    NaN) or where the quotient overflows (a norm below ``|coef| / max``)."""
    return torch.where(norm >= torch.finfo(norm.dtype).tiny, coef / norm, 0.0).nan_to_num_(0.0, 0.0, 0.0)


def _multi_tensor_rmsln(
    params: list[Tensor],
    outs: list[Tensor],
    *,
    reg_lambdas: list[float],
    targets: list[float],
    alphas: list[Alpha] | None,
    shards: list[Shards | None] | None = None,
) -> list[Tensor]:
    """The same update as :func:`_single_tensor_rmsln`, with foreach ops per device and dtype:
    one ``_foreach_norm`` and one ``_foreach_addcmul_`` over the weights (their floor: one
    reduction and one multiply-add pass), the rest on 0-d tensors.

    The scales are computed on the norms stacked into one tensor (a few ops whatever the
    number of tensors), with the per-tensor path's arithmetic, so the results equal its.
    """
    grouped = _group_tensors_by_device_and_dtype([list(params), list(outs)], with_indices=True)
    rms_list: list[Tensor | None] = [None] * len(params)
    for (device_params, device_outs), indices in grouped.values():
        weights = [p.detach() for p in device_params if p is not None]
        targets_out = [o for o in device_outs if o is not None]
        ws = [w.to(state_dtype(w.dtype)) for w in weights]
        norms, sqrt_ns = _whole_norms(
            list(torch._foreach_norm(ws)), ws, None if shards is None else [shards[i] for i in indices]
        )
        rms = list(torch._foreach_div(norms, sqrt_ns))
        scales = _scales(
            norms,
            rms,
            sqrt_ns,
            [reg_lambdas[i] for i in indices],
            [targets[i] for i in indices],
            None if alphas is None else [alphas[i] for i in indices],
        )
        if weights[0].dtype == ws[0].dtype:
            torch._foreach_addcmul_(targets_out, weights, scales)
        else:
            _add_saturated_(targets_out, list(torch._foreach_mul(ws, scales)))
        for i, r in zip(indices, rms, strict=True):
            rms_list[i] = r
    return rms_list  # type: ignore[return-value]


def _scales(
    norms: list[Tensor],
    rms: list[Tensor],
    sqrt_ns: list[float],
    reg_lambdas: list[float],
    targets: list[float],
    alphas: list[Alpha] | None,
) -> list[Tensor]:
    """Per tensor, the 0-d ``scale`` with ``alpha * dR/dW = scale * W``:
    ``alpha * 2 lambda (rms - target) / (sqrt(n) * norm)``, and 0 where the norm is not a
    normal, finite number or the quotient overflows. The settings enter through foreach
    ops (scalars, no copy to the device); the rest runs on the norms stacked into one
    tensor."""
    coefs = list(torch._foreach_sub(rms, targets))
    torch._foreach_mul_(coefs, [2.0 * lam for lam in reg_lambdas])
    torch._foreach_div_(coefs, sqrt_ns)  # 2 lambda (rms - target) / sqrt(n)
    if alphas is not None:
        if any(isinstance(a, Tensor) for a in alphas):
            tensors = [
                torch.as_tensor(a).to(device=c.device, dtype=c.dtype) for a, c in zip(alphas, coefs, strict=True)
            ]
            torch._foreach_mul_(coefs, tensors)
        else:
            torch._foreach_mul_(coefs, [float(a) for a in alphas])
    return list(_finite_scale(torch.stack(coefs), torch.stack(norms)).unbind())


def _fused_rmsln_kernel(w: Tensor, out: Tensor, settings: Tensor) -> Tensor:
    """``out += alpha * dR/dW`` for one flat tensor of at least 2 elements, written for
    ``torch.compile`` to fuse (the same arithmetic as :func:`_single_tensor_rmsln`).
    ``settings`` holds ``reg_lambda``, ``target`` and ``alpha`` (float32 at least)."""
    wf = w.to(settings.dtype)
    reg_lambda, target, alpha = settings[0], settings[1], settings[2]
    sqrt_n = wf.numel() ** 0.5
    norm = torch.linalg.vector_norm(wf)
    rms = norm / sqrt_n
    coef = reg_lambda * (2.0 * (rms - target)) / sqrt_n * alpha
    usable = (norm >= torch.finfo(wf.dtype).tiny) & (norm <= torch.finfo(wf.dtype).max)
    out.add_(torch.where(usable, wf / torch.where(usable, norm, 1.0) * coef, 0.0))
    return rms  # type: ignore[no-any-return]  # vector_norm is annotated as Any


_KERNEL = CompiledKernel(_fused_rmsln_kernel, "RMSLN")


def _kernel_key(device: torch.device, dtype: torch.dtype) -> tuple[str, torch.dtype]:
    return (device.type, dtype)


def _settings(reg_lambda: float, target: float, alpha: Alpha, w: Tensor) -> Tensor:
    sdt = state_dtype(w.dtype)
    if isinstance(alpha, Tensor):
        fixed = torch.tensor([reg_lambda, target], dtype=sdt, device=w.device)
        return torch.cat([fixed, alpha.detach().reshape(1).to(device=w.device, dtype=sdt)])
    return torch.tensor([reg_lambda, target, float(alpha)], dtype=sdt, device=w.device)


def _kernel_works(device: torch.device, dtype: torch.dtype, insist: bool) -> bool:
    return compiled_kernel_works(device, dtype, insist)  # looked up when called (tests replace it)


def compiled_kernel_works(device: torch.device, dtype: torch.dtype, insist: bool = False) -> bool:
    """Whether the compiled RMSLN kernel runs for weights of ``dtype`` on ``device`` (probed once)."""

    def probe_args() -> tuple[Tensor, ...]:
        w = torch.linspace(-1.0, 1.0, 5, device=device).to(dtype)  # 5 elements: no size the settings share
        return w, torch.zeros_like(w), _settings(0.1, 1.0, 1.0, w)

    return _KERNEL.works(_kernel_key(device, dtype), probe_args, insist)


def _compiled_rmsln(
    params: list[Tensor],
    outs: list[Tensor],
    *,
    reg_lambdas: list[float],
    targets: list[float],
    alphas: list[Alpha] | None,
    shards: list[Shards | None] | None = None,
) -> list[Tensor]:
    """The update through one compiled, fused kernel per tensor.

    Compiled once per dtype, with dynamic shapes and the settings as a tensor, so every
    model and setting in a process reuses it, and called without Dynamo (see
    :mod:`torch_rln._implementations`). Tensors of one element and non-contiguous ones take
    the foreach path; sharded ones never come here.
    """
    rms_list: list[Tensor | None] = [None] * len(params)
    rest = {i for i, p in enumerate(params) if p.numel() < 2 or not (p.is_contiguous() and outs[i].is_contiguous())}
    for i, (p, out) in enumerate(zip(params, outs, strict=True)):
        if i in rest:
            continue
        alpha = 1.0 if alphas is None else alphas[i]
        settings = _settings(reg_lambdas[i], targets[i], alpha, p)
        rms_list[i] = _KERNEL(_kernel_key(p.device, p.dtype), p.detach().view(-1), out.detach().view(-1), settings)
    if rest:
        order = sorted(rest)
        rms_rest = _multi_tensor_rmsln(
            [params[i] for i in order],
            [outs[i] for i in order],
            reg_lambdas=[reg_lambdas[i] for i in order],
            targets=[targets[i] for i in order],
            alphas=None if alphas is None else [alphas[i] for i in order],
        )
        for i, r in zip(order, rms_rest, strict=True):
            rms_list[i] = r
    return rms_list  # type: ignore[return-value]


def _as_list(name: str, value: float | Sequence[float], n: int) -> list[float]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [float(value)] * n
    values = list(value)  # type: ignore[arg-type]
    if len(values) != n:
        raise ValueError(f"{name} has {len(values)} entries for {n} tensors")
    return values


def rmsln_update(
    params: list[Tensor],
    outs: list[Tensor],
    *,
    reg_lambdas: float | Sequence[float],
    targets: float | Sequence[float] = 1.0,
    alphas: Sequence[Alpha] | None = None,
    foreach: bool = True,
) -> list[Tensor | None]:
    r"""Functional RMSLN update: ``outs[i] += alphas[i] * dR/dW_i`` in place.

    ``outs`` are the gradients (coupled mode, ``alphas`` None meaning 1) or the
    parameters themselves (decoupled mode, ``alphas[i] = -lr``, a float or a 0-d
    tensor). ``reg_lambdas`` and ``targets`` are per tensor, or one value for all.
    Runs under ``no_grad`` in the wrapper; call it under ``torch.no_grad()`` yourself.

    Returns the rms of each tensor (a 0-d tensor in the compute dtype: float32 at
    least), or None for an empty tensor, which is left alone.
    """
    n = len(params)
    if len(outs) != n:
        raise ValueError(f"rmsln_update: {n} params but {len(outs)} outs")
    lams = _as_list("reg_lambdas", reg_lambdas, n)
    tgts = _as_list("targets", targets, n)
    alpha_list = None if alphas is None else list(alphas)
    if alpha_list is not None and len(alpha_list) != n:
        raise ValueError(f"alphas has {len(alpha_list)} entries for {n} tensors")
    keep = [i for i, p in enumerate(params) if p.numel() > 0]
    fn = _multi_tensor_rmsln if foreach else _single_tensor_rmsln
    rms = fn(
        [params[i] for i in keep],
        [outs[i] for i in keep],
        reg_lambdas=[lams[i] for i in keep],
        targets=[tgts[i] for i in keep],
        alphas=None if alpha_list is None else [alpha_list[i] for i in keep],
    )
    result: list[Tensor | None] = [None] * n
    for i, r in zip(keep, rms, strict=True):
        result[i] = r
    return result


def _penalty_from_rms(rms: Iterable[Tensor], reg_lambda: float, target: float) -> Tensor | None:
    """``reg_lambda * sum((rms - target) ** 2)``, the penalty of one group; None if empty."""
    total = None
    for r in rms:
        term = (r - target) ** 2
        total = term if total is None else total + term
    return None if total is None else reg_lambda * total


def _rms(param: Tensor) -> Tensor:
    """:math:`\\operatorname{rms}(W)` of one non-empty tensor (differentiable); for a sharded
    one, over the whole tensor, as a plain tensor (a collective: every rank must call it)."""
    rms = torch.linalg.vector_norm(param.to(state_dtype(param.dtype))) / math.sqrt(param.numel())
    return rms.full_tensor() if is_sharded(rms) else rms


def rms_penalty(params: Iterable[Tensor], reg_lambda: float, target: float = 1.0) -> Tensor:
    r"""The penalty :math:`R = \lambda \sum_l (\operatorname{rms}(W_l) - \tau)^2` (differentiable).

    Computed in float32 at least (float64 if a tensor is float64); empty tensors add
    nothing. Add it to the loss to train with the penalty through autograd (the same
    training as :class:`RMSLNWrapper` in its default, coupled mode), or log it.
    """
    reg_lambda, target = _check_settings(reg_lambda, target)
    rms = [_rms(p) for p in params if p.numel() > 0]
    total = _penalty_from_rms(rms, reg_lambda, target)
    return torch.zeros(()) if total is None else total


def rms_penalty_grad(
    params: Iterable[Tensor], reg_lambda: float, target: float = 1.0, *, foreach: bool = True
) -> list[Tensor]:
    r"""The gradient :math:`\partial R / \partial W_l` of :func:`rms_penalty`, one new tensor per input.

    Each gradient has its tensor's dtype (computed in float32 at least) and is exactly 0
    where the tensor's norm is not a normal, finite number (0, subnormal, Inf or NaN): there
    the rms is 0 or unknown, and dividing by a subnormal norm would overflow.
    """
    reg_lambda, target = _check_settings(reg_lambda, target)
    params = [p.detach() for p in params]
    grads = [torch.zeros_like(p, dtype=state_dtype(p.dtype)) for p in params]
    with torch.no_grad():
        rmsln_update(params, grads, reg_lambdas=reg_lambda, targets=target, foreach=foreach)
    return [g.to(p.dtype) for g, p in zip(grads, params, strict=True)]


class RMSLNWrapper(RegularizedOptimizer):
    r"""Wrap any ``torch.optim`` optimizer with the RMS-norm penalty
    :math:`R(W) = \lambda \sum_l (\operatorname{rms}(W_l) - \tau)^2`.

    Two modes:

    * coupled (``decoupled=False``, the default): before each inner step,
      :math:`\partial R/\partial W` is added to ``.grad``, so training is the same as
      adding :func:`rms_penalty` to the loss: the penalty's gradient goes through the
      inner optimizer (Adam's scaling, momentum, ...). With a closure (LBFGS), the
      closure is wrapped: it runs the user's closure, adds the penalty's gradient to
      ``.grad`` and returns ``loss + R(W)``, so a line search sees the regularized
      objective. One difference: gradient clipping between ``backward()`` and ``step()``
      (HF Trainer clips at 1.0 by default; Lightning with ``gradient_clip_val``) clips
      the loss's gradient only, and the penalty's is added after it, unclipped. In an inner
      param group with ``maximize=True`` the penalty's gradient is subtracted instead (the
      inner step ascends ``.grad``; the penalty still pulls toward the target). The sum is
      a new gradient tensor: if the inner step raises, the old gradients are put back, so
      the failed step changes nothing and a retry adds the penalty once.
    * decoupled (``decoupled=True``): after each inner step,
      :math:`W \leftarrow W - \text{lr}\,\partial R/\partial W`, with the gradient taken
      at the weights the inner step produced and ``lr`` the current learning rate of the
      inner param group that holds :math:`W` (a float or a tensor; LR schedulers drive
      it). The penalty bypasses the inner optimizer's scaling and momentum, as AdamW's
      weight decay bypasses Adam's.

    Args:
        optimizer: the inner optimizer; it keeps its own parameters, hyperparameters and
            state, and LR schedulers given this wrapper drive it.
        params: the tensors to regularize, or dicts ``{"params": [...], "reg_lambda":
            ..., "target": ...}`` with per-group settings; each must be a parameter of
            ``optimizer``. ``None`` (default): every parameter of ``optimizer`` with
            ``ndim >= 2`` (and those of groups added later with ``add_param_group``).
        reg_lambda: :math:`\lambda \ge 0`, the penalty's weight. Default ``1e-4``: with
            rms near 1 it keeps the penalty small beside a typical loss.
        target: :math:`\tau \ge 0`, the rms each tensor is pulled toward (1.0, as in the
            experiment).
        decoupled: the mode (for the whole wrapper, not per group); see above. Needs an
            ``"lr"`` in the inner param group of every regularized parameter.
        foreach: use the foreach implementation (default) rather than the per-tensor one.
        compile: ``None`` (default) or ``False``: the eager path, which is already RMSLN's
            floor (one ``_foreach_norm`` and one ``_foreach_addcmul_`` over the weights of a
            device and dtype); ``True``: one fused kernel per tensor, compiled with
            ``torch.compile(fullgraph=True, dynamic=True)`` once per dtype (on a CPU it is
            slower: a call per tensor; see ``benchmarks/README.md``).

    Example::

        opt = RMSLNWrapper(torch.optim.Adam(model.parameters(), lr=1e-3), reg_lambda=1e-4)
        opt.zero_grad(); loss.backward(); opt.step()
        opt.penalty()  # R(W), differentiable, for logging

    A parameter whose ``.grad`` is None at the step is skipped, as torch optimizers
    (and their weight decay) skip it. The wrapper keeps no state tensors.

    Sharded parameters (FSDP2's ``fully_shard``, ``DTensor``) are updated shard by shard,
    with each norm over the whole tensor (an all-reduce of the shards' squared norms).
    """

    group_defaults: ClassVar[dict[str, Any]] = {"reg_lambda": 1e-4, "target": 1.0}
    implementations = Implementations(
        _single_tensor_rmsln, _multi_tensor_rmsln, _compiled_rmsln, _kernel_works, compile_by_default=False
    )
    state_key = "rmsln"

    def __init__(
        self,
        optimizer: Optimizer,
        params: Any = None,
        *,
        reg_lambda: float = group_defaults["reg_lambda"],
        target: float = group_defaults["target"],
        decoupled: bool = False,
        foreach: bool | None = None,
        compile: bool | None = None,
    ) -> None:
        if not isinstance(decoupled, bool):
            raise TypeError(f"Invalid decoupled: {decoupled!r} (expected True or False)")
        super().__init__(
            optimizer, params, {"reg_lambda": reg_lambda, "target": target}, foreach=foreach, compile=compile
        )
        self.decoupled = decoupled
        if decoupled:
            self._check_lr(self.param_groups, self._regularized_ids())

    def validate_group(self, group: dict[str, Any]) -> None:
        group["reg_lambda"], group["target"] = _check_settings(group["reg_lambda"], group["target"])
        for p in group.get("params", ()):
            if isinstance(p, Tensor) and p.is_floating_point():
                sdt = state_dtype(p.dtype)
                limit = math.sqrt(torch.finfo(sdt).max)
                why = f"the penalty of a tensor of shape {tuple(p.shape)} is computed in {sdt}"
                check_magnitude("reg_lambda", group["reg_lambda"], limit, why)
                check_magnitude("target", group["target"], limit, why)

    def validate_state(self, index: Any, tensors: dict[str, Tensor]) -> None:
        raise ValueError(
            f"RMSLNWrapper keeps no per-parameter state, but the state_dict holds "
            f"{sorted(f'{self.state_key}_{k}' for k in tensors)} for parameter {index}"
        )

    @staticmethod
    def _check_lr(param_groups: list[dict[str, Any]], ids: set[int]) -> None:
        for k, group in enumerate(param_groups):
            if "lr" not in group and any(id(p) in ids for p in group["params"]):
                raise ValueError(
                    f"RMSLNWrapper(decoupled=True) scales its update by the inner learning rate, "
                    f"but inner param group {k} has no 'lr' (its keys: {sorted(group)})"
                )

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        regularized = self._regularize_new_groups or any(k in param_group for k in self.group_defaults)
        if self.decoupled and regularized and "lr" not in param_group and "lr" not in self.defaults:
            raise ValueError(
                "RMSLNWrapper(decoupled=True) scales its update by the inner learning rate, "
                f"but the new param group has no 'lr' (its keys: {sorted(param_group)})"
            )
        super().add_param_group(param_group)

    # ------------------------------------------------------------------ the penalty
    def penalty(self) -> Tensor:
        """:math:`R(W)` over every regularized tensor, with each group's settings (differentiable)."""
        total = torch.zeros(())
        for group in self.reg_groups:
            total = total + rms_penalty(group["params"], group["reg_lambda"], group["target"])
        return total

    def _regularize(
        self, want_penalty: bool = False, grad_scale: Tensor | None = None, keep_grads: bool = False
    ) -> Any:
        """Add ``dR/dW`` to the grads (coupled; times ``grad_scale`` when they are still
        scaled, and with the sign flipped in param groups with ``maximize=True``) or
        ``-lr dR/dW`` to the weights (decoupled), for the regularized parameters that have a
        ``.grad``; with ``want_penalty``, return :math:`R(W)` over every regularized tensor
        (from the same norms). With ``keep_grads`` (coupled), each gradient is replaced by a
        new tensor holding the sum, and the old ones are returned (``{param: grad}``), so that
        a failed inner step can put them back."""
        params, reg_lambdas, targets = self._stepped()
        kept: dict[Tensor, Tensor] = {}
        rms: list[Tensor] = []
        if params:
            if keep_grads and not self.decoupled:
                for p in params:
                    kept[p] = p.grad  # type: ignore[assignment]
                    p.grad = p.grad.clone()  # type: ignore[union-attr]
            alphas = self._negative_lrs(params) if self.decoupled else self._coupled_alphas(params, grad_scale)
            rms = self._add_gradients(params, reg_lambdas, targets, alphas)
        if want_penalty:
            return self._penalty_from({id(p): r for p, r in zip(params, rms, strict=True)})
        return kept

    def _coupled_alphas(self, params: list[Tensor], grad_scale: Tensor | None) -> list[Alpha] | None:
        """What the penalty's gradient is multiplied by before it joins ``.grad``: the scale of
        gradients GradScaler left scaled, and -1 in param groups that maximize (their inner
        step ascends ``.grad``, and the penalty must still pull toward the target)."""
        ascending = {id(p) for g in self.param_groups if g.get("maximize") is True for p in g["params"]}
        if grad_scale is None and not ascending:
            return None
        scale: Alpha = 1.0 if grad_scale is None else grad_scale
        return [-scale if id(p) in ascending else scale for p in params]

    def _stepped(self) -> tuple[list[Tensor], list[float], list[float]]:
        """The regularized, non-empty parameters with a ``.grad``, and their groups' settings.
        Coupled, a sparse gradient is refused here, before anything changes."""
        params, reg_lambdas, targets = [], [], []
        held = self.held_ids()
        for group in self.reg_groups:
            for p in group["params"]:
                if p.grad is not None and p.numel() > 0 and id(p) in held:
                    params.append(p)
                    reg_lambdas.append(float(group["reg_lambda"]))
                    targets.append(float(group["target"]))
        if not self.decoupled:
            for p in params:
                if p.grad is not None and (p.grad.is_sparse or p.grad.layout != torch.strided):
                    raise ValueError(
                        f"RMSLNWrapper (coupled) cannot add the penalty's dense gradient to the sparse gradient of a "
                        f"tensor of shape {tuple(p.shape)} (an nn.Embedding(sparse=True)?): regularize it with "
                        "decoupled=True, or leave it out of params"
                    )
        return params, reg_lambdas, targets

    def _negative_lrs(self, params: list[Tensor]) -> list[Alpha]:
        """``-lr`` of the inner param group of each parameter (a float, or a new tensor)."""
        wanted = {id(p) for p in params}
        neg_lr_of: dict[int, Alpha] = {}
        for group in self.param_groups:
            held = [p for p in group["params"] if id(p) in wanted and id(p) not in neg_lr_of]
            if not held:
                continue
            if "lr" not in group:
                self._check_lr([group], wanted)
            neg_lr = -group["lr"]
            for p in held:
                neg_lr_of[id(p)] = neg_lr
        return [neg_lr_of[id(p)] for p in params]

    def _add_gradients(
        self, params: list[Tensor], reg_lambdas: list[float], targets: list[float], alphas: list[Alpha] | None
    ) -> list[Tensor]:
        """Run the update on the gradients (coupled) or the weights (decoupled), per device and
        dtype, on local shards (sharded weights: whole norms, all-reduced); the rms of each."""
        outs = params if self.decoupled else [grad_placed_like_(p) for p in params]
        buckets: dict[tuple[torch.device, torch.dtype], list[int]] = {}
        for i, p in enumerate(params):
            buckets.setdefault((local(p).device, p.dtype), []).append(i)
        rms: list[Tensor | None] = [None] * len(params)
        for (device, dtype), members in buckets.items():
            shards = [shards_of(params[i]) for i in members]
            sharded = any(s is not None for s in shards)
            update = self.implementation(device, dtype, sharded)
            results = update(
                [local(params[i]) for i in members],
                [local(outs[i]) for i in members],
                reg_lambdas=[reg_lambdas[i] for i in members],
                targets=[targets[i] for i in members],
                alphas=None if alphas is None else [alphas[i] for i in members],
                shards=shards if sharded else None,
            )
            for i, r in zip(members, results, strict=True):
                rms[i] = r
        return rms  # type: ignore[return-value]

    def _penalty_from(self, rms_of: dict[int, Tensor]) -> Tensor:
        """:math:`R(W)` from the rms already computed (by id), computing the missing ones."""
        total = None
        for group in self.reg_groups:
            group_rms = []
            for p in group["params"]:
                if p.numel() == 0:
                    continue
                r = rms_of.get(id(p))
                group_rms.append(_rms(p) if r is None else r)  # None: no grad, not computed
            term = _penalty_from_rms(group_rms, float(group["reg_lambda"]), float(group["target"]))
            if term is not None:
                total = term if total is None else total + term
        return torch.zeros(()) if total is None else total

    # ------------------------------------------------------------------ the regularization pass
    def before_inner_step(self, has_closure: bool, grad_scale: Tensor | None) -> Any:
        """Coupled: add the penalty's gradient (to new gradient tensors: the old ones are the
        context, put back if the inner step fails). With a closure the gradients are yet to
        come: ``wrap_closure`` adds the penalty's. Gradients still scaled by GradScaler (a
        fused inner optimizer) get the scaled penalty's."""
        if not self.decoupled and not has_closure:
            return self._regularize(grad_scale=grad_scale, keep_grads=True)
        return None

    def inner_step_failed(self, context: Any) -> None:
        """Put back the gradients as they were before the penalty's was added: a failed step
        changes nothing, and its retry adds the penalty once."""
        for p, grad in (context or {}).items():
            p.grad = grad

    def after_inner_step(self, context: Any) -> None:
        if self.decoupled:
            self._regularize()

    def wrap_closure(self, closure: Callable[[], Any]) -> Callable[[], Any]:
        if self.decoupled:
            return closure

        def regularized_closure() -> Any:
            loss = closure()
            with torch.no_grad():
                penalty = self._regularize(want_penalty=True)
            return _with_penalty(loss, penalty)

        return regularized_closure


def _with_penalty(loss: Any, penalty: Tensor) -> Any:
    """What the wrapped closure returns: ``loss + R(W)`` when the user's closure returns a
    loss (a tensor stays a tensor; a Python or NumPy number becomes a float, which reads
    the penalty from the device); any other value (None, a tuple, a dict) as it is."""
    if isinstance(loss, Tensor):
        return loss + penalty
    if isinstance(loss, bool) or not isinstance(loss, numbers.Real):
        return loss
    return float(loss) + float(penalty)
