"""Many copies of one ReLU MLP, stacked: the copies train at once as batched matmuls.

Copy ``c`` of layer ``l`` is ``W_l[c]`` of shape ``(out, in)``; a batch ``(C, B, in)``
holds each copy's own rows. Every method of the experiment is one MLP family: the
tutorial's geometric widths (:func:`widths`), ReLU, a linear output, Keras'
``glorot_normal`` weights and zero biases (:func:`~torch_rln_cli.common.stacked.glorot_normal_`).

The first layer's weight is held in *parts*, each a tensor of consecutive copies,
concatenated in :meth:`StackedMLP.forward`: RLN wraps the part that holds the RLN copies,
with a Theta and a nu per copy, and not the others (:mod:`.optimizer`). Per-copy dropout
rates apply after every hidden ReLU during training.

Every copy draws its randomness (initial weights, and in :mod:`.trainer` its shuffles and
dropout masks) from a generator of its own, so a copy trains the same whatever it is
stacked with: a trial's score depends on its setting and seed, not on its neighbours.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ..common.stacked import geometric_widths, glorot_normal_


def widths(inputs: int, outputs: int, depth: int) -> list[int]:
    """The hidden widths: geometric between the input count and the output count.

    With one output (regression, binary classification) this is the tutorial's rule,
    ``round(exp(log(D) * k / depth))`` for ``k = depth-1 .. 1``
    (:func:`~torch_rln_cli.common.stacked.geometric_widths`). With ``K > 1`` outputs the same
    geometric sequence runs from ``D`` down to ``K`` instead of 1, so that the last hidden
    layer is not narrower than the classes it separates. Never below 1.
    """
    if outputs == 1:
        return geometric_widths(inputs, depth)
    if depth < 2:
        raise ValueError(f"Invalid depth: {depth} (expected >= 2)")
    log_d, log_k = math.log(max(inputs, 1)), math.log(outputs)
    return [max(1, round(math.exp(log_k + (log_d - log_k) * k / depth))) for k in range(depth - 1, 0, -1)]


class StackedMLP(torch.nn.Module):
    """``copies`` independent MLPs ``sizes[0] -> ... -> sizes[-1]``.

    Args:
        sizes: the layer sizes, inputs first.
        parts: how many consecutive copies each first-layer part holds (summing to the
            copies); ``(copies,)`` for one part.
        generators: one per copy: copy ``c`` draws its initial weights, and later its
            dropout masks, from ``generators[c]`` alone.
        dropout: per-copy dropout rates (``(copies,)``), or None for none.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        parts: Sequence[int],
        generators: Sequence[torch.Generator],
        dropout: Tensor | None = None,
        initialize: bool = True,
    ) -> None:
        super().__init__()
        copies = sum(parts)
        if len(generators) != copies:
            raise ValueError(f"{len(generators)} generators for {copies} copies")
        self.copies = copies
        self.first = torch.nn.ParameterList()
        self.weights = torch.nn.ParameterList()  # the layers after the first
        self.biases = torch.nn.ParameterList()
        layers = list(itertools.pairwise(sizes))
        for k, (fan_in, fan_out) in enumerate(layers):
            w = torch.empty(copies, fan_out, fan_in)
            for c, generator in enumerate(generators if initialize else ()):
                glorot_normal_(w[c], generator)
            if k == 0:
                for piece in w.split(list(parts)):
                    self.first.append(torch.nn.Parameter(piece.clone()))
            else:
                self.weights.append(torch.nn.Parameter(w))
            self.biases.append(torch.nn.Parameter(torch.zeros(copies, 1, fan_out)))
        self.sizes = list(sizes)
        self.generators = list(generators)
        self.rates = [0.0] * copies if dropout is None else [float(r) for r in dropout.tolist()]
        self.dropped = [(c, r) for c, r in enumerate(self.rates) if r > 0]  # the copies with dropout, and their rates

    @torch.no_grad()
    def select(self, live: Sequence[int], parts: Sequence[int]) -> StackedMLP:
        """A stack of the copies ``live`` alone (their weights, generators and dropout rates),
        its first layer split into ``parts``."""
        index = torch.tensor(list(live), dtype=torch.long, device=self.biases[0].device)
        rates = torch.tensor([self.rates[c] for c in live])
        out = StackedMLP(self.sizes, parts, [self.generators[c] for c in live], rates, initialize=False)
        out = out.to(self.biases[0].device)
        for new, piece in zip(out.first, self.first_weight()[index].split(list(parts)), strict=True):
            new.copy_(piece)
        for new, old in zip([*out.weights, *out.biases], [*self.weights, *self.biases], strict=True):
            new.copy_(old[index])
        return out

    def first_weight(self) -> Tensor:
        """The first layer's weight of every copy, ``(copies, hidden, inputs)``."""
        return self.first[0] if len(self.first) == 1 else torch.cat(list(self.first))

    def matrices(self) -> list[Tensor]:
        """Every weight matrix (not the biases), the first layer's parts first."""
        return [*self.first, *self.weights]

    def forward(self, x: Tensor, train: bool = False) -> Tensor:
        """``x``: ``(copies, B, in)`` -> ``(copies, B, out)``. With ``train``, dropout with each
        copy's rate follows every hidden ReLU; without, none."""
        weights = [self.first_weight(), *self.weights]
        last = len(weights) - 1
        for i, (w, b) in enumerate(zip(weights, self.biases, strict=True)):
            x = torch.baddbmm(b, x, w.transpose(1, 2))
            if i < last:
                x = torch.relu(x)
                if train and self.dropped:
                    x = self._dropout(x)
        return x

    def _dropout(self, x: Tensor) -> Tensor:
        """Inverted dropout on the copies that have a rate, each mask from its copy's generator."""
        scale = torch.ones(x.shape, dtype=x.dtype)
        for c, rate in self.dropped:
            keep = torch.rand(x.shape[1:], generator=self.generators[c]) >= rate
            scale[c] = keep / (1 - rate)
        return x * scale.to(x.device)
