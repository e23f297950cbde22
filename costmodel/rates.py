"""Hourly GPU rates: on-prem fully loaded cost and cloud offers (docs/design.md, "Domain model").

Everything here is per GPU and in USD unless the name says otherwise.
"""

from __future__ import annotations

import bisect
import calendar
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal

from .money import HOURS_PER_MONTH, HOURS_PER_YEAR, ZERO, dec


class CostModelError(ValueError):
    """Invalid input to the cost model; the message names the field, the value and what was expected."""


def _positive(name: str, value: Decimal) -> Decimal:
    if value <= 0:
        raise CostModelError(f"{name} must be > 0, got {value}")
    return value


def _non_negative(name: str, value: Decimal) -> Decimal:
    if value < 0:
        raise CostModelError(f"{name} must be >= 0, got {value}")
    return value


@dataclass(frozen=True)
class OnPremRate:
    capex_usd_per_gpu_hour: Decimal
    energy_usd_per_gpu_hour: Decimal
    upkeep_usd_per_gpu_hour: Decimal

    @property
    def usd_per_gpu_hour(self) -> Decimal:
        return self.capex_usd_per_gpu_hour + self.energy_usd_per_gpu_hour + self.upkeep_usd_per_gpu_hour

    @property
    def opex_usd_per_gpu_hour(self) -> Decimal:
        """Energy + upkeep: what an owned GPU still costs once its capex is sunk."""
        return self.energy_usd_per_gpu_hour + self.upkeep_usd_per_gpu_hour


@dataclass(frozen=True)
class OnPremGpuCost:
    """Cost parameters of one owned GPU (profile values already divided per GPU)."""

    gpu_class: str
    purchase_price_usd_per_gpu: Decimal
    amortization_months: int
    power_w: Decimal  # configured average draw, used when no measured power is present
    pue: Decimal
    electricity_usd_per_kwh: Decimal
    upkeep_usd_per_year_per_gpu: Decimal
    in_service_date: date | None = None
    capex_after_amortization: bool = False

    def __post_init__(self) -> None:
        _non_negative("purchase_price_usd_per_gpu", self.purchase_price_usd_per_gpu)
        if self.amortization_months <= 0:
            raise CostModelError(f"amortization_months must be > 0, got {self.amortization_months}")
        _non_negative("power_w", self.power_w)
        if self.pue < 1:
            raise CostModelError(f"pue must be >= 1, got {self.pue}")
        _non_negative("electricity_usd_per_kwh", self.electricity_usd_per_kwh)
        _non_negative("upkeep_usd_per_year_per_gpu", self.upkeep_usd_per_year_per_gpu)

    def capex_ends_on(self) -> date | None:
        """The first day capex is no longer charged (fully depreciated), None if never: once
        ``amortization_months`` whole calendar months have passed since the in-service date, so that
        month's in-service day, or the next month's first day when the month is shorter."""
        if self.in_service_date is None or self.capex_after_amortization:
            return None
        start = self.in_service_date
        years, month0 = divmod(start.month - 1 + self.amortization_months, 12)
        year, month = start.year + years, month0 + 1
        if start.day <= calendar.monthrange(year, month)[1]:
            return date(year, month, start.day)
        return date(year + 1, 1, 1) if month == 12 else date(year, month + 1, 1)

    def capex_usd_per_gpu_hour(self, at: datetime | None = None) -> Decimal:
        ends = self.capex_ends_on()
        if at is not None and ends is not None and at.date() >= ends:
            return ZERO  # fully depreciated
        return self.purchase_price_usd_per_gpu / (Decimal(self.amortization_months) * HOURS_PER_MONTH)

    def energy_usd_per_kwh_at_meter(self) -> Decimal:
        """USD per kWh drawn by the GPU, facility overhead (PUE) included."""
        return self.pue * self.electricity_usd_per_kwh

    def energy_usd_per_gpu_hour(self, power_w: Decimal | None = None) -> Decimal:
        watts = self.power_w if power_w is None else power_w
        return watts / 1000 * self.energy_usd_per_kwh_at_meter()

    def upkeep_usd_per_gpu_hour(self) -> Decimal:
        return self.upkeep_usd_per_year_per_gpu / HOURS_PER_YEAR

    def rate(self, at: datetime | None = None, power_w: Decimal | None = None) -> OnPremRate:
        return OnPremRate(
            capex_usd_per_gpu_hour=self.capex_usd_per_gpu_hour(at),
            energy_usd_per_gpu_hour=self.energy_usd_per_gpu_hour(power_w),
            upkeep_usd_per_gpu_hour=self.upkeep_usd_per_gpu_hour(),
        )


def discounted_usd_per_gpu_hour(usd_per_instance_hour: Decimal, discount_pct: Decimal,
                                gpus_per_instance: int) -> Decimal:
    """One GPU's share of an instance's hourly price, less the contract discount (in percent)."""
    if gpus_per_instance <= 0:
        raise CostModelError(f"gpus_per_instance must be > 0, got {gpus_per_instance}")
    if not ZERO <= discount_pct < 100:
        raise CostModelError(f"discount_pct must be in [0, 100), got {discount_pct}")
    return usd_per_instance_hour * (1 - discount_pct / 100) / gpus_per_instance


def effective_usd_per_hour(usd_per_hour: Decimal, upfront_usd: Decimal, term_years: int = 1) -> Decimal:
    """A reservation's hourly fee plus its upfront fee spread over every hour of its term (8760 a year)."""
    if term_years <= 0:
        raise CostModelError(f"term_years must be > 0, got {term_years}")
    return usd_per_hour + upfront_usd / (HOURS_PER_YEAR * term_years)


PURCHASE_OPTIONS = ("on_demand", "spot", "reserved", "savings_plan", "committed_use", "reserved_3y",
                    "savings_plan_3y", "committed_use_3y")
# paid for every hour of a term, used or not: AWS Reserved Instances and Savings Plans, GCP committed use;
# the plain names are 1-year terms, the _3y ones 3-year terms
COMMITMENT_TERM_MONTHS = {"reserved": 12, "savings_plan": 12, "committed_use": 12,
                          "reserved_3y": 36, "savings_plan_3y": 36, "committed_use_3y": 36}
COMMITTED_OPTIONS = tuple(COMMITMENT_TERM_MONTHS)


@dataclass(frozen=True)
class CloudOffer:
    provider: str
    region: str
    instance_type: str
    gpu_class: str
    gpus_per_instance: int
    usd_per_hour: dict[str, Decimal] = field(default_factory=dict)  # per instance, by purchase option
    discount_pct: Decimal = ZERO  # contract discount applied on top of list price

    def __post_init__(self) -> None:
        if self.gpus_per_instance <= 0:
            raise CostModelError(
                f"offer {self.instance_type}: gpus_per_instance must be > 0, got {self.gpus_per_instance}"
            )
        for option, price in self.usd_per_hour.items():
            if option not in PURCHASE_OPTIONS:
                raise CostModelError(
                    f"offer {self.instance_type}: purchase option must be one of {', '.join(PURCHASE_OPTIONS)}, "
                    f"got {option!r}"
                )
            _non_negative(f"offer {self.instance_type}: usd_per_hour.{option}", price)

    def usd_per_gpu_hour(self, purchase_option: str = "on_demand") -> Decimal | None:
        price = self.usd_per_hour.get(purchase_option)
        if price is None:
            return None
        return discounted_usd_per_gpu_hour(price, self.discount_pct, self.gpus_per_instance)


def _later(history: list[tuple[int, Decimal]], ts_ms: int) -> int:
    """The index of the first price in ``history`` (sorted by effective time) effective after ``ts_ms``."""
    return bisect.bisect_right(history, ts_ms, key=lambda p: p[0])


class PriceBook:
    """Live instance prices (per instance-hour) by provider, region, instance type and purchase option.

    Each price is kept as a history by effective time, so a window is priced at the price in
    force when it started, whatever order the updates and the usage arrive in.
    """

    def __init__(self) -> None:
        self._history: dict[tuple[str, str, str, str], list[tuple[int, Decimal]]] = {}
        self.version = 0

    def forget_before(self, cutoff_ms: int) -> int:
        """Drop the prices superseded before ``cutoff_ms`` (each key keeps the one in force then and every later
        one): a spot price changes several times a day, and a worker running for a year would keep them all.
        The caller picks a cutoff no window still to be priced starts before; returns how many were dropped."""
        dropped = 0
        for history in self._history.values():
            in_force = _later(history, cutoff_ms) - 1
            if in_force > 0:
                del history[:in_force]
                dropped += in_force
        return dropped

    def kept(self) -> int:
        """The prices kept, over every key (not ``__len__``: an empty book is still the book to fill)."""
        return sum(len(h) for h in self._history.values())

    def update(self, provider: str, region: str, instance_type: str, purchase_option: str, ts_ms: int,
               usd_per_hour: Decimal) -> bool:
        history = self._history.setdefault((provider, region, instance_type, purchase_option), [])
        after = _later(history, ts_ms)
        if after and history[after - 1][1] == usd_per_hour:
            return False  # a refresh of the price already in force (collectors republish it): nothing new
        if after and history[after - 1][0] == ts_ms:
            history[after - 1] = (ts_ms, usd_per_hour)
        else:
            history.insert(after, (ts_ms, usd_per_hour))
        self.version += 1
        return True

    def usd_per_hour(self, provider: str, region: str, instance_type: str, purchase_option: str,
                     at_ms: int | None = None) -> Decimal | None:
        """The price in force at ``at_ms`` (the latest one when None); before the first update, that one.

        None only when no price is known for the key at all.
        """
        history = self._history.get((provider, region, instance_type, purchase_option))
        if not history:
            return None
        if at_ms is None:
            return history[-1][1]
        return history[max(0, _later(history, at_ms) - 1)][1]

    def apply(self, offer: CloudOffer, at_ms: int | None = None) -> CloudOffer:
        """``offer`` with its list prices replaced by the live ones in force at ``at_ms`` (discount kept)."""
        live = {}
        for (provider, region, itype, option) in self._history:
            if (provider, region, itype) == (offer.provider, offer.region, offer.instance_type):
                price = self.usd_per_hour(provider, region, itype, option, at_ms)
                if price is not None:
                    live[option] = price
        if not live:
            return offer
        return CloudOffer(offer.provider, offer.region, offer.instance_type, offer.gpu_class,
                          offer.gpus_per_instance, {**offer.usd_per_hour, **live}, offer.discount_pct)


def throughput_factor(from_class: str, to_class: str, throughput: dict[str, Decimal]) -> Decimal:
    """GPUs of ``to_class`` needed to do the work of one GPU of ``from_class``.

    With H100 = 3 and A100 = 1, one H100-hour of work needs 3 A100-hours.
    Unknown classes count as 1 (and are only compared with themselves by the callers).
    """
    if from_class == to_class:
        return Decimal(1)
    source = throughput.get(from_class, Decimal(1))
    target = throughput.get(to_class, Decimal(1))
    return source / target


__all__ = [
    "CloudOffer",
    "CostModelError",
    "OnPremGpuCost",
    "OnPremRate",
    "PriceBook",
    "PURCHASE_OPTIONS",
    "dec",
    "discounted_usd_per_gpu_hour",
    "effective_usd_per_hour",
    "throughput_factor",
]
