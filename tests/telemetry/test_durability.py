"""Kill -9 the ingest process mid-stream, start it again with the same client id: every
QoS 1 reading the broker accepted is stored exactly once.

The ingest runs as its own process (``python -m gridshare.adapters.telemetry``) against a
real Mosquitto and a SQLite file; the publisher is this test. The broker holds the
persistent session while the ingest is dead and redelivers what was never acknowledged;
what was committed but not yet acknowledged comes again and is skipped by the unique key.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import aiomqtt
from brokers import Mosquitto
from waits import eventually

METERS = 10
READINGS = 600
"""Below Mosquitto's default max_queued_messages (1000) for a session that is away."""

SITE = """
site: dur
mqtt: {{url: "{url}"}}
telemetry: {{batch_interval: 0.2, batch_rows: 5000}}
groups:
  - {{id: main, max_current: 100}}
meters:
{meters}
"""


def count(db: Path) -> int:
    if not db.exists():
        return 0
    with sqlite3.connect(db, timeout=5) as conn:
        try:
            return int(conn.execute("select count(*) from ami_readings").fetchone()[0])
        except sqlite3.OperationalError:  # the table is not created yet
            return 0


def distinct(db: Path) -> int:
    with sqlite3.connect(db, timeout=5) as conn:
        return int(conn.execute(
            "select count(*) from (select distinct meter_id, ts from ami_readings)"
        ).fetchone()[0])


def start_ingest(site: Path, db: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "gridshare.adapters.telemetry", str(site),
                             "--db", f"sqlite:///{db}"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    for line in proc.stdout:
        if "telemetry ready" in line:
            return proc
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise AssertionError("the ingest process did not get ready")


async def test_kill_9_mid_stream_loses_nothing_acknowledged(tmp_path: Path,
                                                            broker: Mosquitto) -> None:
    meters = "\n".join(f"  - {{id: m-{i}, feeder: F{i % 3}}}" for i in range(METERS))
    site = tmp_path / "site.yaml"
    site.write_text(SITE.format(url=broker.url, meters=meters), encoding="utf-8")
    db = tmp_path / "ingest.db"
    proc = start_ingest(site, db)  # creates the persistent session
    base = time.time() - 25.0  # distinct event times, within the clock-skew allowance

    async def publish_all() -> None:
        async with aiomqtt.Client(broker.host, broker.port) as client:
            for k in range(READINGS):
                meter = f"m-{k % METERS}"
                body = {"meter_id": meter, "ts": base + k * 0.01, "power_w": 100.0 + k,
                        "energy_wh": float(k)}
                await client.publish(f"gridshare/dur/ami/{meter}", json.dumps(body),
                                     qos=1)  # returns once the broker has it (PUBACK)
                if k % 20 == 0:
                    await asyncio.sleep(0.02)  # a steady stream, about 1,000 a second

    publisher = asyncio.create_task(publish_all())
    try:
        await eventually(lambda: count(db) >= READINGS // 5, 30, 0.005)
        # Mid-stream: a batch is being received and not yet committed.
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        killed_at = count(db)
        assert killed_at < READINGS, "the stream was over before the kill"
        await asyncio.sleep(0.3)
        proc = start_ingest(site, db)  # same site file: same client id and session
        await asyncio.wait_for(publisher, 60)
        await eventually(lambda: count(db) >= READINGS, 60, 0.1)
        await asyncio.sleep(0.5)  # anything redelivered twice would show up now
        assert count(db) == READINGS
        assert distinct(db) == READINGS
    finally:
        proc.kill()
        proc.wait(10)
