"""Waiting in tests for what no event signals (a simulated car's draw, a broker's message)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


async def eventually(cond: Callable[[], bool], timeout_s: float = 20.0,
                     poll_s: float = 0.02) -> None:
    """Poll ``cond`` until it holds; TimeoutError after ``timeout_s`` (an upper bound for a
    loaded CI machine, not an expectation)."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(poll_s)
