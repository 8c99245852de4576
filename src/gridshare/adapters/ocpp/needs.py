"""NotifyEVChargingNeeds (2.0.1 and 2.1) → what the car needs and, over 2.1, what it offers.

Pure, like :mod:`.meter`: the payload (schema-valid already, keys in snake_case as the
handlers get them) in, a typed :class:`Needs` out with the reasons of anything refused.

2.0.1 and 2.1: ``energyAmount`` (Wh, AC or DC parameters), ``evMaxCurrent`` (AC, A) and
``departureTime``. 2.1 only: the car's V2X offer (:class:`~gridshare.core.v2x_offer.
V2xOffer`) from ``availableEnergyTransfer``, ``requestedEnergyTransfer``, ``controlMode``
and ``v2xChargingParameters``. The schema types those numbers but does not bound them (its
text says "Value >= 0"): a negative or non-finite power limit is refused and, for
``maxDischargePower``, read as 0 W (fail closed: the car gets no discharge).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from gridshare.core.v2x_offer import V2xOffer
from gridshare.ocpp_version import OcppVersion

from .meter import parse_timestamp


@dataclass(frozen=True, slots=True)
class Needs:
    energy_wh: float | None = None
    max_current_a: float | None = None
    departure: datetime | None = None
    offer: V2xOffer | None = None
    """The V2X offer (2.1 only; None over 2.0.1)."""
    rejects: tuple[tuple[str, str], ...] = field(default=())
    """(counter reason, which field) of every value refused."""


def _number(value: Any, name: str, rejects: list[tuple[str, str]], *,
            signed: bool = False) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(
            value) or (value < 0 and not signed):
        rejects.append(("needs_bad_value", name))
        return None
    return float(value)


def _phase_sum(v2x: dict[str, Any], name: str, wire: str,
               rejects: list[tuple[str, str]]) -> float | None:
    """A power that is the sum of the phases, unless L2/L3 values are sent: then the field
    is L1's and the three add up (2.1 schema, V2XChargingParametersType)."""
    total = _number(v2x.get(name), wire, rejects)
    if total is None:
        return None
    for phase in ("l2", "l3"):
        extra = _number(v2x.get(f"{name}_{phase}"), f"{wire}_{phase.upper()}", rejects)
        if extra is not None:
            total += extra
    return total


def _offer(needs: dict[str, Any], rejects: list[tuple[str, str]]) -> V2xOffer:
    requested = needs.get("requested_energy_transfer")
    available = needs.get("available_energy_transfer")
    modes = tuple(str(m) for m in available) if isinstance(available, list) and available \
        else (() if requested is None else (str(requested),))
    v2x = needs.get("v2x_charging_parameters") or {}
    max_discharge = _phase_sum(v2x, "max_discharge_power", "maxDischargePower", rejects)
    if max_discharge is None and v2x.get("max_discharge_power") is not None:
        max_discharge = 0.0  # sent but unreadable: no discharge (fail closed)
    target = v2x.get("target_soc")
    return V2xOffer(
        modes=modes, requested=None if requested is None else str(requested),
        control_mode=None if needs.get("control_mode") is None else str(needs["control_mode"]),
        max_discharge_w=max_discharge,
        min_discharge_w=_phase_sum(v2x, "min_discharge_power", "minDischargePower", rejects),
        max_charge_w=_phase_sum(v2x, "max_charge_power", "maxChargePower", rejects),
        min_charge_w=_phase_sum(v2x, "min_charge_power", "minChargePower", rejects),
        min_v2x_energy_wh=_number(v2x.get("ev_min_v2x_energy_request"),
                                  "evMinV2XEnergyRequest", rejects, signed=True),
        max_v2x_energy_wh=_number(v2x.get("ev_max_v2x_energy_request"),
                                  "evMaxV2XEnergyRequest", rejects, signed=True),
        target_soc=target if isinstance(target, int) and not isinstance(target, bool)
        and 0 <= target <= 100 else None)


def parse_charging_needs(charging_needs: dict[str, Any], *, protocol: OcppVersion) -> Needs:
    """The ``chargingNeeds`` object of a NotifyEVChargingNeedsRequest (snake_case keys)."""
    rejects: list[tuple[str, str]] = []
    ac = charging_needs.get("ac_charging_parameters") or {}
    dc = charging_needs.get("dc_charging_parameters") or {}
    energy_wh = _number(ac.get("energy_amount", dc.get("energy_amount")), "energyAmount",
                        rejects)
    max_current = _number(ac.get("ev_max_current"), "evMaxCurrent", rejects)
    departure_raw = charging_needs.get("departure_time")
    departure = parse_timestamp(departure_raw)
    if departure_raw is not None and departure is None:
        rejects.append(("needs_bad_value", "departureTime"))
    offer = _offer(charging_needs, rejects) if protocol is OcppVersion.V21 else None
    return Needs(energy_wh, max_current, departure, offer, tuple(rejects))
