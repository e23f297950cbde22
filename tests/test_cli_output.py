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
    assert [r.getMessage() for r in caplog.records if r.name == "kafka.net.selector"] == ["Task <Task> left RUNNING after step; demoting to UNSCHEDULED"]


def test_a_redacted_record_formats_with_fausts_own_formatter():
    """The worker logs through mode's ExtensionFormatter, which reads a record's args; a redacted record must
    still format there (args None became (None,) and every record with arguments was lost to a
    "--- Logging error ---" instead, the worker's warnings that consumers were sent back among them)."""
    import io

    from mode.utils.logging import ExtensionFormatter

    from hybridspend.contracts.redact import install_log_redaction

    install_log_redaction()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(ExtensionFormatter(stream=stream, fmt="%(levelname)s %(message)s"))
    log = logging.getLogger("hybridspend.test.faust-formatter")
    log.addHandler(handler)
    try:
        log.warning("%s[%d]: reading again from there (token xoxb-123456789012-abcdefghij)", "gpu-samples", 3)
    finally:
        log.removeHandler(handler)
    assert stream.getvalue().splitlines() == ["WARNING gpu-samples[3]: reading again from there (token xox-***)"]
