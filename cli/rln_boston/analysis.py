"""What a run of the RLN experiment found: feature recovery, the eliminated inputs, the
published claims checked, the distance from the published figures, and the summary
across seeds.

Two scores are kept for every configuration and repeat:

* ``mse``: the test (or validation) MSE, the figure a user should care about;
* ``keras_loss``: what Keras' ``model.evaluate`` reported in the published notebook. In
  Keras 2.0.x ``compile()`` adds every layer's regularization loss to ``total_loss``
  and ``evaluate`` returns ``total_loss``, so the published L1 figure is test MSE plus
  ``l1 * sum|W1|`` at the end of training; for none and RLN (whose callback adds no loss
  term) the two are equal. The published figures are compared with ``keras_loss``.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import numpy as np

from ..common.stats import mean_ci95
from .protocol import MODELS, PUBLISHED, REAL_FEATURES
from .search import Result, Run


def feature_recovery(first_layer: np.ndarray, real: int = REAL_FEATURES) -> dict[str, Any]:
    """Input importance (sum of |first-layer weights| per input) and what it recovers.

    ``first_layer``: ``(R, hidden, inputs)``. Per repeat: how many of the ``real`` real
    features rank among the top ``real`` inputs, and the fraction of first-layer
    weights that are exactly 0.
    """
    importance = np.abs(first_layer).sum(axis=1)  # (R, inputs)
    top = np.argsort(-importance, axis=1, kind="stable")[:, :real]
    real_in_top = (top < real).sum(axis=1)
    zeros = (first_layer == 0).mean(axis=(1, 2))
    return {
        "real_in_top13": real_in_top.tolist(),
        "real_in_top13_mean": float(real_in_top.mean()),
        "zero_fraction": zeros.tolist(),
        "zero_fraction_mean": float(zeros.mean()),
        "importance_mean": importance.mean(axis=0).tolist(),
    }


def elimination(eliminated: np.ndarray, real: int = REAL_FEATURES) -> dict[str, Any]:
    """Per repeat, how many inputs were eliminated (whole first-layer column exactly 0), and
    how many of them are real features and how many noise; ``eliminated``: ``(R, inputs)`` bool."""
    total, real_out = eliminated.sum(axis=1), eliminated[:, :real].sum(axis=1)
    return {
        "eliminated": total.tolist(),
        "eliminated_real": real_out.tolist(),
        "eliminated_noise": (total - real_out).tolist(),
        "eliminated_mean": float(total.mean()),
        "eliminated_real_mean": float(real_out.mean()),
        "eliminated_noise_mean": float((total - real_out).mean()),
        "noise_inputs": int(eliminated.shape[1] - real),
    }


def features(run: Run) -> dict[str, Any] | None:
    if run.first_layer is None:
        return None
    out = feature_recovery(run.first_layer)
    if run.eliminated is not None:
        out.update(elimination(run.eliminated))
    return out


def best_scores(result: Result) -> dict[str, tuple[list[float], list[float]]]:
    """Each best model's final scores ``(mse, keras_loss)``: on the test set under the
    published protocol, of the refit model under the holdout one (absent until refit)."""
    out = {}
    for name, run in result.best.items():
        if result.settings.protocol == "holdout":
            if run.test_scores is not None and run.test_keras is not None:
                out[name] = (run.test_scores, run.test_keras)
        else:
            out[name] = (run.scores, run.keras)
    return out


def verdicts(result: Result) -> list[dict[str, Any]]:
    """The published claims, checked against our best configurations' scores: the ranking as
    published (Keras' figures) and in pure test MSE, and the size of Theta."""
    scores = best_scores(result)
    means = {name: (float(np.mean(mse)), float(np.mean(keras))) for name, (mse, keras) in scores.items()}
    out = []
    if set(MODELS) <= set(means):
        none, l1, rln = (means[m] for m in MODELS)
        out.append(
            {
                "id": "ranking_as_published",
                "claim": "RLN < L1 < no regularization (as Keras reports: L1 with its penalty)",
                "holds": bool(rln[1] < l1[1] < none[1]),
                "ours": f"RLN {rln[1]:.2f}, L1 {l1[1]:.2f}, none {none[1]:.2f}",
            }
        )
        out.append(
            {
                "id": "ranking_mse",
                "claim": "RLN < L1 < no regularization (test MSE alone)",
                "holds": bool(rln[0] < l1[0] < none[0]),
                "ours": f"RLN {rln[0]:.2f}, L1 {l1[0]:.2f}, none {none[0]:.2f}",
            }
        )
    if {"l1", "rln"} <= set(result.best):
        theta, strength = result.best["rln"].config["theta"], result.best["l1"].config["l1"]
        ratio = strength / math.exp(theta)
        out.append(
            {
                "id": "theta_small",
                "claim": "exp(Theta) << best L1 strength (at least 100x smaller)",
                "holds": bool(ratio >= 100),
                "ours": f"exp({theta:g}) = {math.exp(theta):.2e} vs L1 {strength:g} ({ratio:.1e}x)",
            }
        )
    return out


def vs_published(result: Result) -> dict[str, dict[str, float]]:
    """Each best model's mean against the published mean, in published stds, on the matching
    quantity (Keras' figure, which is the MSE except for L1)."""
    out = {}
    for name, (_, keras) in best_scores(result).items():
        p = PUBLISHED[name]
        ours = float(np.mean(keras))
        out[name] = {"ours": ours, "published": p["mse_mean"], "stds": (ours - p["mse_mean"]) / p["mse_std"]}
    return out


def finished_models(result: Result) -> list[str]:
    """The models whose search ran to its end and whose final scores exist. The searches run
    in the order of :data:`MODELS`, so one has ended when the next has started; the last
    one when the protocol was not interrupted."""
    started = {run.config["model"] for run in result.runs}
    scored = best_scores(result)
    out = []
    for k, name in enumerate(MODELS):
        ended = any(m in started for m in MODELS[k + 1 :]) or not result.interrupted
        if ended and name in scored:
            out.append(name)
    return out


def _best_summary(name: str, results: list[Result]) -> dict[str, Any]:
    """One model's best scores across the seeds where its search finished."""
    per_seed = [best_scores(r)[name] for r in results]
    mse = [float(np.mean(m)) for m, _ in per_seed]
    keras = [float(np.mean(k)) for _, k in per_seed]
    mse_mean, mse_ci = mean_ci95(mse)
    keras_mean, keras_ci = mean_ci95(keras)
    p = PUBLISHED[name]
    return {
        "seeds": [r.settings.seed for r in results],
        "mse_mean": mse_mean if results else None,
        "mse_ci95": mse_ci,
        "keras_loss_mean": keras_mean if results else None,
        "keras_loss_ci95": keras_ci,
        "mse_per_seed": mse,
        "keras_loss_per_seed": keras,
        "collapsed_per_seed": [len(r.best[name].collapsed) for r in results],
        "published_stds": (keras_mean - p["mse_mean"]) / p["mse_std"] if results else None,
    }


def _selected(by_model: dict[str, list[Result]]) -> dict[str, dict[str, int]]:
    counts: dict[str, Counter[str]] = {"depth": Counter(), "l1": Counter(), "rln": Counter()}
    for r in by_model["none"]:
        counts["depth"][str(r.best["none"].config["depth"])] += 1
    for r in by_model["l1"]:
        counts["l1"][f"{r.best['l1'].config['l1']:g}"] += 1
    for r in by_model["rln"]:
        counts["rln"][f"{r.best['rln'].config['theta']:g}:{r.best['rln'].config['log10_nu']:g}"] += 1
    return {k: dict(v) for k, v in counts.items()}


def summary(results: list[Result]) -> dict[str, Any]:
    """Across the seeds: what was selected how often, each best model's mean score with a 95%
    t interval, how often each published claim held, and the distance of each mean from the
    published one in published stds. A model counts in the seeds where its search finished
    (an interrupted seed keeps the models it finished); the claims, in the seeds where all did."""
    by_model = {name: [r for r in results if name in finished_models(r)] for name in MODELS}
    done = [r for r in results if set(MODELS) <= set(finished_models(r))]
    claims: dict[str, dict[str, Any]] = {}
    for r in done:
        for v in verdicts(r):
            c = claims.setdefault(v["id"], {"claim": v["claim"], "held": 0, "seeds": 0})
            c["held"] += int(v["holds"])
            c["seeds"] += 1
    return {
        "seeds": [r.settings.seed for r in done],
        "selected": _selected(by_model),
        "best": {name: _best_summary(name, by_model[name]) for name in MODELS},
        "claims": claims,
    }
