"""Run one Faust worker of the topology (scale out by starting more: they share the partitions)."""

from __future__ import annotations

import logging

from hybridspend.broker import BrokerProfile
from hybridspend.config import Config

from .topology import build_app


def run_worker(config: Config, bootstrap: str, profile: BrokerProfile, loglevel: str = "warning") -> None:
    import faust

    app = build_app(config, bootstrap, profile)
    logging.getLogger("faust").setLevel(loglevel.upper())
    worker = faust.Worker(app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()
