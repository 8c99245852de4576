"""Stopping background tasks: one way for every service that owns some."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import Any

RECANCEL_AFTER_S = 1.0
"""Seconds a cancelled task may take to end (its own clean-up) before it is cancelled
again."""


async def cancel_and_wait(tasks: Iterable[asyncio.Future[Any]], *,
                          swallow_errors: bool = False,
                          absorb: tuple[type[Exception], ...] = ()) -> None:
    """Cancel every task, then wait for each to finish, so nothing it owns outlives the
    caller's stop. ``swallow_errors``: a task that had already failed is not re-raised
    here (its supervisor logged it); otherwise only the cancellation and the errors in
    ``absorb`` are: those a task ends with when its connection goes as it is stopped (a
    reader's ``aiomqtt.MqttError``, websockets' ``ConnectionClosed``), which its owner
    already handles or is about to raise itself."""
    pending = list(tasks)
    for task in pending:
        task.cancel()
    absorbed: tuple[type[BaseException], ...] = (
        (asyncio.CancelledError, Exception) if swallow_errors
        else (asyncio.CancelledError, *absorb))
    for task in pending:
        while not task.done():
            # Python 3.11's asyncio.wait_for returns the result and drops a cancel that
            # lands as its inner future completes (fixed in 3.12); a library built on it
            # (aiomqtt's publish) then carries on, and this stop would wait for ever.
            # A task still running after a grace period is cancelled again.
            await asyncio.wait({task}, timeout=RECANCEL_AFTER_S)
            if not task.done():
                task.cancel()
        with contextlib.suppress(*absorbed):
            await task


def raise_if_cancelled() -> None:
    """Re-raise a cancellation that a library turned into its own error.

    aiomqtt can answer a cancel that lands inside ``async with Client`` (connecting or
    disconnecting) with an ``MqttError``; a reconnect loop that catches it would then retry
    for ever and the ``cancel_and_wait`` of its owner's stop would never return. Call it
    in such an ``except`` before retrying."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError

