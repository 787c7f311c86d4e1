"""Slow, obvious NumPy references of the regularizers, written from the equations.

These are the oracles that the fast paths in torch_rln are held equal to.
"""

from __future__ import annotations

import numpy as np


class NumpyRLN:
    """Regularization Learning for one weight matrix, step by step as the Keras RLNCallback.

    Call :meth:`after_inner_step` with the weights the inner optimizer produced; it returns
    the regularized weights, and keeps ``lam`` (the log-coefficients) and ``r_prev``.
    """

    def __init__(self, shape, norm=1, avg_reg=-7.5, reg_lr=6e5):
        assert norm in (1, 2)
        self.norm, self.avg_reg, self.reg_lr = norm, avg_reg, reg_lr
        self.lam = np.full(shape, float(avg_reg))
        self.r_prev = None
        self.w_prev = None

    def after_inner_step(self, w_new: np.ndarray) -> np.ndarray:
        w_new = np.asarray(w_new, dtype=np.float64)
        lam = self.lam.copy()
        # 1-2: the counterfactual gradient and the projection, from the second step on.
        if self.w_prev is not None:
            delta = w_new - self.w_prev
            lam = lam - self.reg_lr * delta * self.r_prev
            lam = lam + (self.avg_reg - lam.mean())
        # 3: the derivative of the norm.
        d = np.sign(w_new) if self.norm == 1 else 2.0 * w_new
        # 4: the cap; 0/0 is NaN, and a NaN cap does not cap.
        with np.errstate(divide="ignore", invalid="ignore"):
            cap = np.log(np.abs(w_new / d))
        bound = lam >= cap
        lam = np.where(bound, cap, lam)
        # 5: the shrink; exactly the weight where the cap binds, exactly 0 where d == 0.
        shrink = np.zeros_like(w_new)
        free = ~bound & (d != 0)
        shrink[free] = d[free] * np.exp(lam[free])
        shrink[bound] = w_new[bound]
        w = w_new - shrink
        self.lam, self.r_prev, self.w_prev = lam, shrink, w
        return w
