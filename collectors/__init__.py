"""Collectors: on-prem GPU utilization and cloud spend into Kafka."""
