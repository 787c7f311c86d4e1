"""The RMSLN experiment's results: each model's final runs summarized, the paired
comparison and its verdict on the published claim, and the JSON."""

from __future__ import annotations

from typing import Any

from ..common.stats import mean_std, paired
from .experiment import FinalRun, Result
from .protocol import EXPERIMENT, LR_RANGE, MODELS, PUBLISHED, REG_LAMBDA_RANGE


def summarize(runs: list[FinalRun]) -> dict[str, Any]:
    final_loss = [r.val_loss[-1] for r in runs]
    min_loss = [min(r.val_loss) for r in runs]
    final_acc = [r.val_acc[-1] for r in runs]
    best_acc = [max(r.val_acc) for r in runs]
    out = {
        "params": runs[0].params,
        "seeds": [r.seed for r in runs],
        "val_loss_mean": mean_std(final_loss)[0],
        "val_loss_std": mean_std(final_loss)[1],
        "min_val_loss_mean": mean_std(min_loss)[0],
        "min_val_loss_std": mean_std(min_loss)[1],
        "acc_mean": mean_std(final_acc)[0],
        "acc_std": mean_std(final_acc)[1],
        "max_acc_mean": mean_std(best_acc)[0],
        "max_acc_std": mean_std(best_acc)[1],
        "final_val_loss": final_loss,
        "min_val_loss": min_loss,
        "curves": [r.val_loss for r in runs],
        "acc_curves": [r.val_acc for r in runs],
    }
    if runs[0].test_loss is not None:
        tl = [r.test_loss for r in runs if r.test_loss is not None]
        ta = [r.test_acc for r in runs if r.test_acc is not None]
        out.update(
            test_loss_mean=mean_std(tl)[0],
            test_loss_std=mean_std(tl)[1],
            test_acc_mean=mean_std(ta)[0],
            test_acc_std=mean_std(ta)[1],
        )
    return out


def comparison(finals: dict[str, dict[str, Any]]) -> dict[str, Any]:
    if not set(MODELS) <= set(finals):
        return {}
    base, reg = finals["baseline"], finals["rmsln"]
    out: dict[str, Any] = {
        "final_val_loss_rmsln_minus_baseline": paired(base["final_val_loss"], reg["final_val_loss"]),
        "min_val_loss_rmsln_minus_baseline": paired(base["min_val_loss"], reg["min_val_loss"]),
    }
    ci = out["final_val_loss_rmsln_minus_baseline"]["ci95"]
    verdict: str
    holds: bool | None
    if ci is None:
        verdict, holds = "one seed: no interval, no verdict", None
    elif ci[1] < 0:
        verdict = "RMSLN lowered the final validation loss (95% CI below 0): the published conclusion does not hold"
        holds = False
    elif ci[0] > 0:
        verdict = "RMSLN raised the final validation loss (95% CI above 0): consistent with the published conclusion"
        holds = True
    else:
        verdict = "no significant difference (95% CI contains 0): consistent with the published conclusion"
        holds = True
    out["verdict"] = verdict
    out["published_claim_holds"] = holds
    return out


def to_json(result: Result, batch_size: int, investigation: dict[str, Any] | None = None) -> dict[str, Any]:
    """The report; ``batch_size``: the batch the runs trained at; ``investigation``: what
    :func:`.investigation.investigate` measured (``--investigate``), None where it did not run."""
    s = result.settings
    finals = {name: summarize(runs) for name, runs in result.finals.items() if runs}
    return {
        "experiment": EXPERIMENT,
        "protocol": s.protocol,
        "validation": "the 1000-sequence split the write-up calls validation (MNIST-1D's test split)"
        if s.protocol == "published"
        else f"{s.validation_size} sequences carved from the training set; test scored once",
        "settings": {
            "trials": s.trials,
            "trial_epochs": s.trial_epochs,
            "epochs": s.epochs,
            "seeds": s.seeds,
            "hidden": list(s.hidden),
            "batch_size": batch_size,
            "full_batch": s.batch_size is None and s.protocol == "published",
            "final_seeds": s.final_seeds(),
            "seed": s.seed,
            "device": s.device,
            "lr_range": list(LR_RANGE),
            "reg_lambda_range": list(REG_LAMBDA_RANGE),
        },
        "studies": result.studies,
        "best_params": result.best_params,
        "final": finals,
        "published": PUBLISHED,
        "comparison": comparison(finals),
        "investigation": investigation,
        "interrupted": result.interrupted,
        "seconds": round(result.seconds, 2),
    }
