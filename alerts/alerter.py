"""The alerter: decisions from Kafka into a durable outbox, then to Slack (or the console).

1. Each decision becomes one outbox row per matching route, keyed ``decision_id|route`` (the
   dedupe key), in the same transaction for the whole poll; Kafka offsets are committed after.
2. Pending rows are posted; a 2xx marks them delivered, anything else schedules a retry with
   backoff (a 429's ``Retry-After`` is honoured).  Every attempt is written to ``alert_log``.
Alerts therefore survive restarts and Slack outages, and each arrives once.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

import psycopg
from psycopg.types.json import Jsonb

from hybridspend.config import AlertRoute, Config
from hybridspend.events import BreakevenDecision, EventError

from .slack import decision_message

log = logging.getLogger(__name__)

CONSOLE = "console"
MAX_BACKOFF_S = 300


@dataclass(frozen=True)
class Delivery:
    ok: bool
    status: int
    retry_after_s: float | None = None
    detail: str = ""


def post_webhook(url: str, payload: dict, timeout_s: float = 10) -> Delivery:
    from slack_sdk.webhook import WebhookClient

    try:
        response = WebhookClient(url, timeout=int(timeout_s)).send_dict(payload)
    except Exception as exc:  # connection refused, DNS, timeout: retry later
        return Delivery(False, 0, None, f"{type(exc).__name__}: {exc}"[:300])
    retry_after = None
    if response.status_code == 429:
        header = {k.lower(): v for k, v in (response.headers or {}).items()}.get("retry-after")
        try:
            retry_after = float(header[0] if isinstance(header, list) else header)
        except (TypeError, ValueError):
            retry_after = None
    return Delivery(200 <= response.status_code < 300, response.status_code, retry_after, str(response.body)[:300])


def routes_for(config: Config, decision: BreakevenDecision) -> list[AlertRoute | None]:
    """Finance gets crossings above its savings threshold; platform gets every crossing.

    With no routes configured, alerts go to the console (and the database).
    """
    if not config.alerts.routes:
        return [None]
    chosen: list[AlertRoute | None] = []
    for route in config.alerts.routes:
        if route.audience == "finance" and abs(decision.monthly_savings_usd) < route.min_monthly_savings_usd:
            continue
        chosen.append(route)
    return chosen


class Alerter:
    def __init__(self, config: Config, dsn: str, consumer=None, *,
                 post: Callable[[str, dict], Delivery] = post_webhook,
                 say: Callable[[str], None] = print, dry_run: bool = False) -> None:
        self.config = config
        self.dsn = dsn
        self.consumer = consumer
        self.post = post
        self.say = say
        self.dry_run = dry_run
        self.conn: psycopg.Connection | None = None
        self.delivered = 0

    def _connection(self) -> psycopg.Connection:
        if self.conn is None or self.conn.closed:
            # autocommit: every unit of work is an explicit transaction(), so now() is never stale
            self.conn = psycopg.connect(self.dsn, connect_timeout=10, autocommit=True)
        return self.conn

    def enqueue(self, decisions: list[BreakevenDecision]) -> int:
        conn = self._connection()
        added = 0
        with conn.transaction():
            for d in decisions:
                message = decision_message(d, self.config.alerts.dashboard_url)
                for route in routes_for(self.config, d):
                    name = route.name if route else CONSOLE
                    cur = conn.execute(
                        "INSERT INTO alert_outbox (alert_id, route, decision_id, payload) VALUES (%s, %s, %s, %s)"
                        " ON CONFLICT (alert_id) DO NOTHING",
                        (f"{d.event_id}|{name}", name, d.event_id, Jsonb(message)),
                    )
                    added += cur.rowcount
        return added

    def _webhook(self, route_name: str) -> str | None:
        for route in self.config.alerts.routes:
            if route.name == route_name and route.slack_webhook_url is not None:
                return route.slack_webhook_url.resolve()
        return None

    def deliver_pending(self, limit: int = 50) -> int:
        conn = self._connection()
        done = 0
        with conn.transaction():
            rows = conn.execute(
                "SELECT alert_id, route, payload, attempts FROM alert_outbox"
                " WHERE delivered_at IS NULL AND next_attempt_at <= now()"
                " ORDER BY created_at, alert_id LIMIT %s FOR UPDATE SKIP LOCKED",
                (limit,),
            ).fetchall()
            for alert_id, route, payload, attempts in rows:
                url = None if self.dry_run else self._webhook(route)
                if url is None:
                    self.say(f"[alert:{route}] {payload['text']}")
                    result = Delivery(True, 0, None, "console" if not self.dry_run else "dry-run")
                else:
                    result = self.post(url, payload)
                if result.ok:
                    conn.execute("UPDATE alert_outbox SET delivered_at = now(), attempts = attempts + 1,"
                                 " last_error = NULL WHERE alert_id = %s", (alert_id,))
                    done += 1
                else:
                    backoff = result.retry_after_s if result.retry_after_s is not None else min(
                        MAX_BACKOFF_S, 0.5 * 2 ** attempts)
                    conn.execute(
                        "UPDATE alert_outbox SET attempts = attempts + 1, last_error = %s,"
                        " next_attempt_at = now() + make_interval(secs => %s) WHERE alert_id = %s",
                        (f"HTTP {result.status}: {result.detail}", backoff, alert_id),
                    )
                    log.warning("alert %s to route %s failed (HTTP %s); retry in %.1fs", alert_id, route,
                                result.status, backoff)
                status = ("console" if url is None else "delivered") if result.ok else "retry"
                conn.execute("INSERT INTO alert_log (alert_id, status, detail) VALUES (%s, %s, %s)",
                             (alert_id, status, f"HTTP {result.status} {result.detail}"[:500]))
        self.delivered += done
        return done

    def run_once(self, timeout_ms: int = 300) -> None:
        try:
            if self.consumer is not None:
                polled = self.consumer.poll(timeout_ms=timeout_ms, max_records=1000)
                decisions = []
                for recs in polled.values():
                    for rec in recs:
                        try:
                            decisions.append(BreakevenDecision.decode(rec.value))
                        except EventError as exc:
                            # the sink stores bad result records as dead letters; the alerter skips them
                            log.warning("alerter: skipping a bad decision at %s[%d]@%d: %s",
                                        rec.topic, rec.partition, rec.offset, exc)
                if decisions:
                    self.enqueue(decisions)
                if polled:
                    self.consumer.commit()
            self.deliver_pending()
        except psycopg.OperationalError as exc:
            # database down: nothing was committed to Kafka for this poll, so it is read again
            log.warning("alerter: database unavailable (%s); retrying", str(exc).splitlines()[0])
            if self.conn is not None:
                self.conn.close()
            self.conn = None
            if self.consumer is not None:
                self._rewind()
            time.sleep(1)

    def _rewind(self) -> None:
        """Seek back to the committed offsets so an unsaved poll is read again."""
        for tp in self.consumer.assignment():
            committed = self.consumer.committed(tp)
            if committed is not None:
                self.consumer.seek(tp, committed)
            else:
                self.consumer.seek_to_beginning(tp)

    def run(self, stop: Callable[[], bool]) -> None:
        while not stop():
            self.run_once()

    def pending_count(self) -> int:
        return self._connection().execute(
            "SELECT count(*) FROM alert_outbox WHERE delivered_at IS NULL").fetchone()[0]

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()

