"""``python -m gridshare.adapters.telemetry SITE.yaml [--db URL]``: the telemetry ingest
alone, without OCPP or the controller (a dedicated ingest process; the durability test and
the benchmark run it). AMI readings are stored and aggregated as under ``gridshare
serve``; station meter values are validated and counted, but they reach load sharing only
under ``gridshare serve`` (there is no bus here).

Prints ``telemetry ready`` once subscribed, and the ingest counts as one JSON line every
``--report`` seconds (0: never); stops on SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from pathlib import Path

from gridshare.clock import SystemClock
from gridshare.config import ConfigError, load_site_config
from gridshare.controller.telemetry import TelemetryService, station_ratings
from gridshare.store import Store, default_url, normalise_url


async def run(site: Path, db_url: str | None, report_s: float) -> int:
    try:
        config = load_site_config(site)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    if config.mqtt is None:
        print(f"{site}: telemetry needs the site's mqtt: {{url: ...}}", file=sys.stderr)
        return 2
    store = Store(normalise_url(db_url or default_url()))
    await store.start()
    service = TelemetryService(config.topology.site, config.ami_meters,
                               list(config.topology.chargers), config.telemetry,
                               SystemClock(), mqtt=config.mqtt, store=store,
                               station_ratings=station_ratings(config.topology))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    await service.start()
    link = service.link
    assert link is not None
    while not link.connected and not stop.is_set():  # noqa: ASYNC110 (a plain flag)
        await asyncio.sleep(0.02)
    print("telemetry ready", flush=True)
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(report_s if report_s > 0 else None):
                    await stop.wait()
            if report_s > 0:
                print(json.dumps(service.ingest_json(), separators=(",", ":")), flush=True)
    finally:
        await service.stop()
        await store.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gridshare.adapters.telemetry",
                                     description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("site", type=Path)
    parser.add_argument("--db", default=None, help="database URL (default: SQLite under "
                        "$GRIDSHARE_DATA_DIR or ./var)")
    parser.add_argument("--report", type=float, default=0.0,
                        help="seconds between JSON count lines (0: none)")
    args = parser.parse_args(argv)
    return asyncio.run(run(args.site, args.db, args.report))


if __name__ == "__main__":
    sys.exit(main())
