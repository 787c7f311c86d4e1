"""`torch-rln bench rmsln`: the MNIST-1D data, the statistics, and the command with Optuna."""

import json
import math

import numpy as np
import pytest

pytest.importorskip("optuna")
pytest.importorskip("mnist1d")
pytest.importorskip("rich")

import optuna  # noqa: E402

from torch_rln_cli import main as cli_main  # noqa: E402
from torch_rln_cli import rmsln_mnist1d  # noqa: E402
from torch_rln_cli.data import load_mnist1d  # noqa: E402

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


def test_paired_interval_uses_student_t():
    c = rmsln_mnist1d.paired([0.0, 0.0, 0.0], [1.0, 2.0, 3.0])
    assert c["mean"] == 2.0 and c["differences"] == [1.0, 2.0, 3.0]
    half = 4.303 * 1.0 / math.sqrt(3)
    assert c["ci95"] == pytest.approx([2.0 - half, 2.0 + half])
    assert rmsln_mnist1d.paired([1.0], [2.0])["ci95"] is None


@pytest.mark.parametrize(
    "rmsln_losses,holds",
    [([1.0, 1.1, 1.2, 1.3], True), ([2.0, 2.1, 2.2, 2.35], True), ([0.0, 0.1, 0.2, 0.28], False)],
)
def test_verdict_on_the_published_claim(rmsln_losses, holds):
    base = {"final_val_loss": [1.0, 1.1, 1.2, 1.3], "min_val_loss": [1.0] * 4}
    reg = {"final_val_loss": rmsln_losses, "min_val_loss": [1.0] * 4}
    verdict = rmsln_mnist1d.comparison({"baseline": base, "rmsln": reg})
    assert verdict["published_claim_holds"] is holds


def run_cli(argv, capsys):
    code = cli_main.main(argv)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_quick_run_end_to_end(tmp_path, capsys):
    code, out = run_cli([*QUICK, "--out", str(tmp_path)], capsys)
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
    assert (tmp_path / "rmsln-mnist1d-curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "## RMSLN vs Adam" in (tmp_path / "report.md").read_text()
    assert "1.3054" in out and "Published claim" in out


def test_holdout_reports_the_test_split(tmp_path, capsys):
    code, out = run_cli([*QUICK, "--protocol", "holdout", "--trials", "2", "--seeds", "2", "--out", str(tmp_path)], capsys)
    assert code == 0, out
    report = json.loads((tmp_path / "rmsln-mnist1d.json").read_text())
    assert report["protocol"] == "holdout" and "carved from the training set" in report["validation"]
    assert all(math.isfinite(report["final"][n]["test_loss_mean"]) for n in ("baseline", "rmsln"))


def count_trainings(monkeypatch):
    calls = {"trial": 0, "final": 0}
    train = rmsln_mnist1d.train

    def counted(params, data, settings, *, epochs, seed, on_epoch=None):
        calls["trial" if epochs == settings.trial_epochs else "final"] += 1
        return train(params, data, settings, epochs=epochs, seed=seed, on_epoch=on_epoch)

    monkeypatch.setattr(rmsln_mnist1d, "train", counted)
    return calls


def finished(tmp_path, model):
    storage = f"sqlite:///{tmp_path / 'optuna-rmsln-mnist1d.db'}"
    study = optuna.load_study(study_name=f"rmsln-mnist1d-{model}-published-seed0", storage=storage)
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
    train = rmsln_mnist1d.train

    def interrupt_third(params, data, settings, *, epochs, seed, on_epoch=None):
        if calls["trial"] == 2:  # the third trial
            raise KeyboardInterrupt
        return train(params, data, settings, epochs=epochs, seed=seed, on_epoch=on_epoch)

    monkeypatch.setattr(rmsln_mnist1d, "train", interrupt_third)
    code, out = run_cli([*QUICK, "--trials", "4", "--out", str(tmp_path)], capsys)
    assert code == 130 and "Interrupted" in out
    done, states = finished(tmp_path, "baseline")
    assert done == 2 and optuna.trial.TrialState.COMPLETE in states
    report = json.loads((tmp_path / "rmsln-mnist1d.json").read_text())
    assert report["interrupted"] is True

    monkeypatch.setattr(rmsln_mnist1d, "train", train)
    calls = count_trainings(monkeypatch)
    assert run_cli([*QUICK, "--trials", "4", "--out", str(tmp_path)], capsys)[0] == 0
    assert calls["trial"] == 2 + 4  # the two missing baseline trials, then all of RMSLN's
    assert finished(tmp_path, "baseline")[0] == 4


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--trials", "0"], "invalid --trials: '0'"),
        (["--seeds", "x"], "invalid --seeds: 'x'"),
        (["--trial-epochs", "-1"], "invalid --trial-epochs: '-1'"),
        (["--storage", "nosuchdb://x"], "--storage nosuchdb://x: cannot open this Optuna storage"),
    ],
)
def test_bad_arguments_exit_2_and_name_them(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        cli_main.main(["bench", "rmsln", "--out", str(tmp_path), *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
