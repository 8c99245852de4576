"""Time what answering after the commit costs an OCPP charger: N chargers (raw OCPP 1.6
over websockets, in this process) each send MeterValues with an energy register, one
call at a time, as fast as they are answered, for a few seconds, against the central
system with the store's group-commit writer (the default of ``gridshare serve``) and
without it (``--db none``-like: answered at once, rows batched).

Prints per mode: answer latency p50/p99 (client round trip), answers/s, and for the
durable mode the commits and mean rows per commit (group size); peak RSS at the end.

``--nats``: a NATS gateway instead (no store; its own ``nats-server -js``, file storage
in a temporary directory): events published to JetStream, answered at once or only once
JetStream acknowledged them (``NatsBus.durable``, what ``--role gateway`` does).

    python benchmarks/bench_ocpp_durable.py [--chargers 200] [--seconds 5]
                                            [--postgres | --db URL | --nats]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect

from gridshare.adapters.ocpp import CentralSystem, CsmsConfig
from gridshare.events import Event
from gridshare.store import Store

TESTS = str(Path(__file__).resolve().parents[1] / "tests")


async def charger(port: int, cid: str, until: float, latencies: list[float]) -> None:
    at = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=24)
    async with connect(f"ws://127.0.0.1:{port}/{cid}",
                       subprotocols=["ocpp1.6"], max_queue=None) as ws:  # type: ignore[list-item]
        seq = 0

        async def call(action: str, payload: dict[str, Any]) -> float:
            nonlocal seq
            seq += 1
            t0 = time.perf_counter()
            await ws.send(json.dumps([2, str(seq), action, payload]))
            while True:
                frame = json.loads(await ws.recv())
                if frame[0] != 2:
                    break
                await ws.send(json.dumps([3, frame[1], {"status": "Accepted"}]))
            assert frame[0] == 3, frame
            return time.perf_counter() - t0

        await call("BootNotification", {"chargePointVendor": "b", "chargePointModel": "b"})
        register = 0.0
        while time.perf_counter() < until:
            at += timedelta(seconds=1)
            register += 10.0
            latencies.append(await call("MeterValues", {
                "connectorId": 1, "meterValue": [{
                    "timestamp": at.strftime("%Y-%m-%dT%H:%M:%SZ"), "sampledValue": [{
                        "value": f"{register:.1f}", "unit": "Wh",
                        "measurand": "Energy.Active.Import.Register"}]}]}))


def _p99(ordered: list[float]) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


async def drive(csms: CentralSystem, chargers: int, seconds: float
                ) -> tuple[list[float], float]:
    """``chargers`` chargers sending MeterValues for ``seconds``: each answer's round trip
    (sorted) and the seconds it took."""
    latencies: list[float] = []
    until = time.perf_counter() + seconds
    t0 = time.perf_counter()
    await asyncio.gather(*(charger(csms.port, f"b-{i}", until, latencies)
                           for i in range(chargers)))
    elapsed = time.perf_counter() - t0
    latencies.sort()
    return latencies, elapsed


async def run(url: str, durable: bool, chargers: int, seconds: float,
              window_ms: float | None = None) -> dict[str, Any]:
    store = Store(url)
    if window_ms is not None:
        store.durable.max_delay_s = window_ms / 1000.0
    await store.start()
    csms = CentralSystem(CsmsConfig(allow_auto_register=True), store.record_event,
                         durable=store.durable.write if durable else None)
    await csms.start(port=0)
    try:
        latencies, elapsed = await drive(csms, chargers, seconds)
    finally:
        await csms.stop()
        await store.stop()
    p99 = _p99(latencies)
    return {"mode": "after commit" if durable else "at once", "answers": len(latencies),
            "p50_ms": statistics.median(latencies) * 1000, "p99_ms": p99 * 1000,
            "per_s": len(latencies) / elapsed, "commits": store.durable.commits,
            "rows_per_commit": store.durable.rows / max(1, store.durable.commits),
            "commit_p50_ms": statistics.median(store.durable.commit_s or [0.0]) * 1000,
            "commit_p99_ms": _p99(sorted(store.durable.commit_s or [0.0])) * 1000}


async def run_nats(url: str, durable: bool, chargers: int, seconds: float) -> dict[str, Any]:
    """The gateway's wiring (``GatewayProcess``): publish to JetStream, and with ``durable``
    answer after the PubAck of exactly what the central system publishes."""
    from gridshare.adapters.nats.bus import NatsBus

    bus = NatsBus(url, site=f"bench{durable:d}")
    await bus.connect()
    csms: CentralSystem | None = None

    async def after_puback(events: Sequence[Event]) -> None:
        assert csms is not None
        await bus.durable(csms.published_as(events))

    csms = CentralSystem(CsmsConfig(allow_auto_register=True), bus.publish,
                         durable=after_puback if durable else None)
    await csms.start(port=0)
    try:
        latencies, elapsed = await drive(csms, chargers, seconds)
        backlog = bus.pending
        await bus.flush(60)
    finally:
        await csms.stop()
        await bus.close()
    return {"mode": "after PubAck" if durable else "at once", "answers": len(latencies),
            "p50_ms": statistics.median(latencies) * 1000,
            "p99_ms": _p99(latencies) * 1000, "per_s": len(latencies) / elapsed,
            "backlog": backlog, "published": bus.published, "duplicates": bus.duplicates,
            "failures": bus.durable_failures}


async def nats_modes(chargers: int, seconds: float) -> None:
    from bench_nats import start_nats

    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_nats(Path(tmp))
        try:
            for durable in (False, True):
                r = await run_nats(url, durable, chargers, seconds)
                print(f"{r['mode']:>12}: {chargers} chargers, {r['answers']} answers, "
                      f"p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, "
                      f"{r['per_s']:.0f} answers/s; {r['backlog']} not yet in JetStream "
                      f"when the chargers stopped, {r['published']} acknowledged, "
                      f"{r['duplicates']} duplicates, {r['failures']} refused", flush=True)
        finally:
            proc.kill()
            proc.wait()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chargers", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--window-ms", type=float, default=None,
                        help="the writer's gathering window (default: the store's)")
    parser.add_argument("--db", help="database URL (default: SQLite in a temp dir)")
    parser.add_argument("--postgres", action="store_true",
                        help="a throwaway PostgreSQL cluster (as the tests start)")
    parser.add_argument("--nats", action="store_true",
                        help="a NATS gateway: answered at once vs after JetStream's PubAck")
    args = parser.parse_args()
    if args.nats:
        await nats_modes(args.chargers, args.seconds)
        print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
        return

    async def both(url_of: Any) -> None:
        for durable in (False, True):
            r = await run(url_of(durable), durable, args.chargers, args.seconds,
                        args.window_ms)
            extra = (f", {r['commits']} commits, {r['rows_per_commit']:.1f} rows/commit, "
                     f"commit p50 {r['commit_p50_ms']:.2f} ms p99 {r['commit_p99_ms']:.2f} ms"
                     if durable else "")
            print(f"{r['mode']:>12}: {args.chargers} chargers, {r['answers']} answers, "
                  f"p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, "
                  f"{r['per_s']:.0f} answers/s{extra}", flush=True)

    if args.postgres:
        sys.path.insert(0, TESTS)
        from pg import postgres_cluster

        with postgres_cluster() as cluster:
            await both(lambda _durable: cluster.create_db())
    else:
        with tempfile.TemporaryDirectory() as tmp:
            await both(lambda durable: args.db or f"sqlite:///{Path(tmp) / f'b{durable:d}.db'}")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    asyncio.run(main())
