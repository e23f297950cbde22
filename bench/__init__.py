"""Benchmarks run by `hybridspend bench`; each prints its figures and returns them as a dict."""
