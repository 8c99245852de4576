"""Compliance: did the zone's metered draw fall by the target, and what to do if not.

One tracker per event, pure (``now`` passed in). The baseline is the zone's draw when
the event started; each meter observation compares the reduction with the target. Not
met for ``confirm_within_s`` (after the start, or after the last escalation, or since it
stopped being met) escalates once: the caller sheds the shortfall on top of the target
and alerts; the clock for the next escalation starts then.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from gridshare.core.dr.signals import iso, parse_time

MAX_SAMPLES = 3600
"""Samples kept per record (an hour at one a second); older ones are dropped."""
SAMPLE_SPACING_S = 1.0
"""Samples closer than this replace the previous one (a burst of meter values)."""

PENDING, MET, NOT_MET = "pending", "met", "not met"


@dataclass(frozen=True, slots=True)
class Escalation:
    """The target was not met in time: shed ``extra_kw`` more and raise an alert."""

    extra_kw: float
    """This escalation's shortfall (target minus the reduction achieved)."""
    reason: str
    at: datetime
    number: int
    """1 for the first escalation of the event, 2 for the second..."""
    total_extra_kw: float
    """Every escalation's shortfall so far: the caller sheds target + this."""


@dataclass
class ComplianceRecord:
    """What an event achieved, kept with the event (and persisted)."""

    signal_id: str
    target_kw: float
    baseline_kw: float | None = None
    """The zone's draw when the event started."""
    started_at: datetime | None = None
    samples: list[tuple[datetime, float]] = field(default_factory=list)
    """(at, zone kW): at most one a second, the last ``MAX_SAMPLES``."""
    met_at: datetime | None = None
    """First time the reduction reached the target (within the tolerance)."""
    escalations: int = 0
    extra_kw: float = 0.0
    verdict: str = PENDING
    """pending | met | not met"""
    unmet_since: datetime | None = None
    """Start of the current stretch without compliance (None: met now, or not started)."""
    escalated_at: datetime | None = None
    """The last escalation: the next one waits confirm_within_s from here."""
    finished_at: datetime | None = None

    def achieved_kw(self) -> float | None:
        """The reduction at the last sample (baseline minus the zone's draw), or None."""
        if self.baseline_kw is None or not self.samples:
            return None
        return self.baseline_kw - self.samples[-1][1]

    def to_json(self) -> dict[str, Any]:
        return {
            "signal_id": self.signal_id, "target_kw": self.target_kw,
            "baseline_kw": self.baseline_kw, "started_at": _iso(self.started_at),
            "achieved_kw": self.achieved_kw(),
            "samples": [[iso(at), kw] for at, kw in self.samples],
            "met_at": _iso(self.met_at), "escalations": self.escalations,
            "extra_kw": self.extra_kw, "verdict": self.verdict,
            "unmet_since": _iso(self.unmet_since), "escalated_at": _iso(self.escalated_at),
            "finished_at": _iso(self.finished_at),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ComplianceRecord:
        """The record :meth:`to_json` wrote (``achieved_kw`` is derived, not read);
        ValueError when it is not one."""
        try:
            verdict = data.get("verdict", PENDING)
            if verdict not in (PENDING, MET, NOT_MET):
                raise ValueError(f"verdict {verdict!r}")
            baseline = data.get("baseline_kw")
            return cls(
                signal_id=str(data["signal_id"]), target_kw=float(data["target_kw"]),
                baseline_kw=None if baseline is None else float(baseline),
                started_at=_time(data.get("started_at"), "started_at"),
                samples=[(parse_time(at, "samples"), float(kw))
                         for at, kw in data.get("samples", [])][-MAX_SAMPLES:],
                met_at=_time(data.get("met_at"), "met_at"),
                escalations=int(data.get("escalations", 0)),
                extra_kw=float(data.get("extra_kw", 0.0)), verdict=verdict,
                unmet_since=_time(data.get("unmet_since"), "unmet_since"),
                escalated_at=_time(data.get("escalated_at"), "escalated_at"),
                finished_at=_time(data.get("finished_at"), "finished_at"))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a compliance record: {exc}") from exc


def _iso(at: datetime | None) -> str | None:
    return None if at is None else iso(at)


def _time(value: Any, name: str) -> datetime | None:
    return None if value is None else parse_time(value, name)


class ComplianceTracker:
    """Follows one event's reduction from meter observations; says when to escalate."""

    def __init__(self, signal_id: str, target_kw: float, *, confirm_within_s: float = 30.0,
                 tolerance_kw: float = 0.5) -> None:
        self.record = ComplianceRecord(signal_id, target_kw)
        self.confirm_within = timedelta(seconds=confirm_within_s)
        self.tolerance_kw = tolerance_kw

    @classmethod
    def from_record(cls, record: ComplianceRecord, *, confirm_within_s: float = 30.0,
                    tolerance_kw: float = 0.5) -> ComplianceTracker:
        """Resume following a persisted record (after a restart)."""
        tracker = cls(record.signal_id, record.target_kw, confirm_within_s=confirm_within_s,
                      tolerance_kw=tolerance_kw)
        tracker.record = record
        return tracker

    @property
    def started(self) -> bool:
        return self.record.started_at is not None

    def start(self, baseline_kw: float, now: datetime) -> None:
        """The event is in force from ``now``; the zone drew ``baseline_kw`` before it."""
        rec = self.record
        rec.baseline_kw, rec.started_at, rec.unmet_since = baseline_kw, now, now

    def met(self, zone_kw: float) -> bool:
        """Whether a zone draw of ``zone_kw`` meets the target (within the tolerance)."""
        base = self.record.baseline_kw
        return base is not None and \
            base - zone_kw >= self.record.target_kw - self.tolerance_kw

    def observe(self, zone_kw: float, now: datetime) -> Escalation | None:
        """One reading of the zone's draw. Returns an Escalation when the target has not
        been met for ``confirm_within_s``; None otherwise (and before :meth:`start`)."""
        rec = self.record
        if rec.started_at is None or rec.baseline_kw is None or rec.finished_at is not None:
            return None
        self._sample(zone_kw, now)
        if self.met(zone_kw):
            if rec.met_at is None:
                rec.met_at = now
            rec.unmet_since = None
            return None
        if rec.unmet_since is None:
            rec.unmet_since = now
            return None
        since = rec.unmet_since
        if rec.escalated_at is not None and rec.escalated_at > since:
            since = rec.escalated_at
        if now - since < self.confirm_within:
            return None
        shortfall = rec.target_kw - (rec.baseline_kw - zone_kw)
        rec.escalations += 1
        rec.extra_kw += shortfall
        rec.escalated_at = now  # the next escalation waits another confirm_within_s
        return Escalation(
            shortfall, f"{rec.signal_id}: reduction {rec.baseline_kw - zone_kw:.1f} kW of "
                       f"{rec.target_kw:.1f} kW after {self.confirm_within.total_seconds():g} s"
                       f" (escalation {rec.escalations}: shed {shortfall:.1f} kW more)",
            now, rec.escalations, rec.extra_kw)

    def _sample(self, zone_kw: float, now: datetime) -> None:
        samples = self.record.samples
        if samples and (now - samples[-1][0]).total_seconds() < SAMPLE_SPACING_S:
            samples[-1] = (now, zone_kw)
        else:
            samples.append((now, zone_kw))
            if len(samples) > MAX_SAMPLES:
                del samples[:len(samples) - MAX_SAMPLES]

    def finish(self, now: datetime) -> ComplianceRecord:
        """The event is over: the verdict is ``met`` when the target was reached and the
        event did not end in a stretch without it longer than ``confirm_within_s``."""
        rec = self.record
        if rec.finished_at is None:
            rec.finished_at = now
            unmet_too_long = rec.unmet_since is not None and \
                now - rec.unmet_since >= self.confirm_within
            rec.verdict = MET if rec.met_at is not None and not unmet_too_long else NOT_MET
        return rec
