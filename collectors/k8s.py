"""Kubernetes attribution: a pod UID (from a process's cgroup) or an exporter's pod labels -> namespace, pod
labels and owning controller, from a cached watch of the Kubernetes API (the official ``kubernetes`` client).

``PodDirectory`` lists the pods once (only this node's with ``node_name``), then follows the watch;
when the watch ends or its resource version expires (HTTP 410) it lists again.  Lookups read the
cache only, never the API, so a slow or unreachable API server never holds a collector's tick.
A pod's owner is followed one step further where Kubernetes adds one: a ReplicaSet to its
Deployment, a Job to its CronJob (each read once and cached).

``enrich(labels)`` adds, for the pod the labels name (``k8s_pod_uid``, else ``k8s_namespace`` +
``k8s_pod``): ``k8s_namespace``, ``k8s_pod``, ``k8s_pod_uid``, ``k8s_node``, ``k8s_owner_kind``
(Deployment, StatefulSet, Job, CronJob, ...), ``k8s_owner`` and one ``k8s_label_<key>`` per pod label,
the key with every character outside ``[A-Za-z0-9_]`` as ``_`` (``app.kubernetes.io/name`` ->
``k8s_label_app_kubernetes_io_name``) so that workload rules can match and name by pod labels.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

log = logging.getLogger(__name__)

MAX_OWNERS = 65_536  # owners (ReplicaSets, Jobs) whose controller is remembered: more than a cluster has live

_LABEL_KEY = re.compile(r"[^A-Za-z0-9_]")


@dataclass(frozen=True)
class PodInfo:
    uid: str
    namespace: str
    name: str
    node: str
    labels: dict = field(default_factory=dict)
    owner_kind: str = ""
    owner: str = ""

    def as_labels(self) -> dict[str, str]:
        out = {"k8s_namespace": self.namespace, "k8s_pod": self.name, "k8s_pod_uid": self.uid}
        if self.node:
            out["k8s_node"] = self.node
        if self.owner_kind:
            out["k8s_owner_kind"], out["k8s_owner"] = self.owner_kind, self.owner
        for key, value in self.labels.items():
            out[f"k8s_label_{_LABEL_KEY.sub('_', key)}"] = str(value)
        return out


def api_client(host: str | None = None):
    """A client for ``host`` (tests, a proxy), else in-cluster credentials, else the local kubeconfig."""
    from kubernetes import client, config

    if host:
        configuration = client.Configuration()
        configuration.host = host
        return client.ApiClient(configuration)
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()


def _controller(meta: dict) -> tuple[str, str]:
    refs = meta.get("ownerReferences") or []
    ref = next((r for r in refs if r.get("controller")), refs[0] if refs else None)
    return (ref.get("kind", ""), ref.get("name", "")) if ref else ("", "")


class PodDirectory:
    """Pods by UID and by namespace/name, kept current by a watch."""

    def __init__(self, client_api, node_name: str | None = None, watch_timeout_s: int = 300) -> None:
        from kubernetes import client

        self.core = client.CoreV1Api(client_api)
        self.apps = client.AppsV1Api(client_api)
        self.batch = client.BatchV1Api(client_api)
        self.node_name = node_name
        self.watch_timeout_s = watch_timeout_s
        self._by_uid: dict[str, PodInfo] = {}
        self._by_name: dict[tuple[str, str], PodInfo] = {}
        # a pod's owner -> its controller; least recently used first, at most MAX_OWNERS (a CronJob makes a Job
        # an hour, and a Deployment a ReplicaSet each rollout: the owners of pods long gone are forgotten)
        self._owners: OrderedDict[tuple[str, str, str], tuple[str, str]] = OrderedDict()
        self._lock = threading.Lock()
        self.synced = threading.Event()
        self.closed = threading.Event()
        self.problems = 0

    # -- the cache ----------------------------------------------------------------------------------------------

    def lookup(self, labels: dict[str, str]) -> PodInfo | None:
        with self._lock:
            if uid := labels.get("k8s_pod_uid"):
                return self._by_uid.get(uid)
            if labels.get("k8s_namespace") and labels.get("k8s_pod"):
                return self._by_name.get((labels["k8s_namespace"], labels["k8s_pod"]))
        return None

    def enrich(self, labels: dict[str, str]) -> dict[str, str]:
        pod = self.lookup(labels)
        return {**labels, **pod.as_labels()} if pod else labels

    def _put(self, pod: PodInfo) -> None:
        with self._lock:
            old = self._by_uid.get(pod.uid)
            if old is not None:
                self._by_name.pop((old.namespace, old.name), None)
            self._by_uid[pod.uid] = pod
            self._by_name[(pod.namespace, pod.name)] = pod

    def _drop(self, uid: str) -> None:
        with self._lock:
            old = self._by_uid.pop(uid, None)
            if old is not None and self._by_name.get((old.namespace, old.name)) is old:
                del self._by_name[(old.namespace, old.name)]

    # -- the API ------------------------------------------------------------------------------------------------

    def _owner(self, kind: str, namespace: str, name: str) -> tuple[str, str]:
        """The controller a pod's owner belongs to (ReplicaSet -> Deployment, Job -> CronJob), cached."""
        key = (kind, namespace, name)
        if key in self._owners:
            self._owners.move_to_end(key)
            return self._owners[key]
        owner = (kind, name)
        read = {"ReplicaSet": self.apps.read_namespaced_replica_set, "Job": self.batch.read_namespaced_job}.get(kind)
        if read is not None:
            try:
                body = json.loads(read(name, namespace, _preload_content=False).data)
                parent = _controller(body.get("metadata") or {})
                owner = parent if parent[0] else owner
            except Exception as exc:  # RBAC, a deleted owner: the immediate owner will do
                log.info("k8s: owner %s %s/%s not read: %s", kind, namespace, name, exc)
        self._owners[key] = owner
        if len(self._owners) > MAX_OWNERS:
            self._owners.popitem(last=False)
        return owner

    def _pod(self, raw: dict) -> PodInfo | None:
        meta = raw.get("metadata") or {}
        if not meta.get("uid") or not meta.get("name"):
            return None
        namespace = meta.get("namespace", "")
        kind, name = _controller(meta)
        if kind:
            kind, name = self._owner(kind, namespace, name)
        return PodInfo(uid=meta["uid"], namespace=namespace, name=meta["name"],
                       node=(raw.get("spec") or {}).get("nodeName") or "", labels=dict(meta.get("labels") or {}),
                       owner_kind=kind, owner=name)

    def _selector(self) -> dict:
        return {"field_selector": f"spec.nodeName={self.node_name}"} if self.node_name else {}

    def sync(self) -> str:
        """List the pods and replace the cache; return the list's resource version to watch from."""
        body = json.loads(self.core.list_pod_for_all_namespaces(_preload_content=False, **self._selector()).data)
        pods = [p for p in (self._pod(raw) for raw in body.get("items") or []) if p is not None]
        with self._lock:
            self._by_uid = {p.uid: p for p in pods}
            self._by_name = {(p.namespace, p.name): p for p in pods}
        self.synced.set()
        return (body.get("metadata") or {}).get("resourceVersion", "")

    def follow(self, resource_version: str, stop: Callable[[], bool] = lambda: False) -> str:
        """Apply the watch's events until it ends (server timeout) or ``stop()``; return the last resource version.

        Raise ``kubernetes.client.ApiException`` (410) when the version expired: list again.
        """
        from kubernetes import watch

        w = watch.Watch()
        # with a timeout the client raises ApiException on an ERROR event (410: expired) instead of retrying
        for event in w.stream(self.core.list_pod_for_all_namespaces, resource_version=resource_version,
                              timeout_seconds=self.watch_timeout_s, **self._selector()):
            if not event:
                continue
            raw, kind = event.get("raw_object") or {}, event.get("type")
            resource_version = (raw.get("metadata") or {}).get("resourceVersion", resource_version)
            if kind == "DELETED":
                self._drop((raw.get("metadata") or {}).get("uid", ""))
            elif kind in ("ADDED", "MODIFIED") and (pod := self._pod(raw)) is not None:
                self._put(pod)
            if stop():
                w.stop()
        return resource_version

    def run(self, stop: Callable[[], bool]) -> None:
        """List, then watch, until ``stop()`` or ``close()``; an expired watch or an API error lists again (with
        backoff)."""
        def done() -> bool:
            return self.closed.is_set() or stop()

        backoff_s = 1.0
        version = ""
        while not done():
            try:
                version = version or self.sync()
                if done():  # closed while listing: no new watch
                    break
                version = self.follow(version, done)
                backoff_s = 1.0
            except Exception as exc:
                if done():
                    break
                self.problems += 1
                log.warning("k8s: pod watch: %s; listing again in %.0f s", str(exc)[:300], backoff_s)
                version = ""
                self.closed.wait(backoff_s)
                backoff_s = min(backoff_s * 2, 60.0)

    def start(self, stop: Callable[[], bool] = lambda: False) -> threading.Thread:
        self._thread = threading.Thread(target=self.run, args=(stop,), name="k8s-pods", daemon=True)
        self._thread.start()
        return self._thread

    def close(self, timeout_s: float = 5.0) -> None:
        """End the watch: it stops at its next event or error (a watch with neither ends with the process)."""
        self.closed.set()
        thread = getattr(self, "_thread", None)
        if thread is not None:
            thread.join(timeout_s)


@dataclass
class KubernetesInspector:
    """A process inspector (``collectors.nvml.collector.ProcessInspector``) whose labels the pod directory enriches."""

    inner: object
    pods: PodDirectory

    def labels(self, pid: int) -> dict[str, str]:
        return self.pods.enrich(self.inner.labels(pid))
