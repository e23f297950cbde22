"""The Kubernetes manifests (deploy/kubernetes, a kustomize base), validated offline.

Every object is checked against the Kubernetes OpenAPI schemas bundled with kubernetes-validate
(strict: unknown fields fail); the kustomize build runs where kubectl is installed; and the
manifests are held to what the services need: the commands parse with our own CLI, the GPU
collector lands on GPU nodes with the host's PIDs and the NVIDIA runtime, every service is probed
on the /metrics port it serves, secrets come from Secret objects only.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version

from hybridspend.contracts.config import load_config
from hybridspend.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "deploy" / "kubernetes"
SERVICES = {"worker": "hybridspend-worker", "sink": "hybridspend-sink", "alerter": "hybridspend-alerter"}


def kustomization() -> dict:
    return yaml.safe_load((BASE / "kustomization.yaml").read_text())


def raw_objects() -> list[dict]:
    """The objects of the resource files, as written (before kustomize)."""
    return [doc for name in kustomization()["resources"] for doc in yaml.safe_load_all((BASE / name).read_text())
            if doc]


def built_objects() -> list[dict]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed here: the kustomize build is checked where it is")
    run = subprocess.run(["kubectl", "kustomize", str(BASE)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    return [doc for doc in yaml.safe_load_all(run.stdout) if doc]


def by_name(objects: list[dict]) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objects}


def pod_spec(obj: dict) -> dict:
    return obj["spec"]["template"]["spec"]


def containers(objects: list[dict]):
    for obj in objects:
        if obj["kind"] in ("Deployment", "DaemonSet", "Job"):
            for container in pod_spec(obj)["containers"]:
                yield obj, container


def test_every_object_validates_against_the_kubernetes_schemas():
    version = latest_version()
    objects = raw_objects()
    assert {o["kind"] for o in objects} == {"Deployment", "DaemonSet", "Job"}
    for obj in objects:
        kubernetes_validate.validate(obj, version, strict=True)  # raises ValidationError naming the field
    # strict: a misspelt field fails (hostPid for hostPID would silently do nothing in a cluster)
    daemon = by_name(objects)["hybridspend-nvml-collector"]
    pod_spec(daemon)["hostPid"] = pod_spec(daemon).pop("hostPID")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(daemon, version, strict=True)


def test_kustomize_builds_the_base_and_every_built_object_validates():
    objects = built_objects()
    version = latest_version()
    for obj in objects:
        kubernetes_validate.validate(obj, version, strict=True)
    kinds = sorted((o["kind"], o["metadata"]["name"].rsplit("-", 1)[0] if o["kind"] == "ConfigMap"
                    else o["metadata"]["name"]) for o in objects)
    assert kinds == [("ConfigMap", "hybridspend-config"), ("ConfigMap", "hybridspend-dcgm-urls"),
                     ("ConfigMap", "hybridspend-env"), ("DaemonSet", "hybridspend-nvml-collector"),
                     ("Deployment", "hybridspend-alerter"), ("Deployment", "hybridspend-dcgm-collector"),
                     ("Deployment", "hybridspend-sink"), ("Deployment", "hybridspend-worker"),
                     ("Job", "hybridspend-migrate")]
    assert {o["metadata"].get("namespace") for o in objects} == {"hybridspend"}
    config_maps = {o["metadata"]["name"] for o in objects if o["kind"] == "ConfigMap"}
    for obj, container in containers(objects):
        assert container["image"] == "registry.example.com/hybridspend:0.1.0"
        # the generated (hashed) ConfigMap names are the ones the pods refer to
        refs = [e["configMapRef"]["name"] for e in container.get("envFrom", [])]
        refs += [v["configMap"]["name"] for v in pod_spec(obj).get("volumes", []) if "configMap" in v]
        assert refs and set(refs) <= config_maps, (obj["metadata"]["name"], refs)
    built_config = next(o for o in objects if o["metadata"]["name"].startswith("hybridspend-config-"))
    assert built_config["data"]["config.yaml"] == (BASE / "config.yaml").read_text()


def test_every_command_is_one_our_cli_accepts():
    parser = build_parser()
    for obj, container in containers(raw_objects()):
        args = parser.parse_args(container["args"])  # argparse exits on anything it does not know
        assert callable(args.command_spec.func), obj["metadata"]["name"]
    commands = {o["metadata"]["name"]: c["args"][:2] for o, c in containers(raw_objects())}
    assert commands == {"hybridspend-migrate": ["db", "migrate"], "hybridspend-worker": ["worker", "--metrics-port"],
                        "hybridspend-sink": ["sink", "--metrics-port"],
                        "hybridspend-alerter": ["alerter", "--metrics-port"],
                        "hybridspend-nvml-collector": ["collect", "nvml"],
                        "hybridspend-dcgm-collector": ["collect", "dcgm"]}


def test_the_nvml_collector_runs_on_every_gpu_node_with_host_pids_and_the_nvidia_runtime():
    daemon = by_name(raw_objects())["hybridspend-nvml-collector"]
    assert daemon["kind"] == "DaemonSet"
    spec = pod_spec(daemon)
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert spec["hostPID"] is True and spec["runtimeClassName"] == "nvidia"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    (container,) = spec["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"  # the host it reports
    assert env["NVIDIA_VISIBLE_DEVICES"]["value"] == "all"
    assert "nvidia.com/gpu" not in container["resources"].get("limits", {})  # watches GPUs, allocates none
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["SYS_PTRACE"]}


def test_services_serve_metrics_and_are_probed_there():
    objects = by_name(raw_objects())
    for service, name in SERVICES.items():
        template = objects[name]["spec"]["template"]
        (container,) = template["spec"]["containers"]
        args = container["args"]
        port = int(args[args.index("--metrics-port") + 1])
        assert container["ports"] == [{"name": "metrics", "containerPort": port}]
        assert template["metadata"]["annotations"]["prometheus.io/port"] == str(port)
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["httpGet"] == {"path": "/metrics", "port": "metrics"}, (service, probe)


def test_the_configuration_is_valid_and_the_workers_fit_the_partitions():
    config = load_config(BASE / "config.yaml", {})
    workers = by_name(raw_objects())["hybridspend-worker"]["spec"]["replicas"]
    assert 1 <= workers <= config.kafka.topic_partitions
    assert config.database.password is not None and config.database.password.env == "HYBRIDSPEND_DB_PASSWORD"


def test_secrets_come_from_secret_objects_and_every_container_requests_resources():
    for obj, container in containers(raw_objects()):
        name = obj["metadata"]["name"]
        for env in container.get("env", []):
            if any(word in env["name"] for word in ("PASSWORD", "WEBHOOK", "TOKEN", "SECRET")):
                assert "value" not in env, (name, env["name"])
                assert env["valueFrom"]["secretKeyRef"]["name"] == "hybridspend-secrets", (name, env["name"])
        assert {"cpu", "memory"} <= set(container["resources"]["requests"]), name
        assert "memory" in container["resources"]["limits"], name
        assert container["securityContext"]["allowPrivilegeEscalation"] is False, name
    literals = "\n".join(kustomization()["configMapGenerator"][2]["literals"])
    assert "password" not in literals.lower()


def test_the_collectors_serve_metrics_where_their_annotations_say():
    objects = by_name(raw_objects())
    for name in ("hybridspend-nvml-collector", "hybridspend-dcgm-collector"):
        template = objects[name]["spec"]["template"]
        (container,) = template["spec"]["containers"]
        args = container["args"]
        port = int(args[args.index("--metrics-port") + 1])
        assert container["ports"] == [{"name": "metrics", "containerPort": port}], name
        assert template["metadata"]["annotations"]["prometheus.io/port"] == str(port), name
