"""Crash safety: a writer killed with SIGKILL at a random moment loses nothing it had
acknowledged, on SQLite (WAL) and PostgreSQL. It is restarted on the same database and
resumes by re-sending its last acknowledged batch (a redelivery): duplicates are ignored,
so the final table holds every acknowledged row exactly once."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from gridshare.store import Store

from .crash_writer import ROWS_PER_ACK

WRITER = Path(__file__).with_name("crash_writer.py")
ROUNDS = 3


def run_until_killed(url: str, first: int, rng: random.Random) -> list[int]:
    """Start the writer, let it acknowledge a random number of batches, SIGKILL it at a
    random moment after that; every index it acknowledged (read to the end of its
    output: lines written before the kill count too)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, str(WRITER), url, str(first)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdout is not None
    try:
        assert proc.stdout.readline() == b"ready\n", proc.stderr.read() if proc.stderr \
            else b""
        wanted = rng.randint(5, 60)
        acked: list[int] = []
        while len(acked) < wanted:
            line = proc.stdout.readline()
            assert line.startswith(b"ack "), (line, proc.stderr and proc.stderr.read())
            acked.append(int(line.split()[1]))
        time.sleep(rng.uniform(0.0, 0.02))  # somewhere inside the next write, or between
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        acked += [int(line.split()[1]) for line in proc.stdout.read().splitlines()
                  if line.startswith(b"ack ")]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        if proc.stderr is not None:
            proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    return acked


async def stored_indexes(url: str) -> dict[int, int]:
    """Batch index (the reading's power) -> how many of its rows are stored."""
    store = Store(url)
    await store.start()
    try:
        rows = await store.rows("ami_readings", limit=1_000_000)
    finally:
        await store.stop()
    found: dict[int, int] = {}
    for row in rows:
        found[int(row["power_w"])] = found.get(int(row["power_w"]), 0) + 1
    return found


def test_kill_9_loses_nothing_acknowledged(db_url: str) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    acknowledged: set[int] = set()
    first = 0
    for _ in range(ROUNDS):
        acked = run_until_killed(db_url, first, rng)
        assert acked == list(range(first, first + len(acked)))
        acknowledged.update(acked)
        first = acked[-1]  # resume by re-sending the last acknowledged batch
    found = asyncio.run(stored_indexes(db_url))
    lost = sorted(i for i in acknowledged if found.get(i) != ROWS_PER_ACK)
    assert not lost, f"seed {seed}: acknowledged batches missing or partial: {lost}"
    # A batch is one transaction: never half stored; no row twice (the redeliveries).
    assert all(n == ROWS_PER_ACK for n in found.values()), (seed, found)
    assert set(found) - acknowledged <= {max(acknowledged) + 1}, seed
