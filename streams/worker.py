"""Run one Faust worker of the topology (scale out by starting more: they share the partitions)."""

from __future__ import annotations

import logging

from hybridspend.contracts.config import Config
from hybridspend.infra.broker import BrokerProfile

from .topology import build_app


def run_worker(config: Config, bootstrap: str, profile: BrokerProfile, loglevel: str = "warning",
               metrics: bool = False) -> None:
    app = build_app(config, bootstrap, profile)
    if metrics:  # the figures go to infra.metrics' registry, which the entrypoint serves
        from .metrics import instrument

        instrument(app)
    logging.getLogger("faust").setLevel(loglevel.upper())
    worker = quiet_worker(app, loglevel)
    worker.execute_from_commandline()


def quiet_worker(app, loglevel: str):
    """A Faust worker without its terminal spinner.

    With the spinner (always on at WARN and above) Faust sets the root logger to DEBUG so that it
    spins on every record: every debug call of aiokafka and Faust then builds a log record, a few
    percent of the worker's CPU for nothing.
    """
    import faust

    worker = faust.Worker(app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
    worker.spinner = None
    return worker
