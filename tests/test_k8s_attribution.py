"""Kubernetes attribution through the official client against a local server implementing the pod list and
watch, ReplicaSet and Job reads: pod UID or pod labels -> namespace, pod labels, owner; rules match them."""

from __future__ import annotations

import json
import threading
import time

import pytest
import yaml
from kubernetes.client import ApiException

from hybridspend.collectors.dcgm import DcgmCollector, UrlList
from hybridspend.collectors.k8s import KubernetesInspector, PodDirectory, api_client
from hybridspend.collectors.nvml.collector import ProcessInspector
from hybridspend.contracts.config import Config
from tests.test_dcgm_collector import EXAMPLE, T0, Recorder

pytestmark = pytest.mark.integration  # a local HTTP server

BERT_UID = "1b2c3d4e-aaaa-bbbb-cccc-123456789012"


def pod(name, namespace, uid, owner=None, labels=None, node="dgx-a100-01", version="10"):
    meta = {"name": name, "namespace": namespace, "uid": uid, "labels": labels or {}, "resourceVersion": version}
    if owner:
        meta["ownerReferences"] = [{"apiVersion": "v1", "kind": owner[0], "name": owner[1], "uid": "o-" + uid,
                                    "controller": True}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {"nodeName": node, "containers": [{"name": "main", "image": "x"}]}, "status": {"phase": "Running"}}


PODS = [
    pod("bert-7d9f-abcde", "ml-train-bert", BERT_UID, ("ReplicaSet", "bert-7d9f"),
        {"app.kubernetes.io/name": "bert", "team": "nlp-research"}),
    pod("nightly-28311-xyz", "research-nlp", "22222222-0000-0000-0000-000000000002", ("Job", "nightly-28311")),
    pod("debug", "default", "33333333-0000-0000-0000-000000000003"),
]
WATCH_EVENTS = [
    {"type": "ADDED", "object": pod("ranker-0", "search", "44444444-0000-0000-0000-000000000004",
                                    ("StatefulSet", "ranker"), {"team": "search"}, version="11")},
    {"type": "DELETED", "object": pod("debug", "default", "33333333-0000-0000-0000-000000000003", version="12")},
]
STATE = {"watch": WATCH_EVENTS}


def pods_endpoint(query):
    if query.get("watch", [""])[0].lower() == "true":
        return 200, "".join(json.dumps(e) + "\n" for e in STATE["watch"])
    return 200, json.dumps({"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "10"},
                            "items": PODS})


@pytest.fixture
def kube(http_pages):
    STATE["watch"] = WATCH_EVENTS
    http_pages.handlers["/api/v1/pods"] = pods_endpoint
    http_pages.pages["/apis/apps/v1/namespaces/ml-train-bert/replicasets/bert-7d9f"] = (200, json.dumps(
        {"kind": "ReplicaSet", "metadata": {"name": "bert-7d9f", "namespace": "ml-train-bert", "ownerReferences": [
            {"apiVersion": "apps/v1", "kind": "Deployment", "name": "bert", "uid": "d1", "controller": True}]}}))
    http_pages.pages["/apis/batch/v1/namespaces/research-nlp/jobs/nightly-28311"] = (200, json.dumps(
        {"kind": "Job", "metadata": {"name": "nightly-28311", "namespace": "research-nlp", "ownerReferences": [
            {"apiVersion": "batch/v1", "kind": "CronJob", "name": "nightly", "uid": "c1", "controller": True}]}}))
    return http_pages


def test_pods_are_listed_then_followed_and_resolved_to_their_owning_controller(kube):
    pods = PodDirectory(api_client(kube.url), node_name="dgx-a100-01")
    version = pods.sync()
    assert version == "10"
    assert any("fieldSelector=spec.nodeName%3Ddgx-a100-01" in r for r in kube.requests)  # only this node's pods
    bert = pods.enrich({"k8s_pod_uid": BERT_UID, "pid": "100"})
    assert bert == {
        "pid": "100", "k8s_pod_uid": BERT_UID, "k8s_namespace": "ml-train-bert", "k8s_pod": "bert-7d9f-abcde",
        "k8s_node": "dgx-a100-01", "k8s_owner_kind": "Deployment", "k8s_owner": "bert",  # ReplicaSet -> Deployment
        "k8s_label_app_kubernetes_io_name": "bert", "k8s_label_team": "nlp-research"}
    nightly = pods.lookup({"k8s_namespace": "research-nlp", "k8s_pod": "nightly-28311-xyz"})
    assert (nightly.owner_kind, nightly.owner) == ("CronJob", "nightly")  # Job -> CronJob
    assert pods.lookup({"k8s_namespace": "default", "k8s_pod": "debug"}).owner_kind == ""

    assert pods.follow(version) == "12"
    assert pods.lookup({"k8s_namespace": "default", "k8s_pod": "debug"}) is None  # deleted
    ranker = pods.lookup({"k8s_pod_uid": "44444444-0000-0000-0000-000000000004"})
    assert (ranker.namespace, ranker.owner_kind, ranker.owner) == ("search", "StatefulSet", "ranker")
    assert pods.enrich({"k8s_pod_uid": "unknown"}) == {"k8s_pod_uid": "unknown"}  # not (yet) known: unchanged
    # owners are read once: the ReplicaSet again on the next list costs nothing
    reads = sum("replicasets" in r for r in kube.requests)
    pods.sync()
    assert sum("replicasets" in r for r in kube.requests) == reads == 1


def test_the_owners_remembered_are_bounded_the_least_recently_used_forgotten(kube, monkeypatch):
    import hybridspend.collectors.k8s as k8s

    monkeypatch.setattr(k8s, "MAX_OWNERS", 2)
    pods = PodDirectory(api_client(kube.url))
    reads = lambda: sum("replicasets" in r or "/jobs/" in r for r in kube.requests)  # noqa: E731
    assert pods._owner("ReplicaSet", "ml-train-bert", "bert-7d9f") == ("Deployment", "bert")
    assert pods._owner("Job", "research-nlp", "nightly-28311") == ("CronJob", "nightly")
    assert pods._owner("ReplicaSet", "ml-train-bert", "bert-7d9f") == ("Deployment", "bert")  # remembered
    assert reads() == 2
    pods._owner("Job", "research-nlp", "gone-1")  # a third: the least recently used (the Job) is forgotten
    assert len(pods._owners) == 2
    assert pods._owner("ReplicaSet", "ml-train-bert", "bert-7d9f") == ("Deployment", "bert") and reads() == 3
    assert pods._owner("Job", "research-nlp", "nightly-28311") == ("CronJob", "nightly") and reads() == 4


def test_an_expired_watch_is_raised_and_the_running_directory_lists_again(kube):
    STATE["watch"] = [{"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired",
                                                   "message": "too old resource version"}}]
    pods = PodDirectory(api_client(kube.url))
    pods.sync()
    with pytest.raises(ApiException) as raised:
        pods.follow("1")
    assert raised.value.status == 410
    thread = pods.start()
    deadline = time.monotonic() + 30
    while pods.problems < 2 and time.monotonic() < deadline:  # each expiry: logged, counted, listed again
        time.sleep(0.05)
    pods.close()
    assert not thread.is_alive()  # closed: nothing of it outlives the test to log into the next
    lists = [r for r in kube.requests if r.split("?")[0] == "/api/v1/pods" and "watch" not in r]
    assert pods.problems >= 2 and len(lists) >= 3  # the first sync, then one list after each expiry


def test_workload_rules_match_pod_labels_and_owners_for_exporter_and_nvml_attribution(kube, tmp_path):
    data = yaml.safe_load(EXAMPLE.read_text())
    data["workloads"].insert(0, {"match": {"k8s_label_team": "*", "k8s_owner_kind": "Deployment"},
                                 "workload": "{k8s_namespace}/{k8s_owner}", "team": "{k8s_label_team}"})
    config = Config.model_validate(data)
    pods = PodDirectory(api_client(kube.url))
    pods.sync()
    kube.pages["/metrics"] = (200, (
        '# TYPE DCGM_FI_DEV_GPU_UTIL gauge\n'
        'DCGM_FI_DEV_GPU_UTIL{gpu="0",UUID="GPU-a0",modelName="NVIDIA A100-SXM4-80GB",Hostname="dgx-a100-01",'
        'namespace="ml-train-bert",pod="bert-7d9f-abcde",container="main"} 90\n'
        'DCGM_FI_DEV_GPU_UTIL{gpu="1",UUID="GPU-a1",modelName="NVIDIA A100-SXM4-80GB",Hostname="dgx-a100-01",'
        'namespace="research-nlp",pod="nightly-28311-xyz",container="main"} 90\n'))
    rec = Recorder()
    DcgmCollector(UrlList([f"{kube.url}/metrics"]), rec, lambda labels: config.resolve_workload(pods.enrich(labels)),
                  30, 5, clock=lambda: T0).poll_once()
    (sample,) = rec.events
    assert [(w.workload, w.team) for g in sample.gpus for w in g.workloads] == [
        ("ml-train-bert/bert", "nlp-research"),  # the pod-label rule
        ("research-nlp", "research"),  # no team label: the namespace rules as before
    ]
    # NVML: a process's cgroup names its pod UID; the directory adds the pod's labels and owner
    proc = tmp_path / "100"
    proc.mkdir()
    (proc / "cgroup").write_text(f"0::/kubepods.slice/kubepods-pod{BERT_UID.replace('-', '_')}.slice/x\n")
    (proc / "environ").write_bytes(b"")
    labels = KubernetesInspector(ProcessInspector(tmp_path), pods).labels(100)
    assert config.resolve_workload(labels) == ("ml-train-bert/bert", "nlp-research", False)


def test_collect_dcgm_with_kubernetes_enabled_names_workloads_from_pod_labels(kube, tmp_path, capsys):
    from hybridspend.cli import main

    kube.pages["/metrics"] = (200, (
        '# TYPE DCGM_FI_DEV_GPU_UTIL gauge\n'
        'DCGM_FI_DEV_GPU_UTIL{gpu="0",UUID="GPU-a0",modelName="NVIDIA A100-SXM4-80GB",Hostname="dgx-a100-01",'
        'namespace="ml-train-bert",pod="bert-7d9f-abcde",container="main"} 90\n'))
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump({
        "workloads": [{"match": {"k8s_label_app_kubernetes_io_name": "*"}, "workload": "{k8s_label_app_kubernetes_io_name}",
                       "team": "{k8s_label_team}"}],
        "collectors": {"kubernetes": {"enabled": True, "api_url": kube.url}}}))
    assert main(["collect", "dcgm", "--config", str(config_file), "--state-dir", str(tmp_path),
                 "--url", f"{kube.url}/metrics", "--once", "--dry-run"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert json.loads(line)["gpus"][0]["workloads"][0] == {
        "workload": "bert", "team": "nlp-research", "allow_spot": False, "utilization_pct": None}
    assert not [t for t in threading.enumerate() if t.name == "k8s-pods"]  # the command's pod watch ended with it
