"""Time units, and event time's representation: UTC epoch milliseconds.

Every timestamp on the wire and in the cost model is an integer of milliseconds since the epoch,
UTC; these are the only conversions to and from ``datetime`` (docs/design.md, "Clocks").
"""

from __future__ import annotations

from datetime import datetime, timezone

MS_PER_SECOND = 1_000
MS_PER_MINUTE = 60_000
MS_PER_HOUR = 3_600_000
MS_PER_DAY = 86_400_000


def utc_from_ms(ms: int) -> datetime:
    """The UTC instant of an epoch-millisecond timestamp."""
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


def ms_from_utc(ts: datetime) -> int:
    """Epoch milliseconds of an aware datetime (rounded down to the millisecond)."""
    if ts.tzinfo is None:
        raise ValueError(f"a naive datetime has no instant: {ts!r}; give it a time zone")
    return int(ts.timestamp() * 1000)
