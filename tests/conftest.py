"""Fixtures shared by the test files. The plain helpers they build on (models, data, the
training step, the snapshot, the INNER, WRAPPERS and PATHS tables) are in helpers.py.

Where tests go: see the README's Contributing section. In short, a behaviour both wrappers
share goes in the file of its concern (test_schedulers, test_grad_scaler, test_closures,
test_hooks, test_state_dict, test_dcp, test_errors, test_wrapper), parametrized over
``WRAPPERS``; a regularizer's own math, paths and reference runs go in
test_<regularizer>_math / _paths / _reference.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from helpers import PATHS, WRAPPERS, compiler_works, free_port, pg_bin
from hypothesis import HealthCheck, settings
from hypothesis.database import DirectoryBasedExampleDatabase
from strategies import CI_EXAMPLES

# Hypothesis profiles for the property suite (test_properties*.py), chosen with the
# environment variable HYPOTHESIS_PROFILE:
# * ``ci`` (the default): bounded (about a minute for the whole property suite on 2 cores),
#   reproducible (derandomize: the same examples on every run) and without a database, so
#   nothing is written into the repository;
# * ``deep``: 20 times the examples, random (a new part of the input space on every run),
#   failures kept in ``.hypothesis/`` (git-ignored) and replayed first on the next run.
# Each property sets its own count as ``examples(n)`` (test_properties.py): n under ``ci``,
# 20 n under ``deep``.
settings.register_profile(
    "ci",
    max_examples=CI_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
settings.register_profile(
    "deep",
    parent=settings.get_profile("ci"),
    max_examples=20 * CI_EXAMPLES,
    derandomize=False,
    database=DirectoryBasedExampleDatabase(Path(__file__).resolve().parent.parent / ".hypothesis" / "examples"),
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def compiler():
    """Skips the test where torch.compile does not work on this machine (probed once per process)."""
    if not compiler_works():
        pytest.skip("torch.compile does not work on this machine")


@pytest.fixture(params=list(PATHS))
def path(request):
    """The name of an update path (a key of helpers.PATHS): per_tensor, foreach, compiled.
    Narrow it with ``@pytest.mark.parametrize("path", [...], indirect=True)``."""
    if request.param == "compiled":
        request.getfixturevalue("compiler")
    return request.param


@pytest.fixture(params=list(WRAPPERS))
def wrapper_name(request):
    """Each name of helpers.WRAPPERS: RLN, coupled RMSLN, decoupled RMSLN, RMSLN over RLN."""
    return request.param


@pytest.fixture
def postgres_url():
    """A PostgreSQL server of its own (127.0.0.1, a temporary cluster, stopped at the end), as a
    SQLAlchemy URL. Skips where the server programs, the psycopg2 driver or root (initdb runs
    as the ``postgres`` user) are missing; `.ci/run` installs the server where it can."""
    initdb, pg_ctl = pg_bin("initdb"), pg_bin("pg_ctl")
    if not (initdb and pg_ctl and shutil.which("runuser")) or os.geteuid() != 0:
        pytest.skip("needs the PostgreSQL server binaries and root (initdb runs as the postgres user)")
    pytest.importorskip("psycopg2")
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
        subprocess.run(
            [*as_postgres, initdb, "-D", data, "-A", "trust", "-U", "postgres"],
            check=True,
            capture_output=True,
            timeout=120,
        )
        subprocess.run([*as_postgres, pg_ctl, "-D", data, "-l", os.path.join(root, "log"), "-w", "-t", "60",
                        "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "start"],
                       check=True, capture_output=True, timeout=90)  # fmt: skip
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
    finally:
        if os.path.isdir(data):  # also after a start that failed or timed out: it may still run
            subprocess.run([*as_postgres, pg_ctl, "-D", data, "-m", "immediate", "-w", "stop"],
                           capture_output=True, timeout=60)  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)
