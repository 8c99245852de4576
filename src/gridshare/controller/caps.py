"""One way for a service to publish its per-connector caps to the controller.

Demand response, charge planning and frequency response each own one cap source: every
pass they compute the whole set of caps and publish it only when it changed, as one
``ConnectorCapsChanged`` (the controller folds each source's latest set). This keeps the
"changed?" test, the ``caps_published`` counter and the log line in one place.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping
from datetime import datetime

from gridshare.bus import Bus
from gridshare.core.topology import ConnectorKey
from gridshare.events import ConnectorCapsChanged

Caps = Mapping[ConnectorKey, float]
SameCaps = Callable[[Caps, Caps], bool]
"""``(new, last published) -> True`` when the new caps are not worth publishing."""


def format_caps(caps: Caps) -> str:
    """``c1/1 10 A, c2/1 6.5 A`` (sorted), or ``none``: for log lines."""
    return ", ".join(f"{k[0]}/{k[1]} {a:g} A" for k, a in sorted(caps.items())) or "none"


class CapPublisher:
    """The caps one source last published, and the publishing of a new set.

    ``same`` decides whether a new set differs enough from the last one to be published
    (default: equality); ``log_format`` (one ``%s`` for the caps) logs every published set
    on ``logger``. Without a bus the caps are still kept and counted (tests, dry runs).
    """

    def __init__(self, source: str, bus: Bus | None, counters: Counter[str], *,
                 same: SameCaps | None = None, logger: logging.Logger | None = None,
                 log_format: str | None = None) -> None:
        self.source = source
        self._bus = bus
        self._counters = counters
        self._same: SameCaps = same if same is not None else _equal
        self._log = logger
        self._log_format = log_format
        self.caps: dict[ConnectorKey, float] = {}
        """The caps last published (A per phase); read it, do not change it."""
        self.published_at: datetime | None = None

    def publish(self, caps: Mapping[ConnectorKey, float], at: datetime) -> bool:
        """Publish ``caps`` (the whole set from this source) if they differ from the last
        ones; True when they went out."""
        if self._same(caps, self.caps):
            return False
        self.caps = dict(caps)
        self.published_at = at
        self._counters["caps_published"] += 1
        if self._bus is not None:
            self._bus.publish(ConnectorCapsChanged(at, self.source, dict(caps)))
        if self._log is not None and self._log_format is not None:
            self._log.info(self._log_format, format_caps(caps))
        return True

    def lift(self, at: datetime) -> None:
        """On stop: withdraw every cap of this source (an empty set), if any is out there.
        Not counted as a publication (the service is going away) and not logged."""
        if self.caps and self._bus is not None:
            self.caps = {}
            self._bus.publish(ConnectorCapsChanged(at, self.source, {}))


def _equal(new: Caps, old: Caps) -> bool:
    return new == old
