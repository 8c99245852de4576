"""Stopping background tasks (gridshare.tasks): what is absorbed, what is re-raised."""

from __future__ import annotations

import asyncio

import pytest

from gridshare import tasks
from gridshare.tasks import cancel_and_wait


class LinkGone(Exception):
    """A connection's error, as aiomqtt's MqttError or websockets' ConnectionClosed."""


async def reader(started: asyncio.Event, error: type[Exception] | None) -> None:
    """Reads until cancelled; its connection then ends under it with ``error``."""
    started.set()
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        if error is None:
            raise
        raise error("link closed") from None


async def running(error: type[Exception] | None) -> asyncio.Task[None]:
    started = asyncio.Event()
    task = asyncio.create_task(reader(started, error))
    await started.wait()
    return task


async def test_a_cancelled_task_is_waited_for() -> None:
    task = await running(None)
    await cancel_and_wait([task])
    assert task.cancelled()


async def test_an_absorbed_error_on_the_way_out_is_not_raised() -> None:
    task = await running(LinkGone)
    await cancel_and_wait([task], absorb=(LinkGone,))
    assert task.done()


async def test_an_error_not_absorbed_is_raised() -> None:
    task = await running(LinkGone)
    with pytest.raises(LinkGone):
        await cancel_and_wait([task], absorb=(KeyError,))
    task = await running(LinkGone)
    with pytest.raises(LinkGone):
        await cancel_and_wait([task])


async def test_an_error_from_before_the_stop_is_absorbed_too() -> None:
    async def fails() -> None:
        raise LinkGone("broker away")

    task = asyncio.create_task(fails())
    await asyncio.wait({task})
    await cancel_and_wait([task], absorb=(LinkGone,))


async def test_swallow_errors_absorbs_any_error() -> None:
    task = await running(RuntimeError)
    await cancel_and_wait([task], swallow_errors=True)
    assert isinstance(task.exception(), RuntimeError)


async def test_a_dropped_cancel_is_sent_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """As Python 3.11's wait_for can drop a cancel: the task carries on after the first
    one and ends only at the second."""
    monkeypatch.setattr(tasks, "RECANCEL_AFTER_S", 0.01)
    cancels = 0

    async def drops_one() -> None:
        nonlocal cancels
        while True:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancels += 1
                if cancels > 1:
                    raise
                asyncio.current_task().uncancel()  # type: ignore[union-attr]

    task = asyncio.create_task(drops_one())
    await asyncio.sleep(0)
    await cancel_and_wait([task])
    assert task.cancelled()
    assert cancels == 2
