"""Frequency response on the wire: samples in, SoC readings in, battery setpoints out.

Pure functions here (payloads <-> numbers, no I/O); the broker connection is
:mod:`gridshare.adapters.frequency.mqtt`. Number checks are the meters' ones
(:mod:`gridshare.adapters.meters.parse`: finite JSON numbers only, NaN/Infinity refused,
payloads above 1 MiB unread).

Payloads (docs/frequency.md):

- a frequency sample: ``{"ts": T, "hz": F}`` or a bare number ``F`` (then its time is the
  time of receipt). ``T`` is seconds since the Unix epoch (a number) or an ISO 8601 time
  with a UTC offset.
- a battery's state of charge (``soc_topic``): a bare number (%) or ``{"soc": S}``, with
  optional ``"power_kw"`` (what it draws now, + = charging) and ``"ts"``.
- a battery's setpoint (``setpoint_topic``, published by gridshare): ``{"ts", "setpoint_kw",
  "setpoint_w", "valid_s", "valid_until", "mode"}``; + = charging, - = discharging. A
  battery must fall back to its own schedule when ``valid_until`` passes without a newer one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from gridshare.adapters.meters.parse import Rejected, echo, number, parse_json

__all__ = ["Rejected", "SocReading", "iso", "parse_sample", "parse_soc", "setpoint_json",
           "setpoint_payload"]


def _time(value: object) -> float | Rejected:
    """Epoch seconds from a number or an ISO 8601 string with an offset."""
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return Rejected(f"ts: not an ISO 8601 time: {echo(value)}")
        if parsed.tzinfo is None:
            return Rejected(f"ts: no UTC offset: {echo(value)}")
        return parsed.timestamp()
    got = number(value, "ts")
    if isinstance(got, Rejected):
        return got
    if got <= 0:
        return Rejected(f"ts: not a time: {echo(value)}")
    return got


def parse_sample(payload: bytes) -> tuple[float | None, float] | Rejected:
    """``(ts, hz)`` from a sample (``ts`` None: a bare number, timed on receipt)."""
    doc = parse_json(payload)
    if isinstance(doc, Rejected):
        return doc
    if isinstance(doc, dict):
        if "hz" not in doc:
            return Rejected("hz missing")
        hz = number(doc["hz"], "hz")
        if isinstance(hz, Rejected):
            return hz
        if "ts" not in doc or doc["ts"] is None:
            return None, hz
        ts = _time(doc["ts"])
        if isinstance(ts, Rejected):
            return ts
        return ts, hz
    hz = number(doc, "plain payload")
    if isinstance(hz, Rejected):
        return hz
    return None, hz


@dataclass(frozen=True, slots=True)
class SocReading:
    soc_pct: float
    power_kw: float | None = None
    ts: float | None = None


def parse_soc(payload: bytes) -> SocReading | Rejected:
    """A battery's state of charge (0-100 %), from a bare number or ``{"soc": ...}``."""
    doc = parse_json(payload)
    if isinstance(doc, Rejected):
        return doc
    power: float | None = None
    ts: float | None = None
    if isinstance(doc, dict):
        if "soc" not in doc:
            return Rejected("soc missing")
        soc = number(doc["soc"], "soc")
        if "power_kw" in doc and doc["power_kw"] is not None:
            got = number(doc["power_kw"], "power_kw")
            if isinstance(got, Rejected):
                return got
            power = got
        if "ts" in doc and doc["ts"] is not None:
            when = _time(doc["ts"])
            if isinstance(when, Rejected):
                return when
            ts = when
    else:
        soc = number(doc, "plain payload")
    if isinstance(soc, Rejected):
        return soc
    if not 0.0 <= soc <= 100.0:
        return Rejected(f"soc {soc:g} is not a percentage (0-100)")
    return SocReading(soc, power, ts)


def iso(ts: float) -> str:
    """Epoch seconds as ISO 8601 UTC with milliseconds (``...T12:00:00.250Z``)."""
    return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=ts)).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")


def setpoint_json(kw: float, ts_iso: str, until_iso: str, valid_s: float,
                  mode: str) -> bytes:
    """A battery's setpoint message from pre-formatted times (one pair per sample serves
    every battery: formatting a time costs more than the rest of the message)."""
    return (f'{{"ts":"{ts_iso}","setpoint_kw":{round(kw, 3)!r},"setpoint_w":'
            f'{round(kw * 1000.0)},"valid_s":{float(valid_s)!r},"valid_until":"{until_iso}",'
            f'"mode":{json.dumps(mode)}}}').encode()


def setpoint_payload(kw: float, at: float, valid_s: float, mode: str) -> bytes:
    """A battery's setpoint message (``at``: epoch seconds; + = charging)."""
    return setpoint_json(kw, iso(at), iso(at + valid_s), valid_s, mode)
