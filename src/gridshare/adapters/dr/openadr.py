"""An OpenADR 2.0b VEN (on ``openleadr``): a utility's VTN events in as DR signals.

The VEN registers with the VTN of ``demand_response.openadr`` (retrying with capped
backoff while the VTN cannot be reached), polls it at the frequency the VTN asks for, and
answers each event with ``optIn`` or ``optOut``:

- The event's zones come from its targets (``targets:`` maps a ``resource_id``,
  ``group_id``, ``party_id`` or ``ven_id`` to a zone), else ``zone:``.
- Its priority is the event descriptor's mapped by ``priorities:`` (e.g. ``{1: 1}``: an
  OpenADR priority-1 event is an emergency), else ``priority:`` (2, economic). The VEN opts
  out of the DR priorities in ``opt_out:`` (e.g. ``[3]``) and applies nothing.
- Its first signal that gridshare understands sets the kW: ``SIMPLE`` (``level``) and
  ``LOAD_CONTROL`` ``x-loadControlLevelOffset`` by ``levels:`` (level -> kW), and
  ``LOAD_DISPATCH`` ``delta`` as kW directly (a negative delta is a reduction). Each
  interval with a reduction is one DR signal (``signal_type:`` CURTAIL or SHED) with id
  ``oadr-<event id>-<modification>-<zone>-<interval>``, so a redelivered event is idempotent.
- Every signal of an event is validated, and checked against the stored ones, before any
  is submitted: an event is applied whole or refused (``optOut``, with the reason logged).
- A cancelled event, or a modified one (the previous version's signals), is ended with a
  RESTORE of its zones at its priority from now on.
- A ``test_event`` is answered ``optIn`` and not applied.

When given ``zone_kw`` (zone id -> its draw now), the VEN offers a TELEMETRY_USAGE report
of each zone's real power (kW) that the VTN may request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from openleadr import OpenADRClient  # type: ignore[import-untyped]

from gridshare.adapters.dr import DrInput
from gridshare.clock import Clock
from gridshare.config import OpenAdrSpec
from gridshare.core.dr.book import DrEvent, SignalConflict, Submitted
from gridshare.core.dr.signals import (
    DrPriority,
    DrSignal,
    SignalInvalid,
    SignalType,
    signal_from_json,
)
from gridshare.tasks import cancel_and_wait

log = logging.getLogger("gridshare.dr.openadr")

OPT_IN, OPT_OUT = "optIn", "optOut"
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 60.0
TARGET_KEYS = ("resource_id", "group_id", "party_id", "ven_id")
LEVEL_SIGNALS = {("SIMPLE", "level"), ("LOAD_CONTROL", "x-loadControlLevelOffset")}
KW_SIGNALS = {("LOAD_DISPATCH", "delta")}


class EventRefused(Exception):
    """An event the VEN opts out of; the message says why."""


@dataclass(frozen=True, slots=True)
class Interval:
    start: datetime
    end: datetime
    kw: float


class OpenAdrVen:
    """One VEN for the site; ``dr`` is the DR service its events go to."""

    def __init__(self, spec: OpenAdrSpec, dr: DrInput, clock: Clock, *,
                 zone_kw: Callable[[str], float | None] | None = None) -> None:
        self.spec = spec
        self._dr = dr
        self._clock = clock
        self._zone_kw = zone_kw
        self._task: asyncio.Task[None] | None = None
        self.client: OpenADRClient | None = None
        self.registered = asyncio.Event()
        self.opted: dict[str, str] = {}
        """OpenADR event id -> the last answer (optIn / optOut)."""
        self.refusals: dict[str, str] = {}
        """OpenADR event id -> why the VEN opted out."""

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Register in the background; never raises because the VTN is away."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="dr-openadr")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait([task])
        client, self.client = self.client, None
        if client is not None:
            await _close(client)
        self.registered.clear()

    def _make_client(self) -> OpenADRClient:
        spec = self.spec
        passphrase = (spec.passphrase_file.read_text(encoding="utf-8").rstrip("\r\n")
                      if spec.passphrase_file is not None else None)
        client = OpenADRClient(
            ven_name=spec.ven_name, vtn_url=spec.vtn_url, ven_id=spec.ven_id,
            cert=_path(spec.cert), key=_path(spec.key), passphrase=passphrase,
            ca_file=_path(spec.ca_file), vtn_fingerprint=spec.vtn_fingerprint,
            show_fingerprint=False, disable_signature=spec.cert is None)
        client.add_handler("on_event", self.on_event)
        client.add_handler("on_update_event", self.on_event)
        if self._zone_kw is not None:
            for zone in sorted(self._zones()):
                client.add_report(
                    callback=_reader(self._zone_kw, zone, self._clock), resource_id=zone,
                    measurement="REAL_POWER", unit="W", scale="k",
                    report_duration=timedelta(hours=1),
                    sampling_rate=timedelta(seconds=self.spec.report_every))
        return client

    def _zones(self) -> set[str]:
        zones = set(self.spec.targets.values())
        if self.spec.zone is not None:
            zones.add(self.spec.zone)
        return zones & set(self._dr.zones)

    async def _run(self) -> None:
        """Register (openleadr's run: query, register, reports, first poll, then it polls by
        itself); a VTN that cannot be reached or refuses is tried again with backoff."""
        backoff = BACKOFF_FIRST
        while True:
            try:
                client = self._make_client()
            except (OSError, UnicodeDecodeError, ValueError) as exc:  # cert, key, passphrase
                log.warning("dr: openadr VEN %s cannot start: %s; retrying in %.0f s",
                            self.spec.ven_name, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            self.client = client
            try:
                await client.run()
            except Exception as exc:
                log.warning("dr: openadr %s: registering failed: %s: %s", self.spec.vtn_url,
                            type(exc).__name__, exc)
            if client.registration_id is not None:
                log.warning("dr: openadr VEN %s registered with %s (ven_id %s)",
                            self.spec.ven_name, self.spec.vtn_url, client.ven_id)
                self.registered.set()
                return  # openleadr's scheduler polls from here on
            log.warning("dr: openadr %s: not registered; retrying in %.0f s",
                        self.spec.vtn_url, backoff)
            await _close(client)
            self.client = None
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)

    # --- events --------------------------------------------------------------------------

    async def on_event(self, event: Mapping[str, Any]) -> str:
        """openleadr's ``on_event``/``on_update_event``: apply the event whole, or opt out."""
        descriptor = event.get("event_descriptor", {})
        event_id = str(descriptor.get("event_id"))
        try:
            answer = self.apply(event)
        except EventRefused as exc:
            log.warning("dr: openadr event %s: opted out: %s", event_id, exc)
            self.refusals[event_id] = str(exc)
            answer = OPT_OUT
        except Exception as exc:  # a bug here must not leave the VTN without an answer
            log.exception("dr: openadr event %s: opted out: it could not be applied",
                          event_id)
            self.refusals[event_id] = f"{type(exc).__name__}: {exc}"
            answer = OPT_OUT
        self.opted[event_id] = answer
        return answer

    def apply(self, event: Mapping[str, Any]) -> str:
        """The answer to ``event``; its signals are submitted when it is ``optIn``.
        Raises :class:`EventRefused` with the reason to opt out."""
        descriptor = event.get("event_descriptor") or {}
        event_id = str(descriptor.get("event_id"))
        modification = int(descriptor.get("modification_number") or 0)
        status = str(descriptor.get("event_status") or "")
        priority = self._priority(descriptor.get("priority"))
        zones = self._event_zones(event)
        now = self._clock.now()
        if status == "cancelled":
            self._end(event_id, now, "cancelled")
            return OPT_IN
        if priority in self.spec.opt_out:
            raise EventRefused(f"priority {int(priority)} ({priority.name.lower()}) is in "
                               "demand_response.openadr.opt_out")
        if descriptor.get("test_event") in (True, "true"):
            log.warning("dr: openadr event %s is a test event: opted in, not applied",
                        event_id)
            return OPT_IN
        intervals = self._intervals(event)
        previous = self._stored(event_id)
        if any(m == modification for m, _ in previous):
            return OPT_IN  # a redelivery: already applied (also after a restart)
        signals = self._signals(event_id, modification, zones, priority, intervals, now)
        self._check_conflicts(signals)
        if previous:
            self._end(event_id, now, f"modified (now modification {modification})")
        created = 0
        for signal in signals:
            outcome, _ = self._dr.submit(signal)
            created += outcome is Submitted.CREATED
        log.warning("dr: openadr event %s (modification %d): %d signal(s) for zone(s) %s, "
                    "%d new", event_id, modification, len(signals), ", ".join(zones), created)
        return OPT_IN

    def _priority(self, raw: Any) -> DrPriority:
        try:
            number = int(raw) if raw is not None else 0
        except (TypeError, ValueError):
            number = 0
        return DrPriority(self.spec.priorities.get(number, self.spec.priority))

    def _event_zones(self, event: Mapping[str, Any]) -> tuple[str, ...]:
        zones: list[str] = []
        for target in _targets(event):
            for key in TARGET_KEYS:
                value = target.get(key)
                for item in value if isinstance(value, list) else [value]:
                    zone = self.spec.targets.get(str(item)) if item is not None else None
                    if zone is not None and zone not in zones:
                        zones.append(zone)
        if not zones and self.spec.zone is not None:
            zones.append(self.spec.zone)
        if not zones:
            raise EventRefused("no zone: none of its targets is in "
                               "demand_response.openadr.targets and no zone: is set")
        return tuple(zones)

    def _intervals(self, event: Mapping[str, Any]) -> list[Interval]:
        signals = event.get("event_signals") or []
        names = []
        for signal in signals:
            kind = (str(signal.get("signal_name")), str(signal.get("signal_type")))
            names.append("/".join(kind))
            if kind in LEVEL_SIGNALS or kind in KW_SIGNALS:
                return self._read_intervals(event, signal, kind in LEVEL_SIGNALS)
        raise EventRefused("no signal gridshare understands (got "
                           f"{', '.join(names) or 'none'}; expected SIMPLE/level, "
                           "LOAD_CONTROL/x-loadControlLevelOffset or LOAD_DISPATCH/delta)")

    def _read_intervals(self, event: Mapping[str, Any], signal: Mapping[str, Any],
                        levels: bool) -> list[Interval]:
        period = event.get("active_period") or {}
        at = period.get("dtstart")
        if not isinstance(at, datetime):
            raise EventRefused("its active period has no start")
        out = []
        for interval in signal.get("intervals") or []:
            start = interval.get("dtstart") if isinstance(interval.get("dtstart"),
                                                         datetime) else at
            duration = interval.get("duration")
            if not isinstance(duration, timedelta) or duration <= timedelta(0):
                raise EventRefused(f"interval {interval.get('uid')}: no positive duration")
            payload = interval.get("signal_payload")
            try:
                value = float(payload)
            except (TypeError, ValueError):
                raise EventRefused(f"interval {interval.get('uid')}: payload {payload!r} is "
                                   "not a number") from None
            if not math.isfinite(value):
                raise EventRefused(f"interval {interval.get('uid')}: payload {value}")
            if levels:
                level = round(value)
                if level == 0:
                    kw = 0.0
                elif level in self.spec.levels:
                    kw = self.spec.levels[level]
                else:
                    raise EventRefused(f"no kW for level {level}: add it to "
                                       "demand_response.openadr.levels")
            else:
                if value > 0:
                    raise EventRefused(f"interval {interval.get('uid')}: a delta of "
                                       f"+{value:g} kW asks for more load, which gridshare "
                                       "does not offer")
                kw = -value
            out.append(Interval(start.astimezone(UTC), (start + duration).astimezone(UTC), kw))
            at = start + duration
        if not any(i.kw > 0 for i in out):
            raise EventRefused("no interval asks for a reduction")
        return out

    def _signals(self, event_id: str, modification: int, zones: Iterable[str],
                 priority: DrPriority, intervals: list[Interval],
                 now: datetime) -> list[DrSignal]:
        """Every signal of the event, validated by the core before any is submitted."""
        out = []
        for zone in zones:
            for i, interval in enumerate(intervals):
                if interval.kw <= 0:
                    continue
                data = {"signal_id": f"oadr-{event_id}-{modification}-{zone}-{i}",
                        "zone_id": zone, "signal_type": self.spec.signal_type,
                        "target_reduction_kw": interval.kw,
                        "start_ts": interval.start.isoformat(),
                        "end_ts": interval.end.isoformat(), "priority": int(priority)}
                try:
                    out.append(signal_from_json(data, zones=self._dr.zones, now=now,
                                                source="openadr"))
                except SignalInvalid as exc:
                    raise EventRefused(f"zone {zone}, interval {i}: {exc}") from None
        return out

    def _check_conflicts(self, signals: list[DrSignal]) -> None:
        for signal in signals:
            for stored in self._dr.events(signal.zone_id):
                if (stored.signal.signal_id == signal.signal_id
                        and not stored.signal.same_content(signal)):
                    raise EventRefused(f"signal {signal.signal_id} is stored with other "
                                       "content")

    def _stored(self, event_id: str) -> list[tuple[int, DrEvent]]:
        """The stored events of an OpenADR event (not its RESTOREs), with their
        modification number: the DR service's book is the memory, so a restart keeps it."""
        prefix = f"oadr-{event_id}-"
        out = []
        for stored in self._dr.events():
            signal = stored.signal
            if (signal.source != "openadr" or not signal.signal_id.startswith(prefix)
                    or signal.signal_type is SignalType.RESTORE):
                continue
            number = signal.signal_id[len(prefix):].split("-", 1)[0]
            if number.isdigit():
                out.append((int(number), stored))
        return out

    def _end(self, event_id: str, now: datetime, why: str) -> None:
        """End what an event put in force or scheduled: a RESTORE of its zone at its
        priority for each of its signals not over yet, at its start or now, whichever is
        later (a RESTORE ends what is in force at its start)."""
        known = {e.signal.signal_id for e in self._dr.events()}
        zones = set()
        for _, stored in self._stored(event_id):
            signal = stored.signal
            restore_id = f"{signal.signal_id}-restore"
            if stored.ends_at() <= now or restore_id in known:
                continue  # over, or a redelivered cancellation
            at = max(now, signal.start_ts)
            restore = DrSignal(restore_id, signal.zone_id, SignalType.RESTORE, 0.0, at,
                               at + timedelta(seconds=1), signal.priority, now, "openadr")
            try:
                self._dr.submit(restore)
            except SignalConflict as exc:
                log.warning("dr: openadr event %s: ending %s failed: %s", event_id,
                            signal.signal_id, exc)
                continue
            zones.add(signal.zone_id)
        if zones:
            log.warning("dr: openadr event %s %s: its signals in zone(s) %s ended", event_id,
                        why, ", ".join(sorted(zones)))

def _targets(event: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    out: list[Mapping[str, Any]] = [t for t in event.get("targets") or []
                                    if isinstance(t, Mapping)]
    by_type = event.get("targets_by_type")
    if isinstance(by_type, Mapping):
        out.append(by_type)
    return out


def _reader(zone_kw: Callable[[str], float | None], zone: str,
            clock: Clock) -> Callable[[], list[tuple[datetime, float]]]:
    """openleadr's report callback: the zone's draw now, or no sample when it is unknown
    (a NaN would make the VTN refuse the whole report)."""

    def read() -> list[tuple[datetime, float]]:
        value = zone_kw(zone)
        if value is None or not math.isfinite(value):
            return []
        return [(clock.now(), float(value))]

    return read


def _path(path: Any) -> str | None:
    return None if path is None else str(path)


async def _close(client: OpenADRClient) -> None:
    """Stop openleadr's scheduler and close its HTTP session, whatever state it is in."""
    with contextlib.suppress(Exception):
        if client.scheduler.running:
            client.scheduler.shutdown(wait=False)
    if client.report_queue_task is not None:
        client.report_queue_task.cancel()
    session = client.client_session
    if session is not None and not session.closed:
        await session.close()
