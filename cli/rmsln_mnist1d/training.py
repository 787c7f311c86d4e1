"""The RMSLN experiment's model and training: the MLP, Adam with or without
:class:`torch_rln.RMSLNWrapper`, the training loop and the validation scores."""

from __future__ import annotations

from collections.abc import Callable

import torch

from torch_rln import RMSLNWrapper

from .data import Data, Pair
from .protocol import Settings

Penalty = Callable[[torch.nn.Module], torch.Tensor]
EpochHook = Callable[[int, float, float], None]  # (epoch, validation loss, validation accuracy)


def make_model(hidden: tuple[int, ...], seed: int, device: torch.device | str) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    layers: list[torch.nn.Module] = []
    width = 40
    for h in hidden:
        layers += [torch.nn.Linear(width, h), torch.nn.ReLU()]
        width = h
    layers.append(torch.nn.Linear(width, 10))
    return torch.nn.Sequential(*layers).to(device)


def make_optimizer(model: torch.nn.Module, params: dict[str, float]) -> torch.optim.Optimizer:
    """Adam at ``params["lr"]``, wrapped by RMSLN where ``params`` has a ``reg_lambda``."""
    optimizer: torch.optim.Optimizer = torch.optim.Adam(model.parameters(), lr=params["lr"])
    if "reg_lambda" in params:
        optimizer = RMSLNWrapper(optimizer, reg_lambda=params["reg_lambda"], target=1.0)
    return optimizer


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: Pair) -> tuple[float, float]:
    """The cross-entropy and the accuracy of ``model`` on ``data``."""
    x, y = data
    logits = model(x)
    loss = torch.nn.functional.cross_entropy(logits, y).item()
    acc = (logits.argmax(dim=1) == y).float().mean().item()
    return loss, acc


def fit(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    data: Data,
    *,
    batch_size: int,
    epochs: int,
    seed: int,
    on_epoch: EpochHook | None = None,
    penalty: Penalty | None = None,
) -> tuple[list[float], list[float]]:
    """Train ``model`` on ``data.train`` (shuffled with ``seed``), with ``penalty(model)`` added
    to the loss if given; return the validation loss and accuracy after every epoch."""
    generator = torch.Generator().manual_seed(seed)
    x, y = data.train
    losses, accs = [], []
    for epoch in range(epochs):
        model.train()
        for idx in torch.randperm(len(x), generator=generator).to(x.device).split(batch_size):
            optimizer.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            (loss if penalty is None else loss + penalty(model)).backward()
            optimizer.step()
        loss_value, acc = evaluate(model, data.val)
        losses.append(loss_value)
        accs.append(acc)
        if on_epoch is not None:
            on_epoch(epoch, loss_value, acc)
    return losses, accs


def train(
    params: dict[str, float],
    data: Data,
    settings: Settings,
    *,
    epochs: int,
    seed: int,
    on_epoch: EpochHook | None = None,
) -> tuple[list[float], list[float], torch.nn.Module]:
    """Train one model of the study; return the validation loss and accuracy after every epoch."""
    model = make_model(settings.hidden, seed, data.train[0].device)
    optimizer = make_optimizer(model, params)
    batch = settings.batch(len(data.train[0]))
    losses, accs = fit(model, optimizer, data, batch_size=batch, epochs=epochs, seed=seed, on_epoch=on_epoch)
    return losses, accs, model
