"""Crash safety of the OCPP answers: a ``gridshare serve`` subprocess, chargers sending
StartTransaction / MeterValues / StopTransaction as fast as they are answered, SIGKILL at
a random moment; after it, every message that got a CallResult is in the database —
its session (start, and stop if the stop was answered) and its meter reading, each once.
Two rounds on the same database (a restart in between), on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import signal
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from websockets.asyncio.client import connect
from websockets.exceptions import WebSocketException

from gridshare.store import Store

CHARGERS = 4
ROUNDS = 2
READY = re.compile(r"^gridshare ready: .* OCPP ws://127\.0\.0\.1:(\d+),")


def site_yaml(round_no: int) -> str:
    ids = [f"r{round_no}-c{i}" for i in range(CHARGERS)]
    chargers = "\n".join(f"  - {{id: {c}, max_current: 16, phases: 3}}" for c in ids)
    return (f"site: crash\ngroups:\n  - id: main\n    max_current: 400\n"
            f"    chargers: [{', '.join(ids)}]\nchargers:\n{chargers}\n")


@dataclass
class Acked:
    """What the server answered with a CallResult (it must be stored)."""

    starts: set[tuple[str, str]] = field(default_factory=set)
    stops: dict[tuple[str, str], float] = field(default_factory=dict)
    readings: dict[tuple[str, datetime], float] = field(default_factory=dict)
    answered: int = 0
    target: int = 0
    reached: asyncio.Event = field(default_factory=asyncio.Event)


def iso(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


async def charger(url: str, cid: str, acked: Acked, start_at: datetime) -> None:
    """One charger: sessions of a few meter values each, one call at a time, until the
    connection dies (the server was killed)."""
    clock = start_at
    seq = 0

    async def call(ws: object, action: str, payload: dict[str, object]) -> dict[str, object]:
        nonlocal seq
        seq += 1
        await ws.send(json.dumps([2, str(seq), action, payload]))  # type: ignore[attr-defined]
        while True:
            answer = json.loads(await ws.recv())  # type: ignore[attr-defined]
            if answer[0] != 2:
                break
            # the server's own call (failsafe, setpoint): accepted, as a charger would
            await ws.send(json.dumps([3, answer[1], {"status": "Accepted"}]))  # type: ignore[attr-defined]
        assert answer[0] == 3 and answer[1] == str(seq), answer  # a CallResult, nothing else
        acked.answered += 1
        if acked.answered >= acked.target:
            acked.reached.set()
        return dict(answer[2])

    # the server dies at any moment: mid-call, or while a late charger is still connecting
    with contextlib.suppress(WebSocketException, OSError):
        async with connect(f"{url}/{cid}", subprotocols=["ocpp1.6"]) as ws:  # type: ignore[list-item]
            await call(ws, "BootNotification", {"chargePointVendor": "t",
                                                "chargePointModel": "crash"})
            register = 1000.0
            while True:
                clock += timedelta(seconds=1)
                answer = await call(ws, "StartTransaction", {
                    "connectorId": 1, "idTag": "TAG", "meterStart": int(register),
                    "timestamp": iso(clock)})
                tx = str(answer["transactionId"])
                acked.starts.add((cid, tx))
                for _ in range(3):
                    clock += timedelta(seconds=1)
                    register += 100.0
                    await call(ws, "MeterValues", {
                        "connectorId": 1, "transactionId": int(tx), "meterValue": [{
                            "timestamp": iso(clock), "sampledValue": [{
                                "value": f"{register:.1f}", "unit": "Wh",
                                "measurand": "Energy.Active.Import.Register"}]}]})
                    acked.readings[(cid, clock)] = register
                clock += timedelta(seconds=1)
                await call(ws, "StopTransaction", {
                    "transactionId": int(tx), "meterStop": int(register),
                    "timestamp": iso(clock), "reason": "Local"})
                acked.stops[(cid, tx)] = register


async def killed_rounds(serve_args: list[str], ready: re.Pattern[str], tmp_path: Path,
                        seed: int) -> Acked:
    """:data:`ROUNDS` rounds of :func:`kill_mid_stream` (a new site file each): what was
    answered over all of them."""
    rng = random.Random(seed)
    total = Acked()
    for round_no in range(ROUNDS):
        site = tmp_path / f"site{round_no}.yaml"
        site.write_text(site_yaml(round_no))
        acked = await kill_mid_stream(serve_args, ready, site, round_no, rng)
        assert acked.starts and acked.readings, f"seed {seed}: nothing answered"
        total.starts |= acked.starts
        total.stops.update(acked.stops)
        total.readings.update(acked.readings)
    return total


async def kill_mid_stream(serve_args: list[str], ready: re.Pattern[str], site: Path,
                          round_no: int, rng: random.Random) -> Acked:
    """``gridshare serve SITE --host 127.0.0.1 --ocpp-port 0 *serve_args`` (its first line
    matching ``ready``, OCPP port in group 1), :data:`CHARGERS` raw-1.6 chargers as fast as
    it answers, SIGKILL after a random number of answers (and a random moment after)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gridshare", "serve", str(site), "--host", "127.0.0.1",
        "--ocpp-port", "0", *serve_args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    acked = Acked(target=rng.randint(20, 300))
    try:
        async with asyncio.timeout(60):
            line = (await proc.stdout.readline()).decode().rstrip("\n")
        match = ready.match(line)
        assert match, (line, await proc.stderr.read())
        url = f"ws://127.0.0.1:{match[1]}"
        base = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=3 - round_no)
        tasks = [asyncio.create_task(charger(url, f"r{round_no}-c{i}", acked,
                                             base + timedelta(minutes=20 * i)))
                 for i in range(CHARGERS)]
        async with asyncio.timeout(60):
            await acked.reached.wait()
        await asyncio.sleep(rng.uniform(0.0, 0.05))
        proc.send_signal(signal.SIGKILL)  # mid-stream: answers may be in flight
        await proc.wait()
        async with asyncio.timeout(20):
            await asyncio.gather(*tasks)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return acked


async def test_kill_9_loses_no_answered_ocpp_message(db_url: str, tmp_path: Path) -> None:
    seed = random.randrange(1 << 30)
    total = await killed_rounds(["--api-port", "0", "--db", db_url], READY, tmp_path, seed)
    store = Store(db_url)
    await store.start()
    try:
        sessions = await store.rows("sessions", limit=1_000_000)
        readings = await store.rows("meter_readings", limit=1_000_000)
    finally:
        await store.stop()
    by_tx: dict[tuple[str, str], list[dict[str, object]]] = {}
    for row in sessions:
        by_tx.setdefault((str(row["charger"]), str(row["transaction_id"])), []).append(row)
    for key in total.starts:
        assert len(by_tx.get(key, [])) == 1, f"seed {seed}: session {key} " \
                                             f"stored {len(by_tx.get(key, []))} times"
    for key, register in total.stops.items():
        row = by_tx[key][0]
        assert row["stopped_at"] is not None, f"seed {seed}: stop of {key} lost"
        assert row["meter_stop_wh"] == register
    stored: dict[tuple[str, datetime], list[float]] = {}
    for row in readings:
        at = row["at"]
        assert isinstance(at, datetime)
        stored.setdefault((str(row["charger"]), at.replace(tzinfo=UTC)), []).append(
            float(row["energy_wh"]))
    for key, register in total.readings.items():
        assert stored.get(key) == [register], f"seed {seed}: reading {key}: " \
                                              f"{stored.get(key)} != [{register}]"
