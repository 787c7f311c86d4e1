"""Several repeats of one MLP trained at once, as stacked weights and batched matmuls.

A protocol that trains each configuration several times at a small batch takes many
small steps, where Python overhead per step dominates. Stacking the repeats makes each
step one set of batched ops: layer ``l`` holds ``W_l`` of shape ``(R, out, in)``, every
repeat draws its own shuffle and its own mini-batch, and the loss is the sum of the
repeats' losses, so each repeat's gradient is its own. The optimizers used here are
elementwise (RMSprop, Adam) and RLN runs with ``batch_dims=1`` (one mean projection per
repeat), so the stack trains exactly as R separate models would.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

KERAS_TRUNCATED_NORMAL_STD = 0.87962566103423978  # std of N(0, 1) truncated at +-2


def geometric_widths(input_dim: int, depth: int) -> list[int]:
    """Hidden widths ``round(exp(log(D) * k / depth))`` for ``k = depth-1 .. 1``, as the
    RLN tutorial's ``int(np.round(np.exp(np.log(INPUT_DIM) * np.arange(depth - 1, 0, -1) / depth)))``:
    the widths fall geometrically from the input size ``D`` to 1.

    For example, D = 1013: depth 2 gives [32], depth 4 gives [180, 32, 6] (1013 ** 0.75 =
    179.58 rounds to 180).
    """
    if depth < 2:
        raise ValueError(f"Invalid depth: {depth} (expected >= 2)")
    return [round(math.exp(math.log(input_dim) * k / depth)) for k in range(depth - 1, 0, -1)]


def glorot_normal_(weight: Tensor, generator: torch.Generator) -> Tensor:
    """Keras' ``glorot_normal``: N(0, 2 / (fan_in + fan_out)) truncated at two std.

    The normal is scaled so that the truncated distribution has that variance (Keras >= 2.2.3).
    ``weight`` is ``(..., fan_out, fan_in)``; leading dims are independent repeats.
    """
    fan_out, fan_in = weight.shape[-2], weight.shape[-1]
    std = math.sqrt(2.0 / (fan_in + fan_out)) / KERAS_TRUNCATED_NORMAL_STD
    with torch.no_grad():
        sample = torch.empty(weight.shape, dtype=torch.float64)
        torch.nn.init.trunc_normal_(sample, std=1.0, a=-2.0, b=2.0, generator=generator)
        weight.copy_(sample * std)
    return weight


class StackedMLP(torch.nn.Module):
    """``repeats`` independent ReLU MLPs ``sizes[0] -> ... -> sizes[-1]``, stacked."""

    def __init__(self, sizes: Sequence[int], repeats: int, generator: torch.Generator) -> None:
        super().__init__()
        self.weights = torch.nn.ParameterList()
        self.biases = torch.nn.ParameterList()
        for fan_in, fan_out in itertools.pairwise(sizes):
            w = torch.nn.Parameter(torch.empty(repeats, fan_out, fan_in))
            glorot_normal_(w, generator)
            self.weights.append(w)
            self.biases.append(torch.nn.Parameter(torch.zeros(repeats, 1, fan_out)))

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``(R, B, in)`` -> ``(R, B, out)``."""
        return self.layers(x)[-1]

    def layers(self, x: Tensor) -> list[Tensor]:
        """Every layer's output for ``x`` ``(R, B, in)``: the hidden ones after ReLU, then the output."""
        outputs = []
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            x = torch.baddbmm(b, x, w.transpose(1, 2))
            if i < last:
                x = torch.relu(x)
            outputs.append(x)
        return outputs


COLLAPSE_STD_RATIO = 1e-3


@torch.no_grad()
def collapsed(model: StackedMLP, x: Tensor, target_std: float) -> Tensor:
    """Which repeats have collapsed: a ``(R,)`` bool tensor.

    A repeat has collapsed when its network no longer responds to its input: its
    predictions on ``x`` (the training inputs, shared by all repeats) have a std below
    :data:`COLLAPSE_STD_RATIO` times ``target_std`` (the training targets' std), or some
    hidden layer has no unit active on any row of ``x``. Such a layer passes only zeros
    on, so the output is a constant of the later biases, and no gradient reaches any
    weight before it: with RMSprop it cannot recover. Its score is the MSE of a constant.
    """
    outputs = model.layers(x.expand(model.weights[0].shape[0], -1, -1))
    dead = torch.zeros(outputs[-1].shape[0], dtype=torch.bool, device=x.device)
    for hidden in outputs[:-1]:
        dead |= ~(hidden > 0).flatten(1).any(dim=1)
    constant = outputs[-1].flatten(1).std(dim=1) < COLLAPSE_STD_RATIO * target_std
    return dead | constant


def collapse_check_epochs(epochs: int) -> list[int]:
    """The epochs (1-based) after which collapse is looked for: 1, 2, 4, 8, ... and the last.

    One check is a forward pass over the training set, about as costly as a few dozen
    steps; checking every epoch would add a tenth to the run, these few add under 1%.
    """
    checks = [e for e in (2**k for k in range(epochs.bit_length())) if e < epochs]
    return [*checks, epochs]


class CollapseWatch:
    """Looks for collapsed repeats after the epochs of :func:`collapse_check_epochs` and keeps
    the first epoch at which each repeat was seen collapsed; an ``on_epoch`` of :func:`train_stacked`."""

    def __init__(self, model: StackedMLP, x: Tensor, y: Tensor, epochs: int) -> None:
        self.model, self.x, self.target_std = model, x, float(y.std())
        self.checks = set(collapse_check_epochs(epochs))
        self.first_seen: dict[int, int] = {}

    def __call__(self, epoch: int) -> None:
        if epoch + 1 in self.checks:
            for r in torch.nonzero(collapsed(self.model, self.x, self.target_std)).flatten().tolist():
                self.first_seen.setdefault(int(r), epoch + 1)

    def at_end(self) -> tuple[list[int], list[int]]:
        """The repeats collapsed at the end of training, and the first epoch each was seen."""
        now = torch.nonzero(collapsed(self.model, self.x, self.target_std)).flatten().tolist()
        return [int(r) for r in now], [self.first_seen.get(int(r), -1) for r in now]


def train_stacked(
    model: StackedMLP,
    optimizer: torch.optim.Optimizer,
    x: Tensor,
    y: Tensor,
    *,
    epochs: int,
    batch_size: int,
    generator: torch.Generator,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    penalty: Callable[[], Tensor] | None = None,
    on_step: Callable[[], None] | None = None,
    on_epoch: Callable[[int], None] | None = None,
) -> None:
    """Train every repeat on its own shuffle of ``(x, y)`` (shared across repeats).

    ``loss_fn(pred, target)`` returns one loss per repeat, shape ``(R,)``; their sum is
    minimized, plus ``penalty()`` if given (a sum of per-repeat penalties). ``on_step()``
    runs after every step, ``on_epoch(epoch)`` (0-based) after every epoch.
    """
    repeats, n = model.weights[0].shape[0], x.shape[0]
    device = x.device
    for epoch in range(epochs):
        order = torch.stack([torch.randperm(n, generator=generator) for _ in range(repeats)]).to(device)
        for start in range(0, n, batch_size):
            idx = order[:, start : start + batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x[idx]), y[idx]).sum()
            if penalty is not None:
                loss = loss + penalty()
            loss.backward()
            optimizer.step()
            if on_step is not None:
                on_step()
        if on_epoch is not None:
            on_epoch(epoch)


def steps_per_epoch(n: int, batch_size: int) -> int:
    return -(-n // batch_size)
