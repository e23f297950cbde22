"""The clocks the code reads, besides event time.

Event time (a sample's ``ts_ms``, a window's start) drives every cost, window and decision and
never depends on when the code runs.  Two other clocks are read, each through this module:

- the **wall clock** (``utc_now``), for horizons measured back from the present: raw-sample
  retention, consumer lag and the "live spend" views;
- the **monotonic clock** (``Every``), for how often periodic work runs (retention passes, lag
  probes, alert checks).  Its origin is arbitrary (on Linux, the machine's boot), so nothing may
  compare it with a fixed number: ``Every`` is due at its first call, then every ``period_s``.

docs/design.md ("Clocks") says what a test must do about each.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Callable


def utc_now() -> datetime:
    """The wall clock, in UTC."""
    return datetime.now(timezone.utc)


class Every:
    """A cadence for periodic work: due at the first ``due()``, then once ``period_s`` has passed
    since the last time it was due.  The same on a machine booted a minute ago or a year ago."""

    def __init__(self, period_s: float, monotonic: Callable[[], float] = time.monotonic) -> None:
        if not period_s >= 0:
            raise ValueError(f"period_s must be >= 0, got {period_s!r}")
        self.period_s = period_s
        self.monotonic = monotonic
        self._next_s: float | None = None  # None: never run, due now

    def due(self) -> bool:
        """True (and the next run scheduled) when the work should run now."""
        now_s = self.monotonic()
        if self._next_s is not None and now_s < self._next_s:
            return False
        self._next_s = now_s + self.period_s
        return True
