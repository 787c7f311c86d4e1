"""`torch-rln bench tabular`'s shared studies on a real PostgreSQL server: two workers.

Skipped where test_postgres_workers.py's server cannot start (no server binaries, no
psycopg2, not root).
"""

import pytest

optuna = pytest.importorskip("optuna")
pytest.importorskip("psycopg2")
pytest.importorskip("sklearn")

from test_cli_tabular_protocol import METHODS, worker  # noqa: E402
from test_optuna_workers import finish  # noqa: E402
from test_postgres_workers import postgres_url  # noqa: E402, F401 - the server fixture


def test_two_tabular_workers_on_postgresql(postgres_url, tmp_path):  # noqa: F811
    workers = [worker(postgres_url, tmp_path / f"w{i}", "pg") for i in range(2)]
    for code, out in [finish(w, timeout=300) for w in workers]:
        assert code == 0, out[-3000:]
    names = optuna.get_all_study_names(postgres_url)
    assert len(names) == len(METHODS)
    for name in names:
        trials = optuna.load_study(study_name=name, storage=postgres_url).trials
        assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials) == 3
