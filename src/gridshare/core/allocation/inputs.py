"""Per-connector bounds and urgency, derived once per allocation from the snapshot."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gridshare.core.arrays import DemandArrays, FloatArray, TopologyArrays, demand_arrays
from gridshare.core.snapshot import Snapshot
from gridshare.core.topology import Topology


@dataclass(slots=True)
class Inputs:
    """Per-connector arrays of one allocation, shared by every (sub)solve."""

    ta: TopologyArrays
    demand: DemandArrays
    low: FloatArray
    """The least a charging connector gets: its minimum on the grid, at least one step."""
    high: FloatArray
    """The most it may get: min(connector, charger, EV maximum) on the grid."""
    laxity_h: FloatArray
    """Hours of slack before it must charge flat out to meet its departure (inf if none)."""
    required_a: FloatArray
    """The rate that meets its energy need by its departure (0 without a deadline)."""


def connector_inputs(topology: Topology, ta: TopologyArrays, snapshot: Snapshot) -> Inputs:
    demand = demand_arrays(ta, snapshot)
    res = topology.resolution_a
    high = np.floor(np.minimum(ta.max_current, demand.ev_max) / res + 1e-7) * res
    # Less than one step is no charging: a 0 A minimum still competes for one step, so a
    # car without a minimum waits its turn like the others instead of starving at 0 A.
    low = np.maximum(np.ceil(ta.min_current / res - 1e-7) * res, res)
    hours_left = (demand.departure_s - snapshot.now.timestamp()) / 3600.0
    with np.errstate(divide="ignore", invalid="ignore"):
        max_kw = high * ta.kw_per_amp
        laxity = np.where(np.isnan(hours_left) | np.isnan(demand.energy_kwh) | (max_kw <= 0),
                          np.inf, hours_left - demand.energy_kwh / max_kw)
        required = np.where(np.isnan(hours_left) | np.isnan(demand.energy_kwh), 0.0,
                            np.where(hours_left > 0,
                                     demand.energy_kwh / hours_left / ta.kw_per_amp, np.inf))
    return Inputs(ta, demand, low, high, laxity, np.nan_to_num(required, posinf=np.inf))
