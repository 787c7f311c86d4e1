"""The RMSLN experiment's report: the final runs, the comparison with the published claim,
and the investigation of the write-up's figures (one description of each table, for the
terminal and report.md)."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from ..common.stats import paired
from ..common.tables import Column, TableSpec, build, field_mean_std, mean_std
from .protocol import MODELS, PUBLISHED

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


def batch_line(inv: dict[str, Any]) -> str:
    target = PUBLISHED["baseline"]["final_val_loss"]
    rows = ", ".join(f"{row['batch']}: {row['mean']:.4f}" for row in inv["batches"])
    closest = min(inv["batches"], key=lambda row: abs(row["mean"] - target))
    return (
        f"Batch: the write-up does not give one. With its baseline lr, the final validation loss by batch is {rows} "
        f"(published {target}); the closest is batch {closest['batch']} ({closest['mean'] - target:+.4f}). "
        "The smaller the batch, the more Adam steps in 100 epochs and the further this MLP overfits. The published "
        "protocol trains at the whole training set by default (`--batch-size 100` gives the earlier setting)."
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


def investigation_lines(report: dict[str, Any]) -> list[str]:
    inv = report.get("investigation")
    if not inv:
        return []
    rows = {row["name"]: row for row in inv["definitions"]}
    return [batch_line(inv), penalty_line(inv, rows), control_line(rows)]


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
    lines += [f"- {line}" for line in comparison_lines(report) + investigation_lines(report)]
    lines.append(
        "- The write-up gives neither its model nor its batch size: compare directions, not magnitudes; "
        "the final loss includes the overfitting after the minimum, so both are reported."
    )
    if report["interrupted"]:
        lines.append("- The run was interrupted: finished trials are kept in the storage; rerun to resume.")
    lines.append("")
    lines += [f"![{name}]({name})" for name in figures]
    return "\n".join(lines) + "\n"
