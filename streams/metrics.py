"""The stream worker's Prometheus metrics, copied from Faust's own monitor every few seconds.

Records consumed and produced per topic (``hybridspend_events_in_total`` /
``hybridspend_events_out_total`` with ``service="worker"``) and the consumer lag per input topic
(the highwater mark less the next offset to read, summed over the worker's partitions; a broker
that reports a low highwater mark gives 0, never a negative lag).  The copy runs in the worker's
event loop, so the scrape thread never reads Faust's structures while they change.
"""

from __future__ import annotations

from collections import Counter as Tally

from hybridspend.infra import metrics

EXPORT_EVERY_S = 5.0


def lag_by_topic(end_offsets: dict, read_offsets: dict, committed_offsets: dict) -> dict[str, int]:
    """Records behind per topic, from highwater marks and the last offset read (or committed) per partition."""
    lag: dict[str, int] = {}
    for tp, end in end_offsets.items():
        if tp in read_offsets:
            behind = end - (read_offsets[tp] + 1)
        elif committed_offsets.get(tp) is not None:
            behind = end - committed_offsets[tp]
        else:
            behind = end
        lag[tp.topic] = lag.get(tp.topic, 0) + max(0, behind)
    return lag


def instrument(app) -> None:
    """Keep the worker's figures in the metrics registry (served by ``infra.metrics.serve``)."""
    group = app.conf.id
    copied = {"in": Tally(), "out": Tally()}

    @app.timer(EXPORT_EVERY_S)
    async def export_worker_metrics() -> None:
        monitor = app.monitor
        for direction, counter, now in (("in", metrics.EVENTS_IN, monitor.messages_received_by_topic),
                                        ("out", metrics.EVENTS_OUT, monitor.messages_sent_by_topic)):
            for topic, total in list(now.items()):
                delta = total - copied[direction][topic]
                if delta > 0:
                    counter.labels("worker", topic).inc(delta)
                    copied[direction][topic] = total
        for topic, behind in lag_by_topic(dict(monitor.tp_end_offsets), dict(monitor.tp_read_offsets),
                                          dict(monitor.tp_committed_offsets)).items():
            metrics.CONSUMER_LAG.labels(group, topic).set(behind)
