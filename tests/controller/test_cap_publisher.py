"""The cap publishing shared by demand response, charge planning and frequency response."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from datetime import UTC, datetime

import pytest

from gridshare.bus import MemoryBus, MemorySubscription
from gridshare.controller.caps import CapPublisher, format_caps
from gridshare.core.topology import ConnectorKey
from gridshare.events import ConnectorCapsChanged, Event

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def published(sub: MemorySubscription) -> list[Event]:
    events = []
    while (event := sub.get_nowait()) is not None:
        events.append(event)
    return events


def test_only_a_changed_set_is_published_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    bus, counters = MemoryBus(), Counter[str]()
    sub = bus.subscribe()
    log = logging.getLogger("test.caps")
    pub = CapPublisher("dr", bus, counters, logger=log,
                       log_format="DR caps: %s")
    with caplog.at_level(logging.INFO, logger="test.caps"):
        assert not pub.publish({}, T0)  # nothing out there yet: nothing to say
        caps = {("c2", 1): 6.5, ("c1", 1): 10.0}
        assert pub.publish(caps, T0)
        caps[("c1", 1)] = 1.0  # the caller's dict is not the one kept
        assert not pub.publish({("c1", 1): 10.0, ("c2", 1): 6.5}, T0)
        assert pub.publish({}, T0)
    assert published(sub) == [ConnectorCapsChanged(T0, "dr", {("c1", 1): 10.0, ("c2", 1): 6.5}),
                          ConnectorCapsChanged(T0, "dr", {})]
    assert counters["caps_published"] == 2
    assert pub.published_at == T0
    assert [r.getMessage() for r in caplog.records] == ["DR caps: c1/1 10 A, c2/1 6.5 A",
                                                        "DR caps: none"]


def test_a_same_enough_predicate_holds_back_small_steps() -> None:
    def within_1a(new: Mapping[ConnectorKey, float], old: Mapping[ConnectorKey, float]) -> bool:
        return new.keys() == old.keys() and all(abs(new[k] - old[k]) <= 1.0 for k in new)

    bus, counters = MemoryBus(), Counter[str]()
    sub = bus.subscribe()
    pub = CapPublisher("frequency", bus, counters, same=within_1a)
    assert pub.publish({("c1", 1): 10.0}, T0)
    assert not pub.publish({("c1", 1): 10.8}, T0)
    assert pub.caps == {("c1", 1): 10.0}
    assert pub.publish({("c1", 1): 8.0}, T0)
    assert [e.caps for e in published(sub) if isinstance(e, ConnectorCapsChanged)] == \
        [{("c1", 1): 10.0}, {("c1", 1): 8.0}]
    assert counters["caps_published"] == 2


def test_lift_withdraws_the_caps_once_without_counting() -> None:
    bus, counters = MemoryBus(), Counter[str]()
    sub = bus.subscribe()
    pub = CapPublisher("frequency", bus, counters)
    pub.lift(T0)
    assert published(sub) == []
    pub.publish({("c1", 1): 8.0}, T0)
    pub.lift(T0)
    pub.lift(T0)
    assert published(sub) == [ConnectorCapsChanged(T0, "frequency", {("c1", 1): 8.0}),
                              ConnectorCapsChanged(T0, "frequency", {})]
    assert pub.caps == {}
    assert counters["caps_published"] == 1


def test_without_a_bus_the_caps_are_still_kept_and_counted() -> None:
    counters = Counter[str]()
    pub = CapPublisher("charge_plan", None, counters)
    assert pub.publish({("c1", 1): 8.0}, T0)
    assert pub.caps == {("c1", 1): 8.0}
    assert counters["caps_published"] == 1


def test_format_caps() -> None:
    assert format_caps({("b", 2): 6.0, ("a", 1): 16.5}) == "a/1 16.5 A, b/2 6 A"
    assert format_caps({}) == "none"
