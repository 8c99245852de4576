"""Demand-response signals in: one path from JSON to the DR service for every input.

The REST API (``POST /api/v1/dr/signals``), the MQTT topic ``gridshare/<site>/dr/signals``,
``gridshare dr send`` (through the API) and the OpenADR VEN all hand the service the same
thing: a signal validated by the pure core (:func:`gridshare.core.dr.signals.signal_from_json`)
against the site's zones, then submitted to the event book, which stores it whole or not at
all. So a signal refused over one input is refused, for the same reason, over every other.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol

from gridshare.core.dr.book import DrEvent, Submitted
from gridshare.core.dr.signals import DrSignal, SignalInvalid, signal_from_json

__all__ = ["DrInput", "SignalInvalid", "submit_json"]


class DrInput(Protocol):
    """What the inputs need of :class:`gridshare.controller.dr.DrService` (a protocol, so
    tests may drive an input with a small fake)."""

    @property
    def zones(self) -> tuple[str, ...]: ...

    def submit(self, signal: DrSignal) -> tuple[Submitted, DrEvent]: ...

    def events(self, zone: str | None = None) -> list[DrEvent]: ...

    def event_json(self, event: DrEvent) -> dict[str, Any]: ...

    def alerts(self) -> list[dict[str, Any]]: ...

    def on_alert(self, callback: Callable[[dict[str, Any]], None]) -> None: ...


def submit_json(dr: DrInput, data: Any, *, now: datetime,
                source: str) -> tuple[Submitted, DrEvent]:
    """Validate ``data`` (the issue's JSON, already decoded) and submit it.

    Raises :class:`SignalInvalid` (naming the field) for a bad signal and
    :class:`~gridshare.core.dr.book.SignalConflict` for a known id with other content; in
    both cases nothing was stored.
    """
    signal = signal_from_json(data, zones=dr.zones, now=now, source=source)
    return dr.submit(signal)
