"""`torch-rln bench rmsln`: the MNIST-1D data, the statistics, and the command with Optuna."""

import json
import math

import numpy as np
import pytest
import torch
from helpers import run_cli

pytest.importorskip("optuna")
pytest.importorskip("mnist1d")
pytest.importorskip("rich")

import optuna  # noqa: E402
from torch_rln_cli import main as cli_main  # noqa: E402
from torch_rln_cli.rmsln_mnist1d import investigation as rmsln_investigation  # noqa: E402
from torch_rln_cli.rmsln_mnist1d import protocol, results, training  # noqa: E402
from torch_rln_cli.rmsln_mnist1d.data import load_mnist1d  # noqa: E402
from torch_rln_cli.rmsln_mnist1d.run import rmsln_settings  # noqa: E402

from torch_rln import rms_penalty  # noqa: E402

QUICK = ["bench", "rmsln", "--quick", "--device", "cpu"]


@pytest.fixture(scope="module")
def mnist1d():
    return load_mnist1d()


def test_mnist1d_matches_the_published_frozen_set(mnist1d):
    (x, y), (x_test, y_test) = mnist1d
    assert x.shape == (4000, 40) and x_test.shape == (1000, 40)
    assert y.dtype == np.int64 and set(np.unique(y)) == set(range(10))
    # The frozen set is balanced: about 400 training and 100 test sequences per class.
    assert np.bincount(y).min() >= 350 and np.bincount(y).max() <= 450
    assert np.bincount(y_test).min() >= 80 and np.bincount(y_test).max() <= 120
    assert np.isfinite(x).all()


@pytest.mark.parametrize(
    "rmsln_losses,holds",
    [([1.0, 1.1, 1.2, 1.3], True), ([2.0, 2.1, 2.2, 2.35], True), ([0.0, 0.1, 0.2, 0.28], False)],
)
def test_verdict_on_the_published_claim(rmsln_losses, holds):
    base = {"final_val_loss": [1.0, 1.1, 1.2, 1.3], "min_val_loss": [1.0] * 4}
    reg = {"final_val_loss": rmsln_losses, "min_val_loss": [1.0] * 4}
    verdict = results.comparison({"baseline": base, "rmsln": reg})
    assert verdict["published_claim_holds"] is holds


def test_quick_run_end_to_end(tmp_path, capsys):
    code, out = run_cli([*QUICK, "--investigate", "--out", str(tmp_path)], capsys)
    assert code == 0, out
    report = json.loads((tmp_path / "rmsln-mnist1d.json").read_text())
    assert {"experiment", "protocol", "best_params", "final", "published", "comparison", "seconds"} <= set(report)
    assert report["experiment"] == "rmsln-mnist1d" and report["protocol"] == "published"
    assert set(report["best_params"]) == {"baseline", "rmsln"}
    assert set(report["best_params"]["rmsln"]) == {"lr", "reg_lambda"}
    for name in ("baseline", "rmsln"):
        final = report["final"][name]
        assert {"val_loss_mean", "val_loss_std", "acc_mean", "acc_std", "curves", "min_val_loss_mean"} <= set(final)
        assert len(final["curves"]) == 2 and all(len(c) == 5 for c in final["curves"])
        assert min(final["curves"][0]) == pytest.approx(final["min_val_loss"][0])
    assert "verdict" in report["comparison"]
    assert report["settings"]["batch_size"] == 4000 and report["settings"]["full_batch"] is True
    investigation = report["investigation"]
    assert [row["batch"] for row in investigation["batches"]] == [4000, 1000, 512, 128]
    rows = {row["name"]: row for row in investigation["definitions"]}
    assert set(rmsln_investigation.candidates()) == set(rows)
    # The library's wrapper and the same penalty written as a loss term train alike.
    assert rows["library"]["mean"] == pytest.approx(rows["library_as_loss"]["mean"], abs=1e-4)
    assert investigation["closest"]["name"] in rows
    assert (tmp_path / "rmsln-mnist1d-curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "## RMSLN vs Adam" in (tmp_path / "report.md").read_text()
    assert "1.3054" in out and "Published claim" in out
    text = (tmp_path / "report.md").read_text()
    assert "candidate definitions at full batch" in text and "minus plain Adam at the same lr" in text
    assert "the mean curve's minimum: baseline at epoch" in text and "of 5; rmsln at epoch" in text
    assert "here the final loss" in text  # the batch table's trend, read off this run


def test_investigation_is_off_by_default_and_the_report_says_how_to_run_it(tmp_path, capsys):
    code, out = run_cli([*QUICK, "--trials", "2", "--out", str(tmp_path)], capsys)
    assert code == 0, out
    report = json.loads((tmp_path / "rmsln-mnist1d.json").read_text())
    assert report["investigation"] is None
    text = (tmp_path / "report.md").read_text()
    assert "`torch-rln bench rmsln --investigate`" in text and "candidate definitions at full batch" not in text
    runs = rmsln_investigation.runs_planned(2)  # the quick run's two final seeds
    assert f"{runs} more training runs of 5 epochs" in text


def test_published_protocol_trains_full_batch_unless_told():
    assert protocol.Settings().batch(4000) == 4000
    assert protocol.Settings(protocol="holdout").batch(3200) == 100
    assert protocol.Settings(batch_size=100).batch(4000) == 100
    args = cli_main.build_parser().parse_args(["bench", "rmsln", "--batch-size", "128", "--seeds", "3,5"])
    settings = rmsln_settings(args, "cpu")
    assert settings.batch_size == 128 and settings.final_seeds() == [3, 5]


def test_candidate_penalties_by_hand():
    model = torch.nn.Sequential(torch.nn.Linear(4, 2), torch.nn.Linear(2, 1))
    with torch.no_grad():
        model[0].weight.fill_(0.5)  # rms 0.5, norm sqrt(8 * 0.25) = sqrt(2), sum of squares 2
        model[0].bias.fill_(2.0)  # rms 2
        model[1].weight.fill_(1.0)  # rms 1: no penalty under target 1
        model[1].bias.fill_(1.0)
    penalty = rmsln_investigation.rms_penalty
    assert penalty(reg_lambda=1.0)(model).item() == pytest.approx(0.25)
    weights = [model[0].weight, model[1].weight]
    assert penalty(reg_lambda=1.0)(model).item() == pytest.approx(rms_penalty(weights, 1.0).item())
    assert penalty(reg_lambda=1.0, reduce="mean")(model).item() == pytest.approx(0.125)
    all_params = penalty(params=lambda m: list(m.parameters()), reg_lambda=1.0)
    assert all_params(model).item() == pytest.approx(0.25 + 1.0)
    assert penalty(size=torch.linalg.norm, reg_lambda=1.0)(model).item() == pytest.approx(2 * (2**0.5 - 1) ** 2)
    assert penalty(target=0.0, reg_lambda=2.0)(model).item() == pytest.approx(2 * (0.25 + 1.0))


def test_holdout_reports_the_test_split(tmp_path, capsys):
    code, out = run_cli([*QUICK, "--protocol", "holdout", "--trials", "2", "--seeds", "2", "--out", str(tmp_path)], capsys)
    assert code == 0, out
    report = json.loads((tmp_path / "rmsln-mnist1d.json").read_text())
    assert report["protocol"] == "holdout" and "carved from the training set" in report["validation"]
    assert all(math.isfinite(report["final"][n]["test_loss_mean"]) for n in ("baseline", "rmsln"))


def count_trainings(monkeypatch):
    calls = {"trial": 0, "final": 0}
    train = training.train

    def counted(params, data, settings, *, epochs, seed, on_epoch=None):
        calls["trial" if epochs == settings.trial_epochs else "final"] += 1
        return train(params, data, settings, epochs=epochs, seed=seed, on_epoch=on_epoch)

    monkeypatch.setattr(training, "train", counted)
    return calls


def finished(tmp_path, model):
    storage = f"sqlite:///{tmp_path / 'optuna-rmsln-mnist1d.db'}"
    study = optuna.load_study(study_name=f"rmsln-mnist1d-{model}-published-seed0-batch4000-3epochs", storage=storage)
    states = [t.state for t in study.trials]
    return states.count(optuna.trial.TrialState.COMPLETE) + states.count(optuna.trial.TrialState.PRUNED), states


def test_rerun_resumes_and_never_reruns_a_finished_trial(tmp_path, capsys, monkeypatch):
    calls = count_trainings(monkeypatch)
    assert run_cli([*QUICK, "--trials", "3", "--out", str(tmp_path)], capsys)[0] == 0
    assert calls["trial"] == 6
    assert run_cli([*QUICK, "--trials", "3", "--out", str(tmp_path)], capsys)[0] == 0
    assert calls["trial"] == 6  # nothing left to tune
    assert run_cli([*QUICK, "--trials", "4", "--out", str(tmp_path)], capsys)[0] == 0
    assert calls["trial"] == 8  # one more per model
    assert finished(tmp_path, "baseline")[0] == 4 and finished(tmp_path, "rmsln")[0] == 4


def test_interrupted_study_keeps_finished_trials(tmp_path, capsys, monkeypatch):
    calls = count_trainings(monkeypatch)
    train = training.train

    def interrupt_third(params, data, settings, *, epochs, seed, on_epoch=None):
        if calls["trial"] == 2:  # the third trial
            raise KeyboardInterrupt
        return train(params, data, settings, epochs=epochs, seed=seed, on_epoch=on_epoch)

    monkeypatch.setattr(training, "train", interrupt_third)
    code, out = run_cli([*QUICK, "--trials", "4", "--out", str(tmp_path)], capsys)
    assert code == 130 and "Interrupted" in out
    done, states = finished(tmp_path, "baseline")
    assert done == 2 and optuna.trial.TrialState.COMPLETE in states
    report = json.loads((tmp_path / "rmsln-mnist1d.json").read_text())
    assert report["interrupted"] is True

    monkeypatch.setattr(training, "train", train)
    calls = count_trainings(monkeypatch)
    assert run_cli([*QUICK, "--trials", "4", "--out", str(tmp_path)], capsys)[0] == 0
    assert calls["trial"] == 2 + 4  # the two missing baseline trials, then all of RMSLN's
    assert finished(tmp_path, "baseline")[0] == 4
