"""Kill a controller mid-stream: every reading is still processed exactly once.

Real processes end to end: a nats-server with JetStream, controller A and a standby B
(``gridshare serve --role controller``), and this test as the gateway publishing meter
readings at a steady rate. A is killed with SIGKILL while readings flow; B takes the site
over when A's lease expires and resumes A's durable consumers. The database must then
hold every reading exactly once (no row missing, none twice), A's rows all before B's,
and B must not have run the site while A held it.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from natsserver import NatsServer
from waits import eventually

from gridshare.adapters.nats.bus import NatsBus
from gridshare.events import MeterSample

SITE = """
site: takeover
groups:
  - id: main
    max_current: 32
    chargers: [t-1]
chargers:
  - {id: t-1, max_current: 16, phases: 3}
"""
N = 3000
RATE = 500.0  # readings per second: the stream runs for 6 s
T0 = datetime(2026, 3, 1, 12, tzinfo=UTC)


def reading(i: int) -> MeterSample:
    return MeterSample(f"m-{i % 10}", T0 + timedelta(milliseconds=i), (float(i), 0.0, 0.0))


def rows(db: Path) -> list[tuple[str, str, str, str]]:
    if not db.exists():
        return []
    with sqlite3.connect(db, timeout=10) as conn:
        try:
            return conn.execute("SELECT source, at, controller, recorded_at FROM bus_readings "
                                "WHERE site = 'takeover'").fetchall()
        except sqlite3.OperationalError:  # the table is not made yet
            return []


async def controller(site: Path, nats: NatsServer, db: Path,
                     name: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gridshare", "serve", str(site), "--role", "controller",
        "--controller-id", name, "--bus", f"{nats.url}?ack_wait_s=3",
        "--db", f"sqlite:///{db}", "--log-level", "info",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)


async def line(proc: asyncio.subprocess.Process, timeout_s: float = 30.0) -> str:
    assert proc.stdout is not None
    async with asyncio.timeout(timeout_s):
        return (await proc.stdout.readline()).decode().strip()


async def test_kill_controller_mid_stream_exactly_once(tmp_path: Path,
                                                       nats: NatsServer) -> None:
    site = tmp_path / "site.yaml"
    site.write_text(SITE)
    db = tmp_path / "gridshare.db"
    a = await controller(site, nats, db, "A")
    b: asyncio.subprocess.Process | None = None
    gateway = NatsBus(nats.url, site="takeover")
    try:
        assert (await line(a)).startswith("gridshare standby: site takeover, controller A")
        assert (await line(a)) == ("gridshare ready: site takeover, role controller A holds "
                                   f"the lease, bus {nats.url}")
        b = await controller(site, nats, db, "B")
        assert (await line(b)).startswith("gridshare standby: site takeover, controller B")
        b_ready = asyncio.ensure_future(line(b, 60.0))

        killed_at: float | None = None
        start = time.monotonic()
        for i in range(N):
            gateway.publish(reading(i))
            if killed_at is None and i >= N // 3 and len(rows(db)) > 0:
                assert not b_ready.done(), "B ran the site while A held the lease"
                a.send_signal(signal.SIGKILL)  # mid-stream, mid-batch
                await a.wait()
                killed_at = time.time()
            await asyncio.sleep(max(0.0, start + (i + 1) / RATE - time.monotonic()))
        await gateway.flush(30)
        assert killed_at is not None, "A never recorded anything"
        assert (await b_ready) == ("gridshare ready: site takeover, role controller B holds "
                                   f"the lease, bus {nats.url}")

        with contextlib.suppress(TimeoutError):  # the count below says what is missing
            await eventually(lambda: len(rows(db)) >= N, timeout_s=60, poll_s=0.2)
        await asyncio.sleep(4.0)  # past ack_wait: any redelivery has happened by now
        got = rows(db)
        keys = [(source, at) for source, at, _, _ in got]
        assert len(got) == N, f"{len(got)} rows for {N} readings"
        assert len(set(keys)) == N  # none twice
        expected = {(r.meter, r.at) for r in map(reading, range(N))}
        assert {(s, datetime.fromisoformat(at).replace(tzinfo=UTC)) for s, at in keys} \
            == expected  # none missing
        by = {"A": [], "B": []}  # type: dict[str, list[datetime]]
        for _, _, who, recorded in got:
            by[who].append(datetime.fromisoformat(recorded).replace(tzinfo=UTC))
        assert by["A"] and by["B"], {k: len(v) for k, v in by.items()}
        assert max(by["A"]) < min(by["B"])  # one controller at a time
        assert min(by["B"]).timestamp() > killed_at  # B only after A was gone
    finally:
        await gateway.close()
        for proc in (a, b):
            if proc is not None and proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    async with asyncio.timeout(20):
                        await proc.wait()
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
    assert b is not None and b.returncode == 0


async def test_controller_that_loses_its_lease_stops_with_code_3(tmp_path: Path,
                                                                 nats: NatsServer) -> None:
    import nats as nats_client

    site = tmp_path / "site.yaml"
    site.write_text(SITE)
    proc = await controller(site, nats, tmp_path / "g.db", "A")
    try:
        assert (await line(proc)).startswith("gridshare standby")
        assert (await line(proc)).startswith("gridshare ready")
        nc = await nats_client.connect(nats.url)
        kv = await nc.jetstream().key_value("gridshare_sites")
        await kv.put("takeover", b"B someone-else")  # the site was handed to B
        await nc.close()
        async with asyncio.timeout(20):
            assert await proc.wait() == 3
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
