"""`hybridspend dashboards push`: provision the folder, the datasource and the dashboards through
Grafana's HTTP API (grafana-api), idempotently.

A second push changes nothing: a dashboard is only written when it differs from what Grafana has,
and then with Grafana's current version, so that a concurrent edit in Grafana surfaces as a clear
version-conflict error instead of being overwritten.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import urlparse

from .build import DATASOURCE, all_dashboards

FOLDER_UID = "hybridspend"
FOLDER_TITLE = "hybridspend"
_VOLATILE = ("id", "version")


class PushError(RuntimeError):
    pass


@dataclass
class PushReport:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = []
        for verb, items in (("created", self.created), ("updated", self.updated), ("unchanged", self.unchanged)):
            if items:
                out.append(f"{verb}: {', '.join(items)}")
        return out


def grafana_client(url: str, token: str, timeout_s: float = 10.0):
    from grafana_api.grafana_face import GrafanaFace

    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise PushError(f"--grafana-url must be an http(s) URL, got {url!r}")
    prefix = parsed.path.strip("/")
    return GrafanaFace(auth=token, host=parsed.hostname, port=parsed.port, protocol=parsed.scheme,
                       url_path_prefix=f"{prefix}/" if prefix else "", timeout=timeout_s)


def datasource_spec(db_host: str, db_name: str, db_user: str) -> dict:
    return {
        "uid": DATASOURCE["uid"], "name": "hybridspend", "type": DATASOURCE["type"], "access": "proxy",
        "url": db_host, "user": db_user,
        "jsonData": {"database": db_name, "sslmode": "disable", "timescaledb": True},
    }


def _comparable(dashboard: dict) -> dict:
    return {k: v for k, v in dashboard.items() if k not in _VOLATILE}


def push(grafana, datasource: dict, say: Callable[[str], None] = print) -> PushReport:
    from grafana_api.grafana_api import GrafanaClientError

    api = grafana.api
    report = PushReport()

    def get_or_none(path: str):
        try:
            return api.GET(path)
        except GrafanaClientError as exc:
            if exc.status_code == 404:
                return None
            raise

    try:
        if get_or_none(f"/folders/{FOLDER_UID}") is None:
            grafana.folder.create_folder(FOLDER_TITLE, uid=FOLDER_UID)
            report.created.append(f"folder {FOLDER_UID}")
        else:
            report.unchanged.append(f"folder {FOLDER_UID}")

        existing = get_or_none(f"/datasources/uid/{datasource['uid']}")
        if existing is None:
            api.POST("/datasources", json=datasource)
            report.created.append(f"datasource {datasource['uid']}")
        elif any(existing.get(k) != v for k, v in datasource.items()):
            api.PUT(f"/datasources/uid/{datasource['uid']}", json={**existing, **datasource})
            report.updated.append(f"datasource {datasource['uid']}")
        else:
            report.unchanged.append(f"datasource {datasource['uid']}")

        for uid, dashboard in all_dashboards().items():
            current = get_or_none(f"/dashboards/uid/{uid}")
            if current is not None and _comparable(current["dashboard"]) == _comparable(dashboard):
                report.unchanged.append(uid)
                continue
            body = dict(dashboard)
            body.pop("id", None)
            if current is not None:
                body["id"] = current["dashboard"].get("id")
                body["version"] = current["dashboard"].get("version")
            try:
                api.POST("/dashboards/db", json={"dashboard": body, "folderUid": FOLDER_UID, "overwrite": False,
                                                 "message": "hybridspend dashboards push"})
            except GrafanaClientError as exc:
                if exc.status_code == 412:
                    raise PushError(
                        f"dashboard {uid} was changed in Grafana while pushing (version conflict: "
                        f"{exc.response.get('message') if isinstance(exc.response, dict) else exc.response}); "
                        "nothing was overwritten: export or discard the change in Grafana, then push again"
                    ) from None
                raise
            (report.updated if current is not None else report.created).append(uid)
    except GrafanaClientError as exc:
        if exc.status_code in (401, 403):
            raise PushError(f"Grafana refused the token (HTTP {exc.status_code}); it needs the Editor role") from None
        raise PushError(f"Grafana answered HTTP {exc.status_code}: {exc}") from None
    except OSError as exc:
        raise PushError(f"cannot reach Grafana: {exc}") from None
    for line in report.lines():
        say(line)
    return report
