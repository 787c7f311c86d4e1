"""The RLN experiment's JSON: one seed's result or several seeds' with their summary, read
back, and the reports of runs made apart combined into one."""

from __future__ import annotations

from typing import Any

import numpy as np

from .analysis import features, summary, verdicts, vs_published
from .protocol import EXPERIMENT, PUBLISHED, Settings, depth_rule, selection_label
from .search import Result, Run


def best_json(run: Run) -> dict[str, Any]:
    entry = run.as_json()
    if run.test_scores is not None and run.test_keras is not None:
        entry.update(
            test_mse=run.test_scores,
            test_mse_mean=float(np.mean(run.test_scores)),
            test_mse_std=float(np.std(run.test_scores)),
            test_keras_loss=run.test_keras,
            test_keras_loss_mean=float(np.mean(run.test_keras)),
            test_keras_loss_std=float(np.std(run.test_keras)),
        )
    return entry


def settings_json(s: Settings) -> dict[str, Any]:
    return {
        "depths": list(s.depths),
        "l1_values": list(s.l1_values),
        "rln_grid": [list(p) for p in s.rln_grid],
        "repeats": s.repeats,
        "epochs": s.epochs,
        "batch_size": s.batch_size,
        "noise_features": s.noise_features,
        "seed": s.seed,
        "device": s.device,
        "compiled_rln": s.compile,
        "exclude_collapsed": s.exclude_collapsed,
    }


def result_json(result: Result) -> dict[str, Any]:
    """One seed's result (the layout of a single-seed report)."""
    s = result.settings
    found = {name: f for name, run in result.best.items() if (f := features(run)) is not None}
    return {
        "settings": settings_json(s),
        "runs": [{**run.as_json(), "selected": any(run is b for b in result.best.values())} for run in result.runs],
        "best": {name: best_json(run) for name, run in result.best.items()},
        "depth_rule": depth_rule(s),
        "verdicts": verdicts(result),
        "vs_published": vs_published(result),
        "features": found,
        "interrupted": result.interrupted,
        "seconds": round(result.seconds, 2),
    }


def to_json(results: list[Result], seconds: float | None = None, several: bool | None = None) -> dict[str, Any]:
    """The report: for one seed, that seed's result at the top level (as before several
    seeds existed); for several (default: more than one result), ``seeds`` holds one
    result per seed and ``summary`` the aggregate. ``seconds``: the whole run's time
    (default: the seeds' sum)."""
    first = results[0].settings
    head = {"experiment": EXPERIMENT, "protocol": first.protocol, "selection": selection_label(first)}
    total = round(sum(r.seconds for r in results) if seconds is None else seconds, 2)
    tail = {"published": PUBLISHED, "interrupted": any(r.interrupted for r in results), "seconds": total}
    if not (len(results) > 1 if several is None else several):
        return {**head, **result_json(results[0]), **tail}
    seeds = [{"seed": r.settings.seed, **result_json(r)} for r in results]
    return {
        **head,
        "settings": {**settings_json(first), "seeds": [r.settings.seed for r in results]},
        "seeds": seeds,
        "summary": summary(results),
        **tail,
    }


def run_from_json(entry: dict[str, Any]) -> Run:
    """A run back from its JSON entry (scores, Keras figures, collapse; not the weights)."""
    config: dict[str, Any] = {k: entry[k] for k in ("model", "depth", "l1", "theta", "log10_nu") if k in entry}
    run = Run(config, list(entry["mse"]), float(entry["seconds"]), keras=list(entry["keras_loss"]))
    run.collapsed, run.collapse_epochs = list(entry["collapsed"]), list(entry["collapse_epochs"])
    if "test_mse" in entry:
        run.test_scores, run.test_keras = list(entry["test_mse"]), list(entry["test_keras_loss"])
    return run


def result_from_json(entry: dict[str, Any], protocol: str) -> Result:
    """One seed's result back from its JSON (a single-seed report, or an item of ``seeds``)."""
    s = entry["settings"]
    settings = Settings(
        depths=s["depths"],
        l1_values=s["l1_values"],
        rln_grid=[(a, b) for a, b in s["rln_grid"]],
        repeats=s["repeats"],
        epochs=s["epochs"],
        batch_size=s["batch_size"],
        noise_features=s["noise_features"],
        seed=entry.get("seed", s["seed"]),
        protocol=protocol,
        device=s["device"],
        compile=s["compiled_rln"],
        exclude_collapsed=s["exclude_collapsed"],
    )
    result = Result(settings, interrupted=entry["interrupted"], seconds=entry["seconds"])
    result.runs = [run_from_json(run) for run in entry["runs"]]
    result.best = {name: run_from_json(best) for name, best in entry["best"].items()}
    return result


RESULT_KEYS = (
    "settings",
    "runs",
    "best",
    "depth_rule",
    "verdicts",
    "vs_published",
    "features",
    "interrupted",
    "seconds",
)


def seed_entries(report: dict[str, Any]) -> list[dict[str, Any]]:
    """A report's per-seed results: its ``seeds``, or the one result of a single-seed report."""
    if "seeds" in report:
        return list(report["seeds"])
    return [{"seed": report["settings"]["seed"], **{k: report[k] for k in RESULT_KEYS}}]


def combine(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """One several-seed report from the reports of runs made apart (e.g. one process per seed,
    on one machine or several): their seeds' results side by side and the summary across them.
    Its ``seconds`` is the seeds' own times added (not the wall time of parallel runs)."""
    protocol = reports[0]["protocol"]
    if any(r["protocol"] != protocol for r in reports):
        raise ValueError("cannot combine runs of different protocols")
    entries = [e for r in reports for e in seed_entries(r)]
    seeds = [e["seed"] for e in entries]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"cannot combine runs that share a seed: {seeds}")
    results = [result_from_json(e, protocol) for e in entries]
    head = {
        "experiment": EXPERIMENT,
        "protocol": protocol,
        "selection": reports[0]["selection"],
        "settings": {**entries[0]["settings"], "seeds": seeds},
    }
    return {
        **head,
        "seeds": entries,
        "summary": summary(results),
        "published": PUBLISHED,
        "interrupted": any(r.interrupted for r in results),
        "seconds": round(sum(r.seconds for r in results), 2),
    }
