"""Money exact: each line's cost is energy × price rounded half-even once, at the bill's
precision, and the lines add up to the total exactly. Checked against an independent
reference in ``fractions.Fraction`` (whose ``round`` is half-even too)."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gridshare.core.billing import (
    Interval,
    TariffPeriod,
    check_decimals,
    decimal_text,
    kwh_text,
    line_cost,
    to_price,
)
from gridshare.core.billing.bill import bill_for

_prices = st.one_of(
    st.integers(0, 8).flatmap(lambda places: st.decimals(
        min_value=-5, max_value=5, places=places, allow_nan=False, allow_infinity=False)),
    st.decimals(min_value=Decimal("-1e6"), max_value=Decimal("1e6"), allow_nan=False,
                allow_infinity=False),  # any number of digits
    st.floats(min_value=-10, max_value=10, allow_nan=False).map(to_price),  # as YAML reads
)
_energies = st.integers(min_value=-10**9, max_value=10**13)  # up to 10 GWh in an interval


def reference(energy_mwh: int, price: Decimal, decimals: int) -> Fraction:
    return Fraction(round(Fraction(energy_mwh) * Fraction(price) / 10**6, decimals))


@given(st.lists(st.tuples(_energies, _prices), min_size=0, max_size=60),
       st.integers(min_value=0, max_value=12))
def test_lines_add_up_to_the_total_and_each_is_rounded_once(
        lines: list[tuple[int, Decimal]], decimals: int) -> None:
    items = [Interval(n * 900, (n + 1) * 900, e) for n, (e, _) in enumerate(lines)]
    periods = [TariffPeriod(f"p{n}", p, 0) for n, (_, p) in enumerate(lines)]
    got, total = bill_for("m", items, periods, decimals)
    costs = [x.cost for x in got]
    assert all(c is not None for c in costs)
    assert total.cost is not None
    assert sum((c for c in costs if c is not None), Decimal(0)) == total.cost
    for x, (energy, price) in zip(got, lines, strict=True):
        assert x.cost is not None
        assert Fraction(x.cost) == reference(energy, price, decimals)
        assert -x.cost.as_tuple().exponent == decimals or x.cost.is_zero()
        assert not x.cost.is_signed() or x.cost < 0  # never -0
    # the printed total is the printed lines' sum, to the digit
    assert sum(Decimal(decimal_text(c)) for c in costs if c is not None) \
        == Decimal(decimal_text(total.cost))


def test_a_float_price_is_the_decimal_it_was_written_as() -> None:
    assert to_price(0.1) == Decimal("0.1")
    assert Decimal(repr(0.1)) == Decimal("0.1") != Decimal.from_float(0.1)  # not the binary
    assert to_price(0.2235) == Decimal("0.2235")
    assert to_price("0.123456789012345678901") == Decimal("0.123456789012345678901")
    assert to_price(3) == Decimal(3)
    for bad in (float("nan"), float("inf"), "NaN", "x", True):
        with pytest.raises(ValueError):
            to_price(bad)  # type: ignore[arg-type]


def test_the_total_is_the_printed_lines_added_up() -> None:
    # three lines of 0.0000015 (a tie at 6 places each: 0.000002) and 0.0000005 (0.0):
    # rounding the unrounded sum, as the bill did, would print 0.000005 under lines
    # that add up to 0.000006
    lines, total = bill_for("m", [Interval(n * 900, (n + 1) * 900, e)
                                  for n, e in enumerate((3, 3, 3, 1))],
                            [TariffPeriod("a", Decimal("0.5"), 0)] * 4)
    assert [decimal_text(x.cost) for x in lines if x.cost is not None] == \
        ["0.000002"] * 3 + ["0.0"]
    assert total.cost is not None and decimal_text(total.cost) == "0.000006"
    # exact ties at 2 places go to the even digit: 1.005 -> 1.00, 1.015 -> 1.02 (the float
    # 1.015 is 1.01499..., which round() took to 1.01)
    assert line_cost(1_005_000, Decimal(1), 2) == Decimal("1.00")
    assert line_cost(1_015_000, Decimal(1), 2) == Decimal("1.02")
    assert line_cost(-1_015_000, Decimal(1), 2) == Decimal("-1.02")


@pytest.mark.parametrize(("energy_mwh", "price", "decimals", "text"), [
    (250_000, "0.2", 6, "0.05"),
    (0, "-0.22", 6, "0.0"),  # not -0.0
    (1, "0.3", 6, "0.0"),
    (5, "0.3", 6, "0.000002"),  # 0.0000015 -> even
    (1, "1", 6, "0.000001"),  # not 1e-06
    (10**12, "0.42", 4, "420000.0"),
    (123_456_789, "0.2235", 0, "28.0"),
    (1_000_000, "0.25", 1, "0.2"),  # 0.25 -> 0.2, half to even
])
def test_line_costs_as_printed(energy_mwh: int, price: str, decimals: int, text: str) -> None:
    assert decimal_text(line_cost(energy_mwh, Decimal(price), decimals)) == text


@pytest.mark.parametrize(("mwh", "text"), [
    (0, "0.0"), (1, "0.000001"), (250_000, "0.25"), (1_000_000, "1.0"),
    (212_418_000, "212.418"), (-30_000, "-0.03"), (10**16, "10000000000.0"),
])
def test_energy_as_printed(mwh: int, text: str) -> None:
    assert kwh_text(mwh) == text
    assert Decimal(text) == Decimal(mwh) / 10**6


def test_precision_out_of_range_is_refused() -> None:
    for bad in (-1, 13):
        with pytest.raises(ValueError):
            check_decimals(bad)
