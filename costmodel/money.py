"""Exact money and the calendar constants of the cost model.

Money is ``Decimal`` end to end.  Amounts are carried at full precision while
computing and rounded only for presentation or storage (micro-dollars).
"""

from __future__ import annotations

import calendar
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Callable

HOURS_PER_MONTH = Decimal(730)  # the average month the cost model prices in: 8760 / 12
HOURS_PER_YEAR = Decimal(8760)  # 365 days
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


def calendar_month_hours(at: datetime) -> Decimal:
    """Hours in the calendar month of ``at`` (720 for November, 744 for December)."""
    return Decimal(calendar.monthrange(at.year, at.month)[1] * 24)


def month_forecast_usd(spent_usd: Decimal, at: datetime) -> Decimal | None:
    """Straight-line forecast of a calendar month's spend from what was spent by ``at``.

    None at the very start of the month, before any time has passed to extrapolate from.
    """
    month_start = at.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    elapsed = at - month_start
    elapsed_hours = (Decimal(elapsed.days * 86_400 + elapsed.seconds) + Decimal(elapsed.microseconds) / 10**6) / 3600
    if elapsed_hours <= 0:
        return None
    return spent_usd / elapsed_hours * calendar_month_hours(at)


def range_text(low: Decimal | None, high: Decimal | None, usd: Callable[[Decimal], str]) -> str | None:
    """A savings range for a person: "$low to $high", "the same in every window" when its ends are
    equal (a range whose ends are equal says nothing), None without one."""
    if low is None or high is None:
        return None
    return "the same in every window" if low == high else f"{usd(low)} to {usd(high)}"


def options_ranking_text(horizon_months: int, discount_rate_pct: Decimal, rows: list[tuple[str, Decimal]],
                         usd: Callable[[Decimal], str]) -> str:
    """A decision's options table in one line for a person: the cheapest by present value and the runner-up
    (``rows``: label and present value of each option)."""
    ranked = sorted(rows, key=lambda r: r[1])[:2]
    best = "; runner-up: ".join(f"{label} ({usd(npv)})" for label, npv in ranked)
    return (f"over {horizon_months} months at {Decimal(discount_rate_pct).normalize():f}% a year, "
            f"cheapest by present value: {best}")
