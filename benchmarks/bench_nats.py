"""End to end through NATS JetStream: readings/s into controller processes, and latency.

Spawns its own ``nats-server -js`` (free port, temporary store), then one controller
process per site (``gridshare serve SITE --role controller --bus nats://...``, the real
command: controller, audit store and the exactly-once recorder, each on its durable
consumer), and publishes meter readings from this process through :class:`NatsBus` (as
a gateway does) as fast as JetStream takes them. A reading counts as processed when its
row is committed in ``bus_readings`` (then its message is acknowledged); its latency is
``recorded_at - at`` (publish time stamped into the reading; one machine, one clock).

Runs one controller with one site, then two controllers with two sites (one each), and
prints readings/s, p50/p99 latency and each controller's peak memory (VmHWM).

The flood runs give throughput (their latency is mostly queueing: readings arrive faster
than they are processed); the paced runs (``--rate`` per site, below capacity) give the
latency of one reading through the system.

    python benchmarks/bench_nats.py [--readings 20000] [--rate 500] [--seconds 10] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from gridshare.adapters.nats.bus import NatsBus
from gridshare.events import MeterSample

NATS_SERVER = "/usr/sbin/nats-server"
SITE = """
site: {site}
groups:
  - id: main
    max_current: 63
    chargers: [{site}-c1]
chargers:
  - {{id: {site}-c1, max_current: 32, phases: 3}}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_nats(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen([NATS_SERVER, "-js", "-a", "127.0.0.1", "-p", str(port), "-sd",
                             str(workdir / "store")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            time.sleep(0.3)  # JetStream is up shortly after the port
            return proc, f"nats://127.0.0.1:{port}"
        time.sleep(0.05)
    proc.kill()
    raise SystemExit("nats-server did not start")


def peak_rss_mb(pid: int) -> float:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def count(db: Path) -> int:
    with contextlib.suppress(sqlite3.OperationalError), sqlite3.connect(db, timeout=10) as c:
        return int(c.execute("SELECT count(*) FROM bus_readings").fetchone()[0])
    return 0


def latencies(db: Path) -> list[float]:
    with sqlite3.connect(db, timeout=10) as conn:
        rows = conn.execute("SELECT at, recorded_at FROM bus_readings").fetchall()
    out = []
    for at, recorded in rows:
        t0 = datetime.fromisoformat(at).replace(tzinfo=UTC)
        t1 = datetime.fromisoformat(recorded).replace(tzinfo=UTC)
        out.append((t1 - t0).total_seconds())
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(url: str, workdir: Path, sites: list[str], readings: int,
              meters: int, rate: float | None) -> dict[str, Any]:
    """Publish ``readings`` per site as fast as JetStream takes them (``rate`` None: the
    throughput run) or at ``rate`` per site per second (the latency run, below capacity)."""
    procs: dict[str, subprocess.Popen[bytes]] = {}
    dbs = {site: workdir / f"{site}.db" for site in sites}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    for site in sites:
        path = workdir / f"{site}.yaml"
        path.write_text(SITE.format(site=site))
        procs[site] = subprocess.Popen(  # noqa: ASYNC220 - started once, before timing
            [sys.executable, "-m", "gridshare", "serve", str(path), "--role", "controller",
             "--controller-id", f"bench-{site}", "--bus", url, "--db",
             f"sqlite:///{dbs[site]}"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env=env)
    try:
        for site, proc in procs.items():
            assert proc.stdout is not None
            for _ in range(2):  # standby line, then ready line
                line = await asyncio.to_thread(proc.stdout.readline)
                if not line:
                    raise SystemExit(f"controller of {site} exited")
        buses = {site: NatsBus(url, site=site) for site in sites}
        for bus in buses.values():
            await bus.connect()
        start = time.monotonic()
        base = datetime.now(UTC)
        for i in range(readings):
            # The event time is the publish time (latency = recorded_at - at); it is also
            # the reading's key, so each (meter, time) pair is unique.
            now = max(datetime.now(UTC), base + timedelta(microseconds=i))
            for bus in buses.values():
                bus.publish(MeterSample(f"m-{i % meters:05d}", now, (10.0, 10.0, 10.0)))
            if rate is not None:
                await asyncio.sleep(max(0.0, start + (i + 1) / rate - time.monotonic()))
            elif i % 500 == 499:
                await asyncio.sleep(0)  # let the publishers send
                while max(b.pending for b in buses.values()) > 20_000:  # noqa: ASYNC110
                    await asyncio.sleep(0.005)  # backpressure: no event says "drained"
        for bus in buses.values():
            await bus.flush(120)
        published_s = time.monotonic() - start
        deadline = time.monotonic() + 180
        while any(count(db) < readings for db in dbs.values()):
            if time.monotonic() > deadline:
                raise SystemExit("controllers did not process every reading in 180 s")
            await asyncio.sleep(0.1)
        total_s = time.monotonic() - start
        lat = [x for db in dbs.values() for x in latencies(db)]
        for bus in buses.values():
            await bus.close()
        return {
            "controllers": len(sites), "sites": len(sites), "readings": readings * len(sites),
            "rate_per_site": rate,
            "publish_per_s": readings * len(sites) / published_s,
            "processed_per_s": readings * len(sites) / total_s,
            "latency_p50_ms": statistics.median(lat) * 1000,
            "latency_p99_ms": percentile(lat, 0.99) * 1000,
            "controller_peak_rss_mb": [round(peak_rss_mb(p.pid), 1) for p in procs.values()],
        }
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readings", type=int, default=20_000,
                        help="readings per site (default 20,000)")
    parser.add_argument("--meters", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=500.0,
                        help="readings/s per site in the latency runs (default 500)")
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="length of each latency run (default 10 s)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-nats-") as tmp:
        runs: list[tuple[list[str], int, float | None]] = [
            (["site-a"], args.readings, None), (["site-b", "site-c"], args.readings, None),
            (["site-a"], int(args.rate * args.seconds), args.rate),
            (["site-b", "site-c"], int(args.rate * args.seconds), args.rate)]
        for n, (sites, readings, rate) in enumerate(runs):
            workdir = Path(tmp) / f"run{n}"
            workdir.mkdir()
            server, url = start_nats(workdir)
            try:
                results.append(await run(url, workdir, sites, readings, args.meters, rate))
            finally:
                server.kill()
                server.wait()
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"NATS JetStream end to end ({platform.python_implementation()} "
          f"{platform.python_version()}, {os.cpu_count()} CPUs, {args.meters} meters)")
    for r in results:
        how = "flood" if r["rate_per_site"] is None else f"{r['rate_per_site']:,.0f}/s per site"
        print(f"  {how}, {r['controllers']} controller(s), {r['sites']} site(s): "
              f"{r['readings']:,} readings, published {r['publish_per_s']:,.0f}/s, "
              f"processed {r['processed_per_s']:,.0f}/s, latency p50 "
              f"{r['latency_p50_ms']:.0f} ms p99 {r['latency_p99_ms']:.0f} ms, controller "
              f"peak RSS {', '.join(f'{m:.0f}' for m in r['controller_peak_rss_mb'])} MB")


if __name__ == "__main__":
    asyncio.run(main())
