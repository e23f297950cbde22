"""Kafka topic names: the logical topics, what each is keyed by, and their physical names."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hybridspend.contracts.config import KafkaConfig

# logical topic name -> key it is partitioned by
TOPICS = {
    "gpu-samples": "resource (host or instance id)",
    "instance-events": "instance id",
    "prices": "provider|region|instance_type",
    "cost-lines": "billed resource id",
    "cost-windows": "workload",
    "live-spend": "instance id",
    "decisions": "workload",
    "anomalies": "subject (workload, team or host)",
    "dead-letter": "source topic",
}


class Topics:
    """Physical topic names for one deployment (the configured prefix applied)."""

    def __init__(self, prefix: str, partitions: int, replication_factor: int = 1) -> None:
        self.prefix = prefix
        self.partitions = partitions
        self.replication_factor = replication_factor

    def group(self, role: str) -> str:
        """The consumer group (and, for the Faust worker, app id and changelog topic prefix) of a role.

        Prefixed like the topics, so two deployments on one Kafka never share a group or a table.
        """
        return f"{self.prefix}{role}"

    def name(self, logical: str) -> str:
        if logical not in TOPICS:
            raise KeyError(f"unknown topic {logical!r}")
        return self.prefix + logical

    def __getattr__(self, attr: str) -> str:
        logical = attr.replace("_", "-")
        if logical in TOPICS:
            return self.prefix + logical
        raise AttributeError(attr)

    def all(self) -> list[str]:
        return [self.prefix + t for t in TOPICS]

    @classmethod
    def from_config(cls, kafka: KafkaConfig) -> "Topics":
        return cls(kafka.topic_prefix, kafka.topic_partitions, kafka.replication_factor)
