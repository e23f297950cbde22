"""Publishers of contract events to their logical topics, counting what they sent.

Every collector publishes through one of these: ``Publisher`` to Kafka, ``PrintingPublisher`` to
stdout (``--dry-run``).  ``watermark`` keeps the cadence of a source's watermarks in one place.
"""

from __future__ import annotations

import sys

from hybridspend.contracts.topics import Topics

from .broker import WATERMARK_EVERY_MS, send_watermarks


class Publisher:
    def __init__(self, producer, topics: Topics, watermarks: bool = True) -> None:
        self.producer = producer
        self.topics = topics
        self.sent = 0
        self.watermarks = watermarks  # off where no worker reads the topics (a one-shot publish on embedded defaults)
        self._marked_ms: dict[str, int] = {}  # source -> event time of its last watermark

    def send(self, logical_topic: str, key: str, event) -> None:
        self.producer.send(self.topics.name(logical_topic), key=key.encode(), value=event.encode())
        self.sent += 1

    def watermark(self, source: str, ts_ms: int, logical_topics: tuple[str, ...] = ("gpu-samples",)) -> bool:
        """Tell every partition of ``logical_topics`` that ``source`` has sent everything before ``ts_ms``,
        once every ``WATERMARK_EVERY_MS`` of its event time (the stream closes windows per partition, and
        a partition that carries none of the source's data must still move on).  True when one was sent."""
        if not self.watermarks or ts_ms - self._marked_ms.get(source, -WATERMARK_EVERY_MS) < WATERMARK_EVERY_MS:
            return False
        send_watermarks(self.producer, self.topics, source, ts_ms, logical_topics)
        self._marked_ms[source] = ts_ms
        return True

    def flush(self) -> None:
        """Block until every event sent so far is acknowledged (call before checkpointing)."""
        self.producer.flush()


class PrintingPublisher:
    """``--dry-run``: each event it would publish, as one JSON line on stdout (the event's own encoding)."""

    def __init__(self) -> None:
        self.sent = 0

    def send(self, logical_topic: str, key: str, event) -> None:
        print(event.encode().decode(), flush=True)
        self.sent += 1

    def watermark(self, source: str, ts_ms: int, logical_topics: tuple[str, ...] = ("gpu-samples",)) -> bool:
        return False  # stream progress, not an event: nothing to show

    def flush(self) -> None:
        sys.stdout.flush()
