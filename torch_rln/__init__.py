"""torch-rln: learned, per-weight regularization for any PyTorch optimizer.

* :class:`RLNOptimizer`: Regularization Learning (Shavitt & Segal, NeurIPS 2018).
* :class:`RMSLNWrapper`: the RMS-norm penalty ``reg_lambda * sum_l (rms(W_l) - target)^2``.

Both wrap any ``torch.optim`` optimizer, and each other. ``RLNOptimizer.factory(Adam, ...)``
(and ``RMSLNWrapper.factory``) build optimizer classes for frameworks that take one.

A new regularizer subclasses :class:`RegularizedOptimizer` and describes its update with
:class:`Implementations` (optionally a :class:`CompiledKernel`); :mod:`torch_rln.checks`
validates its settings.
"""

from . import checks
from ._dtypes import state_dtype
from ._implementations import CompiledKernel, Implementations
from ._rln_stats import TensorStats, log_stats
from ._wrapper import RegularizedOptimizer
from .rln import RLNOptimizer, rln_coefficients, rln_update
from .rmsln import RMSLNWrapper, rms_penalty, rms_penalty_grad, rmsln_update

__version__ = "0.2.0"

__all__ = [
    "CompiledKernel",
    "Implementations",
    "RLNOptimizer",
    "RMSLNWrapper",
    "RegularizedOptimizer",
    "TensorStats",
    "__version__",
    "checks",
    "log_stats",
    "rln_coefficients",
    "rln_update",
    "rms_penalty",
    "rms_penalty_grad",
    "rmsln_update",
    "state_dtype",
]
