"""Train many settings of the MLP at once: one stacked model, each copy its own setting and data.

A copy is one (method, seed, setting): it trains on its seed's training split, with its
own learning rate, L1 strength, weight decay, dropout rate or RLN settings, and is
early-stopped on its seed's validation split. Nothing else of the data reaches it.
Every copy's gradient is its own (the loss is the sum of the copies' losses), and every
copy draws its initial weights, shuffles and dropout masks from a generator of its own
(seeded with its ``init_seed``), so the stack trains as that many separate models would,
whatever the copies are stacked with (the tests hold a stack equal to its copies alone).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from torch_rln import RLNOptimizer

from .network import StackedMLP, widths
from .optimizer import RlnSettings, make_optimizer, rln_parts

Task = str  # "regression", "binary" or "multiclass"


@dataclass
class Splits:
    """Every seed's training and validation rows, as tensors stacked over the seeds (slots).

    ``x_*``: ``(slots, rows, inputs)``; ``y_*``: ``(slots, rows)``, float (regression,
    standardized on the training split; binary: 0/1) or int64 class indices.
    """

    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    task: Task
    outputs: int


@dataclass
class Copies:
    """The settings of each copy of one stacked training."""

    slot: list[int]  # the data slot (seed) each copy trains on
    init_seed: list[int]  # each copy's randomness (weights, shuffles, dropout) comes from a generator seeded with this
    lr: list[float]
    l1: list[float] = field(default_factory=list)  # empty: none anywhere
    weight_decay: list[float] = field(default_factory=list)
    dropout: list[float] = field(default_factory=list)
    rln: RlnSettings = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.slot)


MIN_BATCH = 32
STEPS_PER_EPOCH = 10


@dataclass(frozen=True)
class Schedule:
    """How long and how every copy trains."""

    depth: int = 3
    batch_size: int | None = None  # None: max(MIN_BATCH, ceil(training rows / STEPS_PER_EPOCH))
    max_epochs: int = 100
    patience: int = 10  # a copy stops once its validation loss has not improved for this many epochs

    def batch(self, n_train: int) -> int:
        """The batch for a training split of ``n_train`` rows: ``batch_size`` if set, else about
        :data:`STEPS_PER_EPOCH` steps per epoch and at least :data:`MIN_BATCH` rows (32 for
        the small sets; digits' 1078 rows take 108: each step also updates every weight and
        its optimizer state, which on the widest sets costs more than the batch itself)."""
        return self.batch_size or max(MIN_BATCH, -(-n_train // STEPS_PER_EPOCH))


@dataclass
class Trained:
    """What a stacked training gives back, per copy."""

    best_loss: list[float]  # the lowest validation loss (inf where it diverged)
    best_epoch: list[int]  # 1-based
    epochs: int  # how many epochs the stack ran
    trained_epochs: list[int]  # how many epochs each copy trained (up to its stop)
    model: StackedMLP | None  # with ``keep_best``: every copy at its best epoch
    eliminated: Tensor | None  # with ``keep_best``: (copies, inputs) bool, whole first-layer column exactly 0


def per_copy_loss(pred: Tensor, y: Tensor, task: Task) -> Tensor:
    """The mean loss of each copy: MSE, binary or multiclass cross-entropy; ``(copies,)``."""
    if task == "regression":
        return ((pred.squeeze(-1) - y) ** 2).mean(dim=1)
    if task == "binary":
        return torch.nn.functional.binary_cross_entropy_with_logits(pred.squeeze(-1), y, reduction="none").mean(dim=1)
    return torch.nn.functional.cross_entropy(pred.transpose(1, 2), y, reduction="none").mean(dim=1)


def _tensor(values: Sequence[float], copies: int) -> Tensor | None:
    if not values or not any(v != 0 for v in values):
        return None
    if len(values) != copies:
        raise ValueError(f"{len(values)} values for {copies} copies")
    return torch.tensor(values, dtype=torch.float32)


def _param_slices(model: StackedMLP) -> list[tuple[Tensor, slice]]:
    """Every parameter with the copies it holds."""
    out, start = [], 0
    for part in model.first:
        out.append((part, slice(start, start + part.shape[0])))
        start += part.shape[0]
    out += [(p, slice(0, model.copies)) for p in [*model.weights, *model.biases]]
    return out


class BestWeights:
    """Each copy's weights at its best validation epoch so far."""

    def __init__(self, model: StackedMLP) -> None:
        self.params = _param_slices(model)
        self.saved = [p.detach().clone() for p, _ in self.params]

    def update(self, improved: Tensor) -> None:
        with torch.no_grad():
            for (p, sl), saved in zip(self.params, self.saved, strict=True):
                mask = improved[sl].view(-1, *([1] * (p.ndim - 1)))
                saved.copy_(torch.where(mask, p, saved))

    def restore(self) -> None:
        with torch.no_grad():
            for (p, _), saved in zip(self.params, self.saved, strict=True):
                p.copy_(saved)


def eliminated_inputs(model: StackedMLP, optimizer: torch.optim.Optimizer, rln: RlnSettings) -> Tensor:
    """``(copies, inputs)`` bool, True where the copy's whole first-layer column is exactly 0:
    RLN's own ``stats()`` for its copies, the same test on the weights for the others."""
    mask = (model.first_weight().detach() == 0).all(dim=1)
    if isinstance(optimizer, RLNOptimizer) and rln:
        names = {f"first.{k}": part for k, part in enumerate(model.first)}
        stats = optimizer.stats(names)
        start = 0
        for k, part in enumerate(model.first):
            if start in rln:
                eliminated = stats[f"first.{k}"].eliminated_mask
                assert eliminated is not None  # a first-layer weight is (copies, out, in)
                mask[start : start + part.shape[0]] = eliminated
            start += part.shape[0]
    return mask


COMPACT_BELOW = 0.75  # trials: once this share of the stack is left training, the stopped copies are dropped


class _Stack:
    """The stacked model and optimizer of the copies still training (``ids``: their indices
    among all the copies)."""

    def __init__(self, copies: Copies, ids: list[int], model: StackedMLP, data: Splits, compile_rln: bool) -> None:
        device = data.x_train.device
        self.copies, self.ids, self.model, self.compile_rln = copies, ids, model, compile_rln
        self.parts = rln_parts(len(copies), copies.rln)
        n = len(copies)
        self.lr = torch.tensor(copies.lr, dtype=torch.float32, device=device)
        decay = _tensor(copies.weight_decay, n)
        self.decay = None if decay is None else decay.to(device)
        self.optimizer = make_optimizer(model, self.lr, self.decay, self.parts, copies.rln, compile_rln)
        l1 = _tensor(copies.l1, n)
        self.l1 = None if l1 is None else l1.to(device)
        self.slot = torch.tensor(copies.slot, dtype=torch.long, device=device)
        self.x_val, self.y_val = data.x_val[self.slot], data.y_val[self.slot]

    @classmethod
    def start(cls, copies: Copies, data: Splits, depth: int, compile_rln: bool) -> _Stack:
        inputs = data.x_train.shape[-1]
        sizes = [inputs, *widths(inputs, data.outputs, depth), data.outputs]
        generators = [torch.Generator().manual_seed(s) for s in copies.init_seed]
        model = StackedMLP(sizes, rln_parts(len(copies), copies.rln), generators, _tensor(copies.dropout, len(copies)))
        return cls(copies, list(range(len(copies))), model.to(data.x_train.device), data, compile_rln)

    def epoch(self, data: Splits, batch_size: int) -> None:
        """One epoch: every copy on its own shuffle of its slot's training rows."""
        n_train = data.x_train.shape[1]
        order = torch.stack([torch.randperm(n_train, generator=g) for g in self.model.generators])
        order = order.to(data.x_train.device)
        for start in range(0, n_train, batch_size):
            idx = order[:, start : start + batch_size]
            self.optimizer.zero_grad(set_to_none=True)
            pred = self.model(data.x_train[self.slot[:, None], idx], train=True)
            loss = per_copy_loss(pred, data.y_train[self.slot[:, None], idx], data.task).sum()
            if self.l1 is not None:
                loss = loss + (self.l1 * self.model.first_weight().abs().sum(dim=(1, 2))).sum()
            loss.backward()
            self.optimizer.step()

    @torch.no_grad()
    def validation_loss(self, task: Task) -> Tensor:
        val = per_copy_loss(self.model(self.x_val), self.y_val, task).cpu()
        return torch.where(torch.isnan(val), math.inf, val)

    def select(self, keep: list[int], data: Splits) -> _Stack:
        """A stack of the copies at positions ``keep`` alone, with their weights and their
        optimizer state (RMSprop's and RLN's, through ``state_dict``), to train on as before."""
        c = self.copies
        sub = Copies(
            slot=[c.slot[k] for k in keep],
            init_seed=[c.init_seed[k] for k in keep],
            lr=[c.lr[k] for k in keep],
            l1=[c.l1[k] for k in keep] if c.l1 else [],
            weight_decay=[c.weight_decay[k] for k in keep] if c.weight_decay else [],
            dropout=[c.dropout[k] for k in keep] if c.dropout else [],
            rln={j: c.rln[k] for j, k in enumerate(keep) if k in c.rln},
        )
        model = self.model.select(keep, rln_parts(len(keep), sub.rln))
        new = _Stack(sub, [self.ids[k] for k in keep], model, data, self.compile_rln)
        new.optimizer.load_state_dict(self._state_for(new, keep))
        return new

    def _state_for(self, new: _Stack, keep: list[int]) -> dict[str, Any]:
        """``new``'s optimizer state: this stack's, for the copies ``keep``."""
        old = self.optimizer.state_dict()["state"]
        index = torch.tensor(keep, dtype=torch.long)
        first_old, first_new = len(self.model.first), len(new.model.first)
        # the first layer: every state tensor of every part, copy by copy (RLN's on the RLN parts alone)
        per_copy: list[dict[str, Tensor]] = []
        for i, size in enumerate(self.parts):
            per_copy += [{k: v[j : j + 1] for k, v in old.get(i, {}).items()} for j in range(size)]
        state: dict[int, dict[str, Any]] = {}
        start = 0
        for j, size in enumerate(new.parts):
            members = [per_copy[keep[c]] for c in range(start, start + size)]
            keys = set.intersection(*(set(m) for m in members))
            if keys:
                state[j] = {k: torch.cat([m[k] for m in members]).clone() for k in sorted(keys)}
            start += size
        for k in range(len(self.model.weights) + len(self.model.biases)):
            if first_old + k in old:
                state[first_new + k] = {n: v[index.to(v.device)].clone() for n, v in old[first_old + k].items()}
        template = new.optimizer.state_dict()
        template["state"] = state
        return template


def train(
    copies: Copies,
    data: Splits,
    schedule: Schedule,
    *,
    keep_best: bool = False,
    compile_rln: bool = False,
    on_epoch: Callable[[int], None] | None = None,
) -> Trained:
    """Train every copy of ``copies`` on its slot's training split, early-stopped on its
    validation split; ``on_epoch(epoch)`` after each epoch (1-based).

    With ``keep_best`` (the final models), every copy's weights at its best epoch are kept
    and returned with the inputs it eliminated. Without it (trials: only the validation
    losses count), copies that have stopped are dropped from the stack as it goes
    (:data:`COMPACT_BELOW`), so that the copies still training do not pay for them; each
    copy's arithmetic is the same either way.
    """
    n_copies = len(copies)
    stack = _Stack.start(copies, data, schedule.depth, compile_rln)
    best = torch.full((n_copies,), math.inf)
    best_epoch = torch.zeros(n_copies, dtype=torch.long)
    stopped = torch.zeros(n_copies, dtype=torch.bool)
    trained_epochs = torch.zeros(n_copies, dtype=torch.long)
    saved = BestWeights(stack.model) if keep_best else None
    epoch = 0
    for epoch in range(1, schedule.max_epochs + 1):
        stack.epoch(data, schedule.batch(data.x_train.shape[1]))
        ids = torch.tensor(stack.ids, dtype=torch.long)
        trained_epochs[ids] = epoch
        val = stack.validation_loss(data.task)
        improved = (val < best[ids]) & ~stopped[ids]  # a copy that has stopped keeps its best, as it would alone
        best[ids] = torch.where(improved, val, best[ids])
        best_epoch[ids] = torch.where(improved, epoch, best_epoch[ids])
        if saved is not None:
            saved.update(improved.to(data.x_train.device))
        stopped[ids] |= epoch - best_epoch[ids] >= schedule.patience
        if on_epoch is not None:
            on_epoch(epoch)
        if bool(stopped.all()):
            break
        live = [k for k, i in enumerate(stack.ids) if not stopped[i]]
        if saved is None and len(live) <= COMPACT_BELOW * len(stack.ids):
            stack = stack.select(live, data)
    if saved is not None:
        saved.restore()
    return Trained(
        best_loss=[float(v) for v in best.tolist()],
        best_epoch=[int(e) for e in best_epoch.tolist()],
        epochs=epoch,
        trained_epochs=[int(e) for e in trained_epochs.tolist()],
        model=stack.model if keep_best else None,
        eliminated=eliminated_inputs(stack.model, stack.optimizer, stack.copies.rln).cpu() if keep_best else None,
    )
