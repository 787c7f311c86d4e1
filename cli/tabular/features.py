"""Which inputs a model dropped, against what is known about them.

An input is *eliminated* when it no longer reaches the model: RLN's and the L1 MLP's
whole first-layer column exactly 0 (RLN's from ``RLNOptimizer.stats()``; plain L1 by
subgradient rarely reaches an exact 0, and only exact zeros count), the L1 linear
model's coefficients all exactly 0. The others are *kept*.

* Where the relevant inputs are known (the synthetic sets): precision and recall of the
  kept inputs against them.
* Where the noise inputs are known (the noised and the synthetic sets): the share of
  noise inputs eliminated, and the share of the other inputs kept.

Elimination is all or nothing. How much weight a model still gives each input is
measured too: its *importance*, the sum of |first-layer weights| of its column (the
linear model: of its coefficients), on standardized inputs. Where the noise inputs are
known, ``real_in_top_share`` is the share of the other (real or informative) inputs among
the ``k`` most important, ``k`` their number: 1 when the model ranks every real input above
every noise input, about ``k / inputs`` for a random ranking.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ..common.stats import mean_ci95

RECOVERY_METHODS = ("rln", "l1", "l1_linear")  # the methods that can eliminate an input


def recovery(
    inputs: Sequence[str],
    eliminated: Sequence[str],
    relevant: Sequence[str] | None,
    noise: Sequence[str] | None,
) -> dict[str, float | None]:
    """One model's figures: ``eliminated`` against the known ``relevant`` and ``noise`` inputs
    (None where unknown). Precision is None when nothing is kept."""
    gone = set(eliminated)
    kept = [n for n in inputs if n not in gone]
    out: dict[str, float | None] = {"eliminated_count": float(len(gone)), "kept_count": float(len(kept))}
    if relevant is not None:
        truth = set(relevant)
        hits = sum(n in truth for n in kept)
        out["precision"] = hits / len(kept) if kept else None
        out["recall"] = hits / len(truth) if truth else None
    if noise is not None:
        noisy = set(noise)
        real = [n for n in inputs if n not in noisy]
        out["noise_eliminated_share"] = sum(n in gone for n in noisy) / len(noisy) if noisy else None
        out["real_kept_share"] = sum(n not in gone for n in real) / len(real) if real else None
    return out


def summarize(values: Sequence[float | None]) -> dict[str, Any]:
    """Per-seed values with their mean and 95% t interval (over the seeds that have one)."""
    present = [v for v in values if v is not None and not math.isnan(v)]
    mean, ci = mean_ci95(present)
    return {"values": list(values), "mean": mean if present else None, "ci95": ci}


def real_in_top_share(inputs: Sequence[str], importance: Sequence[float], noise: Sequence[str]) -> float | None:
    """The share of the non-noise inputs among the ``k`` most important, ``k`` their number
    (ties broken by the input order)."""
    noisy = set(noise)
    k = sum(n not in noisy for n in inputs)
    if not k:
        return None
    order = sorted(range(len(inputs)), key=lambda i: -importance[i])[:k]
    return sum(inputs[i] not in noisy for i in order) / k


def features_json(
    inputs: Sequence[str],
    relevant: Sequence[str] | None,
    noise: Sequence[str] | None,
    eliminated: dict[str, list[list[int]]],
    importance: dict[str, list[list[float]]] | None = None,
) -> dict[str, Any]:
    """``datasets.<name>.features``: the inputs, the known relevant and noise ones, and per
    method the inputs eliminated and kept per seed with the figures of :func:`recovery`, and
    each input's importance per seed with :func:`real_in_top_share` where the noise is known.

    ``eliminated[method]`` holds, per seed, the indices (into ``inputs``) eliminated;
    ``importance[method]``, per seed, one number per input.
    """
    out: dict[str, Any] = {"inputs": list(inputs), "true_relevant": relevant, "noise": noise, "methods": {}}
    for method, per_seed_importance in (importance or {}).items():
        entry = out["methods"].setdefault(method, {})
        entry["importance"] = per_seed_importance
        if noise is not None:
            entry["real_in_top_share"] = summarize([real_in_top_share(inputs, v, noise) for v in per_seed_importance])
    for method, per_seed in eliminated.items():
        names = [[inputs[i] for i in seed] for seed in per_seed]
        figures = [recovery(inputs, seed, relevant, noise) for seed in names]
        entry = out["methods"].setdefault(method, {})
        entry["eliminated"] = names
        entry["kept"] = [[n for n in inputs if n not in set(seed)] for seed in names]
        for key in figures[0] if figures else ():
            entry[key] = summarize([f[key] for f in figures])
    return out
