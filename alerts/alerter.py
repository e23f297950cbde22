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
from decimal import Decimal
from typing import Callable

import psycopg
from psycopg.types.json import Jsonb

from contracts.config import AlertRoute, Config
from contracts.events import BreakevenDecision, EventError

from .checks import Figures, Notice, all_notices
from .slack import decision_message, notice_message

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


def post_chat(token: str, channel: str, payload: dict, api_url: str = "https://slack.com/api/",
              timeout_s: float = 10) -> Delivery:
    """chat.postMessage with a bot token; Slack answers 200 with ``ok: false`` for its own errors."""
    from slack_sdk import WebClient
    from slack_sdk.errors import SlackApiError

    client = WebClient(token=token, base_url=api_url, timeout=int(timeout_s))
    try:
        response = client.chat_postMessage(channel=channel, text=payload["text"], blocks=payload.get("blocks"))
        return Delivery(True, response.status_code, None, "ok")
    except SlackApiError as exc:
        status = exc.response.status_code
        header = {k.lower(): v for k, v in (exc.response.headers or {}).items()}.get("retry-after")
        try:
            retry_after = float(header[0] if isinstance(header, list) else header) if status == 429 else None
        except (TypeError, ValueError):
            retry_after = None
        return Delivery(False, status, retry_after, str(exc.response.get("error", ""))[:300])
    except Exception as exc:  # connection refused, DNS, timeout: retry later
        return Delivery(False, 0, None, f"{type(exc).__name__}: {exc}"[:300])


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


def routes_for_notice(config: Config, notice: Notice) -> list[AlertRoute | None]:
    """Budgets and spend rates go to finance, idle capacity and collector silence to the platform team."""
    if not config.alerts.routes:
        return [None]
    return [r for r in config.alerts.routes if r.audience == notice.audience]


def _queue(conn: psycopg.Connection, alert_id: str, route: str, subject: str, severity: int, message: dict) -> int:
    """One outbox row (the alert id is the dedupe key: queuing it again does nothing)."""
    return conn.execute(
        "INSERT INTO alert_outbox (alert_id, route, decision_id, subject, severity, payload)"
        " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (alert_id) DO NOTHING",
        (alert_id, route, subject, subject, severity, Jsonb(message))).rowcount


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
        self._last_checks = 0.0

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
                    added += _queue(conn, f"{d.event_id}|{name}", name, d.event_id, 1, message)
        return added

    def enqueue_notices(self, notices: list[Notice]) -> int:
        """Queue each notice once per cooldown and route; again within it only when its severity rose."""
        conn = self._connection()
        cooldown_s = self.config.alerts.checks.cooldown_hours * 3600
        added = 0
        with conn.transaction():
            for n in notices:
                message = notice_message(n, self.config.alerts.dashboard_url)
                for route in routes_for_notice(self.config, n):
                    name = route.name if route else CONSOLE
                    last = conn.execute(
                        "SELECT severity, created_at > now() - make_interval(secs => %s) FROM alert_outbox"
                        " WHERE subject = %s AND route = %s ORDER BY created_at DESC LIMIT 1",
                        (cooldown_s, n.subject, name)).fetchone()
                    if last is not None and last[1] and n.severity <= last[0]:
                        continue  # sent within the cooldown, and no worse now
                    added += _queue(conn, f"{n.subject}|s{n.severity}|{name}|{time.time_ns()}", name, n.subject,
                                    n.severity, message)
        return added

    def figures(self) -> Figures:
        """What the checks judge, read from the rollups; "now" is event time (the latest window's end)."""
        conn = self._connection()
        now = conn.execute("SELECT max(window_end) FROM cost_windows WHERE basis = 'estimated'").fetchone()[0]
        samples_now = conn.execute("SELECT max(ts) FROM gpu_samples WHERE environment = 'onprem'").fetchone()[0]
        if now is None:
            return Figures(now=None, samples_now=samples_now)
        team = "coalesce(nullif(team, ''), '(none)')"
        month = conn.execute(
            f"SELECT b.team, coalesce(s.spent, 0), b.monthly_budget_usd FROM team_budgets b LEFT JOIN"
            f" (SELECT {team} AS team, sum(cost_usd) AS spent FROM cost_hourly WHERE basis = 'estimated'"
            f"   AND bucket >= date_trunc('month', %(now)s AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"
            f"   AND bucket < %(now)s GROUP BY 1) s ON s.team = b.team ORDER BY b.team",
            {"now": now}).fetchall()
        rate = conn.execute(
            f"SELECT {team}, sum(cost_usd) FILTER (WHERE bucket >= %(now)s - INTERVAL '24 hours'),"
            f"       sum(cost_usd) FILTER (WHERE bucket < %(now)s - INTERVAL '24 hours') / 7,"
            f"       count(DISTINCT date_trunc('day', bucket)) FILTER (WHERE bucket < %(now)s - INTERVAL '24 hours')"
            f"  FROM cost_hourly WHERE basis = 'estimated' AND workload <> 'idle'"
            f"   AND bucket >= %(now)s - INTERVAL '8 days' AND bucket < %(now)s GROUP BY 1 ORDER BY 1",
            {"now": now}).fetchall()
        idle = conn.execute(
            "SELECT gpu_class, sum(cost_usd) FROM cost_hourly WHERE basis = 'estimated' AND workload = 'idle'"
            " AND environment = 'onprem' AND bucket >= %(now)s - INTERVAL '24 hours' AND bucket < %(now)s"
            " GROUP BY 1 ORDER BY 1", {"now": now}).fetchall()
        hosts = conn.execute(
            "SELECT resource, max(ts) FROM gpu_samples WHERE environment = 'onprem'"
            " AND ts >= %s - INTERVAL '24 hours' GROUP BY 1 ORDER BY 1", (samples_now,)).fetchall() \
            if samples_now is not None else []
        return Figures(now=now, team_month=[(t, Decimal(s), Decimal(b)) for t, s, b in month],
                       team_rate=[(t, Decimal(a or 0), Decimal(b or 0), int(d)) for t, a, b, d in rate],
                       idle=[(c, Decimal(v)) for c, v in idle], hosts_last_seen=hosts, samples_now=samples_now)

    def run_checks(self) -> int:
        return self.enqueue_notices(all_notices(self.figures(), self.config.alerts.checks))

    def _sender(self, route_name: str) -> Callable[[dict], Delivery] | None:
        """How to post to a route (webhook or bot token), or None for the console."""
        for route in self.config.alerts.routes:
            if route.name != route_name:
                continue
            if route.slack_webhook_url is not None:
                url = route.slack_webhook_url.resolve()
                return (lambda payload: self.post(url, payload)) if url else None
            if route.slack_bot_token is not None:
                token = route.slack_bot_token.resolve()
                if token:
                    return lambda payload: post_chat(token, route.slack_channel, payload, route.slack_api_url)
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
                send = None if self.dry_run else self._sender(route)
                if send is None:
                    self.say(f"[alert:{route}] {payload['text']}")
                    result = Delivery(True, 0, None, "console" if not self.dry_run else "dry-run")
                else:
                    result = send(payload)
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
                status = ("console" if send is None else "delivered") if result.ok else "retry"
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
            if time.monotonic() - self._last_checks >= self.config.alerts.checks.interval_seconds:
                self._last_checks = time.monotonic()
                self.run_checks()
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

