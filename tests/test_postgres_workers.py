"""Two workers on a real PostgreSQL server (127.0.0.1, a temporary cluster, stopped at the end).

Skipped where the PostgreSQL server binaries, the psycopg2 driver or root (to run the
server as the ``postgres`` user, which initdb requires) are missing. `.ci/run` installs
the server where it can.
"""

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile

import pytest

optuna = pytest.importorskip("optuna")
pytest.importorskip("psycopg2")
pytest.importorskip("mnist1d")

from test_optuna_workers import FINISHED, finish, trials_of, worker  # noqa: E402


def pg_bin(name):
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres_url():
    initdb, pg_ctl = pg_bin("initdb"), pg_bin("pg_ctl")
    if not (initdb and pg_ctl and shutil.which("runuser")) or os.geteuid() != 0:
        pytest.skip("needs the PostgreSQL server binaries and root (initdb runs as the postgres user)")
    try:
        import pwd

        pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("no postgres user")
    root = tempfile.mkdtemp(prefix="torch-rln-pg-")
    os.chmod(root, 0o755)
    data = os.path.join(root, "data")
    shutil.chown(root, "postgres", "postgres")
    port = free_port()
    as_postgres = ["runuser", "-u", "postgres", "--"]
    try:
        subprocess.run([*as_postgres, initdb, "-D", data, "-A", "trust", "-U", "postgres"],
                       check=True, capture_output=True, timeout=120)
        subprocess.run([*as_postgres, pg_ctl, "-D", data, "-l", os.path.join(root, "log"), "-w", "-t", "60",
                        "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "start"],
                       check=True, capture_output=True, timeout=90)
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
    finally:
        if os.path.isdir(data):  # also after a start that failed or timed out: it may still run
            subprocess.run([*as_postgres, pg_ctl, "-D", data, "-m", "immediate", "-w", "stop"],
                           capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.skipif(sys.platform != "linux", reason="Linux only")
def test_two_workers_on_postgresql(postgres_url, tmp_path):
    workers = [worker(postgres_url, "pg", tmp_path / f"w{i}", trials=6) for i in range(2)]
    for code, out in [finish(w) for w in workers]:
        assert code == 0, out[-2000:]
    for model in ("baseline", "rmsln"):
        trials = trials_of(postgres_url, "pg", model)
        assert sum(t.state in FINISHED for t in trials) == 6
        assert all(t.state in FINISHED or t.user_attrs.get("surplus") for t in trials)
