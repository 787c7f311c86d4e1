"""From the final records to ``tabular.json``: per data set and method the test metrics over
seeds (mean and 95% t interval), the paired differences RLN minus each method, the
feature recovery; across data sets the wins / ties / losses against RLN and the mean
ranks; and the verdicts on the claims made for RLN, computed from those figures.

A win or a loss counts only where the paired 95% interval excludes 0; anything else is
a tie (also where fewer than two seeds give no interval).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

from ..common.stats import mean_ci95, paired
from .datasets import Table
from .features import features_json
from .methods import METHODS, l1_linear_label
from .metrics import LOWER_IS_BETTER, PRIMARY, metrics_for

Records = dict[str, dict[int, dict[str, Any]]]  # method -> seed -> final record
REFERENCE = "rln"


def method_label(method: str, task: str) -> str:
    return l1_linear_label(task) if method == "l1_linear" else METHODS[method].label


def dataset_json(table: Table, classes: int, seeds: Sequence[int], records: Records) -> dict[str, Any]:
    """``datasets.<name>``: methods (test metrics per seed with mean and interval, params per
    seed), paired differences against RLN, the best method per metric, the features."""
    metrics = metrics_for(table.task, classes)
    methods: dict[str, Any] = {}
    for method, per_seed in records.items():
        done = [s for s in seeds if s in per_seed]
        test = {}
        for metric in metrics:
            values = [per_seed[s]["test"][metric] for s in done]
            mean, ci = mean_ci95(values)
            test[metric] = {"values": values, "seeds": done, "mean": mean, "ci95": ci}
        tuning = sum(per_seed[s].get("tuning_seconds", 0.0) for s in done)
        final = sum(per_seed[s].get("final_seconds", 0.0) for s in done)
        methods[method] = {
            "label": method_label(method, table.task),
            "seeds": done,
            "test": test,
            "params": [per_seed[s]["params"] for s in done],
            "validation": [per_seed[s]["validation"] for s in done],
            "seconds": {"tuning": round(tuning, 2), "final": round(final, 2), "total": round(tuning + final, 2)},
        }
    out: dict[str, Any] = {
        "description": table.description,
        "task": table.task,
        "kind": table.kind,
        "rows": table.rows,
        "classes": classes or None,
        "notes": list(table.notes),
        "seeds": list(seeds),
        "metrics": list(metrics),
        "primary": PRIMARY[table.task],
        "methods": methods,
        "paired": paired_json(records, metrics, seeds),
        "best": {m: best_method(methods, m) for m in metrics},
    }
    measured = {m: [records[m][s] for s in seeds if s in records[m]] for m in records}
    eliminated = {
        m: [r["eliminated"] for r in rs] for m, rs in measured.items() if rs and all("eliminated" in r for r in rs)
    }
    importance = {
        m: [r["importance"] for r in rs] for m, rs in measured.items() if rs and all("importance" in r for r in rs)
    }
    out["features"] = features_json(table.inputs, table.relevant, table.noise, eliminated, importance)
    return out


def paired_json(records: Records, metrics: Sequence[str], seeds: Sequence[int]) -> dict[str, Any]:
    """``paired.<method>.<metric>``: RLN minus the method, seed by seed (the seeds both have)."""
    if REFERENCE not in records:
        return {}
    out: dict[str, Any] = {}
    for method, per_seed in records.items():
        if method == REFERENCE:
            continue
        both = [s for s in seeds if s in per_seed and s in records[REFERENCE]]
        out[method] = {
            metric: {
                **paired(
                    [per_seed[s]["test"][metric] for s in both], [records[REFERENCE][s]["test"][metric] for s in both]
                ),
                "seeds": both,
            }
            for metric in metrics
        }
    return out


def best_method(methods: dict[str, Any], metric: str) -> str | None:
    """The method with the best mean of ``metric`` (None if none has one)."""
    scored = [(m, v["test"][metric]["mean"]) for m, v in methods.items() if not math.isnan(v["test"][metric]["mean"])]
    if not scored:
        return None
    pick = min if metric in LOWER_IS_BETTER else max
    return pick(scored, key=lambda mv: mv[1])[0]


def outcome(difference: dict[str, Any], metric: str) -> str:
    """RLN's outcome from a paired difference (RLN minus the other): ``win``, ``loss`` or ``tie``."""
    ci = difference.get("ci95")
    if ci is None:
        return "tie"
    rln_better = ci[1] < 0 if metric in LOWER_IS_BETTER else ci[0] > 0
    rln_worse = ci[0] > 0 if metric in LOWER_IS_BETTER else ci[1] < 0
    return "win" if rln_better else "loss" if rln_worse else "tie"


def ranks(means: dict[str, float], metric: str) -> dict[str, float]:
    """Rank 1 for the best mean; tied means share the average of their ranks."""
    sign = 1.0 if metric in LOWER_IS_BETTER else -1.0
    ordered = sorted(means, key=lambda m: sign * means[m])
    out: dict[str, float] = {}
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and means[ordered[j + 1]] == means[ordered[i]]:
            j += 1
        for k in range(i, j + 1):
            out[ordered[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def summary_json(datasets: dict[str, Any]) -> dict[str, Any]:
    """Across data sets, on each one's primary metric: RLN's wins / ties / losses against each
    method, and every method's mean rank (1 = best)."""
    table: dict[str, Any] = {}
    rank_lists: dict[str, list[float]] = {}
    for name, d in datasets.items():
        metric = d["primary"]
        means = {m: v["test"][metric]["mean"] for m, v in d["methods"].items() if v["seeds"]}
        for m, r in ranks(means, metric).items():
            rank_lists.setdefault(m, []).append(r)
        for method, diffs in d["paired"].items():
            entry = table.setdefault(method, {"win": [], "tie": [], "loss": []})
            entry[outcome(diffs[metric], metric)].append(name)
    methods = {}
    for method in METHODS:
        if method not in rank_lists:
            continue
        entry = table.get(method, {"win": [], "tie": [], "loss": []})
        methods[method] = {
            "rln_wins": entry["win"],
            "ties": entry["tie"],
            "rln_losses": entry["loss"],
            "mean_rank": statistics.fmean(rank_lists[method]),
            "datasets": len(rank_lists[method]),
        }
    return {
        "metric": "each data set's primary metric: RMSE (regression), log loss (classification)",
        "methods": methods,
    }
