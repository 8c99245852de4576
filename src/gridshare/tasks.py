"""Stopping background tasks: one way for every service that owns some."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import Any


async def cancel_and_wait(tasks: Iterable[asyncio.Future[Any]], *,
                          swallow_errors: bool = False) -> None:
    """Cancel every task, then wait for each to finish, so nothing it owns outlives the
    caller's stop. ``swallow_errors``: a task that had already failed is not re-raised
    here (its supervisor logged it); otherwise only the cancellation is absorbed."""
    pending = list(tasks)
    for task in pending:
        task.cancel()
    absorbed: tuple[type[BaseException], ...] = (
        (asyncio.CancelledError, Exception) if swallow_errors else (asyncio.CancelledError,))
    for task in pending:
        with contextlib.suppress(*absorbed):
            await task
