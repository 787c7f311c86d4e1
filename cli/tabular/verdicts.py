"""The claims made for RLN, checked per data set against this run's figures.

Each verdict is computed from ``tabular.json``'s numbers, never written in advance:

* **RLN beats L1 and no regularization where many inputs are irrelevant** (the noised
  and synthetic sets): *holds* where RLN's paired interval against both excludes 0 in
  its favour on the primary metric, *fails* where either excludes 0 against it, else
  *not shown*.
* **exp(Theta) is far below the best L1 strength**: per seed, the chosen exp(Theta) over
  the chosen L1 strength; *holds* where every seed's ratio is at most 1/10, *fails*
  where any is 1 or more, else *partly*.
* **RLN eliminates the noise inputs** (where the noise inputs are known): *holds* where
  on average at least half the noise inputs are eliminated and at least half the other
  inputs kept, *fails* where under a tenth of the noise inputs are eliminated, else *partly*.
* **RLN against the trees** (HistGradientBoosting), on every data set: *RLN better*,
  *trees better* or *no clear difference*, by the paired interval.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from .analysis import outcome
from .metrics import NAMES

CLAIMS = {
    "beats_l1_and_none": "RLN beats L1 and no regularization where many inputs are irrelevant",
    "theta_below_l1": "exp(Theta) is far below the best L1 strength",
    "eliminates_noise": "RLN eliminates the noise inputs",
    "against_trees": "RLN against the trees (HistGradientBoosting)",
}
FAR_BELOW = 0.1
MOST, FEW = 0.5, 0.1


def _fmt_ci(d: dict[str, Any]) -> str:
    ci = d.get("ci95")
    return f"{d['mean']:+.4g}" + ("" if ci is None else f" [{ci[0]:+.4g}, {ci[1]:+.4g}]")


LABELS = {"l1": "L1", "none": "no regularization"}
WORDS = {"win": "better than", "loss": "worse than", "tie": "not clearly different from"}


def beats_l1_and_none(d: dict[str, Any]) -> dict[str, str] | None:
    if d["kind"] not in ("noised", "synthetic") or not {"l1", "none"} <= set(d["paired"]):
        return None
    metric = d["primary"]
    outcomes = {m: outcome(d["paired"][m][metric], metric) for m in ("l1", "none")}
    detail = f"in {NAMES[metric]}, RLN is " + " and ".join(
        f"{WORDS[o]} {LABELS[m]} (RLN - {LABELS[m]}: {_fmt_ci(d['paired'][m][metric])})" for m, o in outcomes.items()
    )
    if "loss" in outcomes.values():
        return {"result": "fails", "detail": detail}
    if all(o == "win" for o in outcomes.values()):
        return {"result": "holds", "detail": detail}
    return {"result": "not shown", "detail": detail}


def theta_below_l1(d: dict[str, Any]) -> dict[str, str] | None:
    methods = d["methods"]
    if not {"rln", "l1"} <= set(methods):
        return None
    both = [s for s in methods["rln"]["seeds"] if s in methods["l1"]["seeds"]]
    if not both:
        return None
    rln = dict(zip(methods["rln"]["seeds"], methods["rln"]["params"], strict=True))
    l1 = dict(zip(methods["l1"]["seeds"], methods["l1"]["params"], strict=True))
    ratios = [math.exp(rln[s]["theta"]) / l1[s]["l1"] for s in both]
    thetas = ", ".join(f"{rln[s]['theta']:.1f}" for s in both)
    strengths = ", ".join(f"{l1[s]['l1']:.2g}" for s in both)
    detail = (
        f"exp(Theta) / L1 per seed: {', '.join(f'{r:.2g}' for r in ratios)} "
        f"(median {statistics.median(ratios):.2g}; Theta {thetas}; L1 {strengths})"
    )
    if all(r <= FAR_BELOW for r in ratios):
        return {"result": "holds", "detail": detail}
    if any(r >= 1 for r in ratios):
        return {"result": "fails", "detail": detail}
    return {"result": "partly", "detail": detail}


def eliminates_noise(d: dict[str, Any]) -> dict[str, str] | None:
    rln = d["features"]["methods"].get("rln")
    if rln is None or "noise_eliminated_share" not in rln:
        return None
    noise, real = rln["noise_eliminated_share"]["mean"], rln["real_kept_share"]["mean"]
    if noise is None or real is None:
        return None
    detail = f"{noise:.0%} of the noise inputs eliminated, {real:.0%} of the other inputs kept (mean over seeds)"
    if noise >= MOST and real >= MOST:
        return {"result": "holds", "detail": detail}
    if noise < FEW:
        return {"result": "fails", "detail": detail}
    return {"result": "partly", "detail": detail}


def against_trees(d: dict[str, Any]) -> dict[str, str] | None:
    if "hist_gb" not in d["paired"]:
        return None
    metric = d["primary"]
    diff = d["paired"]["hist_gb"][metric]
    o = outcome(diff, metric)
    result = {"win": "RLN better", "loss": "trees better", "tie": "no clear difference"}[o]
    return {"result": result, "detail": f"RLN - HistGradientBoosting in {NAMES[metric]}: {_fmt_ci(diff)}"}


CHECKS = {
    "beats_l1_and_none": beats_l1_and_none,
    "theta_below_l1": theta_below_l1,
    "eliminates_noise": eliminates_noise,
    "against_trees": against_trees,
}


def verdicts(datasets: dict[str, Any]) -> dict[str, Any]:
    """``verdicts.<claim>``: the claim, each data set's result and detail, and the counts."""
    out: dict[str, Any] = {}
    for key, check in CHECKS.items():
        per = {name: r for name, d in datasets.items() if (r := check(d)) is not None}
        counts: dict[str, int] = {}
        for r in per.values():
            counts[r["result"]] = counts.get(r["result"], 0) + 1
        out[key] = {"claim": CLAIMS[key], "datasets": per, "counts": counts}
    out["rln_loses"] = {
        name: [m for m, diffs in d["paired"].items() if outcome(diffs[d["primary"]], d["primary"]) == "loss"]
        for name, d in datasets.items()
    }
    return out
