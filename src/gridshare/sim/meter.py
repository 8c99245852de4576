"""The simulated charger's meter: what a sample of one connector reads.

A sample is version-neutral; :mod:`gridshare.sim.ocpp16` and :mod:`gridshare.sim.ocpp201`
turn it into MeterValues / TransactionEvent sampled values. When samples are taken (every
``MeterValueSampleInterval``, at a transaction's end, on a TriggerMessage) is the link's
and the transactions' business.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from gridshare.sim.connector import PHASE_NAMES, Connector


@dataclass(frozen=True, slots=True)
class MeterSample:
    timestamp: datetime
    energy_wh: float
    power_w: float
    current_a: tuple[float, ...]
    """Per reported phase, in the order of ``phases``."""
    phases: tuple[str, ...]
    voltage_v: float
    offered_a: float
    soc_pct: float | None
    context: str = "Sample.Periodic"
    """OCPP ReadingContext: Sample.Periodic, Transaction.End, Trigger, ..."""
    power_export_w: float | None = None
    """A V2G charger (:mod:`gridshare.sim.v2g`): W fed back (``power_w`` is then the import
    part only); None for a charger that cannot discharge."""
    energy_export_wh: float | None = None


def read_meter(
    conn: Connector,
    at: datetime,
    *,
    charger_phases: int,
    wired_phase: str,
    voltage_v: float,
    context: str = "Sample.Periodic",
) -> MeterSample:
    """Read the meter of ``conn``: a 1-phase charger reports only its wired phase."""
    vec = conn.phase_vector(charger_phases, wired_phase)
    if charger_phases == 1:
        currents: tuple[float, ...] = (vec[PHASE_NAMES.index(wired_phase)],)
        phases: tuple[str, ...] = (wired_phase,)
    else:
        currents, phases = vec, PHASE_NAMES
    ev = conn.ev
    return MeterSample(
        timestamp=at,
        energy_wh=conn.energy_wh,
        power_w=sum(currents) * voltage_v,
        current_a=currents,
        phases=phases,
        voltage_v=voltage_v,
        offered_a=conn.offered_a,
        soc_pct=round(ev.soc * 100, 1) if ev is not None else None,
        context=context,
    )
