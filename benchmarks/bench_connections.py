"""Idle connections at scale: memory per charger connection and heartbeat round trips.

The server process runs the full system as ``gridshare serve`` wires it (CSMS, controller,
bus) for a site of 10,000 chargers; a subprocess runs 10,000 simulated chargers (OCPP 1.6J
and 2.0.1 alternating, no cars) that connect and send heartbeats. Reported:

- memory per connection in the server: RSS after every charger is connected (and has its
  failsafe installed) minus RSS before the first one, over the number of connections
  (goal ≤ 100 KB);
- heartbeat round trip (send → answer), p50 / p99, measured by a separate probe process
  of a few raw OCPP-J clients (an idle event loop, so the figure is the server's), and as
  seen by the 10,000 simulated chargers themselves (their process is saturated, so this
  one includes client-side queueing).

    python benchmarks/bench_connections.py [--chargers 10000] [--heartbeat 10] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import math
import os
import resource
import statistics
import sys
import time
from typing import Any

GOAL_KB = 100.0
SCRIPT = os.path.abspath(__file__)
PER_GROUP = 100
PROBES = 20


def raise_fd_limit(wanted: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


def charger_ids(count: int, prefix: str = "SIM") -> list[str]:
    width = max(4, len(str(count)))
    return [f"{prefix}{i + 1:0{width}d}" for i in range(count)]


def probe_ids(count: int = PROBES) -> list[str]:
    return [f"PRB{i + 1:03d}" for i in range(count)]


def site_yaml(count: int) -> str:
    """``count`` chargers in groups of 100: the simulated ones and the probes."""
    ids = charger_ids(count - PROBES) + probe_ids()
    lines = ["site: connections", "voltage: 230", "groups:", "  - id: site",
             f"    max_current: {count * 16}", "    groups:"]
    for g in range(math.ceil(count / PER_GROUP)):
        members = ", ".join(ids[g * PER_GROUP:(g + 1) * PER_GROUP])
        lines.append(f"      - {{id: g{g + 1}, max_current: {PER_GROUP * 16}, "
                     f"chargers: [{members}]}}")
    lines.append("chargers:")
    lines.extend(f"  - {{id: {cid}, max_current: 32, phases: 3, failsafe_current: 0}}"
                 for cid in ids)
    return "\n".join(lines) + "\n"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


# --- simulator side ------------------------------------------------------------------------


async def sim_worker(url: str, count: int, measure_s: float) -> None:
    """Connect ``count`` chargers, then time every heartbeat for ``measure_s`` seconds."""
    from gridshare.sim.rpc import RpcConnection
    from gridshare.sim.site import SimSite

    raise_fd_limit(count + 1024)
    rtts: list[float] = []
    recording = False
    original = RpcConnection.call

    async def call(self: RpcConnection, action: str, payload: Any) -> Any:
        if action != "Heartbeat" or not recording:
            return await original(self, action, payload)
        started = time.perf_counter()
        result = await original(self, action, payload)
        rtts.append((time.perf_counter() - started) * 1000)
        return result

    RpcConnection.call = call  # type: ignore[method-assign]
    site = SimSite.build(url, count - PROBES, protocol="mixed", three_phase_share=1.0,
                         meter_interval_s=3600.0, connect_concurrency=250,
                         response_timeout_s=120.0, open_timeout_s=120.0)
    started = time.perf_counter()
    connected = await site.start(wait_connected_s=600.0)
    connect_s = time.perf_counter() - started
    print(json.dumps({"phase": "connected", "connected": connected,
                      "connect_s": connect_s}), flush=True)
    # Wait for the server's go (it measures its memory first), then time heartbeats.
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.readline)
    recording = True
    await asyncio.sleep(measure_s)
    recording = False
    print(json.dumps({"phase": "heartbeats", "connected": site.connected_count,
                      "rtt_ms": rtts}), flush=True)
    await loop.run_in_executor(None, sys.stdin.read)
    await site.stop()


async def probe_worker(url: str, measure_s: float, period_s: float = 0.2) -> None:
    """A few raw OCPP-J clients (alternating 1.6 and 2.0.1) that answer what the CSMS asks
    and time a heartbeat every ``period_s``. Prints the round trips as JSON when done."""
    from websockets.asyncio.client import connect

    rtts: list[float] = []

    async def client(index: int, charger: str) -> None:
        v16 = index % 2 == 0
        async with connect(f"{url}/{charger}",
                           subprotocols=["ocpp1.6" if v16 else "ocpp2.0.1"]) as ws:
            waiting: dict[str, asyncio.Future[Any]] = {}

            async def reader() -> None:
                async for raw in ws:
                    msg = json.loads(raw)
                    if msg[0] == 2:  # a call from the CSMS (failsafe profile): accept it
                        await ws.send(json.dumps([3, msg[1], {"status": "Accepted"}]))
                    elif msg[0] in (3, 4) and msg[1] in waiting:
                        waiting.pop(msg[1]).set_result(msg)

            task = asyncio.create_task(reader())
            seq = 0

            async def call(action: str, payload: dict[str, Any]) -> float:
                nonlocal seq
                seq += 1
                uid = f"{charger}-{seq}"
                fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
                waiting[uid] = fut
                started = time.perf_counter()
                await ws.send(json.dumps([2, uid, action, payload]))
                await asyncio.wait_for(fut, 30)
                return (time.perf_counter() - started) * 1000

            boot = ({"chargePointVendor": "probe", "chargePointModel": "p"} if v16 else
                    {"chargingStation": {"model": "p", "vendorName": "probe"},
                     "reason": "PowerUp"})
            await call("BootNotification", boot)
            await asyncio.sleep(1.0 + index * period_s / PROBES)
            deadline = time.monotonic() + measure_s
            while time.monotonic() < deadline:
                rtts.append(await call("Heartbeat", {}))
                await asyncio.sleep(period_s)
            task.cancel()

    await asyncio.gather(*(client(i, cid) for i, cid in enumerate(probe_ids())))
    print(json.dumps({"rtt_ms": rtts}), flush=True)


# --- server side ---------------------------------------------------------------------------


class LoopWatch:
    """Event-loop lag (how late a 10 ms sleep wakes up) and garbage-collector pauses in the
    server: what makes a round trip's tail."""

    def __init__(self) -> None:
        self.lags_ms: list[float] = []
        self.gc_ms: dict[int, list[float]] = {0: [], 1: [], 2: []}
        self._gc_started = 0.0
        self.recording = False

    def _gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        elif self.recording:
            self.gc_ms[info["generation"]].append((time.perf_counter() - self._gc_started)
                                                  * 1000)

    async def run(self) -> None:
        gc.callbacks.append(self._gc)
        try:
            while True:
                started = time.perf_counter()
                await asyncio.sleep(0.01)
                if self.recording:
                    self.lags_ms.append((time.perf_counter() - started) * 1000 - 10)
        finally:
            gc.callbacks.remove(self._gc)


async def run(count: int, heartbeat_s: int, measure_s: float) -> dict[str, Any]:
    import psutil

    from gridshare.adapters.ocpp import CsmsConfig
    from gridshare.app import ServeOptions, build_app
    from gridshare.config import parse_site

    raise_fd_limit(count + 1024)
    me = psutil.Process()
    topology = parse_site(site_yaml(count), "connections")
    app = build_app(topology, ServeOptions(
        host="127.0.0.1", ocpp_port=0, api_port=None, db_url="none",
        csms=CsmsConfig(heartbeat_interval_s=heartbeat_s)))
    await app.start()
    gc.collect()
    await asyncio.sleep(0.5)
    rss_before = me.memory_info().rss
    cpu_before = me.cpu_times()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, SCRIPT, "--worker", f"ws://127.0.0.1:{app.ocpp_port}",
        "--chargers", str(count), "--measure", str(measure_s),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=2**26)
    assert proc.stdin is not None and proc.stdout is not None
    probe_proc: asyncio.subprocess.Process | None = None
    watch = LoopWatch()
    watch_task = asyncio.create_task(watch.run())
    try:
        connected = json.loads(await asyncio.wait_for(proc.stdout.readline(), 900))
        connected["connected"] += PROBES
        probe_proc = await asyncio.create_subprocess_exec(
            sys.executable, SCRIPT, "--probe", f"ws://127.0.0.1:{app.ocpp_port}",
            "--measure", str(measure_s), stdout=asyncio.subprocess.PIPE, limit=2**26)
        assert probe_proc.stdout is not None
        # Every charger connected, its failsafe installed and the controller quiet.
        for _ in range(600):
            if len(app.csms.connected()) >= connected["connected"] and \
                    app.controller.counters["failsafe_accepted"] >= connected["connected"] \
                    and app.controller.idle:
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(2.0)
        gc.collect()
        rss_after = me.memory_info().rss
        connections = len(app.csms.connected())
        idle_cpu_before = me.cpu_times()
        watch.recording = True
        proc.stdin.write(b"go\n")
        await proc.stdin.drain()
        beats = json.loads(await asyncio.wait_for(proc.stdout.readline(), measure_s + 300))
        idle_cpu = me.cpu_times()
        watch.recording = False
        probe = json.loads(await asyncio.wait_for(probe_proc.stdout.readline(), 120))
        await probe_proc.wait()
        rtts: list[float] = beats["rtt_ms"]
        server_rtts: list[float] = probe["rtt_ms"]
        per_conn_kb = (rss_after - rss_before) / max(1, connections) / 1024
        busy_s = (idle_cpu.user + idle_cpu.system
                  - idle_cpu_before.user - idle_cpu_before.system)
        return {
            "chargers": count,
            "connected": connections,
            "connect_s": round(connected["connect_s"], 1),
            "heartbeat_interval_s": heartbeat_s,
            "rss_before_mb": round(rss_before / 2**20, 1),
            "rss_after_mb": round(rss_after / 2**20, 1),
            "memory_per_connection_kb": round(per_conn_kb, 1),
            "goal_kb": GOAL_KB,
            "goal_met": per_conn_kb <= GOAL_KB,
            "heartbeat_rtt_ms": {"probes": PROBES, **rtt_summary(server_rtts)},
            "heartbeat_rtt_seen_by_simulated_chargers_ms": rtt_summary(rtts),
            "server_loop_lag_ms": {"p50": round(statistics.median(watch.lags_ms), 2),
                                   "p99": round(percentile(watch.lags_ms, 0.99), 2),
                                   "max": round(max(watch.lags_ms), 2)}
            if watch.lags_ms else {},
            "server_gc_pauses": {f"gen{g}": {"count": len(v),
                                             "max_ms": round(max(v), 1) if v else 0.0}
                                 for g, v in watch.gc_ms.items()},
            "server_cpu_percent_while_idle": round(100 * busy_s / measure_s, 1),
            "server_cpu_s_total": round(idle_cpu.user + idle_cpu.system
                                        - cpu_before.user - cpu_before.system, 1),
        }
    finally:
        watch_task.cancel()
        with contextlib.suppress(Exception):
            proc.stdin.close()
        if probe_proc is not None and probe_proc.returncode is None:
            probe_proc.kill()
            await probe_proc.wait()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 120)
        if proc.returncode is None:
            proc.kill()
        await app.stop()


def rtt_summary(rtts: list[float]) -> dict[str, float | int | None]:
    return {"count": len(rtts),
            "p50": round(statistics.median(rtts), 2) if rtts else None,
            "p99": round(percentile(rtts, 0.99), 2) if rtts else None,
            "max": round(max(rtts), 2) if rtts else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chargers", type=int, default=10_000)
    parser.add_argument("--heartbeat", type=int, default=10,
                        help="heartbeat interval the CSMS gives the chargers (s)")
    parser.add_argument("--measure", type=float, default=30.0,
                        help="seconds of heartbeats to time")
    parser.add_argument("--json", action="store_true", help="print JSON only")
    parser.add_argument("--worker", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--probe", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    if args.probe:
        asyncio.run(probe_worker(args.probe, args.measure))
        return
    if args.worker:
        asyncio.run(sim_worker(args.worker, args.chargers, args.measure))
        return
    result = asyncio.run(run(args.chargers, args.heartbeat, args.measure))
    if args.json:
        print(json.dumps(result, indent=2))
        return
    rtt = result["heartbeat_rtt_ms"]
    sim_rtt = result["heartbeat_rtt_seen_by_simulated_chargers_ms"]
    print(f"{result['connected']} of {result['chargers']} chargers connected in "
          f"{result['connect_s']} s (OCPP 1.6J + 2.0.1, simulator in a subprocess)")
    print(f"  server RSS {result['rss_before_mb']} MB → {result['rss_after_mb']} MB: "
          f"{result['memory_per_connection_kb']} KB per connection "
          f"(goal ≤ {GOAL_KB:g} KB: {'met' if result['goal_met'] else 'NOT met'})")
    print(f"  heartbeat round trip under that load ({rtt['probes']} probe clients, "
          f"{rtt['count']} samples): p50 {rtt['p50']} ms, p99 {rtt['p99']} ms, "
          f"max {rtt['max']} ms")
    print(f"  as seen by the simulated chargers (heartbeat every "
          f"{result['heartbeat_interval_s']} s, {sim_rtt['count']} samples, their own process "
          f"saturated): p50 {sim_rtt['p50']} ms, p99 {sim_rtt['p99']} ms")
    lag, gcs = result["server_loop_lag_ms"], result["server_gc_pauses"]
    print(f"  server event-loop lag p50 {lag.get('p50')} ms, p99 {lag.get('p99')} ms, max "
          f"{lag.get('max')} ms; GC pauses: " + ", ".join(
              f"{g} ×{v['count']} max {v['max_ms']} ms" for g, v in gcs.items()))
    print(f"  server CPU while idle: {result['server_cpu_percent_while_idle']} % of one core")


if __name__ == "__main__":
    main()
