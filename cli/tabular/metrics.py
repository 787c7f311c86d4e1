"""The scores: on the test split once per (method, seed), and the validation loss that tuning minimizes.

* Regression: RMSE and R^2, in the target's own units; tuning minimizes the validation
  MSE on the standardized target (the same ranking as RMSE).
* Classification: log loss and accuracy, and ROC AUC for two classes; tuning minimizes
  the validation log loss.

The first metric of each task (:data:`PRIMARY`) is what the summary counts and ranks.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, log_loss, r2_score, roc_auc_score

METRICS = {"regression": ("rmse", "r2"), "classification": ("log_loss", "accuracy", "roc_auc")}
PRIMARY = {"regression": "rmse", "classification": "log_loss"}
LOWER_IS_BETTER = frozenset({"rmse", "log_loss"})
NAMES = {"rmse": "RMSE", "r2": "R^2", "log_loss": "log loss", "accuracy": "accuracy", "roc_auc": "ROC AUC"}


def metrics_for(task: str, classes: int) -> tuple[str, ...]:
    """The metrics reported for a task (ROC AUC for two classes only)."""
    names = METRICS[task]
    return tuple(m for m in names if m != "roc_auc" or classes == 2)


def test_scores(task: str, classes: int, y_true: np.ndarray, prediction: np.ndarray) -> dict[str, float]:
    """The test metrics: ``prediction`` is the prediction in the target's units (regression) or
    the class probabilities ``(n, K)`` (classification)."""
    if task == "regression":
        rmse = float(np.sqrt(np.mean((prediction - y_true) ** 2)))
        return {"rmse": rmse, "r2": float(r2_score(y_true, prediction))}
    probabilities = _normalized(prediction)
    out = {
        "log_loss": float(log_loss(y_true, probabilities, labels=list(range(classes)))),
        "accuracy": float(accuracy_score(y_true, probabilities.argmax(axis=1))),
    }
    if classes == 2:
        out["roc_auc"] = float(roc_auc_score(y_true, probabilities[:, 1]))
    return out


def validation_loss(task: str, classes: int, y_true: np.ndarray, prediction: np.ndarray) -> float:
    """What tuning minimizes: MSE on the standardized target, or log loss."""
    if task == "regression":
        return float(np.mean((prediction - y_true) ** 2))
    return float(log_loss(y_true, _normalized(prediction), labels=list(range(classes))))


def _normalized(probabilities: np.ndarray) -> np.ndarray:
    """Probabilities clipped away from 0 and 1 and renormalized (a saturated sigmoid or an
    overconfident tree gives exact 0s; log loss stays finite, as scikit-learn clips too)."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), 1e-15, 1.0)
    normalized: np.ndarray = p / p.sum(axis=1, keepdims=True)
    return normalized


def better(metric: str, a: float, b: float) -> bool:
    """Whether ``a`` is a better value of ``metric`` than ``b``."""
    return a < b if metric in LOWER_IS_BETTER else a > b
