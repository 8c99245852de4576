"""The exactly-once recorder on PostgreSQL (``ON CONFLICT DO NOTHING`` in its dialect):
a real server started here (initdb + postgres as the ``postgres`` user when run as root,
on a free port, trust authentication, in tmp_path); a missing binary FAILS the test."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from brokers import _accepts, free_port
from natsserver import NatsServer
from waits import eventually

from gridshare.adapters.nats.bus import NatsBus, NatsBusSettings
from gridshare.adapters.nats.recorder import ReadingRecorder
from gridshare.events import MeterSample

INITDB = "/usr/local/bin/initdb"
POSTGRES = "/usr/local/bin/postgres"
T0 = datetime(2026, 3, 1, 12, tzinfo=UTC)


@pytest.fixture
def postgres() -> Iterator[str]:
    """A throwaway PostgreSQL; yields its URL (database ``postgres``, user ``postgres``).
    Its directory is a fresh one under /tmp (pytest's tmp_path is private to root, and
    the server runs as ``postgres``), removed afterwards."""
    for binary in (INITDB, POSTGRES):
        if not os.access(binary, os.X_OK):
            pytest.fail(f"{binary} is missing: install PostgreSQL")
    root = Path(tempfile.mkdtemp(prefix="gridshare-pg-"))
    kwargs: dict[str, Any] = {}
    if os.geteuid() == 0:  # initdb and postgres refuse to run as root
        shutil.chown(root, "postgres", "postgres")
        kwargs["user"] = "postgres"
    data = root / "data"
    try:
        subprocess.run([INITDB, "-D", str(data), "-U", "postgres", "--auth=trust", "-E",
                        "UTF8"], check=True, capture_output=True, **kwargs)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    port = free_port()
    proc = subprocess.Popen([POSTGRES, "-D", str(data), "-p", str(port), "-k", str(root),
                             "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kwargs)
    try:
        deadline = time.monotonic() + 30
        while not _accepts(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("postgres did not start")
            time.sleep(0.05)
        time.sleep(0.3)  # accepting is not yet ready for queries
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=20)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(root, ignore_errors=True)


async def test_recorder_on_postgres_keeps_one_row_per_reading(postgres: str,
                                                               nats: NatsServer) -> None:
    bus = NatsBus(nats.url, site="pg", settings=NatsBusSettings(duplicate_window_s=1.0))
    recorder = ReadingRecorder(bus, postgres, controller_id="pg-1")
    for attempt in range(50):  # the server may still be starting up
        try:
            await recorder.start()
            break
        except Exception:
            if attempt == 49:
                raise
            await asyncio.sleep(0.2)
    try:
        for i in range(100):
            bus.publish(MeterSample("m-1", T0 + timedelta(seconds=i), (1.0, 1.0, 1.0)))
        await bus.flush(10)
        await eventually(lambda: recorder.recorded >= 100)
        await asyncio.sleep(1.5)  # past the duplicate window: the stream stores copies
        for i in range(50):
            bus.publish(MeterSample("m-1", T0 + timedelta(seconds=i), (2.0, 2.0, 2.0)))
        await bus.flush(10)
        await eventually(lambda: recorder.recorded + recorder.duplicates >= 150)
        assert await recorder.count() == 100
    finally:
        await recorder.stop()
        await bus.close()
