"""``gridshare serve`` as a real subprocess: one ready line, chargers can connect, the status
endpoint answers, SIGTERM stops it cleanly with exit code 0."""

from __future__ import annotations

import asyncio
import io
import json
import re
import signal
import sys
from pathlib import Path

from rich.console import Console

from gridshare.cli.serve_cmds import run_demo
from gridshare.sim import SimCharger

SITE = """
site: serve-test
groups:
  - id: main
    max_current: 32
    chargers: [s-1, s-2]
chargers:
  - {id: s-1, max_current: 16, phases: 3}
  - {id: s-2, max_current: 16, phases: 1, phase: L3}
"""

READY = re.compile(r"^gridshare ready: site serve-test, OCPP ws://127\.0\.0\.1:(\d+), "
                   r"2 chargers configured, status http://127\.0\.0\.1:(\d+)/status$")


async def _http_get(port: int, path: str) -> tuple[int, dict[str, object]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    raw = await reader.read()
    writer.close()
    head, body = raw.split(b"\r\n\r\n", 1)
    return int(head.split()[1]), json.loads(body)


async def test_serve_runs_until_sigterm(tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text(SITE)
    db = tmp_path / "audit.db"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gridshare", "serve", str(site), "--host", "127.0.0.1",
        "--ocpp-port", "0", "--api-port", "0", "--db", f"sqlite:///{db}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    try:
        async with asyncio.timeout(30):
            line = (await proc.stdout.readline()).decode().rstrip("\n")
        match = READY.match(line)
        assert match, line
        ocpp_port, api_port = int(match[1]), int(match[2])
        charger = SimCharger("s-1", f"ws://127.0.0.1:{ocpp_port}", protocol="ocpp2.0.1")
        await charger.start(physics=False)
        try:
            assert await charger.wait_connected(10.0)
            # The controller installed its failsafe profile on connection.
            for _ in range(200):
                if charger.profiles:
                    break
                await asyncio.sleep(0.05)
            assert charger.profiles
            code, status = await _http_get(api_port, "/status")
            assert code == 200
            assert status["site"] == "serve-test"
            assert status["chargers_online"] == 1
            assert (await _http_get(api_port, "/nope"))[0] == 404
        finally:
            await charger.stop()
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            rest, errors = await proc.communicate()
        assert proc.returncode == 0, errors.decode()
        assert rest == b""  # exactly one line on stdout: the ready line
        assert db.exists()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_serve_refuses_bad_input_clearly(tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text(SITE)
    cases = [
        (["--bus", "nats://localhost:4222?bogus=1"], "bus URL option 'bogus' is unknown"),
        (["--db", "mysql://x/y"], "only SQLite and PostgreSQL"),
    ]
    for extra, message in cases:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gridshare", "serve", str(site), *extra,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        _, err = await proc.communicate()
        assert proc.returncode == 2
        assert message in " ".join(err.decode().split()), err.decode()
    bad = tmp_path / "bad.yaml"
    bad.write_text("site: x\ngroups: []\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gridshare", "serve", str(bad),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    assert proc.returncode == 2
    assert err.decode().strip() == f"{bad}:2: groups: needs at least one group"


async def test_demo_shares_load_within_limits() -> None:
    console = Console(file=io.StringIO(), width=200)
    stats = await run_demo(8.0, seed=3, chargers=10, plain=True, console=console)
    lines = console.file.getvalue().splitlines()  # type: ignore[attr-defined]
    assert lines and lines[0].startswith("t=")
    assert "circuit-2" in lines[0]
    assert stats.arrivals >= 3
    assert stats.samples >= 10
    # The demo's sampler holds the same check as the e2e monitor, on drawn currents.
    assert stats.over_s == {}, stats.worst
    assert max(stats.worst.values()) > 0.2
