"""Optuna studies shared by real worker processes: two at once, and one killed with SIGKILL.

Each worker is ``python -m torch_rln_cli bench rmsln`` on one SQLite storage; the tests are
bounded in time and leave no process behind.
"""

import signal
import sys
import time

import pytest
from helpers import cli_process, finish

optuna = pytest.importorskip("optuna")
pytest.importorskip("mnist1d")

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="POSIX signals and processes")

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def worker(storage, name, out, trials, trial_epochs=3, heartbeat=1):
    return cli_process(["bench", "rmsln", "--quick", "--device", "cpu", "--storage", storage, "--study-name", name,
                        "--trials", str(trials), "--trial-epochs", str(trial_epochs), "--heartbeat", str(heartbeat),
                        "--out", str(out)])  # fmt: skip


def trials_of(storage, name, model="baseline"):
    try:
        return optuna.load_study(study_name=f"{name}-{model}", storage=storage).trials
    except KeyError:
        return []


def test_two_workers_share_the_studies(tmp_path):
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    workers = [worker(storage, "shared", tmp_path / f"w{i}", trials=8) for i in range(2)]
    results = [finish(w) for w in workers]
    for code, out in results:
        assert code == 0, out[-2000:]
    for model in ("baseline", "rmsln"):
        trials = trials_of(storage, "shared", model)
        finished = [t for t in trials if t.state in FINISHED]
        assert len(finished) == 8  # the requested number, together
        assert all(t.state in FINISHED or t.user_attrs.get("surplus") for t in trials)  # none lost
        assert len({t.number for t in trials}) == len(trials)
    workers_seen = {t.user_attrs["worker"] for t in trials_of(storage, "shared") if t.state in FINISHED}
    assert len(workers_seen) == 2  # both worked on the baseline study


def test_a_killed_worker_leaves_a_failed_trial_and_a_rerun_finishes(tmp_path):
    storage = f"sqlite:///{tmp_path / 'kill.db'}"
    victim = worker(storage, "kill", tmp_path / "victim", trials=6, trial_epochs=200)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            trials = trials_of(storage, "kill")
            if any(t.state == optuna.trial.TrialState.RUNNING for t in trials):
                break
            assert victim.poll() is None, finish(victim)[1][-2000:]
            time.sleep(0.2)
        else:
            pytest.fail("the worker never started a trial")
        time.sleep(1.0)  # inside the trial's training
        victim.send_signal(signal.SIGKILL)
    finally:
        finish(victim, timeout=30)
    before = {t.number: t.state for t in trials_of(storage, "kill")}
    killed = [n for n, state in before.items() if state == optuna.trial.TrialState.RUNNING]
    assert len(killed) == 1
    time.sleep(3.5)  # past the grace period: 3 missed heartbeats of 1 s

    code, out = finish(worker(storage, "kill", tmp_path / "rerun", trials=6))
    assert code == 0, out[-2000:]
    after = {t.number: t for t in trials_of(storage, "kill")}
    assert after[killed[0]].state == optuna.trial.TrialState.FAIL
    for number, state in before.items():  # finished trials stay as they were, never rerun
        if state in FINISHED:
            assert after[number].state == state
    assert sum(t.state in FINISHED for t in after.values()) == 6
