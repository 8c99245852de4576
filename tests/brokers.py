"""A real Mosquitto for tests: its own process, config and free port, never a running one.

``Mosquitto`` starts ``/usr/sbin/mosquitto -c <conf>`` listening on 127.0.0.1 only, waits
until the port accepts, and can be stopped and started again on the same port (a broker
restart, for reconnect tests). With ``users`` it refuses anonymous clients and checks a
password file made by ``mosquitto_passwd``; with ``tls`` it speaks only TLS (``mqtts://``)
with a server certificate for 127.0.0.1 from a throwaway CA (``ca_path``). A missing
binary fails the test: a skipped broker test would hide that MQTT is not tested at all.

Use the fixtures in ``tests/adapters/conftest.py`` or, elsewhere, ``mosquitto(tmp_path)``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

MOSQUITTO = "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = "mosquitto_passwd"
START_TIMEOUT_S = 10.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _accepts(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
        return True
    return False


@dataclass
class Mosquitto:
    """One broker process on ``127.0.0.1:port``; ``users`` maps username -> password."""

    workdir: Path
    port: int = field(default_factory=free_port)
    users: dict[str, str] = field(default_factory=dict)
    tls: bool = False
    proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def url(self) -> str:
        """For ``mqtt: {url: ...}`` in a site file."""
        return f"{'mqtts' if self.tls else 'mqtt'}://127.0.0.1:{self.port}"

    @property
    def ca_path(self) -> Path:
        """The CA that signed the broker's certificate (``tls`` only)."""
        return self.workdir / "tls" / "broker_test_CA.pem"

    @property
    def log_path(self) -> Path:
        return self.workdir / "mosquitto.log"

    def password_file(self, user: str) -> Path:
        """A client-side password file for ``user`` (as ``mqtt.password_file`` reads it)."""
        path = self.workdir / f"{user}.pw"
        path.write_text(self.users[user] + "\n", encoding="utf-8")
        return path

    def _write_config(self) -> Path:
        if not os.access(MOSQUITTO, os.X_OK):
            pytest.fail(f"{MOSQUITTO} is missing: install Debian's mosquitto package")
        lines = [f"listener {self.port} 127.0.0.1", "persistence false",
                 f"log_dest file {self.log_path}", "log_type error", "log_type warning"]
        if os.geteuid() == 0:
            lines.append("user root")  # else it drops to 'mosquitto', who cannot read tmp_path
        if self.users:
            passwd = shutil.which(MOSQUITTO_PASSWD)
            if passwd is None:
                pytest.fail(f"{MOSQUITTO_PASSWD} is missing: install Debian's mosquitto package")
            store = self.workdir / "broker.passwd"
            store.unlink(missing_ok=True)
            for i, (user, password) in enumerate(self.users.items()):
                subprocess.run([passwd, "-b", *(["-c"] if i == 0 else []), str(store), user,
                                password], check=True, capture_output=True)
            store.chmod(0o600)
            lines += ["allow_anonymous false", f"password_file {store}"]
        else:
            lines.append("allow_anonymous true")
        if self.tls:
            lines += self._tls_lines()
        conf = self.workdir / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return conf

    def _tls_lines(self) -> list[str]:
        """Listener options for TLS; the CA and the server certificate are made once."""
        from gridshare.adapters.ocpp.certs import CertFiles, make_ca, make_cert

        tls_dir = self.workdir / "tls"
        server = CertFiles(tls_dir / "127.0.0.1.pem", tls_dir / "127.0.0.1.key")
        if not self.ca_path.exists():
            ca = make_ca(tls_dir, "broker test CA")
            server = make_cert(ca, "127.0.0.1", tls_dir, server=True)
            assert ca.cert_path == self.ca_path
        return [f"cafile {self.ca_path}", f"certfile {server.cert_path}",
                f"keyfile {server.key_path}", "tls_version tlsv1.2"]

    def start(self) -> None:
        """Start (or restart) on the same port and wait until it accepts connections."""
        assert self.proc is None, "already running"
        conf = self._write_config()
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _accepts(self.port):
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                self.proc = None
                log = self.log_path.read_text() if self.log_path.exists() else ""
                pytest.fail(f"mosquitto exited at start: {err}{log}")
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"mosquitto did not accept on port {self.port} "
                            f"within {START_TIMEOUT_S} s")
            time.sleep(0.02)

    def stop(self) -> None:
        """Kill the broker (clients see their connection drop) and reap it."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.kill()
        proc.wait(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()

    def restart(self) -> None:
        self.stop()
        self.start()


@contextlib.contextmanager
def mosquitto(workdir: Path, users: dict[str, str] | None = None, *,
              tls: bool = False) -> Iterator[Mosquitto]:
    """A started broker in ``workdir`` (a fresh directory), killed on exit."""
    workdir.mkdir(parents=True, exist_ok=True)
    broker = Mosquitto(workdir, users=dict(users or {}), tls=tls)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
