"""What a person reads: library diagnostics that mean nothing to a user are quieted, others kept."""

from __future__ import annotations

import logging

from hybridspend.infra.broker import quiet_client_diagnostics


def test_kafka_pythons_slow_step_notice_is_quieted_and_its_other_warnings_kept(caplog):
    quiet_client_diagnostics()
    quiet_client_diagnostics()  # idempotent: one filter
    selector = logging.getLogger("kafka.net.selector")
    assert len(selector.filters) == 1
    with caplog.at_level(logging.WARNING, logger="kafka.net.selector"):
        selector.warning("Task %r ran for %.3fs (>%.3fs threshold). It is blocking the event loop -- likely a tight"
                         " sync loop inside a coroutine. Other pollers will time out." % ("<Task>", 0.117, 0.1))
        selector.warning("Task %s left RUNNING after step; demoting to UNSCHEDULED", "<Task>")
    assert [r.getMessage() for r in caplog.records] == ["Task <Task> left RUNNING after step; demoting to UNSCHEDULED"]
