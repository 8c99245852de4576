"""The exactly-once recorder in one process: a reading delivered twice is one row; the
lease is given up when someone else overwrote it; the CLI refuses roles without NATS."""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from natsserver import NatsServer
from waits import eventually

from gridshare.adapters.nats.bus import NatsBus, NatsBusSettings
from gridshare.adapters.nats.lease import SiteLease
from gridshare.adapters.nats.recorder import ReadingRecorder
from gridshare.events import ChargerOnline, GroupMeterReading, MeterReading, MeterSample

T0 = datetime(2026, 3, 1, 12, tzinfo=UTC)


async def test_redelivered_and_resent_readings_are_one_row(tmp_path: Path,
                                                           nats: NatsServer) -> None:
    # A 1 s duplicate window: the same reading sent again after it is stored twice in the
    # stream, and only the recorder's key keeps it one row.
    bus = NatsBus(nats.url, site="s", settings=NatsBusSettings(duplicate_window_s=1.0))
    recorder = ReadingRecorder(bus, f"sqlite:///{tmp_path / 'r.db'}", controller_id="t")
    await recorder.start()
    try:
        readings = [MeterSample("m-1", T0, (1.0, 2.0, 3.0)),
                    GroupMeterReading("g", T0, (4.0, 5.0, 6.0)),
                    MeterReading("c", 1, T0, power_w=100.0)]
        for item in readings:
            bus.publish(item)
        bus.publish(ChargerOnline("c", T0))  # not a reading: not the recorder's
        await bus.flush(10)
        await eventually(lambda: recorder.recorded == 3)
        await asyncio.sleep(1.5)  # past the duplicate window
        bus.publish(MeterSample("m-1", T0, (9.0, 9.0, 9.0)))  # same meter, same time
        bus.publish(MeterSample("m-1", T0 + timedelta(seconds=1), (1.0, 1.0, 1.0)))
        await bus.flush(10)
        await eventually(lambda: recorder.recorded + recorder.duplicates == 5)
        assert recorder.duplicates == 1 and await recorder.count() == 4
    finally:
        await recorder.stop()
        await bus.close()


async def test_lease_overwritten_is_lost(nats: NatsServer) -> None:
    bus = NatsBus(nats.url, site="s")
    lease = SiteLease(bus, "s", "A", ttl_s=1.5)
    assert await lease.try_acquire()
    kv = await lease._bucket()
    await kv.put("s", b"B intruder")  # an operator (or a bug) handed the site to B
    async with asyncio.timeout(5):
        await lease.lost.wait()
    assert not lease.held
    await lease.release()
    await bus.close()


async def test_roles_need_a_nats_bus(tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text("site: x\ngroups:\n  - {id: g, max_current: 16, chargers: [c]}\n"
                    "chargers:\n  - {id: c, max_current: 16}\n")
    for extra, message in [(["--role", "gateway"], "--role gateway needs a nats:// --bus"),
                           (["--role", "boss"], "--role must be one of all, gateway, "
                                                "controller")]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gridshare", "serve", str(site), *extra,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        _, err = await proc.communicate()
        assert proc.returncode == 2
        assert message in " ".join(err.decode().split()), err.decode()
