"""On-prem GPU utilization through NVML (pynvml)."""
