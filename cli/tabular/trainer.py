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


@dataclass(frozen=True)
class Schedule:
    """How long and how every copy trains."""

    depth: int = 3
    batch_size: int = 32
    max_epochs: int = 40
    patience: int = 8  # a copy stops once its validation loss has not improved for this many epochs


@dataclass
class Trained:
    """What a stacked training gives back, per copy."""

    best_loss: list[float]  # the lowest validation loss (inf where it diverged)
    best_epoch: list[int]  # 1-based
    epochs: int  # how many epochs the stack ran
    model: StackedMLP  # at each copy's best epoch if ``keep_best``, else at the last
    eliminated: Tensor  # (copies, inputs) bool: whole first-layer column exactly 0


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
    validation split; ``on_epoch(epoch)`` after each epoch (1-based)."""
    n_copies = len(copies)
    device = data.x_train.device
    inputs = data.x_train.shape[-1]
    sizes = [inputs, *widths(inputs, data.outputs, schedule.depth), data.outputs]
    generators = [torch.Generator().manual_seed(s) for s in copies.init_seed]
    parts = rln_parts(n_copies, copies.rln)
    dropout = _tensor(copies.dropout, n_copies)
    model = StackedMLP(sizes, parts, generators, dropout).to(device)
    lr = torch.tensor(copies.lr, dtype=torch.float32, device=device)
    decay = _tensor(copies.weight_decay, n_copies)
    optimizer = make_optimizer(model, lr, None if decay is None else decay.to(device), parts, copies.rln, compile_rln)
    l1 = _tensor(copies.l1, n_copies)
    l1 = None if l1 is None else l1.to(device)

    slot = torch.tensor(copies.slot, dtype=torch.long, device=device)
    x_val, y_val = data.x_val[slot], data.y_val[slot]
    n_train = data.x_train.shape[1]
    best = torch.full((n_copies,), math.inf)
    best_epoch = torch.zeros(n_copies, dtype=torch.long)
    stopped = torch.zeros(n_copies, dtype=torch.bool)
    saved = BestWeights(model) if keep_best else None
    epoch = 0
    for epoch in range(1, schedule.max_epochs + 1):
        order = torch.stack([torch.randperm(n_train, generator=g) for g in generators]).to(device)
        for start in range(0, n_train, schedule.batch_size):
            idx = order[:, start : start + schedule.batch_size]
            optimizer.zero_grad(set_to_none=True)
            pred = model(data.x_train[slot[:, None], idx], train=True)
            loss = per_copy_loss(pred, data.y_train[slot[:, None], idx], data.task).sum()
            if l1 is not None:
                loss = loss + (l1 * model.first_weight().abs().sum(dim=(1, 2))).sum()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            val = per_copy_loss(model(x_val), y_val, data.task).cpu()
        val = torch.where(torch.isnan(val), math.inf, val)
        improved = (val < best) & ~stopped  # a copy that has stopped keeps its best, as it would alone
        best = torch.where(improved, val, best)
        best_epoch = torch.where(improved, epoch, best_epoch)
        if saved is not None:
            saved.update(improved.to(device))
        if on_epoch is not None:
            on_epoch(epoch)
        stopped |= epoch - best_epoch >= schedule.patience
        if bool(stopped.all()):
            break
    if saved is not None:
        saved.restore()
    return Trained(
        best_loss=[float(v) for v in best.tolist()],
        best_epoch=[int(e) for e in best_epoch.tolist()],
        epochs=epoch,
        model=model,
        eliminated=eliminated_inputs(model, optimizer, copies.rln).cpu(),
    )
