"""A publisher of contract events to their logical topics, counting what it sent."""

from __future__ import annotations

from contracts.topics import Topics


class Publisher:
    def __init__(self, producer, topics: Topics) -> None:
        self.producer = producer
        self.topics = topics
        self.sent = 0

    def send(self, logical_topic: str, key: str, event) -> None:
        self.producer.send(self.topics.name(logical_topic), key=key.encode(), value=event.encode())
        self.sent += 1

    def flush(self) -> None:
        """Block until every event sent so far is acknowledged (call before checkpointing)."""
        self.producer.flush()
