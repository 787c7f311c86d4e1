"""`torch-rln bench tabular`'s protocol: equal budgets, no test row in tuning, the paired
intervals, feature recovery, the verdicts, and the command end to end (--quick, a resumed
rerun, two workers on one storage)."""

import json
import math
import time

import numpy as np
import pytest
from helpers import cli_process, finish, run_cli, tabular_csv

optuna = pytest.importorskip("optuna")
pytest.importorskip("sklearn")
pytest.importorskip("rich")
pytest.importorskip("matplotlib")

from torch_rln_cli import main as cli_main  # noqa: E402
from torch_rln_cli.common import stats  # noqa: E402
from torch_rln_cli.common.progress import Observer  # noqa: E402
from torch_rln_cli.tabular import analysis, protocol, verdicts  # noqa: E402
from torch_rln_cli.tabular.datasets import load  # noqa: E402
from torch_rln_cli.tabular.features import features_json, real_in_top_share, recovery  # noqa: E402
from torch_rln_cli.tabular.methods import METHODS  # noqa: E402
from torch_rln_cli.tabular.prepare import split_rows  # noqa: E402
from torch_rln_cli.tabular.trainer import Schedule  # noqa: E402
from torch_rln_cli.tabular.tuning import Studies  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.WARNING)


def all_studies(storage):
    return [optuna.load_study(study_name=n, storage=storage) for n in optuna.get_all_study_names(storage)]


TINY = Schedule(depth=2, batch_size=64, max_epochs=2, patience=1)


def tiny_run(table, trials=3, ask_batch=2, seeds=(0, 1)):
    settings = protocol.Settings(
        seeds=list(seeds), trials=trials, ask_batch=ask_batch, schedule=TINY, gb_max_iter=5, compile_rln=False
    )
    studies = Studies(optuna.storages.InMemoryStorage(), trials, False, 10)
    return protocol.DatasetRun(table, settings, studies, Observer())


def small(name, rows=150):
    table = load(name)
    keep = np.random.default_rng(0).permutation(table.rows)[:rows]
    table.numeric, table.y = table.numeric[keep], table.y[keep]
    table.categorical = table.categorical[keep]
    return table


def test_every_method_gets_exactly_the_budget():
    run = tiny_run(small("friedman1"), trials=3, ask_batch=2)  # 3 is not a multiple of 2
    assert run.tune()
    for (method, seed), study in run.study.items():
        complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        assert len(complete) == 3, (method, seed)
        assert len(study.trials) == 3  # nothing asked beyond the budget
        assert set(complete[0].params) == set(
            METHODS[method].suggest(optuna.trial.FixedTrial(complete[0].params), "regression")
        )
    nn = [s for (m, _), s in run.study.items() if m in ("none", "rln")]
    assert all("lr" in t.params for s in nn for t in s.trials)  # 'none' spends its trials on the learning rate
    assert run.tune()
    assert run.nn_round() == 0
    assert run.sklearn_trials() == 0  # full studies ask for nothing more


def test_no_test_row_reaches_scaling_tuning_or_early_stopping(monkeypatch):
    """Seed 0's test rows are poisoned with NaN, inputs and target (one seed: another seed's
    training rows are this one's test rows): the transforms, the trials and their early
    stopping must never see them. Only the final scoring touches them, once per method."""
    table = small("friedman1", rows=160)
    test_rows = split_rows(table, 0).test  # regression: the split does not look at y
    table.numeric[test_rows] = np.nan
    table.y[test_rows] = np.nan
    run = tiny_run(table, seeds=(0,))
    p = run.prepared[0]
    assert not (set(p.split.train) | set(p.split.val)) & set(test_rows)
    assert np.isfinite(p.x_train).all()
    assert np.isfinite(p.x_val).all()
    assert np.isfinite(p.y_train).all()
    assert np.isfinite([p.y_mean, p.y_std]).all()  # the target's scaling saw the training rows alone
    assert np.isnan(p.x_test).all()
    assert np.isnan(p.y_test).all()  # the poison is there, for the test alone
    assert run.tune()
    for study in run.study.values():
        assert all(math.isfinite(t.value) for t in study.trials)  # no NaN reached a trial
    scored, predicted = [], []
    real_predict = protocol.predict

    def predict_on_clean(model, task, x):
        predicted.append(bool(np.isnan(x).all()))
        return real_predict(model, task, np.nan_to_num(x))  # scikit-learn refuses NaN inputs

    monkeypatch.setattr(protocol, "predict", predict_on_clean)
    monkeypatch.setattr(run, "_score", lambda seed, prediction: scored.append(seed) or {"rmse": 0.0, "r2": 0.0})
    run.finals()
    assert scored == [0] * len(METHODS)  # the test split scored once per method
    assert predicted == [True, True]  # each scikit-learn model predicted on the test rows once


def test_no_seeds_test_rows_reach_the_stacked_training(monkeypatch):
    """With several seeds stacked, every seed's test split poisoned after its transforms are
    fit: no trial of any seed sees a NaN."""
    real_prepare = protocol.prepare

    def poisoned(table, seed, impute=None):
        p = real_prepare(table, seed, impute)
        p.x_test[:] = np.nan
        p.y_test[:] = -1  # no class: cross-entropy would refuse it
        return p

    monkeypatch.setattr(protocol, "prepare", poisoned)
    run = tiny_run(small("breast_cancer_noise", rows=160), trials=2, seeds=(0, 1, 2))
    assert run.tune()
    assert all(math.isfinite(t.value) for study in run.study.values() for t in study.trials)


def test_paired_interval_matches_a_hand_computation():
    rln = [3.0, 2.5, 4.0, 3.5, 2.0]
    other = [3.5, 3.5, 4.2, 3.9, 3.0]
    d = [r - o for r, o in zip(rln, other, strict=True)]  # -0.5, -1.0, -0.2, -0.4, -1.0
    mean = sum(d) / 5  # -0.62
    sd = math.sqrt(sum((v - mean) ** 2 for v in d) / 4)
    half = 2.776 * sd / math.sqrt(5)  # t(0.975, 4 df)
    records = {
        "rln": {s: {"test": {"rmse": v, "r2": 0.0}} for s, v in enumerate(rln)},
        "l1": {s: {"test": {"rmse": v, "r2": 0.0}} for s, v in enumerate(other)},
    }
    out = analysis.paired_json(records, ["rmse"], list(range(5)))["l1"]["rmse"]
    assert out["mean"] == pytest.approx(-0.62)
    assert out["ci95"] == pytest.approx([mean - half, mean + half])
    assert out["differences"] == pytest.approx(d)
    assert analysis.outcome(out, "rmse") == "win"  # the interval is below 0: RLN's RMSE is lower
    assert analysis.outcome({"ci95": [0.01, 0.2]}, "accuracy") == "win"
    assert analysis.outcome({"ci95": [-0.1, 0.2]}, "rmse") == "tie"
    assert analysis.outcome({"ci95": None}, "rmse") == "tie"
    assert stats.t95(4) == 2.776


def test_feature_precision_and_recall_on_a_constructed_case():
    inputs = ["a", "b", "c", "n1", "n2", "n3", "n4"]
    relevant, noise = ["a", "b", "c"], ["n1", "n2", "n3", "n4"]
    # eliminated: one relevant input (c) and three noise inputs; kept: a, b, n4
    r = recovery(inputs, ["c", "n1", "n2", "n3"], relevant, noise)
    assert r["precision"] == pytest.approx(2 / 3)
    assert r["recall"] == pytest.approx(2 / 3)
    assert r["noise_eliminated_share"] == pytest.approx(3 / 4)
    assert r["real_kept_share"] == pytest.approx(2 / 3)
    assert recovery(inputs, [], relevant, noise)["precision"] == pytest.approx(3 / 7)
    assert recovery(inputs, inputs, relevant, noise)["precision"] is None  # nothing kept
    f = features_json(inputs, relevant, noise, {"rln": [[2, 3, 4, 5], []]})
    rln = f["methods"]["rln"]
    assert rln["eliminated"] == [["c", "n1", "n2", "n3"], []]
    assert rln["kept"][1] == inputs
    assert rln["recall"]["values"] == pytest.approx([2 / 3, 1.0])
    assert rln["recall"]["mean"] == pytest.approx(5 / 6)
    assert rln["eliminated_count"]["values"] == [4.0, 0.0]
    assert rln["kept_count"]["mean"] == 5.0
    assert f["true_relevant"] == relevant
    assert f["noise"] == noise
    # importance: the 3 real inputs are a, b, c; seed 0 ranks a, n1, b first (2 of 3), seed 1 a, b, c
    importance = {"rln": [[5.0, 3.0, 0.1, 4.0, 0.0, 0.0, 0.2], [3.0, 2.0, 1.0, 0.5, 0.4, 0.3, 0.2]]}
    f = features_json(inputs, relevant, noise, {}, importance)
    assert f["methods"]["rln"]["real_in_top_share"]["values"] == pytest.approx([2 / 3, 1.0])
    assert real_in_top_share(inputs, [0.0] * 7, noise) == 1.0  # ties: the input order, real first here


def test_ranks_share_ties():
    assert analysis.ranks({"a": 1.0, "b": 2.0, "c": 2.0, "d": 0.5}, "rmse") == {"d": 1, "a": 2, "b": 3.5, "c": 3.5}
    assert analysis.ranks({"a": 0.9, "b": 0.8}, "accuracy") == {"a": 1, "b": 2}


def dataset(kind="noised", rln_minus_l1=(-0.5, -0.1), rln_minus_none=(-0.4, -0.2), trees=(0.1, 0.3), noise=0.8):
    def diff(ci):
        return {"rmse": {"mean": sum(ci) / 2, "ci95": list(ci)}}

    return {
        "kind": kind,
        "primary": "rmse",
        "paired": {"l1": diff(rln_minus_l1), "none": diff(rln_minus_none), "hist_gb": diff(trees)},
        "methods": {
            "rln": {"seeds": [0, 1], "params": [{"theta": -10.0}, {"theta": -9.0}]},
            "l1": {"seeds": [0, 1], "params": [{"l1": 1e-2}, {"l1": 1e-5}]},
        },
        "features": {"methods": {"rln": {"noise_eliminated_share": {"mean": noise}, "real_kept_share": {"mean": 0.9}}}},
    }


def test_verdicts_are_computed_from_the_figures():
    v = verdicts.verdicts({
        "a": dataset(),
        "b": dataset(rln_minus_l1=(0.1, 0.4), noise=0.05),
        "c": dataset(kind="real", trees=(-0.3, -0.1)),
    })  # fmt: skip
    beats = v["beats_l1_and_none"]["datasets"]
    assert beats["a"]["result"] == "holds"
    assert beats["b"]["result"] == "fails"
    assert "c" not in beats
    assert "worse than L1" in beats["b"]["detail"]
    assert "better than no regularization" in beats["b"]["detail"]
    theta = v["theta_below_l1"]["datasets"]["a"]
    assert theta["result"] == "fails"  # exp(-9) / 1e-5 = 12 in the second seed
    assert v["eliminates_noise"]["datasets"]["a"]["result"] == "holds"
    assert v["eliminates_noise"]["datasets"]["b"]["result"] == "fails"
    trees = v["against_trees"]["datasets"]
    assert trees["a"]["result"] == "trees better"
    assert trees["c"]["result"] == "RLN better"
    assert v["rln_loses"] == {"a": ["hist_gb"], "b": ["l1", "hist_gb"], "c": []}


# ---------------------------------------------------------------- the command
QUICK = ["bench", "tabular", "--quick", "--device", "cpu", "--no-compile"]


def test_a_quick_run_writes_every_json_field_and_the_report(tmp_path):
    assert cli_main.main([*QUICK, "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "tabular.json").read_text())
    assert set(report["datasets"]) == {"friedman1", "breast_cancer_noise"}
    for d in report["datasets"].values():
        metrics = {"rmse", "r2"} if d["task"] == "regression" else {"log_loss", "accuracy", "roc_auc"}
        assert set(d["methods"]) == set(METHODS)
        for m in d["methods"].values():
            assert set(m["test"]) == metrics
            for metric in metrics:
                entry = m["test"][metric]
                assert len(entry["values"]) == 2
                assert entry["mean"] == pytest.approx(np.mean(entry["values"]))
                assert len(entry["ci95"]) == 2
            assert len(m["params"]) == 2
            assert all(p for p in m["params"])
        assert set(d["paired"]) == set(METHODS) - {"rln"}
        for diffs in d["paired"].values():
            for metric in metrics:
                assert {"differences", "mean", "ci95"} <= set(diffs[metric])
                assert len(diffs[metric]["differences"]) == 2
        f = d["features"]
        assert {"inputs", "true_relevant", "noise", "methods"} <= set(f)
        assert set(f["methods"]) == set(METHODS) - {"hist_gb"}  # the trees eliminate no input
        for entry in f["methods"].values():
            assert len(entry["eliminated"]) == 2
            assert len(entry["kept"]) == 2
            assert len(entry["importance"]) == 2
            assert len(entry["importance"][0]) == len(f["inputs"])
            assert 0 <= entry["real_in_top_share"]["mean"] <= 1
    assert report["datasets"]["friedman1"]["features"]["true_relevant"] == ["x0", "x1", "x2", "x3", "x4"]
    assert "precision" in report["datasets"]["friedman1"]["features"]["methods"]["rln"]
    assert len(report["datasets"]["breast_cancer_noise"]["features"]["noise"]) == 300
    assert set(report["summary"]["methods"]) == set(METHODS)
    assert set(report["verdicts"]) >= {"beats_l1_and_none", "theta_below_l1", "eliminates_noise", "against_trees"}
    assert report["full_suite_command"].startswith("torch-rln bench tabular --full")
    md = (tmp_path / "report.md").read_text()
    assert "### Verdicts, as measured" in md
    assert "Plainly, against the trees" in md
    for figure in ("tabular-scores.png", "tabular-features.png"):
        assert (tmp_path / figure).stat().st_size > 0


def trials_by_study(storage):
    return {s.study_name: {t.number: (t.state, t.value) for t in s.trials} for s in all_studies(storage)}


def test_a_csv_run_interrupted_resumes_and_once_finished_trains_nothing_again(tmp_path, monkeypatch):
    """Your own CSV through the command. Ctrl-C in the second round of MLP trials: exit 130,
    the first round's trials kept. The rerun fails the interrupted trials, keeps the finished
    ones as they were and completes. A third run trains nothing and reports the same. The
    file is never modified."""
    path = tabular_csv(tmp_path / "mine.csv")
    text = path.read_bytes()
    out = tmp_path / "out"
    argv = [*QUICK, "--csv", str(path), "--target", "y", "--seeds", "1", "--trials", "4", "--out", str(out)]
    real_train = protocol.train
    calls = []

    def interrupt_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_train(*args, **kwargs)

    monkeypatch.setattr(protocol, "train", interrupt_second)
    assert cli_main.main(argv) == 130
    assert json.loads((out / "tabular.json").read_text())["interrupted"] is True
    storage = f"sqlite:///{out / 'optuna-tabular.db'}"
    before = trials_by_study(storage)
    nn = [name for name in before if "-rln-" in name or "-none-" in name]
    assert all(sum(state == optuna.trial.TrialState.COMPLETE for state, _ in before[n].values()) == 2 for n in nn)

    monkeypatch.setattr(protocol, "train", real_train)
    assert cli_main.main(argv) == 0
    finished = trials_by_study(storage)
    for name, trials in finished.items():
        for number, (state, value) in before.get(name, {}).items():
            if state == optuna.trial.TrialState.COMPLETE:
                assert trials[number] == (state, value)  # never run again
            elif state == optuna.trial.TrialState.RUNNING:
                assert trials[number][0] == optuna.trial.TrialState.FAIL  # the interrupted ones
        assert sum(state == optuna.trial.TrialState.COMPLETE for state, _ in trials.values()) == 4
    report = json.loads((out / "tabular.json").read_text())
    assert report["interrupted"] is False
    mine = report["datasets"]["mine"]
    assert mine["kind"] == "csv"
    assert set(mine["methods"]) == set(METHODS)
    md = (out / "report.md").read_text()
    assert "one-hot encoded" in md
    assert "color" in md
    assert "constant column dropped" in md
    assert "const" in md

    def trained_again(*args, **kwargs):
        raise AssertionError("a finished run trained a model again")

    monkeypatch.setattr(protocol, "train", trained_again)
    monkeypatch.setattr(protocol, "fit_sklearn", trained_again)
    assert cli_main.main(argv) == 0
    assert trials_by_study(storage) == finished
    assert json.loads((out / "tabular.json").read_text())["datasets"]["mine"]["methods"] == mine["methods"]
    assert path.read_bytes() == text


def worker_argv(storage, out):
    return ["bench", "tabular", "--quick", "--no-compile", "--device", "cpu", "--datasets", "friedman1",
            "--seeds", "1", "--trials", "3", "--storage", storage, "--study-name", "shared", "--heartbeat", "2",
            "--out", str(out)]  # fmt: skip


def wait_for_a_running_trial(storage, process, timeout=180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(t.state == optuna.trial.TrialState.RUNNING for s in all_studies(storage) for t in s.trials):
            return
        assert process.poll() is None, finish(process)[1][-3000:]
        time.sleep(0.1)
    pytest.fail("the other worker never started a trial")


@pytest.fixture
def shared_storage(request, tmp_path):
    """Where the two workers meet: conftest's PostgreSQL server where one can start (the storage
    for several machines), else an SQLite file (several workers on one machine). One of them,
    not both: each costs a worker process's start and a whole run, and what a storage itself
    must do is tested on both with `bench rmsln`'s workers (test_optuna_workers.py,
    test_postgres_workers.py)."""
    try:
        return request.getfixturevalue("postgres_url")
    except pytest.skip.Exception:
        return f"sqlite:///{tmp_path / 'shared.db'}"


def test_two_workers_share_the_studies_and_run_each_budget_once(shared_storage, tmp_path, capsys):
    """A worker process and this process on one storage: this one joins once the other is
    training its first trials, and together they run each study's budget, no more."""
    storage = shared_storage
    other = cli_process(worker_argv(storage, tmp_path / "w0"))
    try:
        wait_for_a_running_trial(storage, other)
        code, out = run_cli(worker_argv(storage, tmp_path / "w1"), capsys)
    finally:
        other_code, other_out = finish(other, timeout=300)
    assert code == 0, out[-3000:]
    assert other_code == 0, other_out[-3000:]
    studies = all_studies(storage)
    assert len(studies) == len(METHODS)  # one per (method, seed) of friedman1
    seen = set()
    for study in studies:
        complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        assert len(complete) == 3, study.study_name  # the budget, together
        assert all(t.state == optuna.trial.TrialState.COMPLETE or t.user_attrs.get("surplus") for t in study.trials)
        seen |= {t.user_attrs["measured"]["worker"] for t in complete}
        assert "final" in study.user_attrs
    assert len(seen) == 2  # both workers ran trials
    reports = [json.loads((tmp_path / f"w{i}" / "tabular.json").read_text())["datasets"]["friedman1"] for i in (0, 1)]
    assert [{m: v["params"] for m, v in r["methods"].items()} for r in reports[1:]] == [
        {m: v["params"] for m, v in reports[0]["methods"].items()}
    ]  # the same chosen settings, whichever worker reports
