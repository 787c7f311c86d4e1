"""The RMSLN experiment's data: MNIST-1D regenerated offline with the ``mnist1d`` package
(never downloaded), as tensors for the protocol's splits."""

from __future__ import annotations

import numpy as np
import torch
from mnist1d.data import get_dataset_args, make_dataset

from ..common.data import Arrays, as_tensor

Pair = tuple[torch.Tensor, torch.Tensor]  # sequences, labels


def load_mnist1d() -> Arrays:
    """MNIST-1D (Greydanus, 2020), regenerated offline with the published arguments.

    ``mnist1d.data.make_dataset(mnist1d.data.get_dataset_args())`` rebuilds the frozen
    data set (4000 training and 1000 test sequences of length 40, seed 42) to within 3e-16;
    nothing is downloaded. Returns ``(x_train, y_train), (x_test, y_test)`` as numpy arrays
    (float64 sequences, int64 labels 0-9).
    """
    data = make_dataset(get_dataset_args())
    return (data["x"], data["y"].astype(np.int64)), (data["x_test"], data["y_test"].astype(np.int64))


class Data:
    """Tensors for the protocol: ``train`` to fit, ``val`` for curves and trials, ``test`` or None."""

    def __init__(self, protocol: str, validation_size: int, seed: int, device: torch.device | str) -> None:
        (x, y), (x_test, y_test) = load_mnist1d()
        self.test: Pair | None
        if protocol == "holdout":
            order = np.random.default_rng(seed).permutation(len(x))
            val, fit = order[:validation_size], order[validation_size:]
            self.train = self._pair(x[fit], y[fit], device)
            self.val = self._pair(x[val], y[val], device)
            self.test = self._pair(x_test, y_test, device)
        else:
            self.train = self._pair(x, y, device)
            self.val = self._pair(x_test, y_test, device)
            self.test = None

    @staticmethod
    def _pair(x: np.ndarray, y: np.ndarray, device: torch.device | str) -> Pair:
        return as_tensor(x, torch.float32, device), as_tensor(y, torch.int64, device)
