"""Pipeline throughput: GPU samples through one Faust worker, beside a do-nothing Faust agent and a
raw aiokafka consume-and-decode loop, all on the same broker and the same messages.

The messages are what the NVML collector publishes: one per node per tick carrying its 8 GPUs
(docs/design.md, "Throughput").  Throughputs are in GPU samples per second (8 per message).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from hybridspend.contracts.config import EXAMPLE_CONFIG
from hybridspend.contracts.events import GpuReading, GpuSample, WorkloadShare
from hybridspend.contracts.topics import Topics
from hybridspend.infra.broker import ensure_topics, make_producer, send_watermarks

GPUS = 8
NODES = 100
INTERVAL_MS = 60_000
START_MS = 1_790_812_800_000  # 2026-10-01T00:00:00Z


def messages(count: int) -> list[GpuSample]:
    out = []
    for i in range(count):
        tick, node = divmod(i, NODES)
        ts = START_MS + (tick + 1) * INTERVAL_MS
        host = f"dgx-a100-{node:03d}"
        gpus = [GpuReading(uuid=f"GPU-{node}-{g}", index=g, model="NVIDIA A100-SXM4-80GB", gpu_class="A100",
                           utilization_pct=float((node * 7 + g * 11 + tick) % 100), memory_used_mib=4096,
                           memory_total_mib=81920, power_mw=300_000,
                           workloads=[WorkloadShare(f"ml-train-{node % 20}", "ml")] if g < 6 else [])
                for g in range(GPUS)]
        out.append(GpuSample(event_id=f"bench:{host}:{ts}", ts_ms=ts, interval_ms=INTERVAL_MS, resource=host,
                             environment="onprem", source="bench", gpus=gpus))
    return out


async def _raw(bootstrap: str, topic: str, expected: int) -> float:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                max_partition_fetch_bytes=8 * 1024 * 1024)
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        seen, first = 0, None
        while seen < expected:
            batches = await consumer.getmany(timeout_ms=500, max_records=10_000)
            if first is None and batches:
                first = time.perf_counter()
            for records in batches.values():
                for rec in records:
                    data = json.loads(rec.value)
                    if data.get("schema") == "gpu_sample.v1":
                        seen += 1
        return time.perf_counter() - first
    finally:
        await consumer.stop()


def _faust(mode: str, config_path: Path, bootstrap: str, expected: int, tmp: Path) -> dict:
    result = tmp / f"{mode}.json"
    done = subprocess.run([sys.executable, "-m", "bench.faust_run", mode, str(config_path), bootstrap, str(expected),
                           str(result)], capture_output=True, text=True, timeout=600)
    if not result.exists():
        raise RuntimeError(f"the {mode} Faust run wrote no result (exit {done.returncode}):\n{done.stderr[-2000:]}")
    return json.loads(result.read_text())


def run(bootstrap: str, quick: bool, say=print) -> dict:
    count = 3_000 if quick else 12_000
    data = messages(count)
    with tempfile.TemporaryDirectory(prefix="hs-bench-pipeline-") as tmp_name:
        tmp = Path(tmp_name)
        config = yaml.safe_load(EXAMPLE_CONFIG.read_text())
        config["kafka"] = {"topic_prefix": f"benchp{int(time.time())}.", "topic_partitions": 4,
                           "bootstrap_servers": bootstrap}
        config["state_dir"] = str(tmp)
        config_path = tmp / "config.yaml"
        config_path.write_text(yaml.safe_dump(config))
        from hybridspend.contracts.config import load_config

        cfg = load_config(config_path, {})
        topics = Topics.from_config(cfg.kafka)
        ensure_topics(bootstrap, cfg.kafka, topics)
        producer = make_producer(bootstrap, cfg.kafka, linger_ms=50, batch_size=256 * 1024)
        for s in data:
            producer.send(topics.gpu_samples, key=s.resource.encode(), value=s.encode())
        send_watermarks(producer, topics, "bench", data[-1].ts_ms + INTERVAL_MS)
        producer.flush()
        producer.close()
        gpu_samples = count * GPUS
        say(f"  {count:,} node messages ({gpu_samples:,} GPU samples, {NODES} nodes x {GPUS} GPUs) on the local broker")

        raw_s = asyncio.run(_raw(bootstrap, topics.gpu_samples, count))
        say(f"  raw aiokafka + json.loads  {gpu_samples / raw_s:>10,.0f} GPU samples/s")
        noop = _faust("noop", config_path, bootstrap, count, tmp)
        say(f"  do-nothing Faust agent     {gpu_samples / noop['seconds']:>10,.0f} GPU samples/s")
        pipe = _faust("pipeline", config_path, bootstrap, count, tmp)
        say(f"  pipeline (one worker)      {gpu_samples / pipe['seconds']:>10,.0f} GPU samples/s "
            f"({pipe['cost_windows']:,} cost windows out)")
    return {
        "pipeline_samples_per_s": round(gpu_samples / pipe["seconds"]),
        "faust_noop_samples_per_s": round(gpu_samples / noop["seconds"]),
        "raw_samples_per_s": round(gpu_samples / raw_s),
        "pipeline_ratio": round(noop["seconds"] / pipe["seconds"], 3),
    }
