"""A real NATS server with JetStream for tests: its own process, store dir and free port.

``NatsServer`` starts ``/usr/sbin/nats-server -js -a 127.0.0.1 -p PORT -sd STORE``, waits
until the port accepts and JetStream answers, and can be stopped and started again on the
same port with the same store (a broker restart: streams, consumers and their acks
survive). A missing binary FAILS the test: a skipped NATS test would hide that the
scale-out path is not tested at all.

Use ``nats_server(tmp_path)`` or the ``nats`` fixture of ``tests/nats/conftest.py``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from brokers import _accepts, free_port

NATS_SERVER = "/usr/sbin/nats-server"
START_TIMEOUT_S = 15.0


@dataclass
class NatsServer:
    """One ``nats-server -js`` on ``127.0.0.1:port`` storing under ``workdir/store``."""

    workdir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    """How many times it was started (each start logs one more "Server is ready")."""

    @property
    def url(self) -> str:
        """For ``--bus`` and ``open_bus``."""
        return f"nats://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "nats-server.log"

    def start(self) -> None:
        """Start (or restart) on the same port and store; wait until clients can connect."""
        assert self.proc is None, "already running"
        if not os.access(NATS_SERVER, os.X_OK):
            pytest.fail(f"{NATS_SERVER} is missing: install Debian's nats-server package")
        self.starts += 1
        store = self.workdir / "store"
        store.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [NATS_SERVER, "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", str(store),
             "-l", str(self.log_path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not (_accepts(self.port) and self._ready_logged()):
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                self.proc = None
                log = self.log_path.read_text() if self.log_path.exists() else ""
                pytest.fail(f"nats-server exited at start: {err}{log}")
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"nats-server did not get ready on port {self.port} "
                            f"within {START_TIMEOUT_S} s")
            time.sleep(0.02)

    def _ready_logged(self) -> bool:
        """The server logs "Server is ready" once JetStream is up and clients are served
        (a restart appends to the same log: count the lines)."""
        if not self.log_path.exists():
            return False
        text = self.log_path.read_text(errors="replace")
        return text.count("Server is ready") >= self.starts

    def stop(self, *, kill: bool = True) -> None:
        """Kill the server (``kill``: SIGKILL, as a crash; else SIGTERM, a clean shutdown)
        and reap it."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if kill:
            proc.kill()
        else:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()

    def restart(self, *, kill: bool = True) -> None:
        self.stop(kill=kill)
        self.start()


@contextlib.contextmanager
def nats_server(workdir: Path) -> Iterator[NatsServer]:
    """A started JetStream server in ``workdir`` (a fresh directory), killed on exit."""
    workdir.mkdir(parents=True, exist_ok=True)
    server = NatsServer(workdir)
    server.start()
    try:
        yield server
    finally:
        server.stop()
