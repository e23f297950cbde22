"""Collector checkpoints: what has been sent, so a restart neither loses nor repeats.

A checkpoint is a small JSON document written atomically (temporary file + rename) after the
events it covers have been flushed to Kafka.  A crash between the flush and the write repeats at
most that last step, and every event carries a deterministic id, so downstream upserts absorb it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from hybridspend.contracts.files import write_replacing

from . import metrics


class Checkpoint:
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.data: dict[str, Any] = json.loads(path.read_text())
        except FileNotFoundError:
            self.data = {}
        except json.JSONDecodeError as exc:
            raise RuntimeError(f"checkpoint {path} is corrupt ({exc.msg}); move it away to start over") from None

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def set(self, key: str, value: Any) -> None:
        self.data[key] = value
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_replacing(self.path, json.dumps(self.data, indent=1, sort_keys=True))
        metrics.CHECKPOINTS.seen(self.path.stem, time.time())
