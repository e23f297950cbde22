"""Infrastructure: Kafka clients and the broker profile, embedded local services and the process
supervisor, collector checkpoints, publishing."""
