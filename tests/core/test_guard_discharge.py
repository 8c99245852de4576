"""The guard on V2X setpoints: a discharge frees capacity, but never more than a circuit can
carry the other way. Worked examples and hypothesis properties against an independent sum
(walking each charger's group chain, not the guard's arrays)."""

from __future__ import annotations

import dataclasses
import math
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from gridshare.core import guard
from gridshare.core.snapshot import Snapshot
from gridshare.core.topology import (
    ALL_PHASES,
    Charger,
    Connector,
    ConnectorKey,
    Group,
    Phase,
    Policy,
    Topology,
)

from .strategies import topologies

NOW = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
EMPTY = Snapshot(now=NOW, connectors={}, groups={})


def _site(*, main_a: float = 32.0, main_kw: float | None = None, v2x: bool = True,
          phases: int = 3, max_a: float = 32.0) -> Topology:
    chargers = {
        cid: Charger(id=cid, phases=phases, phase=None if phases == 3 else Phase.L1,
                     max_current=max_a, min_current=6, failsafe_current=0, priority=0,
                     connectors=(Connector(cid, 1, max_a, 6),), group="main", v2x=v2x)
        for cid in ("a", "b")}
    groups = {"main": Group("main", main_a, main_kw, 3, Policy.EQUAL, None,
                            chargers=tuple(chargers))}
    return Topology(site="s", voltage=230.0, policy=Policy.EQUAL, groups=groups,
                    chargers=chargers, roots=("main",))


def test_discharge_within_the_circuit_passes() -> None:
    # 2 × 11 kW back through a 32 A three-phase main: 2 × 15.9 A = 31.9 A ≤ 32 A
    assert guard.check_v2x(_site(), EMPTY, {}, {("a", 1): -11_000, ("b", 1): -11_000}) == []


def test_discharge_above_the_circuit_is_refused_naming_group_and_phase() -> None:
    alarms = guard.check_v2x(_site(main_a=25), EMPTY, {},
                             {("a", 1): -11_000, ("b", 1): -11_000})
    assert {a.phase for a in alarms if a.group == "main"} == set(ALL_PHASES)
    assert all("discharged back through it" in a.message for a in alarms)
    assert math.isclose(alarms[0].load, 2 * 11_000 / 690, rel_tol=1e-9)


def test_kw_limit_applies_in_reverse_too() -> None:
    alarms = guard.check_v2x(_site(main_a=100, main_kw=15), EMPTY, {},
                             {("a", 1): -10_000, ("b", 1): -10_000})
    assert [a.phase for a in alarms] == [None]
    assert "kW discharged back" in alarms[0].message


def test_charger_maximum_bounds_a_discharge() -> None:
    alarms = guard.check_v2x(_site(main_a=100, max_a=10), EMPTY, {}, {("a", 1): -11_000})
    assert len(alarms) == 1 and "charger a: discharging" in alarms[0].message


def test_no_discharge_to_a_charger_not_declared_v2x() -> None:
    alarms = guard.check_v2x(_site(v2x=False), EMPTY, {}, {("a", 1): -1000})
    assert len(alarms) == 1 and "not declared v2x" in alarms[0].message


def test_bad_values_and_unknown_connectors_are_refused() -> None:
    alarms = guard.check_v2x(_site(), EMPTY, {}, {("a", 1): math.nan, ("zz", 1): -1.0})
    assert len(alarms) == 2


def test_a_charge_setpoint_is_checked_forward_like_a_send() -> None:
    # b already counted at 30 A; a charging at 7 kW (≈ 10.1 A) breaks the 32 A main
    alarms = guard.check_v2x(_site(), EMPTY, {("b", 1): 30.0}, {("a", 1): 7000})
    assert alarms and all(a.group == "main" for a in alarms)
    assert guard.check_v2x(_site(), EMPTY, {("b", 1): 10.0}, {("a", 1): 7000}) == []


def test_a_discharge_is_not_credited_against_forward_load() -> None:
    """b's counted 30 A and a's discharge: the reverse check sees only a's 14.5 A, and the
    forward load (b at 30 A) is not checked as if a's discharge lowered it."""
    assert guard.check_v2x(_site(), EMPTY, {("b", 1): 30.0}, {("a", 1): -10_000}) == []


# -- properties ------------------------------------------------------------------------------


def _all_v2x(topology: Topology) -> Topology:
    chargers = {cid: dataclasses.replace(c, v2x=True) for cid, c in topology.chargers.items()}
    return dataclasses.replace(topology, chargers=chargers, _ancestors={}, _cache={})


def _reverse_flows(topology: Topology, v2x_w: dict[ConnectorKey, float],
                   ) -> tuple[dict[tuple[str, Phase], float], dict[str, float]]:
    """Independent: each discharge added into every group of its charger's chain."""
    amps: dict[tuple[str, Phase], float] = {}
    kw: dict[str, float] = {}
    for (cid, _), watts in v2x_w.items():
        if watts >= 0:
            continue
        charger = topology.chargers[cid]
        per_phase = -watts / (topology.voltage * charger.phases)
        for gid in topology.charger_groups(cid):
            kw[gid] = kw.get(gid, 0.0) - watts / 1000.0
            for phase in ALL_PHASES:
                if charger.loads(phase):
                    amps[gid, phase] = amps.get((gid, phase), 0.0) + per_phase
    return amps, kw


def _exceeds(topology: Topology, v2x_w: dict[ConnectorKey, float]) -> bool:
    amps, kw = _reverse_flows(topology, v2x_w)
    for (gid, _), load in amps.items():
        limit = topology.groups[gid].max_current
        if limit is not None and load > limit + 1e-6:
            return True
    for gid, load in kw.items():
        limit_kw = topology.groups[gid].max_power_kw
        if limit_kw is not None and load > limit_kw + 1e-6:
            return True
    return False


@st.composite
def discharges(draw: st.DrawFn) -> tuple[Topology, dict[ConnectorKey, float]]:
    topology = _all_v2x(draw(topologies(max_chargers=12)))
    keys = [c.key for c in topology.connectors()]
    chosen = draw(st.lists(st.sampled_from(keys), unique=True, max_size=len(keys)))
    watts = {key: -draw(st.floats(0, 30_000, allow_nan=False)) for key in chosen}
    return topology, watts


@settings(max_examples=150, deadline=None)
@given(discharges())
def test_passed_discharges_keep_reverse_flow_within_every_limit(
        case: tuple[Topology, dict[ConnectorKey, float]]) -> None:
    topology, watts = case
    alarms = guard.check_v2x(topology, EMPTY, {}, watts)
    if not alarms:
        amps, kw = _reverse_flows(topology, watts)
        for (gid, _), load in amps.items():
            limit = topology.groups[gid].max_current
            assert limit is None or abs(load) <= limit + 1e-6
        for gid, load in kw.items():
            limit_kw = topology.groups[gid].max_power_kw
            assert limit_kw is None or abs(load) <= limit_kw + 1e-6
    if _exceeds(topology, watts):
        assert alarms  # and every excess is caught


@settings(max_examples=100, deadline=None)
@given(discharges(), st.floats(0.0, 1.0))
def test_smaller_discharges_never_add_alarms(
        case: tuple[Topology, dict[ConnectorKey, float]], scale: float) -> None:
    """Monotone: scaling every discharge down never turns a passed set into a refused one."""
    topology, watts = case
    if guard.check_v2x(topology, EMPTY, {}, watts) == []:
        smaller = {key: w * scale for key, w in watts.items()}
        assert guard.check_v2x(topology, EMPTY, {}, smaller) == []


def test_an_unanswered_discharge_counts_at_the_worst_of_old_and_new() -> None:
    """a was asked for -11 kW, unanswered; b's new -11 kW alone would pass, but with a's
    still possibly in force the reverse flow is 2 × 15.9 A > 25 A."""
    site = _site(main_a=25)
    assert guard.check_v2x(site, EMPTY, {}, {("b", 1): -11_000}) == []
    alarms = guard.check_v2x(site, EMPTY, {}, {("b", 1): -11_000},
                             in_force_w={("a", 1): -11_000})
    assert alarms and all(a.group == "main" for a in alarms)
    # lowering a's discharge: the old, larger one still counts until its validTo
    alarms = guard.check_v2x(site, EMPTY, {}, {("a", 1): -1000, ("b", 1): -11_000},
                             in_force_w={("a", 1): -11_000})
    assert alarms
    # an old charge and a new discharge: both directions are checked
    alarms = guard.check_v2x(_site(), EMPTY, {("b", 1): 30.0}, {("a", 1): -5000},
                             in_force_w={("a", 1): 7000})
    assert alarms and "discharged back" not in alarms[0].message


@settings(max_examples=100, deadline=None)
@given(discharges(), st.floats(0.0, 1.0))
def test_in_force_values_never_remove_alarms(
        case: tuple[Topology, dict[ConnectorKey, float]], share: float) -> None:
    """Counting what may still be in force can only add alarms, never hide one."""
    topology, watts = case
    plain = guard.check_v2x(topology, EMPTY, {}, watts)
    old = {key: w * share for key, w in watts.items()}
    with_old = guard.check_v2x(topology, EMPTY, {}, watts, in_force_w=old)
    assert bool(with_old) or not plain
