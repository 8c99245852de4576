"""The process the crash test kills: writes acknowledged rows until it is killed.

``python crash_writer.py URL FIRST`` starts a store on URL and, for i = FIRST, FIRST+1,
..., writes AMI readings ``crash-<k>`` (k < ROWS_PER_ACK) at second i with ``insert_now``,
then prints ``ack <i>`` (flushed): a line on stdout is the promise that batch i is stored.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime, timedelta

from gridshare.store import Store, ami_readings

ROWS_PER_ACK = 5
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def batch(i: int) -> list[dict[str, object]]:
    at = T0 + timedelta(seconds=i)
    return [{"meter_id": f"crash-{k}", "ts": at, "received_at": at, "power_w": float(i)}
            for k in range(ROWS_PER_ACK)]


async def main(url: str, first: int) -> None:
    store = Store(url)
    await store.start()
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    i = first
    while True:
        await store.insert_now(ami_readings, batch(i))
        sys.stdout.write(f"ack {i}\n")
        sys.stdout.flush()
        i += 1


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
