"""Exact money and the calendar constants of the cost model.

Money is ``Decimal`` end to end.  Amounts are carried at full precision while
computing and rounded only for presentation or storage (micro-dollars).
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation

HOURS_PER_MONTH = Decimal(730)
HOURS_PER_YEAR = Decimal(8760)
ZERO = Decimal(0)
ONE = Decimal(1)
MICRO = Decimal("0.000001")
CENT = Decimal("0.01")


def dec(value: object, *, name: str = "value") -> Decimal:
    """Convert a number or numeric string to Decimal without going through binary float error.

    Floats are converted through ``repr`` so that ``0.1`` becomes ``Decimal('0.1')``.
    """
    if isinstance(value, Decimal):
        result = value
    elif isinstance(value, bool):
        raise ValueError(f"{name}: expected a number, got {value!r}")
    elif isinstance(value, int):
        result = Decimal(value)
    elif isinstance(value, float):
        result = Decimal(repr(value))
    elif isinstance(value, str):
        try:
            result = Decimal(value.strip())
        except InvalidOperation:
            raise ValueError(f"{name}: expected a number, got {value!r}") from None
    else:
        raise ValueError(f"{name}: expected a number, got {value!r}")
    if not result.is_finite():
        raise ValueError(f"{name}: expected a finite number, got {value!r}")
    return result


def micro(amount: Decimal) -> Decimal:
    """Round to micro-dollars (the storage precision), banker's rounding."""
    return amount.quantize(MICRO, rounding=ROUND_HALF_EVEN)


def cents(amount: Decimal) -> Decimal:
    return amount.quantize(CENT, rounding=ROUND_HALF_EVEN)
