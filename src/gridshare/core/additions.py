"""What a new topology adds to the running one, when all it does is add chargers.

Adopting a charger (``POST /api/v1/chargers``) changes the site file and must reach the
controller without a restart, keeping everything it knows of the chargers already there:
their sessions, the commands in flight, the ledger, meters and overrides. That is only
obviously right when nothing that exists changes, so a live change is restricted to pure
additions: the same site, voltage, policy and groups (limits, parents, meters, policies),
every existing charger identical, and new chargers appended to the groups' lists. Anything
else is refused and needs a restart.

Pure: no I/O, no clock.
"""

from __future__ import annotations

from dataclasses import replace

from gridshare.core.topology import Topology


class NotAnAddition(ValueError):
    """The new topology changes something that exists: it cannot be applied live."""


class InDrZone(NotAnAddition):
    """A new charger names a demand-response zone: it takes a restart, not a live change."""


def added_chargers(old: Topology, new: Topology) -> tuple[str, ...]:
    """The ids of the chargers ``new`` adds to ``old``, in ``new``'s order; raise
    :class:`NotAnAddition` naming the first thing it changes otherwise."""
    for name in ("site", "voltage", "policy", "roots", "rotation_interval_s", "resolution_a",
                 "zones"):
        if getattr(old, name) != getattr(new, name):
            raise NotAnAddition(f"{name} changed: {getattr(old, name)!r} -> "
                                f"{getattr(new, name)!r}")
    if set(old.groups) != set(new.groups):
        raise NotAnAddition(f"groups changed: {sorted(set(old.groups) ^ set(new.groups))}")
    missing = [cid for cid in old.chargers if cid not in new.chargers]
    if missing:
        raise NotAnAddition(f"chargers removed: {missing}")
    for cid, charger in old.chargers.items():
        if new.chargers[cid] != charger:
            raise NotAnAddition(f"charger {cid} changed")
    added = tuple(cid for cid in new.chargers if cid not in old.chargers)
    for cid in added:
        zone = new.chargers[cid].zone
        if zone is not None:
            # Demand response splits a zone's reduction from the stations it knew when an
            # event began; a station joining mid-event would be nobody's share.
            raise InDrZone(f"charger {cid} is in demand-response zone {zone}: declare it in "
                           f"the site file and restart gridshare")
    for gid, group in old.groups.items():
        theirs = new.groups[gid]
        kept = tuple(cid for cid in theirs.chargers if cid in old.chargers)
        if replace(theirs, chargers=kept) != group or kept != group.chargers:
            raise NotAnAddition(f"group {gid} changed")
    return added
