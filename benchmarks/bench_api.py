"""REST API latency and throughput under 100 concurrent clients, at 1,000 chargers.

The real app (CSMS, controller, REST API on uvicorn), wired by the composition root as
``gridshare serve`` does, with 1,000 simulated chargers (OCPP 1.6J and 2.0.1 alternating,
a car charging on every one, MeterValues every 30 s: about 33 readings a second reach the
controller, so its views keep changing) in a subprocess (bench_control's worker). The load
comes from another subprocess: ``--clients`` keep-alive HTTP/1.1 connections, each sending
one request after another for ``--duration`` seconds to one endpoint, first as plain JSON,
then asking for gzip (as browsers and ``curl --compressed`` do); it reports p50/p99
latency, requests per second, and the CPU share of the server's process and of the load
generator (1.0 = one core busy: that side was the bound). Three processes share this
machine's cores.

    python benchmarks/bench_api.py [--chargers 1000] [--clients 100] [--duration 10] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_control import (  # a sibling script, not a package
    raise_fd_limit,
    site_yaml,
    start_sim_subprocess,
    wait_for,
)

SCRIPT = os.path.abspath(__file__)
PATHS = ("/api/v1/site", "/api/v1/chargers")


# --- the load side (subprocess) -----------------------------------------------------------


async def _client(port: int, path: str, encoding: str, until: float,
                  latencies: list[float], errors: list[str]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = (f"GET {path} HTTP/1.1\r\nHost: bench\r\nAccept: */*\r\n"
               f"Accept-Encoding: {encoding}\r\n\r\n").encode()
    try:
        while time.monotonic() < until:
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            body = await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            if status != 200 or not body.startswith(b"{" if encoding == "identity"
                                                     else b"\x1f\x8b"):
                errors.append(f"{status}")
    finally:
        writer.close()


async def load(port: int, path: str, encoding: str, clients: int,
               duration_s: float) -> dict[str, Any]:
    latencies: list[float] = []
    errors: list[str] = []
    cpu = time.process_time()
    started = time.monotonic()
    until = started + duration_s
    await asyncio.gather(*(_client(port, path, encoding, until, latencies, errors)
                           for _ in range(clients)))
    elapsed = time.monotonic() - started
    load_cpu = (time.process_time() - cpu) / elapsed
    ordered = sorted(latencies)
    return {
        "path": path, "encoding": encoding, "clients": clients, "requests": len(latencies),
        "errors": len(errors),
        "seconds": round(elapsed, 2), "per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(1000 * ordered[len(ordered) // 2], 1) if ordered else None,
        "p99_ms": round(1000 * ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 1)
        if ordered else None,
        "max_ms": round(1000 * ordered[-1], 1) if ordered else None,
        "load_generator_cpu": round(load_cpu, 2),
    }


async def run_load(port: int, path: str, encoding: str, clients: int, duration_s: float
                   ) -> dict[str, Any]:
    cpu, started = time.process_time(), time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, SCRIPT, "--load", str(port), "--path", path, "--encoding", encoding,
        "--clients",
        str(clients), "--duration", str(duration_s), stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed ({proc.returncode})")
    result: dict[str, Any] = json.loads(out)
    # The server's process: API, CSMS and controller on one event loop (one core at most).
    result["server_cpu"] = round((time.process_time() - cpu) / (time.monotonic() - started), 2)
    return result


# --- the server side ----------------------------------------------------------------------


async def run(count: int, clients: int, duration_s: float,
              paths: tuple[str, ...] = PATHS) -> dict[str, Any]:
    from gridshare.api.views import chargers_view, dumps, site_view
    from gridshare.app import ServeOptions, build_app
    from gridshare.config import parse_site
    from gridshare.controller.loop import ControllerSettings

    raise_fd_limit(2 * count + 4 * clients + 1024)
    topology = parse_site(site_yaml(count), "bench")
    settings = ControllerSettings(lease_s=3600.0)
    app = build_app(topology, ServeOptions(host="127.0.0.1", ocpp_port=0, api_port=0,
                                           db_url="none", controller=settings))
    await app.start()
    url = f"ws://127.0.0.1:{app.ocpp_port}"
    proc, info = await start_sim_subprocess(url, count)
    try:
        controller = app.controller
        ok = await wait_for(lambda: len(controller.in_force()) == count and controller.idle,
                            120)
        if not ok:
            raise RuntimeError(f"only {len(controller.in_force())} of {count} setpoints in "
                               f"force after 120 s")
        builds: dict[str, Any] = {}
        for name, build in (("site", site_view), ("chargers", chargers_view)):
            times = []
            for _ in range(20):
                started = time.perf_counter()
                size = len(dumps(build(controller)))
                times.append(time.perf_counter() - started)
            builds[name] = {"build_ms_median": round(1000 * statistics.median(times), 2),
                            "bytes": size}
        assert app.api_port is not None
        await asyncio.sleep(5.0)  # past the connection storm: boots, statuses, first setpoints
        await run_load(app.api_port, "/api/v1/site", "identity", clients, 1.0)  # warm-up
        results = []
        events_before = controller.counters["events"]
        started = time.monotonic()
        for path in paths:
            for encoding in ("identity", "gzip"):
                results.append(await run_load(app.api_port, path, encoding, clients,
                                              duration_s))
        events_per_s = (controller.counters["events"] - events_before) / (
            time.monotonic() - started)
        return {"chargers": count, "connected": info["connected"],
                "in_force": len(controller.in_force()), "clients": clients,
                "controller_events_per_s": round(events_per_s, 1), "views": builds,
                "endpoints": results}
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        await proc.wait()
        await app.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chargers", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--duration", type=float, default=10.0,
                        help="seconds of load per endpoint")
    parser.add_argument("--paths", default=",".join(PATHS),
                        help="comma-separated paths to load, one after the other")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--load", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--path", default=PATHS[0], help=argparse.SUPPRESS)
    parser.add_argument("--encoding", default="identity", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load is not None:
        print(json.dumps(asyncio.run(load(args.load, args.path, args.encoding, args.clients,
                                          args.duration))))
        return
    result = asyncio.run(run(args.chargers, args.clients, args.duration,
                             tuple(args.paths.split(","))))
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{result['chargers']} chargers ({result['connected']} connected, "
          f"{result['in_force']} setpoints in force), {result['clients']} concurrent "
          f"clients, controller folding {result['controller_events_per_s']} events/s")
    for name, view in result["views"].items():
        print(f"  {name} view: {view['bytes']:,} bytes, built in "
              f"{view['build_ms_median']} ms (median, uncached)")
    for r in result["endpoints"]:
        print(f"  GET {r['path']} ({r['encoding']}): {r['requests']:,} requests in "
              f"{r['seconds']} s = "
              f"{r['per_s']}/s, p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, max "
              f"{r['max_ms']} ms, {r['errors']} errors; CPU: server "
              f"{r['server_cpu']:.0%}, load generator {r['load_generator_cpu']:.0%}")


if __name__ == "__main__":
    main()
