"""The tabular experiment's tables (one description each, for the terminal and report.md),
its verdicts in words, and its report.md section."""

from __future__ import annotations

import math
from typing import Any

from rich.console import Console

from ..common.tables import TableSpec
from .analysis import method_label, outcome
from .metrics import LOWER_IS_BETTER, NAMES

COMMAND = "torch-rln bench tabular"


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def num(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.3g}"


def mean_ci(entry: dict[str, Any]) -> str:
    ci = entry.get("ci95")
    return num(entry["mean"]) + ("" if ci is None else f" [{num(ci[0])}, {num(ci[1])}]")


def dataset_table(name: str, d: dict[str, Any]) -> TableSpec:
    metrics, primary = d["metrics"], d["primary"]
    seeds = len(d["seeds"])
    table = TableSpec(
        f"{name}: test metrics over {plural(seeds, 'seed')}, mean [95% Student's t interval: with few seeds it can "
        f"pass a metric's bounds]; * the best mean; RLN - method: paired over seeds, in {NAMES[primary]}",
        ["method", *(f"{NAMES[m]} ({'lower' if m in LOWER_IS_BETTER else 'higher'} is better)" for m in metrics),
         f"RLN - method ({NAMES[primary]})", "seconds"],
    )  # fmt: skip
    for method, v in d["methods"].items():
        cells = []
        for metric in metrics:
            mark = "* " if d["best"].get(metric) == method else ""
            cells.append(mark + mean_ci(v["test"][metric]) if v["seeds"] else "-")
        diff = d["paired"].get(method, {}).get(primary)
        if diff is None:
            vs = "(reference)" if method == "rln" else "-"
        else:
            vs = f"{mean_ci(diff)} {_word(outcome(diff, primary))}"
        table.add(v["label"], *cells, vs, f"{v['seconds']['total']:.0f}")
    return table


def settings_table(datasets: dict[str, Any]) -> TableSpec:
    """The setting each method chose on each data set, seed by seed (what to try on the same data)."""
    table = TableSpec(
        "The settings chosen on validation, per seed (lr: RMSprop's learning rate; Theta: RLN's mean "
        "log-coefficient, natural log; log10 nu: its coefficients' learning rate)",
        ["data set", "method", "chosen settings, seed by seed"],
    )
    for name, d in datasets.items():
        for v in d["methods"].values():
            if not v["params"]:
                continue
            keys = list(v["params"][0])
            cells = "; ".join(
                f"{PARAM_NAMES.get(k, k)} " + ", ".join(_param(k, p[k]) for p in v["params"]) for k in keys
            )
            table.add(name, v["label"], cells)
    return table


PARAM_NAMES = {"theta": "Theta", "log10_nu": "log10 nu", "l1": "L1", "weight_decay": "weight decay"}


def _param(key: str, value: float) -> str:
    return f"{value:.1f}" if key in ("theta", "log10_nu") else f"{value:.3g}"


def _word(o: str) -> str:
    return {"win": "(RLN better)", "loss": "(RLN worse)", "tie": "(no clear difference)"}[o]


def summary_table(summary: dict[str, Any], datasets: int) -> TableSpec:
    table = TableSpec(
        f"Summary over {plural(datasets, 'data set')}: RLN against each method on the primary "
        "metric (RMSE, log loss), counted only where the paired 95% interval excludes 0; mean rank (1 = best)",
        ["method", "RLN better", "no clear difference", "RLN worse", "mean rank"],
    )
    for method, s in summary["methods"].items():
        if method == "rln":
            table.add(method_label(method, "regression"), "-", "-", "-", f"{s['mean_rank']:.2f}")
            continue
        label = "L1 linear (Lasso / L1 logistic)" if method == "l1_linear" else method_label(method, "regression")
        table.add(
            label, str(len(s["rln_wins"])), str(len(s["ties"])), str(len(s["rln_losses"])), f"{s['mean_rank']:.2f}"
        )
    return table


def features_table(datasets: dict[str, Any]) -> TableSpec:
    table = TableSpec(
        "Feature recovery, mean over seeds: inputs eliminated (whole first-layer column, or every coefficient, "
        "exactly 0); where the noise inputs are known, the share of them eliminated, the share of the others kept, "
        "and the share of the others among the k most important inputs (k their number); where the relevant "
        "inputs are known, precision and recall of the kept inputs",
        ["data set", "method", "inputs", "eliminated", "noise eliminated", "others kept", "others in top k",
         "precision", "recall"],
    )  # fmt: skip
    for name, d in datasets.items():
        f = d["features"]
        for method, entry in f["methods"].items():
            if "eliminated_count" not in entry and "real_in_top_share" not in entry:
                continue
            table.add(
                name,
                method_label(method, d["task"]),
                str(len(f["inputs"])),
                num(entry.get("eliminated_count", {}).get("mean")),
                *(_share(entry.get(k)) for k in ("noise_eliminated_share", "real_kept_share", "real_in_top_share")),
                num(entry.get("precision", {}).get("mean")),
                num(entry.get("recall", {}).get("mean")),
            )
    return table


def _share(entry: dict[str, Any] | None) -> str:
    if entry is None or entry["mean"] is None:
        return "-"
    return f"{entry['mean']:.0%}"


def time_table(datasets: dict[str, Any]) -> TableSpec:
    table = TableSpec(
        "Time per method, summed over data sets and seeds (the MLPs train stacked: each trial is given a share "
        "of its stack's time in proportion to the epochs it trained)",
        ["method", "tuning (s)", "final models (s)", "total (s)"],
    )
    totals: dict[str, list[float]] = {}
    labels: dict[str, str] = {}
    for d in datasets.values():
        for method, v in d["methods"].items():
            t = totals.setdefault(method, [0.0, 0.0])
            t[0] += v["seconds"]["tuning"]
            t[1] += v["seconds"]["final"]
            labels.setdefault(method, "L1 linear (Lasso / L1 logistic)" if method == "l1_linear" else v["label"])
    for method, (tuning, final) in totals.items():
        table.add(labels[method], f"{tuning:.0f}", f"{final:.0f}", f"{tuning + final:.0f}")
    return table


# ---------------------------------------------------------------------- the verdicts in words
def verdict_lines(report: dict[str, Any]) -> list[str]:
    """The verdicts, one bullet per claim with one sub-bullet per data set, as measured."""
    v = report["verdicts"]
    lines = []
    for key in ("beats_l1_and_none", "theta_below_l1", "eliminates_noise", "against_trees"):
        claim = v[key]
        counts = ", ".join(f"{k} on {n}" for k, n in sorted(claim["counts"].items()))
        lines.append(f"- **{claim['claim']}**: {counts or 'no data set to check it on'}.")
        for name, r in claim["datasets"].items():
            lines.append(f"  - {name}: {r['result']}: {r['detail']}.")
    losses = {name: ms for name, ms in v["rln_loses"].items() if ms}
    if losses:
        where = "; ".join(
            f"{name}: {', '.join(method_label(m, report['datasets'][name]['task']) for m in ms)}"
            for name, ms in losses.items()
        )
        lines.append(f"- **Where RLN loses** (a method better than RLN, paired interval excluding 0): {where}.")
    else:
        lines.append(
            "- **Where RLN loses**: no method is better than RLN with a paired interval excluding 0 on any data set."
        )
    lines.append(trees_sentence(report))
    return lines


def trees_sentence(report: dict[str, Any]) -> str:
    counts = report["verdicts"]["against_trees"]["counts"]
    total = sum(counts.values())
    if not total:
        return "- **RLN against the trees**: not run."
    better, worse, tie = (counts.get(k, 0) for k in ("RLN better", "trees better", "no clear difference"))
    ranks = report["summary"]["methods"]
    rank = ""
    if "rln" in ranks and "hist_gb" in ranks:
        rln, trees = ranks["rln"]["mean_rank"], ranks["hist_gb"]["mean_rank"]
        rank = f" Mean rank: RLN {rln:.2f}, HistGradientBoosting {trees:.2f}."
    return (
        f"- **Plainly, against the trees**: of {total} data set{'s' if total > 1 else ''}, HistGradientBoosting is "
        f"better than RLN on {worse}, RLN is better on {better}, and neither is clearly better on {tie}.{rank}"
    )


# ---------------------------------------------------------------------- terminal and report.md
def tables(report: dict[str, Any]) -> list[TableSpec]:
    datasets = report["datasets"]
    out = [dataset_table(name, d) for name, d in datasets.items()]
    if datasets:
        out += [summary_table(report["summary"], len(datasets)), features_table(datasets), time_table(datasets)]
        out.append(settings_table(datasets))
    return out


def show_tabular(report: dict[str, Any], console: Console) -> None:
    """The tables and verdicts on the terminal; the settings table only for a CSV file (the
    question there is which settings to use; for the built-in sets it is in report.md)."""
    shown = tables(report)
    if not any(d["kind"] == "csv" for d in report["datasets"].values()):
        shown = shown[:-1] if report["datasets"] else shown
    for table in shown:
        console.print(table.rich())
    for line in verdict_lines(report):
        console.print(line.replace("**", ""), markup=False, highlight=False)
    if report.get("full_suite_command"):
        console.print(f"This was a shortened suite. The full one: [bold]{report['full_suite_command']}[/]")


def tabular_markdown(report: dict[str, Any], figures: list[str]) -> str:
    s = report["settings"]
    batch = s["batch_size"] or "max(32, training rows / 10)"
    lines = [
        "## Tabular data: RLN against the regularizers and the trees (`torch-rln bench tabular`)",
        "",
        f"Command: `{report['command']}`. {plural(len(report['datasets']), 'data set')}, "
        f"seeds {', '.join(map(str, s['seeds']))}; "
        f"{s['trials']} Optuna TPE trials per method, data set and seed, on a validation split; the chosen setting "
        "trained once more from its trial's seed and the test split scored once. MLPs: depth "
        f"{s['depth']}, the tutorial's geometric widths, RMSprop, batch {batch}, at most {s['max_epochs']} "
        f"epochs, early-stopped on validation (patience {s['patience']}). {report['seconds']:.0f} s.",
        "",
    ]
    if report.get("interrupted"):
        lines += ["**Interrupted**: what finished is below; rerun the same command to continue.", ""]
    notes = [f"- {name}: {note}" for name, d in report["datasets"].items() for note in d["notes"]]
    if notes:
        lines += ["What was done to the data:", "", *notes, ""]
    lines += ["### Verdicts, as measured", "", *verdict_lines(report), ""]
    for table in tables(report):
        lines += [*table.markdown(), ""]
    lines += [f"![{name}]({name})" for name in figures]
    if report.get("full_suite_command"):
        lines += ["", f"This was a shortened suite. The full one: `{report['full_suite_command']}`."]
    return "\n".join(lines) + "\n"
