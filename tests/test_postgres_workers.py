"""Two workers on a real PostgreSQL server (conftest's ``postgres_url``: 127.0.0.1, a
temporary cluster, stopped at the end).

Skipped where the PostgreSQL server binaries, the psycopg2 driver or root (to run the
server as the ``postgres`` user, which initdb requires) are missing. `.ci/run` installs
the server where it can.
"""

import sys

import pytest

optuna = pytest.importorskip("optuna")
pytest.importorskip("psycopg2")
pytest.importorskip("mnist1d")

from helpers import finish  # noqa: E402
from test_optuna_workers import FINISHED, trials_of, worker  # noqa: E402


@pytest.mark.skipif(sys.platform != "linux", reason="Linux only")
def test_two_workers_on_postgresql(postgres_url, tmp_path):
    workers = [worker(postgres_url, "pg", tmp_path / f"w{i}", trials=6) for i in range(2)]
    for code, out in [finish(w) for w in workers]:
        assert code == 0, out[-2000:]
    for model in ("baseline", "rmsln"):
        trials = trials_of(postgres_url, "pg", model)
        assert sum(t.state in FINISHED for t in trials) == 6
        assert all(t.state in FINISHED or t.user_attrs.get("surplus") for t in trials)
