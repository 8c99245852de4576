"""Money exact: prices as decimals, a line's cost rounded once, totals summed exactly.

A household splitting a bill adds up its lines and expects the total printed, to the
last digit, every run. Binary floats cannot promise that (0.1 + 0.2 != 0.3), so prices
are ``Decimal``, a line's cost is ``energy × price`` computed exactly and rounded once to
``decimals`` places, and a total is the exact sum of its rounded lines.

Rounding is ROUND_HALF_EVEN (ties to the even digit), Python's ``round``, which the bill
used before: a month is thousands of rounded lines per id, and rounding every tie up
would push each total up by half a unit per tie; half-even rounds ties both ways, so the
sum of the lines stays unbiased. It differs from a spreadsheet's ROUND (half away from
zero) only on an exact tie.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import (
    MAX_EMAX,
    MAX_PREC,
    MIN_EMIN,
    ROUND_HALF_EVEN,
    Context,
    Decimal,
    InvalidOperation,
)

DEFAULT_COST_DECIMALS = 6
"""Places a cost is rounded to unless the site file says otherwise (the bill's rounding
before costs were exact, so existing figures stay as they were)."""
MAX_COST_DECIMALS = 12
MWH_PER_KWH_EXP = 6
"""Energy is integer mWh: kWh = mWh × 10⁻⁶."""

EXACT = Context(prec=MAX_PREC, Emax=MAX_EMAX, Emin=MIN_EMIN, rounding=ROUND_HALF_EVEN,
                traps=[InvalidOperation])
"""A context that never drops a digit: turning integer units into a Decimal is exact."""


def to_price(value: Decimal | int | float | str) -> Decimal:
    """A price as the decimal it was written as. A float (what YAML makes of ``0.1``) is
    read through its shortest repr, so ``0.1`` is exactly 0.1, not 0.1000000000000000055…
    (exact for any price written with up to 15 significant digits; quote a longer one).
    Raise ValueError for what is not a finite number."""
    if isinstance(value, bool):
        raise ValueError(f"not a number: {value!r}")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"not a finite number: {value!r}")
        return Decimal(repr(value))
    try:
        price = Decimal(value.strip()) if isinstance(value, str) else Decimal(value)
    except InvalidOperation:
        raise ValueError(f"not a number: {value!r}") from None
    if not price.is_finite():
        raise ValueError(f"not a finite number: {value!r}")
    return price


def check_decimals(decimals: int) -> int:
    """The places a cost is rounded to, checked (ValueError outside 0 to 12)."""
    if not 0 <= decimals <= MAX_COST_DECIMALS:
        raise ValueError(f"cost decimals must be 0 to {MAX_COST_DECIMALS}, got {decimals}")
    return decimals


@dataclass(frozen=True, slots=True)
class Rate:
    """A price at a precision, as integers: a line's cost in units of 10⁻ᵈ is
    ``energy_mwh × num × mul / div`` rounded half-even. Integer arithmetic is exact like
    Decimal's and, per line, about twice as fast (a month is 2,880 lines per meter)."""

    num: int
    mul: int
    div: int

    @classmethod
    def of(cls, price: Decimal, decimals: int) -> Rate:
        check_decimals(decimals)
        sign, digits, exp = price.as_tuple()
        assert isinstance(exp, int)  # finite: to_price checked it
        num = int("".join(map(str, digits)) or "0") * (-1 if sign else 1)
        shift = exp + decimals - MWH_PER_KWH_EXP
        return cls(num, 10**shift, 1) if shift >= 0 else cls(num, 1, 10**-shift)

    def units(self, energy_mwh: int) -> int:
        exact = energy_mwh * self.num * self.mul
        if self.div == 1:
            return exact
        q, r = divmod(exact, self.div)  # floor division: 0 <= r < div, for either sign
        if 2 * r > self.div or (2 * r == self.div and q & 1):
            q += 1
        return q


def cost_of_units(units: int, decimals: int) -> Decimal:
    """``units × 10⁻decimals`` as a Decimal, exactly (never -0: an int has no sign)."""
    return Decimal(units).scaleb(-decimals, EXACT)


def line_cost(energy_mwh: int, price: Decimal, decimals: int) -> Decimal:
    """``energy × price`` rounded half-even to ``decimals`` places."""
    return cost_of_units(Rate.of(price, decimals).units(energy_mwh), decimals)


def decimal_text(value: Decimal) -> str:
    """Plain decimal notation with trailing zeros dropped but one digit after the point
    kept (``0.055``, ``57.3102``, ``0.0``): a JSON or CSV reader gets exactly the decimal
    shown, and figures look as they did when they were floats (but never ``1e-06``)."""
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0")
        return text + "0" if text.endswith(".") else text
    return text + ".0"


def kwh_text(energy_mwh: int) -> str:
    """Integer mWh as kWh text, exact (``212418000`` -> ``212.418``)."""
    sign = "-" if energy_mwh < 0 else ""
    whole, frac = divmod(abs(energy_mwh), 1_000_000)
    digits = f"{frac:06d}".rstrip("0") or "0"
    return f"{sign}{whole}.{digits}"
