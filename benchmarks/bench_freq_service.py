"""Time the live frequency service: one sample → every unit's setpoint handed out.

500 units by default: half V2X chargers behind a fake CSMS whose every setpoint answers
after a random round trip (``--rtt-ms``, ±50 %: a charger on a LAN or a cellular link),
half batteries on a real mosquitto spawned on a free port (their setpoints published QoS 1
by the service's MQTT link and read back by a subscriber). Samples alternate between
nominal and a deep dip (every unit's setpoint changes at every step). Per sample:

- **handle**: ``FrequencyService.on_sample`` — the core's decision, the guards, and every
  setpoint handed to its driver (goal ≤ 20 ms);
- **last written**: from the sample until the last V2X setpoint was answered and the last
  battery setpoint was read back from the broker (goal ≤ 500 ms).

    python benchmarks/bench_freq_service.py [--units 500] [--samples 60] [--rtt-ms 60]
        [--gc-freeze] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import platform
import random
import resource
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import aiomqtt

from gridshare.adapters.frequency.mqtt import FrequencyMqtt
from gridshare.clock import SystemClock
from gridshare.config import parse_site_config
from gridshare.controller.frequency import FrequencyOptions, FrequencyService, soc_topics
from gridshare.controller.state import SessionInfo
from gridshare.core.snapshot import PhaseCurrents
from gridshare.core.topology import ConnectorKey
from gridshare.drivers import CommandOutcome, CommandResult

MOSQUITTO = "/usr/sbin/mosquitto"


def site_text(units: int, port: int) -> str:
    chargers = units // 2
    batteries = units - chargers
    lines = [f'site: bench\nmqtt: {{url: "mqtt://127.0.0.1:{port}", client_id: bench}}',
             "frequency_response:", "  nominal_hz: 50", "  deadband_mhz: 20",
             "  full_activation_mhz: 200", "  safety_window_hz: [49.5, 50.5]",
             '  source: {mqtt_topic: "gridshare/<site>/grid/frequency"}', "  units:"]
    for i in range(chargers):
        lines.append(f"    - {{charger: v{i}, max_discharge_kw: 11, max_charge_kw: 11, "
                     f"capacity_kwh: 60, min_soc: {20 + i % 30}}}")
    for i in range(batteries):
        lines.append(f"    - {{battery: b{i}, max_discharge_kw: {20 + i % 30}, "
                     f"max_charge_kw: 20, capacity_kwh: 100, min_soc: 10, "
                     f'setpoint_topic: "bench/b{i}/setpoint", soc_topic: "bench/b{i}/soc"}}')
    lines.append("groups:")
    per = 25
    for g in range(0, chargers, per):
        ids = ", ".join(f"v{i}" for i in range(g, min(chargers, g + per)))
        lines.append(f"  - {{id: g{g // per}, max_current: 4000, chargers: [{ids}]}}")
    lines.append("chargers:")
    for i in range(chargers):
        lines.append(f"  - {{id: v{i}, max_current: 16, phases: 3, v2x: true}}")
    return "\n".join(lines) + "\n"


class View:
    """Every car plugged in, online, at 10 A, SoC 80 % (the controller's state view)."""

    def online(self, charger_id: str) -> bool:
        return True

    def active(self, key: ConnectorKey) -> bool:
        return True

    def in_force_a(self, key: ConnectorKey, now: object) -> float | None:
        return 10.0

    def session_info(self, key: ConnectorKey) -> SessionInfo:
        return SessionInfo("tx", None, None, None, None, 80.0, None, None)

    def live_reading(self, key: ConnectorKey) -> tuple[float | None, float | None]:
        return None, 80.0

    def v2x_offer(self, key: ConnectorKey) -> None:
        return None

    def measured_a(self, key: ConnectorKey, now: object) -> PhaseCurrents | None:
        return None


class FakeCsms:
    """V2X chargers answering each setpoint after ``rtt_s`` ±50 %."""

    def __init__(self, rtt_s: float, seed: int = 1) -> None:
        self.rtt_s = rtt_s
        self.rng = random.Random(seed)
        self.done: list[float] = []

    def v2x_capable(self, charger: str) -> bool:
        return True

    async def send_v2x_setpoint(self, charger: str, connector: int, setpoint_w: float,
                                *, valid_s: float) -> CommandOutcome:
        await asyncio.sleep(self.rtt_s * self.rng.uniform(0.5, 1.5))
        self.done.append(time.perf_counter())
        return CommandOutcome(CommandResult.ACCEPTED)

    async def send_v2x_local_frequency(self, charger: str, connector: int,
                                       curve: Sequence[tuple[float, float]],
                                       *, valid_s: float) -> CommandOutcome:
        return CommandOutcome(CommandResult.ACCEPTED)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def spawn_mosquitto(workdir: Path):  # type: ignore[no-untyped-def]
    port = free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n"
                    f"max_queued_messages 100000\n")
    proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port),
                                                                        0.2):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("mosquitto did not start")
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(5)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


async def run(args: argparse.Namespace, port: int) -> dict[str, object]:
    config = parse_site_config(site_text(args.units, port), "bench.yaml")
    spec = config.frequency_response
    assert spec is not None and config.mqtt is not None
    link = FrequencyMqtt(config.mqtt, "gridshare/bench/grid/frequency", soc_topics(spec))
    csms = FakeCsms(args.rtt_ms / 1000.0)
    svc = FrequencyService(spec, config.topology, SystemClock(), bus=None,
                           state_view=View(), v2x=csms, batteries=link,
                           options=FrequencyOptions(tick_s=None))
    link.attach(svc)
    batteries = [u for u in spec.units if u.battery is not None]
    got: list[float] = []
    async with aiomqtt.Client("127.0.0.1", port, identifier="bench-reader",
                              max_queued_incoming_messages=None) as reader:
        await reader.subscribe("bench/+/setpoint", qos=1)

        async def read() -> None:
            async for _ in reader.messages:
                got.append(time.perf_counter())

        reading = asyncio.create_task(read())
        await link.start()
        while not link.connected:  # noqa: ASYNC110 (polling is what is timed)
            await asyncio.sleep(0.01)

        async def soc() -> None:
            """Every battery's SoC through the broker, every 5 s (older than 60 s it
            would count as unknown and the battery would no longer discharge)."""
            while True:
                for u in batteries:
                    assert u.soc_topic is not None
                    await reader.publish(u.soc_topic, b"80", qos=1)
                await asyncio.sleep(5.0)

        socs = asyncio.create_task(soc())
        while sum(1 for u in svc.units.values() if u.soc_pct == 80.0) < len(batteries):  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        if args.gc_freeze:
            gc.collect()
            gc.freeze()
        handle_ms: list[float] = []
        written_ms: list[float] = []
        v2x_ms: list[float] = []
        battery_ms: list[float] = []
        chargers = len(spec.units) - len(batteries)
        for k in range(args.samples + 1):
            hz = 49.8 if k % 2 else 50.0
            csms.done.clear()
            got.clear()
            t0 = time.perf_counter()
            svc.on_sample(None, hz)
            t1 = time.perf_counter()
            deadline = t0 + 10
            while (len(csms.done) < chargers or len(got) < len(batteries)) and \
                    time.perf_counter() < deadline:  # noqa: ASYNC110 (1 ms polling)
                await asyncio.sleep(0.001)
            if len(csms.done) < chargers or len(got) < len(batteries):
                raise RuntimeError(f"sample {k}: {len(csms.done)}/{chargers} V2X and "
                                   f"{len(got)}/{len(batteries)} battery setpoints in 10 s")
            if k == 0:
                continue  # the first sets every unit's first setpoint: warm-up
            handle_ms.append((t1 - t0) * 1000)
            v2x_ms.append((max(csms.done) - t0) * 1000)
            battery_ms.append((max(got) - t0) * 1000)
            written_ms.append(max(v2x_ms[-1], battery_ms[-1]))
            await asyncio.sleep(0.05)
        reading.cancel()
        socs.cancel()
        await link.stop()
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "units": args.units, "v2x_chargers": chargers, "batteries": len(batteries),
        "samples": len(handle_ms), "rtt_ms": args.rtt_ms, "gc_freeze": args.gc_freeze,
        "machine": platform.machine(),
        "python": platform.python_version(),
        "handle_p50_ms": round(statistics.median(handle_ms), 2),
        "handle_p99_ms": round(pct(handle_ms, 0.99), 2),
        "last_written_p50_ms": round(statistics.median(written_ms), 1),
        "last_written_p99_ms": round(pct(written_ms, 0.99), 1),
        "v2x_last_answer_p99_ms": round(pct(v2x_ms, 0.99), 1),
        "battery_last_read_back_p99_ms": round(pct(battery_ms, 0.99), 1),
        "setpoints_per_s": round(args.units * len(written_ms) / (sum(written_ms) / 1000)),
        "max_rss_mb": round(rss_mb, 1), "goal_handle_p99_ms": 20.0,
        "goal_last_written_p99_ms": 500.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--units", type=int, default=500)
    parser.add_argument("--samples", type=int, default=60)
    parser.add_argument("--rtt-ms", type=float, default=60.0)
    parser.add_argument("--gc-freeze", action="store_true",
                        help="gc.freeze() after set-up: full collections then skip what was "
                        "alive at start (without it, a full collection of the whole heap "
                        "is most of the p99)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, spawn_mosquitto(Path(tmp)) as port:
        result = asyncio.run(run(args, port))
    if args.json:
        print(json.dumps(result))
        return
    print(f"frequency service: {result['units']} units ({result['v2x_chargers']} V2X "
          f"chargers, rtt {args.rtt_ms:g} ms ±50 %; {result['batteries']} MQTT batteries on "
          f"mosquitto), {result['samples']} samples, python {result['python']}"
          f"{', gc frozen after set-up' if args.gc_freeze else ''}")
    print(f"  handle sample (core + hand out): p50 {result['handle_p50_ms']} ms, "
          f"p99 {result['handle_p99_ms']} ms (goal ≤ 20 ms)")
    print(f"  sample -> last setpoint written: p50 {result['last_written_p50_ms']} ms, "
          f"p99 {result['last_written_p99_ms']} ms (goal ≤ 500 ms; V2X p99 "
          f"{result['v2x_last_answer_p99_ms']} ms, batteries read back p99 "
          f"{result['battery_last_read_back_p99_ms']} ms)")
    print(f"  throughput {result['setpoints_per_s']} setpoints/s, max RSS "
          f"{result['max_rss_mb']} MB")


if __name__ == "__main__":
    main()
