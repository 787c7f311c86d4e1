"""The RMSLN experiment's report: the final runs, the comparison with the published claim,
and, with ``--investigate``, where the write-up's figures come from (one description of
each table, for the terminal and report.md).

Every number in the text comes from the run's JSON or, labelled as published, from
:data:`~.protocol.PUBLISHED`.
"""

from __future__ import annotations

import itertools
from typing import Any

from rich.console import Console

from ..common.stats import paired
from ..common.tables import Column, TableSpec, build, field_mean_std, mean_std
from .investigation import SEEDS as INVESTIGATION_SEEDS
from .investigation import runs_planned
from .protocol import HOLDOUT_BATCH, MODELS, PUBLISHED

Row = dict[str, Any]


def _params(params: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.3g}" for k, v in params.items())


def _published_final(row: Row) -> str:
    published = PUBLISHED[row["model"]]
    return f"{published['final_val_loss']} ({_params(published['params'])})"


FINAL_COLUMNS: tuple[Column[Row], ...] = (
    Column("model", lambda f: str(f["model"])),
    Column("best params (ours)", lambda f: _params(f["params"])),
    Column("final loss", field_mean_std("val_loss", 4)),
    Column("minimum loss", field_mean_std("min_val_loss", 4)),
    Column("final accuracy", field_mean_std("acc", 1, percent=True)),
    Column("published final loss", _published_final),
)


def _loss(row: Row) -> str:
    return mean_std(row["mean"], row["std"], 4)


def finals_table(report: dict[str, Any]) -> TableSpec:
    seeds = len(report["settings"]["final_seeds"])
    rows = [{"model": name, **report["final"][name]} for name in MODELS if name in report["final"]]
    return build(f"Final runs: validation loss and accuracy, mean (std) over {seeds} seeds", FINAL_COLUMNS, rows)


def batch_table(investigation: dict[str, Any]) -> TableSpec:
    seeds, full = len(investigation["seeds"]), investigation["batches"][0]["batch"]
    columns: tuple[Column[Row], ...] = (
        Column("batch", lambda row: f"{row['batch']} (the whole training set)" if row["full"] else str(row["batch"])),
        Column("Adam steps", lambda row: str(investigation["epochs"] * -(-full // row["batch"]))),
        Column("final validation loss", _loss),
    )
    return build(
        f"Baseline with the write-up's lr {PUBLISHED['baseline']['params']['lr']:.4g} by batch: final validation "
        f"loss, mean (std) over {seeds} seeds (published: {PUBLISHED['baseline']['final_val_loss']})",
        columns,
        investigation["batches"],
    )


def definitions_table(investigation: dict[str, Any]) -> TableSpec:
    p = PUBLISHED["rmsln"]
    columns: tuple[Column[Row], ...] = (
        Column("definition", lambda row: str(row["description"])),
        Column("final validation loss", _loss),
        Column("minus the published", lambda row: f"{row['mean'] - p['final_val_loss']:+.4f}"),
    )
    return build(
        f"RMSLN's penalty, candidate definitions at full batch (lr {p['params']['lr']:.4g}, reg_lambda "
        f"{p['params']['reg_lambda']:.3g}): final validation loss (published: {p['final_val_loss']})",
        columns,
        investigation["definitions"],
    )


def tables(report: dict[str, Any]) -> list[TableSpec]:
    out = [finals_table(report)]
    if report.get("investigation"):
        out += [batch_table(report["investigation"]), definitions_table(report["investigation"])]
    return out


def comparison_lines(report: dict[str, Any]) -> list[str]:
    comparison = report["comparison"]
    if not comparison:
        return []
    lines = []
    for key, label in (
        ("final_val_loss_rmsln_minus_baseline", "final"),
        ("min_val_loss_rmsln_minus_baseline", "minimum"),
    ):
        c = comparison[key]
        ci = "" if c["ci95"] is None else f", 95% CI [{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}]"
        lines.append(f"RMSLN - baseline, {label} validation loss, paired by seed: {c['mean']:+.4f}{ci}")
    lines.append(f"Published claim '{PUBLISHED['conclusion']}': {comparison['verdict']}.")
    return lines


def _trend(rows: list[Row]) -> str:
    """How the final loss moves as the batch shrinks (the rows go from the largest batch down)."""
    means = [row["mean"] for row in rows]
    if all(b > a for a, b in itertools.pairwise(means)):
        return "rises at every smaller batch"
    if all(b < a for a, b in itertools.pairwise(means)):
        return "falls at every smaller batch"
    return "does not move one way as the batch shrinks"


def batch_line(inv: dict[str, Any]) -> str:
    target = PUBLISHED["baseline"]["final_val_loss"]
    rows = ", ".join(f"{row['batch']}: {row['mean']:.4f}" for row in inv["batches"])
    closest = min(inv["batches"], key=lambda row: abs(row["mean"] - target))
    return (
        f"Batch: the write-up does not give one. With its baseline lr, the final validation loss by batch is {rows} "
        f"(published {target}); the closest is batch {closest['batch']} ({closest['mean'] - target:+.4f}). Over "
        f"{inv['epochs']} epochs a smaller batch takes more Adam steps, and here the final loss "
        f"{_trend(inv['batches'])}. The published protocol trains at the whole training set by default "
        f"(`--batch-size {HOLDOUT_BATCH}` gives the holdout protocol's batch)."
    )


def penalty_line(inv: dict[str, Any], rows: dict[str, Row]) -> str:
    """The candidate definitions against the published figure; ``rows``: the definitions by name."""
    closest, target = inv["closest"], PUBLISHED["rmsln"]["final_val_loss"]
    near = abs(closest["distance"]) <= max(0.01, 2 * rows[closest["name"]]["std"])
    verdict = "within the seeds' spread of it" if near else "no definition lands within 0.01 or two stds of it"
    return (
        f"Penalty: the write-up's RMSLN figure is {target}. The library's definition gives "
        f"{rows['library']['mean']:.4f} (as a loss term {rows['library_as_loss']['mean']:.4f}), plain Adam at the "
        f"same lr {rows['adam']['mean']:.4f}; the closest candidate is '{rows[closest['name']]['description']}' at "
        f"{closest['mean']:.4f} ({closest['distance']:+.4f}): {verdict}. RMSLNWrapper keeps its definition."
    )


def control_line(rows: dict[str, Row]) -> str:
    """The library's RMSLN against plain Adam at the same lr, seed by seed."""
    c = paired(rows["adam"]["final_val_loss"], rows["library"]["final_val_loss"])
    ci = "" if c["ci95"] is None else f", 95% t interval [{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}]"
    return (
        f"RMSLN itself at full batch: the library's RMSLN minus plain Adam at the same lr, paired by seed: "
        f"{c['mean']:+.4f}{ci} over {c['n']} seeds."
    )


def skipped_line(report: dict[str, Any]) -> str:
    """How to run the investigation that this run skipped."""
    s = report["settings"]
    runs = runs_planned(min(len(s["final_seeds"]), INVESTIGATION_SEEDS))
    where = "" if report["protocol"] == "published" else " (published protocol only)"
    return (
        "Not measured in this run: where the write-up's figures come from (its batch, and candidate definitions "
        f"of the RMSLN penalty; {runs} more training runs of {s['epochs']} epochs here). Run it with "
        f"`torch-rln bench rmsln --investigate`{where}."
    )


def investigation_lines(report: dict[str, Any]) -> list[str]:
    inv = report.get("investigation")
    if not inv:
        return [skipped_line(report)]
    rows = {row["name"]: row for row in inv["definitions"]}
    return [batch_line(inv), penalty_line(inv, rows), control_line(rows)]


def minimum_line(report: dict[str, Any]) -> str:
    """Where each model's mean validation curve reaches its minimum: the final loss includes what comes after."""
    where = []
    for name in MODELS:
        final = report["final"].get(name)
        if final:
            curves = final["curves"]
            mean = [sum(epoch) / len(epoch) for epoch in zip(*curves, strict=True)]
            where.append(f"{name} at epoch {mean.index(min(mean)) + 1} of {len(mean)}")
    return (
        "The write-up gives neither its model nor its batch size: compare directions, not magnitudes. The final "
        "loss includes whatever comes after the minimum, so both are reported"
        + (f" (the mean curve's minimum: {'; '.join(where)})." if where else ".")
    )


def settings_line(report: dict[str, Any]) -> str:
    s = report["settings"]
    batch = f"{s['batch_size']} (the whole training set)" if s["full_batch"] else str(s["batch_size"])
    return (
        f"Protocol: **{report['protocol']}** (validation: {report['validation']}). Optuna TPE (seed {s['seed']}), "
        f"{s['trials']} trials per model of {s['trial_epochs']} epochs with median pruning; final runs: seeds "
        f"{', '.join(map(str, s['final_seeds']))} x {s['epochs']} epochs; MLP 40-{'-'.join(map(str, s['hidden']))}-10, "
        f"batch {batch}; {report['seconds']:.0f} s."
    )


def show_rmsln(report: dict[str, Any], console: Console) -> None:
    for table in tables(report):
        console.print(table.rich())
    for line in comparison_lines(report) + investigation_lines(report):
        console.print(line)
    console.print(f"{report['seconds']:.0f} s in all.")


def rmsln_markdown(report: dict[str, Any], figures: list[str]) -> str:
    lines = ["## RMSLN vs Adam: MNIST-1D, tuned with Optuna", "", settings_line(report), ""]
    for table in tables(report):
        lines += [*table.markdown(), ""]
    lines += [f"- {line}" for line in [*comparison_lines(report), *investigation_lines(report), minimum_line(report)]]
    if report["interrupted"]:
        lines.append("- The run was interrupted: finished trials are kept in the storage; rerun to resume.")
    lines.append("")
    lines += [f"![{name}]({name})" for name in figures]
    return "\n".join(lines) + "\n"
