"""One session on a scripted socket: the order in which a charger's frames take effect,
and the shared writer that puts every session's frames on the wire.

The socket is a fake whose inbound frames are given up front, so what happened by the time
each event is published can be checked exactly, without a network or timing.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gridshare.adapters.ocpp import CentralSystem, CsmsConfig
from gridshare.adapters.ocpp.rpc import FrameWriter, Outgoing, PendingCall
from gridshare.adapters.ocpp.session import Session
from gridshare.drivers import CommandResult, SetpointRequest
from gridshare.events import ChargerBooted, Event, SessionStarted
from gridshare.ocpp_version import OcppVersion

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


class Transport:
    def get_write_buffer_size(self) -> int:
        return 0


class ScriptedSocket:
    """Yields the inbound frames it is fed and records every frame written to it."""

    def __init__(self) -> None:
        self.inbound: asyncio.Queue[str | None] = asyncio.Queue()
        self.written: list[str] = []
        self.transport = Transport()

    async def send(self, frame: str) -> None:
        self.written.append(frame)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.inbound.put_nowait(None)

    def __aiter__(self) -> AsyncIterator[str]:
        return self._frames()

    async def _frames(self) -> AsyncIterator[str]:
        while (frame := await self.inbound.get()) is not None:
            yield frame


class Published(list[tuple[Event, int]]):
    """Events with the number of frames written when each was published; ``hook`` sees
    each one as it comes."""

    def __init__(self, socket: ScriptedSocket) -> None:
        super().__init__()
        self.socket = socket
        self.hook: Callable[[Event], None] = lambda event: None

    def __call__(self, event: Event) -> None:
        self.hook(event)
        self.append((event, len(self.socket.written)))


def start(version: OcppVersion) -> tuple[CentralSystem, Session, ScriptedSocket, Published]:
    """A session of a CentralSystem on a scripted socket."""
    socket = ScriptedSocket()
    published = Published(socket)
    csms = CentralSystem(CsmsConfig(), published, clock=lambda: NOW)
    session = csms.open_session(socket, "CP-1", version)  # type: ignore[arg-type]
    return csms, session, socket, published


async def test_session_started_is_published_after_its_answer_is_written() -> None:
    _, session, socket, published = start(OcppVersion.V16)
    runner = asyncio.create_task(session.run())
    socket.inbound.put_nowait(json.dumps([2, "s1", "StartTransaction", {
        "connectorId": 1, "idTag": "T", "meterStart": 0, "timestamp": "2030-01-01T11:59:00Z"}]))
    socket.inbound.put_nowait(None)
    await runner
    (answer,) = [f for f in socket.written if f.startswith('[3,"s1"')]
    (started, written_before) = next((e, n) for e, n in published
                                     if isinstance(e, SessionStarted))
    assert socket.written.index(answer) < written_before
    assert started.transaction_id == str(json.loads(answer)[2]["transactionId"])


async def test_answer_settles_before_the_boot_behind_it_is_handled() -> None:
    """Five chargers reboot at once in the issue: a boot right behind the CALLRESULT of a
    setpoint must find that setpoint already settled, and be numbered after it."""
    csms, session, socket, published = start(OcppVersion.V201)
    runner = asyncio.create_task(session.run())
    (pending,) = csms.submit_setpoints([SetpointRequest("CP-1", 1, 16, 60)])
    outcome_when_booted: list[bool] = []

    def watch(event: Event) -> None:
        if isinstance(event, ChargerBooted):
            outcome_when_booted.append(asyncio.ensure_future(pending).done())

    published.hook = watch
    await asyncio.sleep(0)  # the writer task writes the call
    (call,) = [json.loads(f) for f in socket.written if f.startswith("[2,")]
    socket.inbound.put_nowait(json.dumps([3, call[1], {"status": "Accepted"}]))
    socket.inbound.put_nowait(json.dumps([2, "b", "BootNotification", {
        "chargingStation": {"model": "M", "vendorName": "V"}, "reason": "PowerUp"}]))
    socket.inbound.put_nowait(None)
    await runner
    outcome = await pending
    booted = next(e for e, _ in published if isinstance(e, ChargerBooted))
    assert outcome_when_booted == [True]
    assert outcome.result is CommandResult.ACCEPTED
    assert outcome.answer_seq == 1 and booted.frame_seq == 2


async def test_unwritten_call_is_offline_written_one_lost() -> None:
    """A link that drops before our frame reached the socket cannot have applied it."""
    csms, session, socket, _ = start(OcppVersion.V16)
    runner = asyncio.create_task(session.run())
    (never_written,) = csms.submit_setpoints([SetpointRequest("CP-1", 1, 16, 60)])
    socket.inbound.put_nowait(None)  # closes before the writer task ran
    await runner
    outcome = await never_written
    assert outcome.result is CommandResult.OFFLINE and not outcome.sent

    _, session, socket, _ = start(OcppVersion.V16)
    runner = asyncio.create_task(session.run())
    future = session.submit(session.setpoint_command(1, 16, 60))
    await asyncio.sleep(0)
    assert socket.written
    socket.inbound.put_nowait(None)
    await runner
    lost = await future
    assert lost.result is CommandResult.LOST and lost.sent
    assert lost.valid_to == datetime(2030, 1, 1, 12, 1, tzinfo=UTC)


class Outlet:
    """A connection as the shared writer sees it."""

    def __init__(self, name: str, written: list[str], *, backed_up: bool = False,
                 broken: bool = False) -> None:
        self.name = name
        self.outbox: deque[Outgoing] = deque()
        self.draining = False
        self.written = written
        self.is_backed_up = backed_up
        self.broken = broken
        self.drains_spawned = 0

    async def send_now(self, frame: str) -> None:
        if self.broken:
            raise RuntimeError("socket in a state nobody expected")
        self.written.append(frame)

    def backed_up(self) -> bool:
        return self.is_backed_up

    def spawn_drain(self) -> None:
        self.draining = True
        self.drains_spawned += 1


async def test_writer_serves_every_connection_in_one_pass() -> None:
    """One task writes the batch; a backed-up socket drains on its own and a broken one
    loses only its own frames (its calls will time out)."""
    written: list[str] = []
    tasks: list[asyncio.Task[Any]] = []

    def spawn(coro: Any, name: str) -> asyncio.Task[Any]:
        tasks.append(asyncio.create_task(coro, name=name))
        return tasks[-1]

    writer = FrameWriter(spawn)
    outlets = [Outlet("a", written), Outlet("slow", written, backed_up=True),
               Outlet("bad", written, broken=True), Outlet("b", written)]
    for outlet in outlets:
        call = PendingCall(outlet.name, "SetChargingProfile", 0.0)
        outlet.outbox.extend([(f"{outlet.name}-1", call), (f"{outlet.name}-2", None)])
        writer.ready(outlet)
    assert len(tasks) == 1 and written == []  # nothing written before the next loop pass
    await tasks[0]
    assert written == ["a-1", "a-2", "b-1", "b-2"]
    slow, bad = outlets[1], outlets[2]
    assert slow.drains_spawned == 1 and len(slow.outbox) == 2
    assert bad.outbox == deque()
    writer.ready(outlets[0])
    assert len(tasks) == 2  # a new pass gets a new task once the last one is done
    await tasks[1]


Op = tuple[str, int, int]
"""("submit", connector) | ("answer", 0 accepted / 1 refused / 2 CallError) | ("close", 0),
then how many event-loop passes run before the next step (0: the next step races it)."""

ops = st.lists(st.tuples(st.sampled_from(["submit", "answer", "close"]), st.integers(0, 2),
                         st.integers(0, 3)), max_size=25)


def limit_of(frame: list[Any]) -> float:
    schedule = frame[3]["csChargingProfiles"]["chargingSchedule"]
    return float(schedule["chargingSchedulePeriod"][0]["limit"])


@settings(max_examples=300, deadline=None)
@given(script=ops)
def test_every_command_ends_in_the_outcome_its_frames_allow(script: list[Op]) -> None:
    """Model test of one charger's command queue: whatever the order of submits, answers
    and a dropped link, each command gets exactly one outcome and it matches the wire —
    SUPERSEDED and OFFLINE only if its frame never left, LOST only if it did and had no
    answer, ACCEPTED/REJECTED only for an answered frame — and never two calls in flight."""
    asyncio.run(_run_script(script))


async def _run_script(script: list[Op]) -> None:
    csms, session, socket, _ = start(OcppVersion.V16)
    runner = asyncio.create_task(session.run())
    futures: dict[float, asyncio.Future[Any]] = {}
    answered: set[str] = set()
    closed = False
    for index, (op, arg, passes) in enumerate(script):
        calls = [json.loads(f) for f in socket.written if f.startswith("[2,")]
        if op == "submit":
            amps = 6.0 + index  # unique per command: the frame says which command it is
            (future,) = csms.submit_setpoints([SetpointRequest("CP-1", arg + 1, amps, 60)])
            futures[amps] = asyncio.ensure_future(future)
        elif op == "answer" and not closed:
            open_calls = [c for c in calls if c[1] not in answered]
            if open_calls:
                uid = open_calls[0][1]
                answered.add(uid)
                socket.inbound.put_nowait(json.dumps(
                    [4, uid, "GenericError", "no", {}] if arg == 2
                    else [3, uid, {"status": ("Accepted", "Rejected")[arg]}]))
        elif op == "close" and not closed:
            closed = True
            socket.inbound.put_nowait(None)
        for _ in range(passes):  # the receive loop and the writer each take a loop pass
            await asyncio.sleep(0)
        calls = [json.loads(f) for f in socket.written if f.startswith("[2,")]
        assert len([c for c in calls if c[1] not in answered]) <= 1 or closed
    if not closed:
        socket.inbound.put_nowait(None)
    await runner
    calls = [json.loads(f) for f in socket.written if f.startswith("[2,")]
    written = {limit_of(c): c[1] for c in calls}
    assert len(written) == len(calls)  # no command is ever sent twice
    for amps, future in futures.items():
        assert future.done()
        outcome = future.result()
        uid = written.get(amps)
        if outcome.result in (CommandResult.SUPERSEDED, CommandResult.OFFLINE):
            assert uid is None and not outcome.sent
        elif outcome.result is CommandResult.LOST:
            assert uid is not None and uid not in answered and outcome.unknown
        else:
            assert outcome.result in (CommandResult.ACCEPTED, CommandResult.REJECTED)
            assert uid is not None and uid in answered and outcome.answer_seq is not None
