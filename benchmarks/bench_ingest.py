"""Telemetry ingest throughput: AMI readings → validation → store → demand windows.

Three runs (issue 11's goals):

- ``core``: validation and aggregation in one process, no broker, no database
  (goal ≥ 50,000 readings/s); ``--db`` adds the SQLite commit of every batch.
- ``mqtt``: end to end through a Mosquitto this script spawns (QoS 1, persistent session,
  acknowledged after the SQLite commit), the publisher(s) in separate processes
  (goal ≥ 10,000 readings/s).
- ``config``: a site file with ``--meters`` AMI meters (``meters:`` with feeder, substation,
  region) read and checked by the one pass of ``gridshare serve``: seconds and memory.
- ``sustained``: ``--meters`` meters, one reading each per ``--interval`` seconds, for
  ``--duration`` seconds through Mosquitto: the rate kept, the lag (receive → committed,
  and event time → committed) and the ingest's memory (RSS).

    python benchmarks/bench_ingest.py core [--readings 200000] [--meters 10000] [--db]
    python benchmarks/bench_ingest.py mqtt [--readings 50000] [--publishers 2]
    python benchmarks/bench_ingest.py sustained --meters 100000 --interval 15 --duration 60
    python benchmarks/bench_ingest.py config --meters 100000

Mosquitto is started with ``max_inflight_messages 0`` and ``max_queued_messages 0``
(docs/telemetry.md: with acknowledgement after commit the broker's defaults, 20 in
flight and 1,000 queued, cap the rate and drop readings beyond the queue).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gridshare.clock import SystemClock
from gridshare.config import MeterSpec, MqttSpec, TelemetrySpec
from gridshare.controller.telemetry import TelemetryService
from gridshare.store import Store

SITE = "bench"
MOSQUITTO = "/usr/sbin/mosquitto"


def ami_meters(count: int) -> list[MeterSpec]:
    """500 meters a feeder, 10 feeders a substation, 10 substations a region."""
    return [MeterSpec(id=f"m-{i:06d}", feeder=f"F{i // 500}", substation=f"S{i // 5000}",
                      region=f"R{i // 50_000}") for i in range(count)]


def payload(meter: int, ts: float, k: int) -> bytes:
    return json.dumps({"meter_id": f"m-{meter:06d}", "ts": ts, "power_w": 500.0 + k % 7000,
                       "energy_wh": 1_000_000.0 + k, "current_a": [2.1, 2.0, 1.9],
                       "voltage_v": [230.1, 229.8, 230.4]}).encode()


def rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def pct(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --- core ------------------------------------------------------------------------------


async def bench_core(args: argparse.Namespace) -> dict[str, Any]:
    meters = ami_meters(args.meters)
    store = None
    tmp = tempfile.mkdtemp(prefix="bench-ingest-")
    if args.db:
        store = Store(f"sqlite:///{tmp}/bench.db")
        await store.start()
    service = TelemetryService(SITE, meters, [], TelemetrySpec(), SystemClock(), store=store)
    now = time.time()
    start = now - args.readings / args.meters * 15.0 - 60  # 15 s apart per meter
    prefix = service.ami_prefix
    messages = [(f"{prefix}/m-{k % args.meters:06d}",
                 payload(k % args.meters, start + (k // args.meters) * 15.0, k))
                for k in range(args.readings)]
    batch = args.batch
    took: list[float] = []
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    for i in range(0, len(messages), batch):
        b0 = time.perf_counter()
        await service.commit(messages[i:i + batch])
        took.append(time.perf_counter() - b0)
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    counts = service.counts["ami"]
    if store is not None:
        await store.stop()
    shutil.rmtree(tmp, ignore_errors=True)
    return {"mode": "core" + ("+sqlite" if args.db else ""), "readings": args.readings,
            "meters": args.meters, "batch": batch, "seconds": round(elapsed, 3),
            "readings_per_s": round(args.readings / elapsed),
            "readings_per_cpu_s": round(args.readings / max(cpu, 1e-9)),
            "load_avg_1m": round(os.getloadavg()[0], 2),
            "batch_ms_p50": round(pct(took, 0.5) * 1000, 2),
            "batch_ms_p99": round(pct(took, 0.99) * 1000, 2),
            "accepted": counts.accepted, "rejected": sum(counts.rejected.values()),
            "windows_closed": service.windows_closed, "rss_mb": round(rss_mb(), 1)}


# --- through Mosquitto -----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_broker(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    conf = workdir / "mosquitto.conf"
    lines = [f"listener {port} 127.0.0.1", "persistence false", "allow_anonymous true",
             "max_inflight_messages 0", "max_queued_messages 0",
             f"log_dest file {workdir / 'mosquitto.log'}"]
    if os.geteuid() == 0:
        lines.append("user root")
    conf.write_text("\n".join(lines) + "\n", encoding="utf-8")
    proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("mosquitto did not start")


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _packet(kind: int, body: bytes) -> bytes:
    return bytes([kind]) + _varint(len(body)) + body


def _text(value: str) -> bytes:
    raw = value.encode()
    return len(raw).to_bytes(2, "big") + raw


def publisher(port: int, meters: range, rounds: int, interval: float, start_at: float,
              prefix: str) -> None:
    """One publisher process speaking MQTT 3.1.1 on a plain socket: PUBLISH packets
    (QoS 1) are encoded ahead and written in bulk, the broker's PUBACKs counted by a
    thread; a Python MQTT client publishes a few thousand a second and would measure
    itself, not the ingest. Every meter of ``meters`` once per round, rounds ``interval``
    seconds apart and spread over it (0: as fast as the broker takes them). ``ts`` is the
    publish time, so the ingest's lag is publish → commit."""
    import threading

    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    connect = _text("MQTT") + bytes([4, 0x02]) + (600).to_bytes(2, "big") \
        + _text(f"bench-pub-{os.getpid()}")
    sock.sendall(_packet(0x10, connect))
    assert sock.recv(4)[:1] == b"\x20", "no CONNACK"
    acked = [0]

    def read_acks() -> None:
        buffer = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return
            buffer += chunk
            whole = len(buffer) // 4 * 4  # PUBACK is 4 bytes: 0x40 0x02 id id
            acked[0] += whole // 4
            buffer = buffer[whole:]

    threading.Thread(target=read_acks, daemon=True).start()
    while time.time() < start_at:
        time.sleep(0.001)
    sent = 0
    chunk = 200
    count = len(meters)
    for r in range(rounds):
        round_start = start_at + r * interval
        for j0 in range(0, count, chunk):
            if interval > 0:  # spread the round evenly over the interval
                delay = round_start + interval * j0 / count - time.time()
                if delay > 0.001:
                    time.sleep(delay)
            now = time.time()
            out = bytearray()
            for j in range(j0, min(count, j0 + chunk)):
                m = meters[j]
                sent += 1
                body = _text(f"{prefix}/m-{m:06d}") + (sent % 65535 + 1).to_bytes(2, "big") \
                    + payload(m, now, j)
                out += _packet(0x32, body)
            sock.sendall(out)
    deadline = time.time() + 120
    while acked[0] < sent and time.time() < deadline:
        time.sleep(0.01)
    sock.sendall(b"\xe0\x00")  # DISCONNECT
    sock.close()


async def bench_broker(args: argparse.Namespace, *, meters_n: int, rounds: int,
                       interval: float) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    broker, port = start_broker(workdir)
    store = Store(f"sqlite:///{workdir}/bench.db")
    await store.start()
    t_load = time.perf_counter()
    meters = ami_meters(meters_n)
    spec = TelemetrySpec(batch_rows=args.batch, batch_interval=args.batch_interval)
    service = TelemetryService(SITE, meters, [], spec, SystemClock(),
                               mqtt=MqttSpec(url=f"mqtt://127.0.0.1:{port}"), store=store)
    setup_s = time.perf_counter() - t_load
    receive_lag: list[float] = []
    event_lag: list[float] = []
    inner = service.commit

    async def timed(messages: Sequence[tuple[str, bytes]]) -> None:
        b0 = time.time()
        await inner(messages)
        done = time.time()
        receive_lag.append(done - b0)
        last = json.loads(messages[-1][1])["ts"]
        event_lag.append(done - last)

    assert service.link is not None
    service.link._commit = timed
    await service.start()
    while not service.link.connected:  # noqa: ASYNC110 (a plain flag)
        await asyncio.sleep(0.01)
    total = meters_n * rounds
    per = -(-meters_n // args.publishers)
    start_at = time.time() + 1.0
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=publisher, args=(
        port, range(i * per, min(meters_n, (i + 1) * per)), rounds, interval, start_at,
        service.ami_prefix)) for i in range(args.publishers)]
    for p in procs:
        p.start()
    counts = service.counts["ami"]
    peak_rss = rss_mb()
    first = None
    deadline = start_at + rounds * interval + 300
    while counts.accepted + counts.duplicates < total and time.time() < deadline:
        await asyncio.sleep(0.05)
        if first is None and counts.accepted:
            first = time.time()
        peak_rss = max(peak_rss, rss_mb())
    end = time.time()
    for p in procs:
        p.join(30)
    link = service.link
    result = {
        "readings": total, "accepted": counts.accepted, "duplicates": counts.duplicates,
        "rejected": sum(counts.rejected.values()), "publishers": args.publishers,
        "seconds": round(end - start_at, 2),
        "readings_per_s": round(counts.accepted / max(1e-9, end - start_at)),
        "commit_ms_p50": round(pct(receive_lag, 0.5) * 1000, 1),
        "commit_ms_p99": round(pct(receive_lag, 0.99) * 1000, 1),
        "lag_s_p50": round(pct(event_lag, 0.5), 3), "lag_s_p99": round(pct(event_lag, 0.99), 3),
        "lag_s_max": round(max(event_lag, default=float("nan")), 3),
        "batches": link.batches, "acked": link.acked, "rss_mb_peak": round(peak_rss, 1),
        "setup_s": round(setup_s, 2), "windows_closed": service.windows_closed,
        "stored": await store.count("ami_readings"),
    }
    await service.stop()
    await store.stop()
    broker.terminate()
    broker.wait(10)
    shutil.rmtree(workdir, ignore_errors=True)
    return result


async def bench_mqtt(args: argparse.Namespace) -> dict[str, Any]:
    meters = min(args.meters, args.readings)
    rounds = max(1, args.readings // meters)
    out = await bench_broker(args, meters_n=meters, rounds=rounds, interval=0.0)
    return {"mode": "mqtt", "meters": meters, **out}


async def bench_sustained(args: argparse.Namespace) -> dict[str, Any]:
    rounds = max(1, int(args.duration // args.interval))
    out = await bench_broker(args, meters_n=args.meters, rounds=rounds,
                             interval=args.interval)
    return {"mode": "sustained", "meters": args.meters, "interval_s": args.interval,
            "offered_per_s": round(args.meters / args.interval), **out}


async def bench_config(args: argparse.Namespace) -> dict[str, Any]:
    from gridshare.config import parse_site_config

    head = ("site: bench\nmqtt: {url: \"mqtt://127.0.0.1:1883\"}\n"
            "groups:\n  - {id: main, max_current: 100}\nmeters:\n")
    text = head + "".join(
        f"  - {{id: m-{i:06d}, feeder: F{i // 500}, substation: S{i // 5000}, "
        f"region: R{i // 50_000}}}\n" for i in range(args.meters))
    rss0 = rss_mb()
    took = []
    for _ in range(args.reps):
        t0 = time.perf_counter()
        config = parse_site_config(text, "bench.yaml")
        took.append(time.perf_counter() - t0)
    assert len(config.ami_meters) == args.meters
    return {"mode": "config", "meters": args.meters, "bytes": len(text), "reps": args.reps,
            "seconds_p50": round(pct(took, 0.5), 3), "seconds_max": round(max(took), 3),
            "rss_growth_mb": round(rss_mb() - rss0, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("mode", choices=["core", "mqtt", "sustained", "config"])
    parser.add_argument("--readings", type=int, default=200_000)
    parser.add_argument("--meters", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=1000, help="readings per commit")
    parser.add_argument("--batch-interval", type=float, default=0.05)
    parser.add_argument("--db", action="store_true", help="core: commit to SQLite too")
    parser.add_argument("--publishers", type=int, default=2)
    parser.add_argument("--interval", type=float, default=15.0)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--reps", type=int, default=3, help="config: files read")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    run = {"core": bench_core, "mqtt": bench_mqtt, "sustained": bench_sustained,
           "config": bench_config}[args.mode]
    result = asyncio.run(run(args))
    result["python"] = platform.python_version()
    result["at"] = datetime.now(UTC).isoformat(timespec="seconds")
    if args.json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        print(f"{key:>16}: {value}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    main()
