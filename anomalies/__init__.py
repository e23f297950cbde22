"""Streaming anomaly detection against seasonal baselines: ``anomalies.detect`` (pure)."""
