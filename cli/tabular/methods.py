"""The methods compared, each with its Optuna search space.

Five versions of one MLP (:mod:`.network`), trained with RMSprop (Keras' defaults, as the
RLN tutorial: rho 0.9, eps 1e-7), all searching the same learning rate, and each
regularized method one strength more:

==============  =========================================================================
``none``        no regularization: the learning rate alone
``l1``          + L1 on the first layer's weights, ``l1 * sum |W1|`` added to the loss
``weight_decay``+ weight decay on every weight matrix (torch's RMSprop ``weight_decay``)
``dropout``     + dropout after every hidden ReLU
``rln``         + RLN on the first layer: Theta (natural log) and log10 nu
==============  =========================================================================

and two references that are not neural networks: ``hist_gb``, scikit-learn's
HistGradientBoosting (learning rate, leaves, leaf size, L2; early-stopped on the same
validation split) and ``l1_linear``, the L1 linear model (Lasso for regression, L1
logistic regression for classification: its inverse strength C).

The ranges (:data:`LR`, ...) follow the README's "Choosing Theta and nu": at RMSprop's
lr 1e-3 the tutorial's best Theta is -10; the learning rate here moves over two decades,
so Theta moves about as far (-14 to -6) and nu spans the paper's 1e5 to 1e7.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import sklearn
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import Lasso, LogisticRegression
from sklearn.multiclass import OneVsRestClassifier
from threadpoolctl import threadpool_limits

LR = (1e-4, 1e-2)  # RMSprop's learning rate, log scale (every MLP method)
L1 = (1e-6, 1e-1)  # log scale
WEIGHT_DECAY = (1e-6, 1e-1)  # log scale
DROPOUT = (0.0, 0.5)
THETA = (-14.0, -6.0)  # natural log
LOG10_NU = (5.0, 7.0)
GB_LEARNING_RATE = (0.03, 0.3)
GB_LEAVES = (4, 64)
GB_MIN_LEAF = (2, 64)
GB_L2 = (1e-6, 10.0)
GB_MAX_ITER = 200  # with early stopping on the validation split (10 rounds without improvement)
LASSO_ALPHA = (1e-4, 1.0)  # on the standardized target
LOGISTIC_C = (1e-3, 1e2)


@dataclass(frozen=True)
class Method:
    name: str
    label: str
    kind: str  # "nn" or "sklearn"
    suggest: Callable[[Any, str], dict[str, float]]  # (trial, task) -> params


def _lr(trial: Any) -> dict[str, float]:
    return {"lr": trial.suggest_float("lr", *LR, log=True)}


def _nn(extra: Callable[[Any], dict[str, float]] | None) -> Callable[[Any, str], dict[str, float]]:
    def suggest(trial: Any, task: str) -> dict[str, float]:
        return {**_lr(trial), **(extra(trial) if extra else {})}

    return suggest


def _gb(trial: Any, task: str) -> dict[str, float]:
    return {
        "learning_rate": trial.suggest_float("learning_rate", *GB_LEARNING_RATE, log=True),
        "max_leaf_nodes": trial.suggest_int("max_leaf_nodes", *GB_LEAVES, log=True),
        "min_samples_leaf": trial.suggest_int("min_samples_leaf", *GB_MIN_LEAF, log=True),
        "l2_regularization": trial.suggest_float("l2_regularization", *GB_L2, log=True),
    }


def _linear(trial: Any, task: str) -> dict[str, float]:
    if task == "regression":
        return {"alpha": trial.suggest_float("alpha", *LASSO_ALPHA, log=True)}
    return {"C": trial.suggest_float("C", *LOGISTIC_C, log=True)}


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("none", "MLP", "nn", _nn(None)),
        Method("l1", "MLP + L1", "nn", _nn(lambda t: {"l1": t.suggest_float("l1", *L1, log=True)})),
        Method(
            "weight_decay",
            "MLP + weight decay",
            "nn",
            _nn(lambda t: {"weight_decay": t.suggest_float("weight_decay", *WEIGHT_DECAY, log=True)}),
        ),
        Method("dropout", "MLP + dropout", "nn", _nn(lambda t: {"dropout": t.suggest_float("dropout", *DROPOUT)})),
        Method(
            "rln",
            "MLP + RLN",
            "nn",
            _nn(
                lambda t: {
                    "theta": t.suggest_float("theta", *THETA),
                    "log10_nu": t.suggest_float("log10_nu", *LOG10_NU),
                }
            ),
        ),
        Method("hist_gb", "HistGradientBoosting", "sklearn", _gb),
        Method("l1_linear", "L1 linear (Lasso / L1 logistic)", "sklearn", _linear),
    )
}
NN_METHODS = tuple(name for name, m in METHODS.items() if m.kind == "nn")
SKLEARN_METHODS = tuple(name for name, m in METHODS.items() if m.kind == "sklearn")


def l1_linear_label(task: str) -> str:
    return "Lasso" if task == "regression" else "L1 logistic regression"


# ---------------------------------------------------------------------- the scikit-learn models
def _l1_logistic(c: float, multiclass: bool) -> Any:
    """L1 logistic regression with liblinear (one-vs-rest for more than two classes): saga's
    multinomial L1 took minutes per fit on digits + noise, liblinear a second."""
    major, minor = (int(v) for v in sklearn.__version__.split(".")[:2])
    if (major, minor) >= (1, 8):  # ``penalty`` is deprecated from 1.8 on: l1_ratio=1 is L1
        model = LogisticRegression(l1_ratio=1.0, C=c, solver="liblinear", max_iter=1000)
    else:  # pragma: no cover - older scikit-learn
        model = LogisticRegression(penalty="l1", C=c, solver="liblinear", max_iter=1000)
    return OneVsRestClassifier(model) if multiclass else model


def one_thread() -> Any:
    """scikit-learn's OpenMP on one thread, as the MLPs train on one torch thread: on a 2-core
    CPU shared with other work, HistGradientBoosting's second thread spun on a busy core and a
    5-round fit of 100 rows took 5 s. Use several workers (``--storage``) for more cores."""
    return threadpool_limits(limits=1, user_api="openmp")


def fit_sklearn(
    name: str,
    params: dict[str, float],
    task: str,
    classes: int,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    seed: int,
    gb_max_iter: int = GB_MAX_ITER,
) -> Any:
    """Fit the scikit-learn method ``name`` on the training rows (on one OpenMP thread:
    :func:`one_thread`); HistGradientBoosting stops early on the validation rows (the only
    use of them here besides the score)."""
    regression = task == "regression"
    if name == "hist_gb":
        cls = HistGradientBoostingRegressor if regression else HistGradientBoostingClassifier
        model = cls(
            learning_rate=params["learning_rate"],
            max_leaf_nodes=int(params["max_leaf_nodes"]),
            min_samples_leaf=int(params["min_samples_leaf"]),
            l2_regularization=params["l2_regularization"],
            max_iter=gb_max_iter,
            early_stopping=True,
            n_iter_no_change=10,
            random_state=seed,
        )
        with one_thread():
            return model.fit(x_train, y_train, X_val=x_val, y_val=y_val)
    if name == "l1_linear":
        model = Lasso(alpha=params["alpha"], max_iter=5000) if regression else _l1_logistic(params["C"], classes > 2)
        with one_thread(), warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # a strong or weak penalty at the range's ends
            return model.fit(x_train, y_train)
    raise ValueError(f"not a scikit-learn method: {name!r}")


def _coefficients(model: Any) -> np.ndarray:
    """The linear model's coefficients, ``(classes or 1, inputs)``."""
    estimators = getattr(model, "estimators_", None)
    if estimators is not None:  # one-vs-rest
        return np.stack([e.coef_.reshape(-1) for e in estimators])
    coef: np.ndarray = np.atleast_2d(model.coef_)
    return coef


def sklearn_eliminated(name: str, model: Any) -> np.ndarray | None:
    """``(inputs,)`` bool, True where the linear model's coefficients are all exactly 0; None for the trees."""
    if name != "l1_linear":
        return None
    mask: np.ndarray = (_coefficients(model) == 0).all(axis=0)
    return mask


def sklearn_importance(name: str, model: Any) -> np.ndarray | None:
    """``(inputs,)``: the linear model's sum of |coefficients| per input (on standardized inputs,
    as the MLPs' first-layer column sums); None for the trees."""
    if name != "l1_linear":
        return None
    importance: np.ndarray = np.abs(_coefficients(model)).sum(axis=0)
    return importance


def predict(model: Any, task: str, x: np.ndarray) -> np.ndarray:
    """Regression: predictions (standardized scale); classification: class probabilities ``(n, K)``."""
    with one_thread():
        out: np.ndarray = model.predict(x) if task == "regression" else model.predict_proba(x)
    return out
