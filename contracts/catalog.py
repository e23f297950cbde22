"""GPU instance catalog: cloud instance types mapped to GPU model, class, count and memory.

Used by every collector (which billing lines and instances are GPUs) and by the streams (how many
GPUs an instance has).  Extend it from the configuration (``gpu_instance_types``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass


def gpu_class_of(model: str) -> str:
    """'NVIDIA A100-SXM4-80GB' -> 'A100'; 'NVIDIA H100 80GB HBM3' -> 'H100'; 'NVIDIA L4' -> 'L4'."""
    tokens = re.split(r"[\s_-]+", model.upper().replace("NVIDIA", "").replace("TESLA", "").strip())
    for token in tokens:
        if re.fullmatch(r"[A-Z]+\d+[A-Z]?", token):
            return token
    return tokens[0] if tokens and tokens[0] else "unknown"


@dataclass(frozen=True)
class GpuInstanceType:
    provider: str
    instance_type: str
    gpu_model: str
    gpu_class: str
    gpus: int
    gpu_memory_gib: int


def _family(provider: str, model: str, cls: str, mem: int, sizes: dict[str, int]) -> list[GpuInstanceType]:
    return [GpuInstanceType(provider, itype, model, cls, n, mem) for itype, n in sizes.items()]


BUILTIN: list[GpuInstanceType] = [
    # AWS
    *_family("aws", "NVIDIA A100-SXM4-40GB", "A100", 40, {"p4d.24xlarge": 8}),
    *_family("aws", "NVIDIA A100-SXM4-80GB", "A100", 80, {"p4de.24xlarge": 8}),
    *_family("aws", "NVIDIA H100-SXM5-80GB", "H100", 80, {"p5.48xlarge": 8}),
    *_family("aws", "NVIDIA H200-SXM-141GB", "H200", 141, {"p5e.48xlarge": 8, "p5en.48xlarge": 8}),
    *_family("aws", "NVIDIA V100-SXM2-16GB", "V100", 16, {"p3.2xlarge": 1, "p3.8xlarge": 4, "p3.16xlarge": 8}),
    *_family("aws", "NVIDIA V100-SXM2-32GB", "V100", 32, {"p3dn.24xlarge": 8}),
    *_family("aws", "NVIDIA A10G", "A10G", 24, {
        "g5.xlarge": 1, "g5.2xlarge": 1, "g5.4xlarge": 1, "g5.8xlarge": 1, "g5.16xlarge": 1,
        "g5.12xlarge": 4, "g5.24xlarge": 4, "g5.48xlarge": 8}),
    *_family("aws", "NVIDIA L4", "L4", 24, {
        "g6.xlarge": 1, "g6.2xlarge": 1, "g6.4xlarge": 1, "g6.8xlarge": 1, "g6.16xlarge": 1,
        "g6.12xlarge": 4, "g6.24xlarge": 4, "g6.48xlarge": 8}),
    *_family("aws", "NVIDIA T4", "T4", 16, {
        "g4dn.xlarge": 1, "g4dn.2xlarge": 1, "g4dn.4xlarge": 1, "g4dn.8xlarge": 1, "g4dn.16xlarge": 1,
        "g4dn.12xlarge": 4, "g4dn.metal": 8}),
    # GCP
    *_family("gcp", "NVIDIA A100-SXM4-40GB", "A100", 40, {
        "a2-highgpu-1g": 1, "a2-highgpu-2g": 2, "a2-highgpu-4g": 4, "a2-highgpu-8g": 8, "a2-megagpu-16g": 16}),
    *_family("gcp", "NVIDIA A100-SXM4-80GB", "A100", 80, {
        "a2-ultragpu-1g": 1, "a2-ultragpu-2g": 2, "a2-ultragpu-4g": 4, "a2-ultragpu-8g": 8}),
    *_family("gcp", "NVIDIA H100-SXM5-80GB", "H100", 80, {"a3-highgpu-8g": 8, "a3-megagpu-8g": 8}),
    *_family("gcp", "NVIDIA L4", "L4", 24, {
        "g2-standard-4": 1, "g2-standard-8": 1, "g2-standard-12": 1, "g2-standard-16": 1, "g2-standard-32": 1,
        "g2-standard-24": 2, "g2-standard-48": 4, "g2-standard-96": 8}),
]

_INSTANCE_TYPE = re.compile(
    r"\b([a-z][a-z0-9-]*\d[a-z]*\.(?:\d*x?large|metal)"  # AWS: g5.4xlarge, p4d.24xlarge, g4dn.metal
    r"|a[23]-(?:high|mega|ultra|edge)gpu-\d+g|g2-standard-\d+)\b"  # GCP GPU machine types
)


class Catalog:
    def __init__(self, extra: list[GpuInstanceType] = ()) -> None:
        self.by_type: dict[tuple[str, str], GpuInstanceType] = {}
        for item in [*BUILTIN, *extra]:
            self.by_type[(item.provider, item.instance_type)] = item

    def get(self, provider: str, instance_type: str) -> GpuInstanceType | None:
        return self.by_type.get((provider.lower(), instance_type))

    def find_in(self, provider: str, *texts: str | None) -> GpuInstanceType | None:
        """The GPU instance type named anywhere in billing text (SKU, description, resource type)."""
        for text in texts:
            if not text:
                continue
            for match in _INSTANCE_TYPE.finditer(text.lower()):
                found = self.get(provider, match.group(1))
                if found is not None:
                    return found
        return None

    def is_gpu(self, provider: str, instance_type: str) -> bool:
        return self.get(provider, instance_type) is not None


PROVIDER_NAMES = {"aws": "aws", "amazon web services": "aws", "gcp": "gcp", "google cloud": "gcp",
                  "google cloud platform": "gcp", "microsoft": "azure", "azure": "azure", "oracle": "oracle"}


def provider_key(provider_name: str | None) -> str:
    """'AWS', 'Amazon Web Services' -> 'aws'; 'Google Cloud' -> 'gcp'; unknown -> lowercased name."""
    name = (provider_name or "").strip().lower()
    return PROVIDER_NAMES.get(name, name or "unknown")
