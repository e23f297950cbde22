"""Contracts: event records, the configuration and the topic names every component shares."""
