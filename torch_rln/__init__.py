"""torch-rln: learned, per-weight regularization for any PyTorch optimizer.

* :class:`RLNOptimizer`: Regularization Learning (Shavitt & Segal, NeurIPS 2018).
* :class:`RMSLNWrapper`: the RMS-norm penalty ``reg_lambda * sum_l (rms(W_l) - target)^2``.

Both wrap any ``torch.optim`` optimizer, and each other. ``RLNOptimizer.factory(Adam, ...)``
(and ``RMSLNWrapper.factory``) build optimizer classes for frameworks that take one.
"""

from ._telemetry import TensorStats, log_stats
from .rln import RLNOptimizer, rln_update
from .rmsln import RMSLNWrapper, rms_penalty, rms_penalty_grad, rmsln_update

__version__ = "0.1.0"

__all__ = [
    "RLNOptimizer",
    "RMSLNWrapper",
    "TensorStats",
    "__version__",
    "log_stats",
    "rln_update",
    "rms_penalty",
    "rms_penalty_grad",
    "rmsln_update",
]
