"""The dtype a wrapper computes in and keeps its state in."""

from __future__ import annotations

import torch

__all__ = ["state_dtype"]


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a wrapper computes and keeps state in for parameters of ``dtype``: float32
    for float16 and bfloat16, the parameter's own dtype for float32 and float64."""
    return dtype if torch.finfo(dtype).bits >= 32 else torch.float32
