"""Export registers billed (V2G discharge): the export track goes through the same
interval code as the import one, its lines marked ``export`` and priced at the export
price, its sums on the id's total; ids without an export register are billed as before."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from gridshare.core.billing import (
    Flag,
    IntervalSettings,
    Reading,
    bill_all,
    flat,
)

Q = 900 * 1_000_000  # a quarter hour in µs
S = IntervalSettings()


def at(minutes: float) -> int:
    return round(minutes * 60 * 1_000_000)


def test_import_and_export_lines_of_a_v2g_charger() -> None:
    # charges 1 kWh in the first quarter hour, discharges 2 kWh in the second
    readings = [Reading(at(0), 10_000_000, None, 5_000_000),
                Reading(at(15), 11_000_000, None, 5_000_000),
                Reading(at(30), 11_000_000, None, 7_000_000)]
    lines, (total,) = bill_all({"cp1": [readings]}, 0, 2 * Q, S,
                               flat("0.30", export_price="0.08"))
    assert [(x.direction, x.energy_mwh, x.cost) for x in lines] == [
        ("import", 1_000_000, Decimal("0.3")), ("import", 0, Decimal("0")),
        ("export", 0, Decimal("0")), ("export", 2_000_000, Decimal("0.16"))]
    assert (total.energy_mwh, total.cost) == (1_000_000, Decimal("0.3"))
    assert (total.export_energy_mwh, total.export_cost) == (2_000_000, Decimal("0.16"))


def test_no_export_register_no_export_lines_nor_totals() -> None:
    readings = [Reading(at(0), 0), Reading(at(15), 1_000_000)]
    lines, (total,) = bill_all({"m": [readings]}, 0, Q, S, flat("0.30", export_price="0.1"))
    assert [x.direction for x in lines] == ["import"]
    assert (total.export_energy_mwh, total.export_cost) == (None, None)


def test_export_without_export_price_has_no_cost_and_is_not_from_power() -> None:
    # power is signed (negative while discharging): it never estimates the export
    readings = [Reading(at(0), 0, -4000.0, 1_000), Reading(at(15), 0, -4000.0, 501_000)]
    lines, (total,) = bill_all({"cp": [readings]}, 0, Q, S, flat("0.30"))
    (imp, exp) = lines
    assert (imp.direction, imp.cost) == ("import", Decimal("0"))
    assert (exp.direction, exp.energy_mwh, exp.cost, exp.tariff_period) == (
        "export", 500_000, None, "flat")
    assert Flag.FROM_POWER not in exp.flags
    assert (total.export_energy_mwh, total.export_cost) == (500_000, None)
    lines, (total,) = bill_all({"cp": [readings]}, 0, Q, S, None)  # no tariff at all
    assert [x.cost for x in lines] == [None, None]
    assert (total.export_energy_mwh, total.export_cost) == (500_000, None)


def test_export_flags_are_the_export_registers_own() -> None:
    # the export register resets (meter replaced) and has a gap; the import one neither
    readings = [Reading(at(m), 1_000_000 + m) for m in range(0, 61, 5)]
    exports = [Reading(at(0), None, None, 9_000), Reading(at(15), None, None, 2_000),
               Reading(at(60), None, None, 5_000)]
    lines, (total,) = bill_all({"b": [readings + exports]}, 0, 4 * Q, S, None)
    imp = [x for x in lines if x.direction == "import"]
    exp = [x for x in lines if x.direction == "export"]
    assert all(x.flags == () for x in imp)
    assert exp[0].flags == (Flag.REGISTER_RESET,)
    assert all({Flag.GAP, Flag.ESTIMATED} <= set(x.flags) for x in exp[1:])
    assert total.export_energy_mwh == 2_000 + 3_000  # from the new zero, then the rise


def test_a_connector_without_export_does_not_hide_one_with_it() -> None:
    c1 = [Reading(at(0), 0, None, 0), Reading(at(15), 0, None, 700)]
    c2 = [Reading(at(0), 0), Reading(at(15), 300)]
    lines, (total,) = bill_all({"cp": [c1, c2]}, 0, Q, S, None)
    exp = [x for x in lines if x.direction == "export"]
    assert [(x.energy_mwh, x.flags) for x in exp] == [(700, ())]
    assert (total.energy_mwh, total.export_energy_mwh) == (300, 700)


# --- properties -----------------------------------------------------------------------------

points_st = st.lists(st.tuples(st.integers(0, 12 * Q), st.integers(0, 10**9),
                               st.one_of(st.none(), st.integers(0, 10**9))),
                     min_size=1, max_size=30)


@settings(max_examples=300, deadline=None)
@given(points_st, st.sampled_from(["0.08", "-0.05", "0.123456789"]), st.integers(0, 6))
def test_export_intervals_sum_exactly_to_the_export_register_difference(
        points: list[tuple[int, int, int | None]], price: str, decimals: int) -> None:
    # a monotone export register (no resets): its intervals over a range covering every
    # reading sum exactly to last − first, and the total's cost to the lines' costs
    firsts: dict[int, tuple[int, int | None]] = {}
    for t, e, x in points:
        firsts.setdefault(t, (e, x))
    running = 0
    readings = []
    for t in sorted(firsts):
        e, x = firsts[t]
        if x is not None:
            running += x
        readings.append(Reading(t, e, None, None if x is None else running))
    exported = [r.export_mwh for r in readings if r.export_mwh is not None]
    lines, (total,) = bill_all({"v2g": [readings]}, 0, 13 * Q, S,
                               flat("0.30", export_price=price), decimals)
    exp = [x for x in lines if x.direction == "export"]
    if not exported:
        assert exp == [] and total.export_energy_mwh is None
        return
    assert sum(x.energy_mwh for x in exp) == exported[-1] - exported[0]
    assert total.export_energy_mwh == exported[-1] - exported[0]
    assert all(x.energy_mwh >= 0 for x in exp)
    assert total.export_cost == sum((x.cost for x in exp if x.cost is not None), Decimal(0))
    assert all(x.cost is not None and x.cost == x.cost.quantize(Decimal(1).scaleb(-decimals))
               for x in exp)
    # the import side is what it was without the export register
    alone, (before,) = bill_all({"v2g": [[Reading(r.ts_us, r.energy_mwh) for r in
                                          readings]]}, 0, 13 * Q, S, flat("0.30"), decimals)
    assert [x for x in lines if x.direction == "import"] == alone
    assert (total.energy_mwh, total.cost) == (before.energy_mwh, before.cost)
