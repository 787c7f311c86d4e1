"""The command's arguments: each bad value exits with status 2 and names the option, for
every experiment; a missing ``bench`` extra names the command that installs it."""

import pytest
import torch

pytest.importorskip("rich")

from torch_rln_cli import main as cli_main  # noqa: E402


@pytest.mark.parametrize(
    "argv,message",
    [
        (["rln", "--repeats", "0"], "invalid --repeats: '0'"),
        (["rln", "--epochs", "x"], "invalid --epochs: 'x'"),
        (["rln", "--depths", "1,2"], "invalid --depths: '1,2'"),
        (["rln", "--l1-values", "0.1,-1"], "invalid --l1-values: '0.1,-1'"),
        (["rln", "--rln-grid=-10"], "invalid --rln-grid entry '-10'"),
        (["rln", "--rln-grid", "-10:6,x"], "invalid --rln-grid entry 'x'"),  # a value starting with '-' is taken
        (["rln", "--rln-grid=-10:6,a:b"], "invalid --rln-grid entry 'a:b'"),
        (["rln", "--protocol", "best"], "invalid choice: 'best'"),
        (["rln", "--device", "tpu"], "invalid choice: 'tpu'"),
        (["rmsln", "--trials", "0"], "invalid --trials: '0'"),
        (["rmsln", "--seeds", "x"], "invalid --seeds: 'x'"),
        (["rmsln", "--trial-epochs", "-1"], "invalid --trial-epochs: '-1'"),
        (["rmsln", "--batch-size", "0"], "invalid --batch-size: '0'"),
        (["rmsln", "--seeds", "0"], "invalid --seeds: '0'"),
        (["rmsln", "--storage", "nosuchdb://x"], "--storage nosuchdb://x: cannot open this Optuna storage"),
        (["rmsln", "--investigate", "--protocol", "holdout"], "--investigate: the investigation reproduces"),
    ],
)
def test_bad_arguments_exit_2_and_name_them(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        cli_main.main(["bench", *argv, "--out", str(tmp_path)])
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
    code = cli_main.main(["bench", "rln", "--quick"])
    captured = capsys.readouterr()
    out = captured.out + captured.err
    assert code == 2
    assert "pip install 'torch-rln[bench]'" in out and "missing: rich" in out


def test_every_experiment_is_a_choice_with_its_own_options():
    parser = cli_main.build_parser()
    args = parser.parse_args(["bench", "rmsln", "--investigate", "--rln-grid=-10:6"])
    assert args.experiment == "rmsln" and args.investigate is True and args.rln_grid == [(-10.0, 6.0)]
    assert parser.parse_args(["bench"]).investigate is False  # the investigation is opt-in
