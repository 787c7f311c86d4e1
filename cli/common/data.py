"""Data helpers the experiments share: standardization and NumPy arrays as tensors."""

from __future__ import annotations

import numpy as np
import torch

Arrays = tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]  # (x, y) to train, (x, y) to test


def standardize(x_train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Scale every column to zero mean and unit variance with the training set's statistics."""
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return [(a - mean) / std for a in (x_train, *others)]


def as_tensor(a: np.ndarray, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """``a`` as a tensor of ``dtype`` on ``device`` (float32 inputs, int64 labels, ...)."""
    return torch.as_tensor(np.asarray(a)).to(device=device, dtype=dtype)
