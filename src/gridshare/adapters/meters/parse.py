"""Meter payloads in, per-phase amps out: pure functions, no I/O.

A reading is accepted only when every value it needs is present, a finite JSON number and
not negative; anything else is a :class:`Rejected` with the reason and the path, so the
source counts it and publishes nothing (the group goes stale and fails closed instead of
following garbage).

What a payload means (``fields`` / ``field`` / neither, with ``unit``):

- ``fields: {L1: path, ...}``, unit A: the current on each named phase; a phase absent
  from ``fields`` is 0 A. The payload must be JSON.
- ``field: path``, unit W or kW: the total power, split evenly over the phases of the group
  the meter feeds: P / (3·V) on each phase of a 3-phase group, P / V for a 1-phase one.
  Negative power (export, e.g. PV) counts as 0 A: the group then imports nothing through
  the meter, and counting 0 never overstates its headroom.
- neither: the payload is one plain number (``1234.5``). W or kW: a total, split as above.
  A: the current on *each* of a 3-phase group's phases; a single value cannot say which
  phase it is, and counting it on every phase never understates the heaviest one.

A 1-phase group's reading goes on its line when the caller knows it (``line``: the line
its chargers are on, a ``Phase`` or ``"L1"``..``"L3"``). Without it the reading is counted
on all three phases: the core holds a group's limit on L1, L2 and L3 apart, so a reading
on L1 alone would leave the line that really carries the chargers without its
uncontrolled load (an overload); on the two other lines nothing of the group draws, so
counting it there costs no current (a ``max_power`` limit does count it three times).

Paths are dot-separated keys; a segment that indexes a list is a number
(``emeters.0.current``, ``0.2`` for IoTaWatt's ``[[time, a, b, c]]``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from gridshare.core.topology import Phase

ECHO_MAX = 80
"""Characters of a bad value echoed in an error (a device may send megabytes)."""
PAYLOAD_MAX = 1 << 20
"""Bytes of a payload that are parsed at all (bounded memory and time)."""

PhaseName = Literal["L1", "L2", "L3"]
PHASES: tuple[PhaseName, ...] = ("L1", "L2", "L3")
Amps3 = tuple[float, float, float]


@dataclass(frozen=True, slots=True)
class Rejected:
    """Why a payload gave no reading, with the path of the bad value when there is one."""

    reason: str


def echo(value: object) -> str:
    """``repr``-like text of a bad value, cut to :data:`ECHO_MAX` characters."""
    text = repr(value) if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= ECHO_MAX else text[: ECHO_MAX - 1] + "…"


def split_path(path: str) -> tuple[str, ...]:
    """``"emeters.0.current"`` -> ``("emeters", "0", "current")``."""
    return tuple(path.split("."))


_MISSING = object()


def lookup(doc: object, path: tuple[str, ...]) -> object:
    """The value at ``path`` in parsed JSON, or ``_MISSING``; list segments are indices."""
    node = doc
    for key in path:
        if isinstance(node, dict):
            if key not in node:
                return _MISSING
            node = node[key]
        elif isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                return _MISSING
            node = node[int(key)]
        else:
            return _MISSING
    return node


def number(value: object, what: str) -> float | Rejected:
    """A finite JSON number (never a bool or a numeric string), else why not."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return Rejected(f"{what}: not a number: {echo(value)}")
    try:
        result = float(value)
    except OverflowError:
        return Rejected(f"{what}: not a finite number: {echo(value)}")
    if not math.isfinite(result):
        return Rejected(f"{what}: not a finite number: {echo(value)}")
    return result


def _reject_constant(name: str) -> float:
    """``NaN`` / ``Infinity`` in a payload: not JSON, and never a reading."""
    raise ValueError(f"{name} is not a number")


def parse_json(payload: bytes) -> object | Rejected:
    """Decode a payload as UTF-8 JSON (NaN/Infinity refused), or say why not."""
    if len(payload) > PAYLOAD_MAX:
        return Rejected(f"payload of {len(payload)} bytes (more than {PAYLOAD_MAX})")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return Rejected(f"payload is not UTF-8: {echo(payload[:ECHO_MAX].decode('latin-1'))}")
    try:
        doc: object = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return Rejected(f"payload is not JSON: {echo(text)}")
    return doc


@dataclass(frozen=True, slots=True)
class Decoder:
    """How one meter's payloads become per-phase amps (built once per meter)."""

    fields: tuple[tuple[int, str, tuple[str, ...]], ...]
    """(phase index, path as written, path split) for per-phase currents."""
    field: str | None
    """Path of a total (W or kW); None with no ``fields`` either: a plain number."""
    unit: Literal["A", "W", "kW"]
    phases: int
    """Phases of the group the meter feeds (1 or 3)."""
    voltage: float
    line: int | None = None
    """A 1-phase group's line (0 = L1); None: not known, count it on every phase."""

    @classmethod
    def build(cls, fields: Mapping[PhaseName, str] | None, field: str | None,
              unit: Literal["A", "W", "kW"], *, phases: int, voltage: float,
              line: Phase | PhaseName | None = None) -> Decoder:
        """Pre-split the paths; ``phases`` other than 1 count as 3 (never fewer phases)."""
        per_phase = tuple((PHASES.index(name), path, split_path(path))
                          for name, path in sorted((fields or {}).items()))
        index: int | None = None
        if phases == 1 and isinstance(line, Phase):
            index = int(line)
        elif phases == 1 and line in PHASES:
            index = PHASES.index(line)
        return cls(per_phase, field, unit, 1 if phases == 1 else 3, voltage, index)

    def decode(self, payload: bytes) -> Amps3 | Rejected:
        """The reading in a payload, or why there is none."""
        doc = parse_json(payload)
        if isinstance(doc, Rejected):
            return doc
        if self.fields:
            return self._per_phase(doc)
        if self.field is not None:
            value = lookup(doc, split_path(self.field))
            if value is _MISSING:
                return Rejected(f"path {self.field} missing")
            total = number(value, f"path {self.field}")
        else:
            total = number(doc, "plain payload (no field/fields configured)")
        if isinstance(total, Rejected):
            return total
        return self._spread(total)

    def _per_phase(self, doc: object) -> Amps3 | Rejected:
        amps = [0.0, 0.0, 0.0]
        for index, path, parts in self.fields:
            where = f"{PHASES[index]} path {path}"
            value = lookup(doc, parts)
            if value is _MISSING:
                return Rejected(f"{where} missing")
            current = number(value, where)
            if isinstance(current, Rejected):
                return current
            if current < 0:
                return Rejected(f"{where}: negative current {echo(value)} A")
            amps[index] = current
        return (amps[0], amps[1], amps[2])

    def _spread(self, value: float) -> Amps3 | Rejected:
        """A total power, or a current on every phase, as amps per phase."""
        if self.unit == "A":
            if value < 0:
                return Rejected(f"negative current {echo(value)} A")
            return self._place(value)
        watts = max(value * (1000.0 if self.unit == "kW" else 1.0), 0.0)
        amps = watts / (self.phases * self.voltage)
        if not math.isfinite(amps):
            return Rejected(f"power {echo(value)} {self.unit} gives no finite current")
        return self._place(amps)

    def _place(self, amps: float) -> Amps3:
        """One current on the group's phases: its line, or all three (see the module doc)."""
        if self.line is None:
            return (amps, amps, amps)
        out = [0.0, 0.0, 0.0]
        out[self.line] = amps
        return (out[0], out[1], out[2])
