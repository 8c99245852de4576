"""A real PostgreSQL for tests: a throwaway cluster, its own port and socket dir, never a
running server.

``postgres_cluster()`` runs ``initdb`` into a fresh temporary directory, starts
``postgres`` on a free 127.0.0.1 port with its unix socket in that directory, and stops it
(and removes the directory) afterwards. ``PgCluster.create_db()`` makes an empty database
and returns its ``postgresql://`` URL, so each test gets its own schema to migrate.

initdb and postgres refuse to run as root: when the tests run as root, the cluster is run
as the ``postgres`` user (or ``nobody``) through ``runuser``, in a directory that user
owns. A missing binary or user FAILS the test: a skipped database test would hide that
PostgreSQL is not tested at all.

Fixtures: ``pg_cluster`` (one per test session) and ``pg_url`` (a new database per test).
Import them in a conftest: ``from pg import pg_cluster, pg_url``.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from brokers import free_port

INITDB = "/usr/local/bin/initdb"
START_TIMEOUT_S = 30.0
_names = itertools.count(1)


def _bin_dir() -> Path:
    """The directory of the server's binaries (initdb links into it; createdb is there)."""
    if not os.access(INITDB, os.X_OK):
        pytest.fail(f"{INITDB} not found: PostgreSQL tests need the server binaries")
    return Path(os.path.realpath(INITDB)).parent


def _run_as() -> str | None:
    """The unprivileged user to run the cluster as (None: not root, run as ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    pytest.fail("running as root and neither a 'postgres' nor a 'nobody' user exists: "
                "initdb refuses to run as root")


@dataclass
class PgCluster:
    """One ``postgres`` process serving a throwaway data directory."""

    workdir: Path
    port: int = field(default_factory=free_port)
    user: str | None = field(default_factory=_run_as)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def log_path(self) -> Path:
        return self.workdir / "postgres.log"

    def _cmd(self, *args: str) -> list[str]:
        return ["runuser", "-u", self.user, "--", *args] if self.user else list(args)

    def start(self) -> None:
        bindir = _bin_dir()
        if self.user:
            shutil.chown(self.workdir, self.user)
        if not self.data_dir.exists():
            subprocess.run(
                self._cmd(str(bindir / "initdb"), "-D", str(self.data_dir), "-U", "postgres",
                          "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync"),
                check=True, capture_output=True, timeout=120)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self._cmd(str(bindir / "postgres"), "-D", str(self.data_dir), "-p", str(self.port),
                      "-k", str(self.workdir), "-c", "listen_addresses=127.0.0.1",
                      "-c", "shared_buffers=16MB", "-c", "max_connections=50"),
            stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"postgres exited ({self.proc.returncode}): "
                            f"{self.log_path.read_text(errors='replace')[-2000:]}")
            ready = subprocess.run(
                [str(bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                capture_output=True, check=False)
            if ready.returncode == 0:
                return
            time.sleep(0.1)
        self.stop()
        pytest.fail(f"postgres did not accept connections in {START_TIMEOUT_S} s")

    def _server_pid(self) -> int | None:
        """The postmaster's pid (with runuser, ``proc`` is runuser, not the server)."""
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self.data_dir / "postmaster.pid").read_text().splitlines()[0])
        return None

    def stop(self) -> None:
        if self.proc is None:
            return
        # SIGINT to the server itself: "fast" shutdown (roll back clients, checkpoint,
        # exit); SIGQUIT (immediate) if it hangs. Signalling runuser would orphan it.
        pid = self._server_pid() or self.proc.pid
        for sig, wait_s in ((signal.SIGINT, 15.0), (signal.SIGQUIT, 10.0)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            try:
                self.proc.wait(timeout=wait_s)
                break
            except subprocess.TimeoutExpired:
                continue
        else:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_db(self, name: str | None = None) -> str:
        """A new empty database; its URL."""
        name = name or f"gs_test_{os.getpid()}_{next(_names)}"
        subprocess.run([str(_bin_dir() / "createdb"), "-h", "127.0.0.1", "-p", str(self.port),
                        "-U", "postgres", name], check=True, capture_output=True, timeout=30)
        return self.url(name)


@contextlib.contextmanager
def postgres_cluster() -> Iterator[PgCluster]:
    # Not under pytest's tmp dirs: those are private to root, and the server runs as
    # another user.
    workdir = Path(tempfile.mkdtemp(prefix="gridshare-pg-"))
    cluster = PgCluster(workdir)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """One PostgreSQL server for the whole test session."""
    with postgres_cluster() as cluster:
        yield cluster


@pytest.fixture
def pg_url(pg_cluster: PgCluster) -> str:
    """A fresh, empty database on the session's server (``postgresql://`` URL)."""
    return pg_cluster.create_db()
