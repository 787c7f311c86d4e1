"""Fixtures shared by the test files. The plain helpers they build on (models, data, the
training step, the snapshot, the INNER, WRAPPERS and PATHS tables) are in helpers.py.

Where tests go: see the README's Contributing section. In short, a behaviour both wrappers
share goes in the file of its concern (test_schedulers, test_grad_scaler, test_closures,
test_hooks, test_state_dict, test_dcp, test_errors, test_wrapper), parametrized over
``WRAPPERS``; a regularizer's own math, paths and reference runs go in
test_<regularizer>_math / _paths / _reference.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from helpers import PATHS, WRAPPERS

import torch_rln.rln as rln_module


def _compiler_works():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # compiled_kernel_works warns once where it fails
        return rln_module.compiled_kernel_works(torch.device("cpu"), torch.float32)


@pytest.fixture
def compiler():
    """Skips the test where torch.compile does not work on this machine (probed once per process)."""
    if not _compiler_works():
        pytest.skip("torch.compile does not work on this machine")


@pytest.fixture(params=list(PATHS))
def path(request):
    """The name of an update path (a key of helpers.PATHS): per_tensor, foreach, compiled.
    Narrow it with ``@pytest.mark.parametrize("path", [...], indirect=True)``."""
    if request.param == "compiled":
        request.getfixturevalue("compiler")
    return request.param


@pytest.fixture(params=list(WRAPPERS))
def wrapper_name(request):
    """Each name of helpers.WRAPPERS: RLN, coupled RMSLN, decoupled RMSLN, RMSLN over RLN."""
    return request.param
