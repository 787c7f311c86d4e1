"""torch-rln: learned, per-weight regularization for any PyTorch optimizer.

* :class:`RLNOptimizer`: Regularization Learning (Shavitt & Segal, NeurIPS 2018).
"""

from .rln import RLNOptimizer, rln_update

__version__ = "0.1.0"

__all__ = ["RLNOptimizer", "rln_update", "__version__"]
