"""The tabular experiment's tables (one description each, for the terminal and report.md),
its verdicts in words, and its report.md section."""

from __future__ import annotations

import math
from typing import Any

from rich.console import Console

from ..common.tables import Column, TableSpec, build
from .analysis import method_label, outcome
from .methods import METHODS
from .metrics import LOWER_IS_BETTER, NAMES

COMMAND = "torch-rln bench tabular"


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def num(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.3g}"


def seconds(value: float) -> str:
    """Whole seconds, or tenths below 10 s (a quick run's methods take under a second each)."""
    return f"{value:.1f}" if value < 10 else f"{value:.0f}"


def mean_ci(entry: dict[str, Any]) -> str:
    ci = entry.get("ci95")
    return num(entry["mean"]) + ("" if ci is None else f" [{num(ci[0])}, {num(ci[1])}]")


Row = dict[str, Any]
LINEAR_LABEL = "L1 linear (Lasso / L1 logistic)"  # across data sets, whatever their tasks


def _word(o: str) -> str:
    return {"win": "(RLN better)", "loss": "(RLN worse)", "tie": "(no clear difference)"}[o]


# ---------------------------------------------------------------------- per data set: method by metric
def _metric_column(metric: str) -> Column[Row]:
    """A metric's mean and interval over seeds, ``*`` on the best mean. Row: a method's entry
    of ``datasets.<name>.methods`` with its ``method`` and the data set's ``best``."""
    better = "lower" if metric in LOWER_IS_BETTER else "higher"

    def cell(row: Row) -> str:
        if not row["seeds"]:
            return "-"
        return ("* " if row["best"].get(metric) == row["method"] else "") + mean_ci(row["test"][metric])

    return Column(f"{NAMES[metric]} ({better} is better)", cell)


def _paired_column(primary: str) -> Column[Row]:
    def cell(row: Row) -> str:
        if row["paired"] is None:
            return "(reference)" if row["method"] == "rln" else "-"
        return f"{mean_ci(row['paired'])} {_word(outcome(row['paired'], primary))}"

    return Column(f"RLN - method ({NAMES[primary]})", cell)


def dataset_table(name: str, d: dict[str, Any]) -> TableSpec:
    primary = d["primary"]
    columns = [
        Column[Row]("method", lambda row: row["label"]),
        *(_metric_column(m) for m in d["metrics"]),
        _paired_column(primary),
        Column[Row]("seconds", lambda row: seconds(row["seconds"]["total"])),
    ]
    rows = [
        {**v, "method": m, "best": d["best"], "paired": d["paired"].get(m, {}).get(primary)}
        for m, v in d["methods"].items()
    ]
    title = (
        f"{name}: test metrics over {plural(len(d['seeds']), 'seed')}, mean [95% Student's t interval: with few "
        f"seeds it can pass a metric's bounds]; * the best mean; RLN - method: paired over seeds, in {NAMES[primary]}"
    )
    return build(title, columns, rows)


# ---------------------------------------------------------------------- the chosen settings
PARAM_NAMES = {"theta": "Theta", "log10_nu": "log10 nu", "l1": "L1", "weight_decay": "weight decay"}


def _param(key: str, value: float) -> str:
    return f"{value:.1f}" if key in ("theta", "log10_nu") else f"{value:.3g}"


def _chosen(params: list[dict[str, float]]) -> str:
    """Each setting's value seed by seed: ``lr 0.001, 0.002; Theta -9.1, -8.7``."""
    return "; ".join(f"{PARAM_NAMES.get(k, k)} " + ", ".join(_param(k, p[k]) for p in params) for k in params[0])


SETTINGS_COLUMNS: tuple[Column[Row], ...] = (
    Column("data set", lambda row: row["dataset"]),
    Column("method", lambda row: row["label"]),
    Column("chosen settings, seed by seed", lambda row: _chosen(row["params"])),
)


def settings_table(datasets: dict[str, Any]) -> TableSpec:
    """The setting each method chose on each data set, seed by seed (what to try on the same data)."""
    rows = [{**v, "dataset": name} for name, d in datasets.items() for v in d["methods"].values() if v["params"]]
    title = (
        "The settings chosen on validation, per seed (lr: RMSprop's learning rate; Theta: RLN's mean "
        "log-coefficient, natural log; log10 nu: its coefficients' learning rate)"
    )
    return build(title, SETTINGS_COLUMNS, rows)


# ---------------------------------------------------------------------- across data sets
def _count(key: str) -> Column[Row]:
    header = {"rln_wins": "RLN better", "ties": "no clear difference", "rln_losses": "RLN worse"}[key]
    return Column(header, lambda row: "-" if row["method"] == "rln" else str(len(row[key])))


SUMMARY_COLUMNS: tuple[Column[Row], ...] = (
    Column("method", lambda row: LINEAR_LABEL if row["method"] == "l1_linear" else METHODS[row["method"]].label),
    _count("rln_wins"),
    _count("ties"),
    _count("rln_losses"),
    Column("mean rank", lambda row: f"{row['mean_rank']:.2f}"),
)


def summary_table(summary: dict[str, Any], datasets: int) -> TableSpec:
    title = (
        f"Summary over {plural(datasets, 'data set')}: RLN against each method on the primary metric (RMSE, log "
        "loss), counted only where the paired 95% interval excludes 0; mean rank (1 = best)"
    )
    return build(title, SUMMARY_COLUMNS, [{**s, "method": m} for m, s in summary["methods"].items()])


def _share(key: str, header: str) -> Column[Row]:
    def cell(row: Row) -> str:
        entry = row.get(key)
        return "-" if entry is None or entry["mean"] is None else f"{entry['mean']:.0%}"

    return Column(header, cell)


def _figure(key: str, header: str) -> Column[Row]:
    return Column(header, lambda row: num(row.get(key, {}).get("mean")))


FEATURE_COLUMNS: tuple[Column[Row], ...] = (
    Column("data set", lambda row: row["dataset"]),
    Column("method", lambda row: method_label(row["method"], row["task"])),
    Column("inputs", lambda row: str(row["inputs"])),
    _figure("eliminated_count", "eliminated"),
    _share("noise_eliminated_share", "noise eliminated"),
    _share("real_kept_share", "others kept"),
    _share("real_in_top_share", "others in top k"),
    _figure("precision", "precision"),
    _figure("recall", "recall"),
)


def features_table(datasets: dict[str, Any]) -> TableSpec:
    rows = [
        {**entry, "dataset": name, "method": method, "task": d["task"], "inputs": len(d["features"]["inputs"])}
        for name, d in datasets.items()
        for method, entry in d["features"]["methods"].items()
        if "eliminated_count" in entry or "real_in_top_share" in entry
    ]
    title = (
        "Feature recovery, mean over seeds: inputs eliminated (whole first-layer column, or every coefficient, "
        "exactly 0); where the noise inputs are known, the share of them eliminated, the share of the others kept, "
        "and the share of the others among the k most important inputs (k their number); where the relevant "
        "inputs are known, precision and recall of the kept inputs"
    )
    return build(title, FEATURE_COLUMNS, rows)


TIME_COLUMNS: tuple[Column[Row], ...] = (
    Column("method", lambda row: row["label"]),
    Column("tuning (s)", lambda row: seconds(row["tuning"])),
    Column("final models (s)", lambda row: seconds(row["final"])),
    Column("total (s)", lambda row: seconds(row["tuning"] + row["final"])),
)


def time_table(datasets: dict[str, Any]) -> TableSpec:
    totals: dict[str, Row] = {}
    for d in datasets.values():
        for method, v in d["methods"].items():
            label = LINEAR_LABEL if method == "l1_linear" else v["label"]
            row = totals.setdefault(method, {"label": label, "tuning": 0.0, "final": 0.0})
            row["tuning"] += v["seconds"]["tuning"]
            row["final"] += v["seconds"]["final"]
    title = (
        "Time per method, summed over data sets and seeds (the MLPs train stacked: each trial is given a share "
        "of its stack's time in proportion to the epochs it trained)"
    )
    return build(title, TIME_COLUMNS, totals.values())


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


def smoke_run_note(report: dict[str, Any]) -> str | None:
    """For ``--quick``: what its figures are worth."""
    if report.get("preset") != "quick":
        return None
    s = report["settings"]
    return (
        f"A smoke run (--quick: {plural(s['trials'], 'trial')} per method and seed, at most {s['max_epochs']} "
        "epochs): it checks that everything works, not which method is better. Run it again without --quick "
        "for the comparison."
    )


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
    note = smoke_run_note(report)
    if note:
        console.print(note, markup=False, highlight=False)
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
    note = smoke_run_note(report)
    if note:
        lines += [f"**{note}**", ""]
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
