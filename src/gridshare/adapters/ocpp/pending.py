"""Chargers that connect before they are declared in the site file (``ocpp: {pending_unknown:
true}``): what the CSMS remembers of them until an operator adopts one.

A pending charger is answered ``Pending`` at boot, gets no profile and no command, and none
of its events reach the controller: it is never controlled and never counted. All we keep is
what an operator needs to recognise it (id, vendor, model, protocol, where it connects from,
when it was first and last seen, whether it is connected now).

The registry is bounded: an unknown id costs memory without any secret, so past
``max_entries`` the oldest disconnected entry is forgotten, and when every entry is
connected a new unknown id is refused at the handshake.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class PendingCharger:
    """What we know of one undeclared charger."""

    id: str
    protocol: str
    """The OCPP version it speaks (``ocpp1.6``, ``ocpp2.0.1``)."""
    remote: str
    """``host:port`` it connected from (the latest connection)."""
    first_seen: datetime
    last_seen: datetime
    connected: bool
    vendor: str | None = None
    """From its BootNotification (None until it sent one)."""
    model: str | None = None
    boots: int = 0

    def as_json(self) -> dict[str, Any]:
        """The API's shape of a pending charger."""
        return {"id": self.id, "registration": "pending", "vendor": self.vendor,
                "model": self.model, "protocol": self.protocol, "remote_address": self.remote,
                "first_seen": self.first_seen.isoformat(),
                "last_seen": self.last_seen.isoformat(), "connected": self.connected,
                "boots": self.boots}


class PendingRegistry:
    """Undeclared chargers by id, oldest first (see the module docstring)."""

    def __init__(self, max_entries: int = 1000) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, got {max_entries}")
        self.max_entries = max_entries
        self._entries: OrderedDict[str, PendingCharger] = OrderedDict()

    def __contains__(self, charger: object) -> bool:
        return charger in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, charger: str) -> PendingCharger | None:
        return self._entries.get(charger)

    def has_room(self, charger: str) -> bool:
        """Whether ``charger`` may connect as pending: known already, or there is room
        (a disconnected entry can be forgotten to make some)."""
        if charger in self._entries or len(self._entries) < self.max_entries:
            return True
        return any(not p.connected for p in self._entries.values())

    def connected(self, charger: str, protocol: str, remote: str, at: datetime) -> None:
        """A connection of ``charger`` passed the handshake."""
        found = self._entries.get(charger)
        if found is None:
            self._make_room()
            self._entries[charger] = PendingCharger(charger, protocol, remote, at, at, True)
            return
        self._entries[charger] = replace(found, protocol=protocol, remote=remote,
                                         last_seen=max(found.last_seen, at), connected=True)

    def booted(self, charger: str, vendor: str, model: str, at: datetime) -> None:
        found = self._entries.get(charger)
        if found is not None:
            self._entries[charger] = replace(found, vendor=vendor or None, model=model or None,
                                             boots=found.boots + 1,
                                             last_seen=max(found.last_seen, at))

    def seen(self, charger: str, at: datetime) -> None:
        found = self._entries.get(charger)
        if found is not None and at > found.last_seen:
            self._entries[charger] = replace(found, last_seen=at)

    def disconnected(self, charger: str, at: datetime) -> None:
        found = self._entries.get(charger)
        if found is not None:
            self._entries[charger] = replace(found, connected=False,
                                             last_seen=max(found.last_seen, at))

    def forget(self, charger: str) -> PendingCharger | None:
        """Drop ``charger`` (it was declared); returns what was known of it."""
        return self._entries.pop(charger, None)

    def all(self) -> list[PendingCharger]:
        return list(self._entries.values())

    def _make_room(self) -> None:
        while len(self._entries) >= self.max_entries:
            victim = next((cid for cid, p in self._entries.items() if not p.connected), None)
            if victim is None:  # has_room() was checked at the handshake; keep the bound
                self._entries.popitem(last=False)
            else:
                del self._entries[victim]
