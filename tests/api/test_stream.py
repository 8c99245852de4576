"""``GET /api/v1/stream`` over a real socket: server-sent events ``site``, ``chargers`` and
``alarm``, an update within a second of a change, at least one a second without one, and a
client that goes away is dropped."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
from waits import eventually

from gridshare.api.stream import StreamHub

from .conftest import AUTH, ApiRig


async def sse_events(response: httpx.Response) -> AsyncIterator[tuple[str, Any]]:
    name, data = "", []
    async for line in response.aiter_lines():
        if line == "":
            if name and data:
                yield name, json.loads("\n".join(data))
            name, data = "", []
        elif line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            data.append(line[6:])


async def wait_for(events: AsyncIterator[tuple[str, Any]], name: str,
                   cond: Callable[[Any], bool], timeout_s: float) -> float:
    """Seconds until an event ``name`` whose data meets ``cond`` arrives."""
    started = time.monotonic()
    async with asyncio.timeout(timeout_s):
        async for got, data in events:
            if got == name and cond(data):
                return time.monotonic() - started
    raise AssertionError("stream ended")


def group(site: dict[str, Any], gid: str) -> dict[str, Any]:
    stack = list(site["groups"])
    while stack:
        g = stack.pop()
        if g["id"] == gid:
            return g  # type: ignore[no-any-return]
        stack.extend(g["children"])
    raise KeyError(gid)


def connector(chargers: dict[str, Any], cid: str) -> dict[str, Any]:
    (ch,) = [c for c in chargers["chargers"] if c["id"] == cid]
    return ch["connectors"][0]  # type: ignore[no-any-return]


async def test_the_stream_delivers_changes_within_a_second(rig: ApiRig) -> None:
    hub = rig.app.api_server.api.state.hub  # type: ignore[union-attr]
    assert isinstance(hub, StreamHub)
    async with rig.client.stream("GET", "/api/v1/stream") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response)
        first = [await anext(events), await anext(events)]
        assert [n for n, _ in first] == ["site", "chargers"]
        assert group(first[0][1], "left")["limit"] == 25

        # Without any change, still at least once a second.
        started = time.monotonic()
        seen = 0
        async with asyncio.timeout(5):
            async for name, _ in events:
                seen += name == "site"
                if time.monotonic() - started >= 2.5:
                    break
        assert seen >= 2

        # An operator's change: the group's new limit within a second.
        changed = time.monotonic()
        r = await rig.client.put("/api/v1/groups/left/limit", json={"max_current": 12},
                                 headers=AUTH)
        assert r.status_code == 200
        await wait_for(events, "site", lambda s: group(s, "left")["limit"] == 12, 1.0)
        assert time.monotonic() - changed < 1.0

        # A car: its connector active, then its setpoint in force.
        changed = time.monotonic()
        rig.plug("e-4")
        await wait_for(events, "chargers", lambda c: connector(c, "e-4")["active"], 1.0)
        assert time.monotonic() - changed < 1.0
        await wait_for(events, "chargers",
                       lambda c: (connector(c, "e-4")["setpoint"] or 0) > 6, 5.0)

        # An alarm: e-5 away (counted at its 6 A failsafe) and its group cut below that.
        await rig.sim.chargers["e-5"].stop()
        await eventually(lambda: not rig.app.controller.state.online("e-5"))
        changed = time.monotonic()
        r = await rig.client.put("/api/v1/groups/right/limit", json={"max_current": 3},
                                 headers=AUTH)
        assert r.status_code == 200
        await wait_for(events, "alarm",
                       lambda a: a["kind"] == "limit" and a["group"] == "right", 2.0)
        assert time.monotonic() - changed < 1.5  # the change, a cycle, its alarm
        assert len(hub.clients) == 1
    # The client went away: the hub drops it.
    await eventually(lambda: not hub.clients, timeout_s=5.0)


async def test_several_clients_each_get_the_change(rig: ApiRig) -> None:
    hub = rig.app.api_server.api.state.hub  # type: ignore[union-attr]
    async with rig.client.stream("GET", "/api/v1/stream") as a, \
            rig.client.stream("GET", "/api/v1/stream") as b:
        ea, eb = sse_events(a), sse_events(b)
        assert (await anext(ea))[0] == "site" and (await anext(eb))[0] == "site"
        assert len(hub.clients) == 2
        r = await rig.client.put("/api/v1/groups/left/limit", json={"max_current": 20},
                                 headers=AUTH)
        assert r.status_code == 200
        for events in (ea, eb):
            await wait_for(events, "site", lambda s: group(s, "left")["limit"] == 20, 1.0)
    await eventually(lambda: not hub.clients, timeout_s=5.0)
