"""Periodic work runs on a cadence that does not depend on when the machine booted."""

from __future__ import annotations

import pytest

from hybridspend.infra.clock import Every


def _due_times(origin_s: float) -> list[float]:
    """The seconds after the first call at which an hourly cadence is due, over three hours polled
    every 10 minutes, with the monotonic clock starting at ``origin_s``."""
    now_s = [origin_s]
    every = Every(3600, monotonic=lambda: now_s[0])
    due = []
    for step in range(19):  # 0, 600, ..., 10800 s
        now_s[0] = origin_s + step * 600
        if every.due():
            due.append(step * 600.0)
    return due


def test_a_cadence_is_due_at_its_first_call_then_every_period_however_long_the_machine_has_been_up():
    # due at 0 s, then at 3600 s and 7200 s and 10800 s; the same a few seconds after boot, after
    # three days up, and with a monotonic clock that starts below zero
    expected = [0.0, 3600.0, 7200.0, 10800.0]
    assert _due_times(5.0) == _due_times(3 * 86_400.0) == _due_times(-1e6) == expected


def test_a_cadence_of_zero_is_always_due_and_a_negative_one_is_refused():
    every = Every(0, monotonic=lambda: 1.0)
    assert [every.due() for _ in range(3)] == [True, True, True]
    with pytest.raises(ValueError, match="period_s must be >= 0, got -1"):
        Every(-1)
