"""What the car behind a connector offers for V2X (OCPP 2.1 NotifyEVChargingNeeds).

A bidirectional charger can discharge only a car that can: in OCPP 2.1 the car (ISO
15118-20, through the charger) lists its energy transfer modes in
``chargingNeeds.availableEnergyTransfer`` and its power limits in
``v2xChargingParameters``. Only the ``*_BPT`` modes (bidirectional power transfer)
discharge. This module holds the one rule every discharge goes through:
:func:`discharge_cap_w` (how much a connector may discharge, from the configured maximum and
the car's offer) and :func:`offer_refusal` (why it may not discharge at all).

No offer (None) means the car has said nothing over 2.1: the site file decides, as before
(an ISO 15118-20 car always sends its needs; a car without 15118 cannot discharge anyway and
the charger rejects or ignores a discharge setpoint). Pure: no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

BPT_MODES = frozenset({"AC_BPT", "AC_BPT_DER", "DC_BPT", "DC_ACDP_BPT"})
"""EnergyTransferModeEnumType values that include discharging (2.1 schema)."""


@dataclass(frozen=True, slots=True)
class V2xOffer:
    """A car's V2X offer as it sent it (W and Wh; None where it said nothing)."""

    modes: tuple[str, ...]
    """``availableEnergyTransfer`` as sent; when the car sent none, its
    ``requestedEnergyTransfer`` alone (fail closed: only what it asked for is known)."""
    requested: str | None = None
    control_mode: str | None = None
    """``ScheduledControl`` or ``DynamicControl``."""
    max_discharge_w: float | None = None
    """``v2xChargingParameters.maxDischargePower`` (all phases; L1+L2+L3 when the car
    sent per-phase values): the most it discharges. 0 when it sent a bad value (fail
    closed)."""
    min_discharge_w: float | None = None
    max_charge_w: float | None = None
    min_charge_w: float | None = None
    min_v2x_energy_wh: float | None = None
    """``evMinV2XEnergyRequest``: energy to the bottom of its V2X range (> 0: below it)."""
    max_v2x_energy_wh: float | None = None
    """``evMaxV2XEnergyRequest``: energy to the top of its V2X range (< 0: above it)."""
    target_soc: int | None = None

    @property
    def bidirectional(self) -> bool:
        """The car offers a mode that discharges."""
        return any(m in BPT_MODES for m in self.modes)

    def json(self) -> dict[str, Any]:
        """As the API shows it (``GET /api/v1/chargers``, ``GET /api/v1/frequency``)."""
        return {"bidirectional": self.bidirectional, "modes": list(self.modes),
                "requested": self.requested, "control_mode": self.control_mode,
                "max_discharge_w": self.max_discharge_w,
                "min_discharge_w": self.min_discharge_w,
                "max_charge_w": self.max_charge_w, "min_charge_w": self.min_charge_w,
                "min_v2x_energy_wh": self.min_v2x_energy_wh,
                "max_v2x_energy_wh": self.max_v2x_energy_wh, "target_soc": self.target_soc}


def discharge_cap_w(configured_w: float, offer: V2xOffer | None) -> float:
    """The most a connector may discharge (W, ≥ 0): ``configured_w`` (the unit's maximum,
    or what an operator asked) clipped by the car's offer: 0 when the car offers no BPT
    mode, at most its ``maxDischargePower`` when it sent one; ``configured_w`` when there
    is no offer (the site file decides). NaN counts as 0 (fail closed)."""
    cap = 0.0 if math.isnan(configured_w) else max(configured_w, 0.0)
    if offer is None:
        return cap
    if not offer.bidirectional:
        return 0.0
    if offer.max_discharge_w is not None:
        cap = min(cap, offer.max_discharge_w)
    return cap


def offer_refusal(charger: str, connector: int, offer: V2xOffer | None) -> str | None:
    """Why ``connector`` of ``charger`` may not be asked to discharge because of its car
    (None: the car does not stand in the way)."""
    if offer is None or offer.bidirectional:
        return None
    offered = ", ".join(offer.modes) or "none"
    return (f"{charger} connector {connector}: the car offers no bidirectional transfer "
            f"(it offered {offered}; discharging needs one of "
            f"{', '.join(sorted(BPT_MODES))})")
