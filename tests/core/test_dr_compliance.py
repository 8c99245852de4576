"""Compliance tracking with fake times: met, not met and escalated, verdicts, persistence."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gridshare.core.dr.compliance import (
    MAX_SAMPLES,
    ComplianceRecord,
    ComplianceTracker,
)

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def tracker(target: float = 90.0, baseline: float = 500.0) -> ComplianceTracker:
    t = ComplianceTracker("sig-1", target, confirm_within_s=30.0, tolerance_kw=0.5)
    t.start(baseline, T0)
    return t


def test_met_within_time() -> None:
    t = tracker()
    assert t.observe(480, at(2)) is None
    assert t.observe(430, at(8)) is None
    assert t.observe(409.6, at(12)) is None  # 90.4 kW: within the 0.5 kW tolerance
    assert t.record.met_at == at(12) and t.record.escalations == 0
    assert t.record.achieved_kw() == pytest.approx(90.4)
    assert t.observe(405, at(60)) is None  # stays met: no escalation
    record = t.finish(at(3600))
    assert record.verdict == "met" and record.finished_at == at(3600)
    assert record.extra_kw == 0


def test_not_met_escalates_after_confirm_within_then_again() -> None:
    t = tracker()
    assert t.observe(450, at(10)) is None
    assert t.observe(450, at(29.9)) is None
    first = t.observe(450, at(30))  # 50 of 90 kW after 30 s
    assert first is not None
    assert (first.extra_kw, first.number, first.total_extra_kw, first.at) == (40, 1, 40, at(30))
    assert "50.0 kW of 90.0 kW" in first.reason and "escalation 1" in first.reason
    assert t.record.escalations == 1 and t.record.extra_kw == 40
    # the next one waits another confirm_within_s from the escalation
    assert t.observe(430, at(45)) is None
    assert t.observe(430, at(59.9)) is None
    second = t.observe(430, at(60))
    assert second is not None
    assert (second.extra_kw, second.number, second.total_extra_kw) == (20, 2, 60)
    assert t.record.escalations == 2 and t.record.extra_kw == 60
    assert t.finish(at(61)).verdict == "not met"


def test_met_late_after_an_escalation() -> None:
    t = tracker()
    assert t.observe(460, at(31)) is not None
    assert t.observe(405, at(40)) is None
    assert t.record.met_at == at(40)
    assert t.finish(at(100)).verdict == "met"


def test_falling_back_restarts_the_clock_and_a_long_lapse_fails_the_verdict() -> None:
    t = tracker()
    t.observe(400, at(5))
    assert t.record.met_at == at(5) and t.record.unmet_since is None
    assert t.observe(450, at(100)) is None  # not met again: a new 30 s window
    assert t.record.unmet_since == at(100)
    assert t.observe(450, at(129)) is None
    escalation = t.observe(450, at(130))
    assert escalation is not None and escalation.number == 1
    # ended while still short, for longer than confirm_within: not met
    assert t.finish(at(140)).verdict == "not met"


def test_a_short_lapse_at_the_end_keeps_met() -> None:
    t = tracker()
    t.observe(400, at(5))
    t.observe(450, at(100))
    assert t.finish(at(110)).verdict == "met"


def test_never_met_and_never_observed() -> None:
    t = tracker()
    t.observe(499, at(5))
    assert t.finish(at(10)).verdict == "not met"
    silent = tracker()
    assert silent.finish(at(60)).verdict == "not met"
    assert silent.record.achieved_kw() is None


def test_nothing_before_start_or_after_finish() -> None:
    t = ComplianceTracker("s", 10)
    assert not t.started
    assert t.observe(0, at(100)) is None
    assert t.record.samples == [] and t.record.verdict == "pending"
    t.start(100, at(0))
    t.finish(at(10))
    assert t.observe(0, at(11)) is None and t.record.samples == []
    assert t.finish(at(20)).finished_at == at(10)  # the first finish stands


def test_samples_are_bounded_one_a_second() -> None:
    t = tracker()
    t.observe(480, at(1.0))
    t.observe(470, at(1.5))  # replaces the previous sample, less than a second later
    assert t.record.samples == [(at(1.5), 470)]
    for i in range(MAX_SAMPLES + 100):
        t.observe(400, at(3 + i))
    assert len(t.record.samples) == MAX_SAMPLES
    assert t.record.samples[-1][0] == at(3 + MAX_SAMPLES + 99)


def test_record_round_trip_and_resume_after_restart() -> None:
    t = tracker()
    t.observe(450, at(10))
    t.observe(450, at(30))
    data = json.loads(json.dumps(t.record.to_json()))
    assert data["achieved_kw"] == 50 and data["verdict"] == "pending"
    assert data["started_at"] == "2026-11-30T12:00:00Z"
    record = ComplianceRecord.from_json(data)
    assert record == t.record
    resumed = ComplianceTracker.from_record(record, confirm_within_s=30.0)
    assert resumed.started
    assert resumed.observe(450, at(59)) is None  # the escalation clock survived
    second = resumed.observe(450, at(60))
    assert second is not None and second.number == 2


@pytest.mark.parametrize("data", [
    {"target_kw": 1}, {"signal_id": "s", "target_kw": "many"},
    {"signal_id": "s", "target_kw": 1, "verdict": "maybe"},
    {"signal_id": "s", "target_kw": 1, "met_at": "soon"},
])
def test_a_damaged_record_is_refused(data: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="not a compliance record"):
        ComplianceRecord.from_json(data)


@given(st.lists(st.tuples(st.floats(0.1, 20), st.floats(0, 600)), max_size=60),
       st.floats(1, 300))
def test_escalations_never_closer_than_confirm_within(steps: list[tuple[float, float]],
                                                      target: float) -> None:
    t = tracker(target=target, baseline=600)
    now = 0.0
    last: float | None = None
    for gap, zone_kw in steps:
        now += gap
        escalation = t.observe(zone_kw, at(now))
        if escalation is not None:
            assert escalation.extra_kw > 0
            assert now >= 30 and (last is None or now - last >= 30)
            assert not t.met(zone_kw)
            last = now
    assert t.record.extra_kw >= 0
    assert t.finish(at(now + 1)).verdict in ("met", "not met")
