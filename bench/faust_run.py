"""Driver for the Faust benchmarks (run as a subprocess: a Faust worker owns its process).

    python -m bench.faust_run noop|pipeline CONFIG.yaml BOOTSTRAP EXPECTED_MESSAGES RESULT.json

``noop``: one agent reads the samples topic in batches, with the pipeline's consumer settings and
batch size, and does nothing else: the framework's own limit.  ``pipeline``: the real topology (``streams.topology``).  Both
time from the first batch in hand to the end of the batch that held the last expected message,
write the figure to RESULT.json and stop.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import uuid

import faust

from hybridspend.contracts.config import load_config
from hybridspend.contracts.topics import Topics
from hybridspend.infra.broker import LOCAL_PROFILE
from hybridspend.streams.faust_compat import apply_broker_profile
from hybridspend.streams.topology import BATCH_MAX, BATCH_WITHIN_S, STREAM_BUFFER
from hybridspend.streams.worker import quiet_worker


def main(mode: str, config_path: str, bootstrap: str, expected: int, result_path: str) -> None:
    config = load_config(config_path, {})
    topics = Topics.from_config(config.kafka)
    progress = {"first": None, "last": None, "messages": 0, "outputs": 0}

    def seen(n: int) -> None:
        now = time.perf_counter()
        if progress["first"] is None:
            progress["first"] = now
        progress["messages"] += n
        progress["last"] = now

    if mode == "noop":
        app_id = f"bench-noop-{uuid.uuid4().hex[:6]}"
        (config.state_dir / "faust").mkdir(parents=True, exist_ok=True)
        app = faust.App(app_id, broker=f"kafka://{bootstrap}", store="memory://",
                        key_serializer="raw", value_serializer="raw", topic_partitions=topics.partitions,
                        consumer_auto_offset_reset="earliest", web_enabled=False,
                        datadir=str(config.state_dir / "faust" / app_id),
                        stream_buffer_maxsize=STREAM_BUFFER, consumer_max_fetch_size=4 * 1024**2,
                        **LOCAL_PROFILE.faust_settings)
        apply_broker_profile(app, LOCAL_PROFILE)
        source = app.topic(topics.gpu_samples, key_type=bytes, value_type=bytes, partitions=topics.partitions)

        @app.agent(source)
        async def noop(stream):
            async for events in stream.take_events(BATCH_MAX, within=BATCH_WITHIN_S):
                seen(len(events))
    else:
        from hybridspend.streams import processing
        from hybridspend.streams.topology import build_app

        add, close = processing.UsageProcessor.add, processing.UsageProcessor.close

        def counting_add(self, state, sample):
            result = add(self, state, sample)
            seen(1)
            return result

        def timed_close(self, state, resource, watermark_ms):
            out = close(self, state, resource, watermark_ms)
            progress["outputs"] += len(out)
            if progress["messages"]:
                progress["last"] = time.perf_counter()
            return out

        processing.UsageProcessor.add = counting_add
        processing.UsageProcessor.close = timed_close
        app = build_app(config, bootstrap, LOCAL_PROFILE, app_id=f"bench-pipeline-{uuid.uuid4().hex[:6]}")

    @app.timer(0.25)
    async def finished() -> None:
        if progress["messages"] >= expected and time.perf_counter() - progress["last"] > 1.0:
            elapsed = progress["last"] - progress["first"]
            with open(result_path, "w") as f:
                json.dump({"messages": progress["messages"], "seconds": elapsed,
                           "cost_windows": progress["outputs"]}, f)
            os.kill(os.getpid(), signal.SIGTERM)

    quiet_worker(app, "error").execute_from_commandline()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
