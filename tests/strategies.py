"""Hypothesis strategies for the property suite (test_properties.py), and the small engine that
turns what they draw into a training run.

A :class:`Scenario` is a whole run, drawn as plain data (so that a failing one prints as code
and can be pinned with ``@example``): the regularized tensors in groups (shapes with and
without ``batch_dims``, 0-size ones, four dtypes, mixed within a group, extreme values
sprinkled in), each group's settings, the inner optimizer, the stack of wrappers, and the
steps with their events (gradients that come and go, a step at lr 0, a checkpoint taken and
thrown away or loaded back, a group added with ``add_param_group``). :func:`build` and
:func:`run` make and train it through public API only.
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass

import torch
from hypothesis import strategies as st

from torch_rln import RLNOptimizer, RMSLNWrapper

# The ``ci`` profile's max_examples (tests/conftest.py): each property asks for its share of it.
CI_EXAMPLES = 100

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32, "float64": torch.float64}

# Values sprinkled into weights: ordinary extremes, huge finite ones, non-finite ones.
MODERATE = ("zero", "-zero", "subnormal", "smallest_normal", "1e4")
TINY = ("subnormal", "smallest_normal")
HUGE = ("1e15", "2sqrt_max", "1e33", "max", "-max")
NON_FINITE = ("nan", "inf", "-inf")


def special(kind: str, dtype: torch.dtype) -> float:
    """The value of a sprinkle of ``kind`` in ``dtype`` (clamped to what the dtype holds)."""
    fi = torch.finfo(dtype)
    values = {
        "zero": 0.0,
        "-zero": -0.0,
        "subnormal": fi.smallest_normal / 8,
        "smallest_normal": fi.smallest_normal,
        "1e4": 1e4,
        "1e15": min(1e15, fi.max),
        "2sqrt_max": 2 * math.sqrt(fi.max),
        "1e33": min(1e33, fi.max),
        "max": fi.max,
        "-max": -fi.max,
        "nan": math.nan,
        "inf": math.inf,
        "-inf": -math.inf,
    }
    return values[kind]


@dataclass(frozen=True)
class TensorSpec:
    """A weight: its shape and dtype, a seed and scale for its normal values, and sprinkles
    ``(position, kind)`` (the position taken modulo the number of elements)."""

    shape: tuple[int, ...]
    dtype: str = "float32"
    seed: int = 0
    scale: float = 1.0
    sprinkles: tuple[tuple[int, str], ...] = ()

    def make(self) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed)
        t = (self.scale * torch.randn(self.shape, generator=g, dtype=torch.float64)).to(DTYPES[self.dtype])
        flat = t.view(-1)
        for position, kind in self.sprinkles:
            if flat.numel():
                flat[position % flat.numel()] = special(kind, t.dtype)
        return t


@dataclass(frozen=True)
class GroupSpec:
    """A regularization group: its tensors and its settings (RLN's and RMSLN's; a stack uses
    those of the wrappers it has). The inner optimizer holds every tensor in one param group."""

    tensors: tuple[TensorSpec, ...]
    norm: int = 1
    avg_reg: float = -5.0
    reg_lr: float = 1e3
    batch_dims: int = 0
    reg_lambda: float = 0.1
    target: float = 1.0

    def rln(self) -> dict:
        return {"norm": self.norm, "avg_reg": self.avg_reg, "reg_lr": self.reg_lr, "batch_dims": self.batch_dims}

    def rmsln(self) -> dict:
        return {"reg_lambda": self.reg_lambda, "target": self.target}


@dataclass(frozen=True)
class StepSpec:
    """One step: the gradients' seed and scale, the tensors (by index, modulo their count) whose
    gradient is None, lr 0 for this step, and what is done with a checkpoint after it:
    ``None``, ``"discard"`` (state_dict() thrown away) or ``"reload"`` (loaded back)."""

    seed: int = 0
    grad_scale: float = 0.1
    no_grad: tuple[int, ...] = ()
    lr_zero: bool = False
    checkpoint: str | None = None


@dataclass(frozen=True)
class Scenario:
    """A training run: the stack (``rln``, ``rmsln``, ``rmsln_decoupled``, ``rmsln(rln)``,
    ``rmsln_decoupled(rln)``, ``rln(rmsln)``), the inner optimizer and its lr, the groups,
    the steps, and optionally a group added (``added``, with the settings of group 0) before
    step ``add_at``."""

    stack: str
    inner: str
    groups: tuple[GroupSpec, ...]
    steps: tuple[StepSpec, ...]
    lr: float = 1e-2
    added: TensorSpec | None = None
    add_at: int = 0

    @property
    def has_rln(self) -> bool:
        return "rln" in self.stack.replace("rmsln", "")

    @property
    def has_rmsln(self) -> bool:
        return "rmsln" in self.stack


# ---------------------------------------------------------------- the inner optimizers and the stacks
INNER = {
    "sgd": lambda ps, lr: torch.optim.SGD(ps, lr=lr),
    "sgd_momentum": lambda ps, lr: torch.optim.SGD(ps, lr=lr, momentum=0.9),
    "adam": lambda ps, lr: torch.optim.Adam(ps, lr=lr),
    "adamw": lambda ps, lr: torch.optim.AdamW(ps, lr=lr, weight_decay=1e-2),
    "rmsprop": lambda ps, lr: torch.optim.RMSprop(ps, lr=lr, alpha=0.9, eps=1e-7),
    "adagrad": lambda ps, lr: torch.optim.Adagrad(ps, lr=lr),
}
# torch's adaptive optimizers divide by sqrt(v) + eps in the parameter's dtype: in float16,
# eps=1e-8 rounds to 0 and a small gradient's v underflows, so they make inf/NaN on their own.
FLOAT16_INNER = ("sgd", "sgd_momentum")

STACKS = ("rln", "rmsln", "rmsln_decoupled", "rmsln(rln)", "rmsln_decoupled(rln)", "rln(rmsln)")
RLN_STACKS = tuple(s for s in STACKS if "rln" in s.replace("rmsln", ""))
RMSLN_ONLY_STACKS = ("rmsln", "rmsln_decoupled")

PATHS = {
    "per_tensor": {"foreach": False, "compile": False},
    "foreach": {"foreach": True, "compile": False},
    "compiled": {"compile": True},
}


def build(scn: Scenario, rln_path: str = "foreach", rmsln_path: str | None = None):
    """The tensors (as parameters, in order) and the optimizer of ``scn``; each wrapper on its
    update path (``rmsln_path`` defaults to ``rln_path``)."""
    rmsln_path = rln_path if rmsln_path is None else rmsln_path
    per_group = [[torch.nn.Parameter(spec.make()) for spec in g.tensors] for g in scn.groups]
    params = [p for ps in per_group for p in ps]
    inner = INNER[scn.inner](params, scn.lr)
    rln_groups = [{"params": ps, **g.rln()} for ps, g in zip(per_group, scn.groups, strict=True)]
    rmsln_groups = [{"params": ps, **g.rmsln()} for ps, g in zip(per_group, scn.groups, strict=True)]
    decoupled = "decoupled" in scn.stack

    def rln(inner_opt):
        return RLNOptimizer(inner_opt, rln_groups, **PATHS[rln_path])

    def rmsln(inner_opt):
        return RMSLNWrapper(inner_opt, rmsln_groups, decoupled=decoupled, **PATHS[rmsln_path])

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # reg_lr below 1, compile fallbacks
        if scn.stack == "rln":
            opt = rln(inner)
        elif scn.stack in ("rmsln", "rmsln_decoupled"):
            opt = rmsln(inner)
        elif scn.stack in ("rmsln(rln)", "rmsln_decoupled(rln)"):
            opt = rmsln(rln(inner))
        else:
            opt = RLNOptimizer(RMSLNWrapper(inner, rmsln_groups, **PATHS[rmsln_path]), rln_groups, **PATHS[rln_path])
    return params, opt


def gradient(step: StepSpec, index: int, p: torch.Tensor) -> torch.Tensor | None:
    if index in step.no_grad:
        return None
    g = torch.Generator().manual_seed(step.seed * 1009 + index)
    return (step.grad_scale * torch.randn(p.shape, generator=g, dtype=torch.float64)).to(p.dtype)


def add_group(scn: Scenario, params: list, opt) -> None:
    """``add_param_group`` with the settings of group 0 of the wrappers in the stack."""
    p = torch.nn.Parameter(scn.added.make())
    settings = {}
    if scn.has_rln:
        settings.update(scn.groups[0].rln())
    if scn.has_rmsln:
        settings.update(scn.groups[0].rmsln())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt.add_param_group({"params": [p], **settings})
    params.append(p)


def take_step(scn: Scenario, params: list, opt, k: int) -> None:
    """Step ``k`` of ``scn``: the group added first if it is due, the gradients set (None for
    the step's ``no_grad``), lr 0 if asked; the checkpoint event is not taken here."""
    step = scn.steps[k]
    if scn.added is not None and scn.add_at == k:
        add_group(scn, params, opt)
    no_grad = {i % len(params) for i in step.no_grad}
    for i, p in enumerate(params):
        p.grad = None if i in no_grad else gradient(step, i, p)
    saved = [g["lr"] for g in opt.param_groups]
    if step.lr_zero:
        for g in opt.param_groups:
            g["lr"] = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt.step()
    for g, lr in zip(opt.param_groups, saved, strict=True):
        g["lr"] = lr


def checkpoint_event(step: StepSpec, opt) -> None:
    if step.checkpoint == "discard":
        opt.state_dict()
    elif step.checkpoint == "reload":
        opt.load_state_dict(copy.deepcopy(opt.state_dict()))


def run(scn: Scenario, rln_path: str = "foreach", rmsln_path: str | None = None, events: bool = True, after=None):
    """Build and train ``scn``; ``after(k, params, opt)`` is called after each step (and its
    checkpoint event, if ``events``). Returns the parameters and the optimizer."""
    params, opt = build(scn, rln_path, rmsln_path)
    for k, step in enumerate(scn.steps):
        take_step(scn, params, opt, k)
        if events:
            checkpoint_event(step, opt)
        if after is not None:
            after(k, params, opt)
    return params, opt


# ---------------------------------------------------------------- strategies
def log_uniform(low: float, high: float):
    return st.floats(math.log10(low), math.log10(high)).map(lambda e: float(10**e))


@st.composite
def tensor_specs(draw, batch_dims=0, dtypes=tuple(DTYPES), kinds=MODERATE, rln=True, max_copy=24, max_batch=3):
    """A weight with ``batch_dims`` leading batch dimensions (each 0 to ``max_batch``) and one
    or two more; for RLN each copy has 0 or at least 2 elements (a copy of one element has its
    coefficient pinned by the projection: refused, issue 22)."""
    batch = tuple(draw(st.integers(0, max_batch)) for _ in range(batch_dims))
    ndim = draw(st.integers(1, 2))
    copy_shape = tuple(draw(st.integers(0, 6)) for _ in range(ndim))
    n = math.prod(copy_shape)
    if rln and n == 1:
        copy_shape = (*copy_shape[:-1], 2)
    if n > max_copy:
        copy_shape = (*copy_shape[:-1], max(2, max_copy // max(math.prod(copy_shape[:-1]), 1)))
    sprinkles = ()
    if kinds:
        sprinkles = tuple(draw(st.lists(st.tuples(st.integers(0, 10**4), st.sampled_from(kinds)), max_size=3)))
    if not rln and math.prod(batch + copy_shape) == 1:
        # TODO(test_rmsln_a_tiny_nonzero_norm_does_not_overflow): RMSLN overflows on a one-element
        # tensor whose value is below about 1e-38; drop this once that property passes.
        sprinkles = tuple((p, kind) for p, kind in sprinkles if kind not in TINY)
    return TensorSpec(
        shape=batch + copy_shape,
        dtype=draw(st.sampled_from(dtypes)),
        seed=draw(st.integers(0, 2**16)),
        scale=draw(st.sampled_from([1e-3, 0.1, 1.0, 30.0])),
        sprinkles=sprinkles,
    )


@st.composite
def group_specs(
    draw, dtypes=tuple(DTYPES), kinds=MODERATE, rln=True, max_tensors=3, max_reg_lr=1e7, avg_reg=(-15.0, 3.0)
):
    batch_dims = draw(st.integers(0, 2)) if rln else 0
    tensors = tuple(draw(st.lists(tensor_specs(batch_dims, dtypes, kinds, rln), min_size=1, max_size=max_tensors)))
    reg_lr = draw(st.one_of(st.just(0.0), log_uniform(1.0, max_reg_lr)))
    return GroupSpec(
        tensors=tensors,
        norm=draw(st.sampled_from([1, 2])),
        avg_reg=draw(st.floats(*avg_reg)),
        reg_lr=reg_lr,
        batch_dims=batch_dims,
        reg_lambda=draw(st.one_of(st.just(0.0), log_uniform(1e-4, 3.0))),
        target=draw(st.floats(0.0, 3.0)),
    )


@st.composite
def step_specs(draw, checkpoints=("discard", "reload"), lr_zero=True, no_grad=True):
    return StepSpec(
        seed=draw(st.integers(0, 2**16)),
        grad_scale=draw(st.sampled_from([1e-2, 0.1, 1.0])),
        no_grad=tuple(draw(st.lists(st.integers(0, 8), max_size=2))) if no_grad else (),
        lr_zero=draw(st.booleans()) if lr_zero else False,
        checkpoint=draw(st.sampled_from((None, None, *checkpoints))) if checkpoints else None,
    )


@st.composite
def scenarios(
    draw,
    stacks=STACKS,
    dtypes=tuple(DTYPES),
    kinds=MODERATE,
    inners=tuple(INNER),
    steps=(1, 5),
    checkpoints=("discard", "reload"),
    lr_zero=True,
    no_grad=True,
    add_group=True,
    max_groups=2,
    max_reg_lr=1e7,
    avg_reg=(-15.0, 3.0),
):
    """A whole run (see :class:`Scenario`)."""
    stack = draw(st.sampled_from(stacks))
    rln = "rln" in stack.replace("rmsln", "")
    groups = tuple(
        draw(
            st.lists(
                group_specs(dtypes, kinds, rln, max_reg_lr=max_reg_lr, avg_reg=avg_reg), min_size=1, max_size=max_groups
            )
        )
    )
    has_float16 = any(t.dtype == "float16" for g in groups for t in g.tensors)
    inner = draw(st.sampled_from([i for i in inners if i in FLOAT16_INNER] or ["sgd"] if has_float16 else inners))
    step_list = tuple(draw(st.lists(step_specs(checkpoints, lr_zero, no_grad), min_size=steps[0], max_size=steps[1])))
    added = None
    add_at = 0
    if add_group and draw(st.booleans()):
        added = draw(tensor_specs(groups[0].batch_dims, tuple(t.dtype for t in groups[0].tensors), kinds, rln))
        add_at = draw(st.integers(0, len(step_list) - 1))
    return Scenario(
        stack=stack,
        inner=inner,
        groups=groups,
        steps=step_list,
        lr=draw(st.sampled_from([1e-3, 1e-2, 0.1])),
        added=added,
        add_at=add_at,
    )


__all__ = [
    "CI_EXAMPLES",
    "DTYPES",
    "HUGE",
    "INNER",
    "MODERATE",
    "NON_FINITE",
    "PATHS",
    "RLN_STACKS",
    "RMSLN_ONLY_STACKS",
    "STACKS",
    "TINY",
    "GroupSpec",
    "Scenario",
    "StepSpec",
    "TensorSpec",
    "build",
    "checkpoint_event",
    "gradient",
    "log_uniform",
    "run",
    "scenarios",
    "special",
    "take_step",
    "tensor_specs",
]
