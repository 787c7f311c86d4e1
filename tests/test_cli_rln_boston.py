"""`torch-rln bench rln`: the data, the feature recovery and the command."""

import json
import math

import numpy as np
import pytest
from helpers import run_cli

pytest.importorskip("rich")
pytest.importorskip("matplotlib")

from torch_rln_cli.common.data import standardize  # noqa: E402
from torch_rln_cli.rln_boston import analysis, search  # noqa: E402
from torch_rln_cli.rln_boston.data import load_boston_housing  # noqa: E402


# ---------------------------------------------------------------- data
def test_boston_split_is_the_keras_split():
    (x, y), (x_test, y_test) = load_boston_housing(noise_features=1000, seed=0)
    assert x.shape == (404, 1013) and x_test.shape == (102, 1013)
    np.testing.assert_array_equal(y[:10], [15.2, 42.3, 50.0, 21.1, 17.7, 18.5, 11.3, 15.6, 15.6, 14.4])
    np.testing.assert_array_equal(x[0, :13], [1.23247, 0, 8.14, 0, 0.538, 6.142, 91.7, 3.9769, 4, 307, 21, 396.9, 18.72])
    np.testing.assert_array_equal(y_test[:5], [7.2, 18.8, 19.0, 27.0, 22.2])


def test_boston_noise_features_follow_the_seed_only():
    (x0, y0), _ = load_boston_housing(noise_features=50, seed=0)
    (x1, y1), _ = load_boston_housing(noise_features=50, seed=1)
    assert x0.shape == (404, 63)
    np.testing.assert_array_equal(x0[:, :13], x1[:, :13])
    np.testing.assert_array_equal(y0, y1)
    assert not np.allclose(x0[:, 13:], x1[:, 13:])
    assert abs(x0[:, 13:].std() - 1) < 0.05  # N(0, 1), unstandardized
    (none, _), _ = load_boston_housing(noise_features=0)
    assert none.shape == (404, 13)
    with pytest.raises(ValueError, match="Invalid noise_features: -1"):
        load_boston_housing(noise_features=-1)


def test_standardize_uses_training_statistics():
    (x, _), (x_test, _) = load_boston_housing(noise_features=5)
    xs, xts = standardize(x, x_test)
    np.testing.assert_allclose(xs.mean(axis=0), 0, atol=1e-9)
    np.testing.assert_allclose(xs.std(axis=0), 1, atol=1e-9)
    np.testing.assert_allclose(xts, (x_test - x.mean(0)) / x.std(0))


# ---------------------------------------------------------------- analysis
def test_feature_recovery_counts():
    first = np.zeros((2, 4, 20))
    first[0, :, :13] = 1.0  # all 13 real features on top
    first[1, :, 7:20] = 1.0  # 6 real features among the top 13
    f = analysis.feature_recovery(first)
    assert f["real_in_top13"] == [13, 6]
    assert f["zero_fraction"] == [pytest.approx(7 / 20), pytest.approx(7 / 20)]


# ---------------------------------------------------------------- the command
def test_quick_run_end_to_end(tmp_path, capsys):
    code, out = run_cli(["bench", "rln", "--quick", "--device", "cpu", "--out", str(tmp_path)], capsys)
    assert code == 0, out
    report = json.loads((tmp_path / "rln-boston.json").read_text())
    assert {"experiment", "protocol", "runs", "best", "published", "features", "seconds", "verdicts"} <= set(report)
    assert report["experiment"] == "rln-boston" and report["protocol"] == "published"
    assert set(report["best"]) == {"none", "l1", "rln"}
    for run in report["runs"]:
        assert run["model"] in ("none", "l1", "rln")
        assert {"mse_mean", "mse_std", "repeats", "depth"} <= set(run)
        assert run["repeats"] == 3 and math.isfinite(run["mse_mean"])
    assert report["published"]["rln"]["mse_mean"] == 21.34
    assert set(report["features"]) == {"none", "l1", "rln"}
    for name in ("rln-boston-mse.png", "rln-boston-features.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "## RLN vs L1 vs none" in (tmp_path / "report.md").read_text()
    assert "Published claim" in out and "106.84" in out
    assert "48.57" in out and "21.34" in out  # the published bests sit beside our bests


def test_holdout_protocol_scores_the_test_set_once(tmp_path, capsys):
    argv = ["bench", "rln", "--quick", "--protocol", "holdout", "--depths", "2", "--l1-values", "0.1",
            "--rln-grid", "-10:6", "--out", str(tmp_path)]
    code, out = run_cli(argv, capsys)
    assert code == 0, out
    report = json.loads((tmp_path / "rln-boston.json").read_text())
    assert report["protocol"] == "holdout" and "validation" in report["selection"]
    assert len(report["runs"]) == 3
    for best in report["best"].values():
        assert len(best["test_mse"]) == 3 and math.isfinite(best["test_mse_mean"])


def test_ctrl_c_keeps_and_reports_finished_runs(monkeypatch, tmp_path, capsys):
    train = search.Experiment.train
    calls = {"n": 0}

    def interrupted_train(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return train(self, *args, **kwargs)

    monkeypatch.setattr(search.Experiment, "train", interrupted_train)
    code, out = run_cli(["bench", "rln", "--quick", "--out", str(tmp_path)], capsys)
    assert code == 130
    report = json.loads((tmp_path / "rln-boston.json").read_text())
    assert report["interrupted"] is True and len(report["runs"]) == 2
    assert "Interrupted" in out and (tmp_path / "report.md").exists()
