"""`torch-rln bench rln`: the data, the model, the stacked training and the command."""

import json
import math

import numpy as np
import pytest
import torch

pytest.importorskip("rich")
pytest.importorskip("matplotlib")

from torch_rln import RLNOptimizer  # noqa: E402
from torch_rln_cli import main as cli_main  # noqa: E402
from torch_rln_cli import rln_analysis, rln_boston  # noqa: E402
from torch_rln_cli.data import load_boston_housing, standardize  # noqa: E402
from torch_rln_cli.stacked import StackedMLP, geometric_widths, glorot_normal_  # noqa: E402


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


# ---------------------------------------------------------------- model
def test_geometric_widths():
    # The tutorial's int(np.round(np.exp(np.log(1013) * k / 4))): 1013 ** 0.75 = 179.58 -> 180.
    assert geometric_widths(1013, 4) == [180, 32, 6]
    assert geometric_widths(1013, 2) == [32]
    assert geometric_widths(1013, 3) == [101, 10]
    with pytest.raises(ValueError, match="Invalid depth: 1"):
        geometric_widths(1013, 1)


def test_glorot_normal_is_truncated_with_the_glorot_variance():
    w = torch.empty(50, 400, 600)
    glorot_normal_(w, torch.Generator().manual_seed(0))
    std = math.sqrt(2 / 1000)
    assert abs(w.std().item() / std - 1) < 0.01
    assert w.abs().max().item() <= 2 * std / 0.87962566103423978 + 1e-6


def test_stacked_repeats_train_as_separate_models():
    """R stacked repeats with RLN(batch_dims=1) equal R single models fed the same batches."""
    g = torch.Generator().manual_seed(0)
    sizes, repeats = [30, 8, 4, 1], 3
    stacked = StackedMLP(sizes, repeats, g)
    singles = []
    for r in range(repeats):
        single = StackedMLP(sizes, 1, g)
        with torch.no_grad():
            for ps, pr in zip(single.parameters(), stacked.parameters()):
                ps.copy_(pr[r : r + 1])
        singles.append(single)

    def wrap(model):
        inner = torch.optim.RMSprop(model.parameters(), lr=1e-2, alpha=0.9, eps=1e-7)
        return RLNOptimizer(inner, [model.weights[0]], avg_reg=-4.0, reg_lr=1e4, batch_dims=1)

    opt, opts = wrap(stacked), [wrap(m) for m in singles]
    x, y = torch.randn(40, 30, generator=g), torch.randn(40, 1, generator=g)
    for _ in range(25):
        idx = torch.stack([torch.randperm(40, generator=g)[:10] for _ in range(repeats)])
        opt.zero_grad()
        ((stacked(x[idx]) - y[idx]) ** 2).mean(dim=(1, 2)).sum().backward()
        opt.step()
        for r in range(repeats):
            opts[r].zero_grad()
            ((singles[r](x[idx[r : r + 1]]) - y[idx[r : r + 1]]) ** 2).mean().backward()
            opts[r].step()
    for r in range(repeats):
        for ps, pr in zip(singles[r].parameters(), stacked.parameters()):
            torch.testing.assert_close(ps[0], pr[r], rtol=1e-5, atol=1e-6)
    assert (stacked.weights[0] == 0).any()


def test_feature_recovery_counts():
    first = np.zeros((2, 4, 20))
    first[0, :, :13] = 1.0  # all 13 real features on top
    first[1, :, 7:20] = 1.0  # 6 real features among the top 13
    f = rln_analysis.feature_recovery(first)
    assert f["real_in_top13"] == [13, 6]
    assert f["zero_fraction"] == [pytest.approx(7 / 20), pytest.approx(7 / 20)]


# ---------------------------------------------------------------- the command
def run_cli(argv, capsys):
    code = cli_main.main(argv)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


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


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--repeats", "0"], "invalid --repeats: '0'"),
        (["--epochs", "x"], "invalid --epochs: 'x'"),
        (["--depths", "1,2"], "invalid --depths: '1,2'"),
        (["--l1-values", "0.1,-1"], "invalid --l1-values: '0.1,-1'"),
        (["--rln-grid=-10"], "invalid --rln-grid entry '-10'"),
        (["--rln-grid", "-10:6,x"], "invalid --rln-grid entry 'x'"),  # a value starting with '-' is taken
        (["--rln-grid=-10:6,a:b"], "invalid --rln-grid entry 'a:b'"),
        (["--protocol", "best"], "invalid choice: 'best'"),
        (["--device", "tpu"], "invalid choice: 'tpu'"),
    ],
)
def test_bad_arguments_exit_2_and_name_them(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main.main(["bench", "rln", *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_cuda_device_without_cuda_exits_2(capsys, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(SystemExit) as exit_info:
        cli_main.main(["bench", "rln", "--quick", "--device", "cuda", "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "--device cuda: no CUDA device" in capsys.readouterr().err


def test_missing_extra_names_the_install_command(monkeypatch, capsys):
    monkeypatch.setattr(cli_main, "missing_bench_modules", lambda: ["rich"])
    code, out = run_cli(["bench", "rln", "--quick"], capsys)
    assert code == 2
    assert "pip install 'torch-rln[bench]'" in out and "missing: rich" in out


def test_ctrl_c_keeps_and_reports_finished_runs(monkeypatch, tmp_path, capsys):
    train = rln_boston.Experiment.train
    calls = {"n": 0}

    def interrupted_train(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return train(self, *args, **kwargs)

    monkeypatch.setattr(rln_boston.Experiment, "train", interrupted_train)
    code, out = run_cli(["bench", "rln", "--quick", "--out", str(tmp_path)], capsys)
    assert code == 130
    report = json.loads((tmp_path / "rln-boston.json").read_text())
    assert report["interrupted"] is True and len(report["runs"]) == 2
    assert "Interrupted" in out and (tmp_path / "report.md").exists()
