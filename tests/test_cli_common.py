"""What the experiments share: the stacked MLP and its collapse checks, the statistics,
the table builder and the Optuna plumbing."""

import math
import sqlite3

import pytest
import torch
from helpers import tiny_model

pytest.importorskip("rich")
pytest.importorskip("optuna")

import optuna  # noqa: E402
from torch_rln_cli.common import stats, studies  # noqa: E402
from torch_rln_cli.common.stacked import (  # noqa: E402
    CollapseWatch,
    StackedMLP,
    collapse_check_epochs,
    collapsed,
    geometric_widths,
    glorot_normal_,
)
from torch_rln_cli.common.tables import Column, build, field_mean_std, field_number  # noqa: E402

from torch_rln import RLNOptimizer  # noqa: E402


# ---------------------------------------------------------------- the stacked MLP
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


# ---------------------------------------------------------------- collapse
def test_collapse_detected_for_a_dead_hidden_layer_and_a_constant_output():
    x = torch.randn(50, 3, generator=torch.Generator().manual_seed(1))
    model = tiny_model(repeats=3)
    with torch.no_grad():
        model.biases[1][1].fill_(-1e3)  # repeat 1: the 2-unit layer is off for every input
        model.weights[2][2].zero_()  # repeat 2: the output ignores its input
    assert collapsed(model, x, target_std=1.0).tolist() == [False, True, True]


def test_collapse_watch_keeps_the_first_epoch_it_was_seen():
    assert collapse_check_epochs(100) == [1, 2, 4, 8, 16, 32, 64, 100]
    assert collapse_check_epochs(1) == [1]
    x, y = torch.randn(20, 3), torch.randn(20) * 5
    model = tiny_model(repeats=2)
    watch = CollapseWatch(model, x, y, epochs=8)
    watch(0)  # epoch 1: alive
    with torch.no_grad():
        model.biases[0][0].fill_(-1e3)  # repeat 0's first hidden layer dies
    watch(2)  # epoch 3: not a check epoch
    watch(3)  # epoch 4: seen
    watch(7)
    assert watch.at_end() == ([0], [4])


# ---------------------------------------------------------------- statistics
def test_t_interval_against_a_hand_computation():
    mean, ci = stats.mean_ci95([1.0, 2.0, 3.0])  # sd 1, t(0.975, 2) = 4.303
    half = 4.303 / math.sqrt(3)
    assert mean == 2.0 and ci == pytest.approx([2.0 - half, 2.0 + half])
    assert stats.mean_ci95([5.0])[1] is None
    # Beyond the table: t(0.975) for 40, 60, 120 degrees of freedom is 2.021, 2.000, 1.980.
    assert [round(stats.t95(df), 3) for df in (40, 60, 120)] == [2.021, 2.0, 1.98]
    assert stats.t95(30) == 2.042 and stats.t95(1) == 12.706



def test_paired_interval_uses_student_t():
    c = stats.paired([0.0, 0.0, 0.0], [1.0, 2.0, 3.0])
    assert c["mean"] == 2.0 and c["differences"] == [1.0, 2.0, 3.0]
    half = 4.303 * 1.0 / math.sqrt(3)
    assert c["ci95"] == pytest.approx([2.0 - half, 2.0 + half])
    assert stats.paired([1.0], [2.0])["ci95"] is None


# ---------------------------------------------------------------- tables
def test_table_builder_takes_each_cell_from_its_column():
    columns = (
        Column("name", lambda row: row["name"]),
        Column("score", field_mean_std("score")),
        Column("alive", field_number("alive", ".1f")),
    )
    table = build("Scores", columns, [{"name": "a", "score_mean": 1.0, "score_std": 0.25, "alive": None}])
    assert table.columns == ["name", "score", "alive"]
    assert table.rows == [["a", "1.00 (0.25)", "-"]]
    assert table.markdown()[2:] == ["| name | score | alive |", "|---|---|---|", "| a | 1.00 (0.25) | - |"]
    with pytest.raises(ValueError, match="a row of 1 cells for the 3 columns"):
        table.add("x")


# ---------------------------------------------------------------- studies
@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # study.ask() outside Study.optimize, on purpose
def test_stale_trials_are_failed_through_the_public_api(tmp_path):
    storage = studies.make_storage(f"sqlite:///{tmp_path / 'stale.db'}", heartbeat_seconds=60)
    study = studies.open_study("stale", storage, seed=0)
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)
    left = study.ask()  # a trial that a killed run left RUNNING
    assert studies.fail_stale_trials(study) == 1
    states = {t.number: t.state for t in study.trials}
    assert states[left.number] == optuna.trial.TrialState.FAIL
    assert studies.finished_trials(study) == 2 and studies.state_counts(study) == {"complete": 2, "pruned": 0, "failed": 1}
    assert studies.best_trial(study).value == min(t.value for t in study.trials if t.value is not None)


def test_an_sqlite_storage_is_in_write_ahead_log_mode_and_a_second_one_sees_its_trials(tmp_path):
    """The mode is kept in the file, so every worker that opens it uses it; a second storage on
    the file, as another worker's, reads the first one's trials."""
    path = tmp_path / "wal.db"
    study = studies.open_study("wal", studies.make_storage(f"sqlite:///{path}", heartbeat_seconds=60), seed=0)
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    other = studies.open_study("wal", studies.make_storage(f"sqlite:///{path}", heartbeat_seconds=60), seed=0)
    assert [t.value for t in other.trials] == [t.value for t in study.trials]
