"""The process supervisor: the worker, sink and alerter as child processes of one command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hybridspend.contracts.config import Config
from hybridspend.infra.local import Endpoints, die_with_parent


class Services:
    """The worker, sink and alerter as child processes, logs in the state directory."""

    def __init__(self, config: Config, config_path: Path, endpoints: Endpoints) -> None:
        self.procs: dict[str, subprocess.Popen] = {}
        self.log_dir = config.state_dir / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.env = dict(os.environ)
        self.env.update({
            "HYBRIDSPEND_CONFIG": str(config_path),
            "HYBRIDSPEND__STATE_DIR": str(config.state_dir),
            "HYBRIDSPEND__KAFKA__BOOTSTRAP_SERVERS": endpoints.bootstrap,
            "HYBRIDSPEND__DATABASE__DSN": endpoints.dsn,
            "HYBRIDSPEND_BROKER_PROFILE": endpoints.profile.name,
            "PYTHONUNBUFFERED": "1",
        })

    def start(self, name: str, *extra: str, command: str | None = None) -> None:
        """Start ``hybridspend <command or name> extra...`` as ``name`` (its log: <name>.log)."""
        log = open(self.log_dir / f"{name}.log", "ab")
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "hybridspend.cli", command or name, *extra],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
        )
        log.close()

    def check(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                tail = (self.log_dir / f"{name}.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"the {name} exited with status {proc.returncode}; its log ends with:\n{tail}")

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
