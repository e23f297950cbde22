"""The alerter: decisions from Kafka into a durable outbox, then to Slack (or the console).

1. Each decision becomes one outbox row per matching route, keyed ``decision_id|route`` (the
   dedupe key), in the same transaction for the whole poll; Kafka offsets are committed after.
2. Pending rows are posted; a 2xx marks them delivered, anything else schedules a retry with
   backoff (a 429's ``Retry-After`` is honoured).  Every attempt is written to ``alert_log``.
Alerts therefore survive restarts and Slack outages, and each arrives once.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Callable

import psycopg

from hybridspend.contracts.config import AlertRoute, Config
from hybridspend.contracts.events import Anomaly, BreakevenDecision, EventError
from hybridspend.contracts.topics import Topics
from hybridspend.costmodel import REPATRIATE_BUY, TRENDING_REPATRIATION
from hybridspend.infra.clock import Every
from hybridspend.storage import outbox, queries

from .checks import FINANCE, PLATFORM, Figures, Notice, all_notices, anomaly_notice
from .forecaster import BudgetForecaster
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


def retry_after_s(headers) -> float | None:
    """A 429's ``Retry-After`` in seconds, within [0, MAX_BACKOFF_S]; None when absent or not a
    number of seconds (then the usual backoff applies).  ``inf``, ``nan`` and ``1e308`` are no
    reason to wait for ever, or to make the database refuse the retry."""
    header = {str(k).lower(): v for k, v in (headers or {}).items()}.get("retry-after")
    try:
        seconds = float(header[0] if isinstance(header, list) else header)
    except (TypeError, ValueError, IndexError):
        return None
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_BACKOFF_S)


def post_webhook(url: str, payload: dict, timeout_s: float = 10) -> Delivery:
    from slack_sdk.webhook import WebhookClient

    try:
        response = WebhookClient(url, timeout=int(timeout_s)).send_dict(payload)
    except Exception as exc:  # connection refused, DNS, timeout: retry later
        return Delivery(False, 0, None, f"{type(exc).__name__}: {exc}"[:300])
    retry_after = retry_after_s(response.headers) if response.status_code == 429 else None
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
        retry_after = retry_after_s(exc.response.headers) if status == 429 else None
        return Delivery(False, status, retry_after, str(exc.response.get("error", ""))[:300])
    except Exception as exc:  # connection refused, DNS, timeout: retry later
        return Delivery(False, 0, None, f"{type(exc).__name__}: {exc}"[:300])


def routes_for(config: Config, decision: BreakevenDecision) -> list[AlertRoute | None]:
    """Finance gets crossings above its savings threshold, and a purchase only once it met its evidence
    horizon (``thresholds.evidence_hours.repatriate_buy_capacity``); platform gets every crossing and
    the early "trending toward repatriation" notice.

    With no routes configured, alerts go to the console (and the database).
    """
    if not config.alerts.routes:
        return [None]
    buy_horizon_hours = config.thresholds.evidence_hours.repatriate_buy_capacity
    for_finance = decision.kind != TRENDING_REPATRIATION and not (
        decision.kind == REPATRIATE_BUY and (decision.evidence_hours or 0) < buy_horizon_hours)
    chosen: list[AlertRoute | None] = []
    for route in config.alerts.routes:
        if route.audience == "finance" and (
                not for_finance or abs(decision.monthly_savings_usd) < route.min_monthly_savings_usd):
            continue
        chosen.append(route)
    return chosen


def routes_for_notice(config: Config, notice: Notice) -> list[AlertRoute | None]:
    """Budgets go to finance, idle capacity to the platform team."""
    if not config.alerts.routes:
        return [None]
    return [r for r in config.alerts.routes if r.audience == notice.audience]


def routes_for_anomaly(config: Config, anomaly: Anomaly) -> list[AlertRoute | None]:
    """The platform team gets every anomaly; finance too when a day of it is worth at least
    ``anomalies.finance_usd_per_day``."""
    if not config.alerts.routes:
        return [None]
    audiences = {PLATFORM} | ({FINANCE} if anomaly.usd_per_day_at_stake >= config.anomalies.finance_usd_per_day
                              else set())
    return [r for r in config.alerts.routes if r.audience in audiences]


class Alerter:
    def __init__(self, config: Config, dsn: str, consumer=None, *,
                 post: Callable[[str, dict], Delivery] = post_webhook,
                 say: Callable[[str], None] = print, dry_run: bool = False, metrics=None) -> None:
        self.config = config
        self.metrics = metrics  # a storage.metrics.AlerterMetrics, or None
        self.dsn = dsn
        self.consumer = consumer
        self.post = post
        self.say = say
        self.dry_run = dry_run
        self.conn: psycopg.Connection | None = None
        self.delivered = 0
        self._shown: set[str] = set()  # alert ids a dry run printed
        self.checks_due = Every(config.alerts.checks.interval_seconds)  # first with the first poll
        self.forecaster = BudgetForecaster(dsn) if config.alerts.checks.budget_forecast else None
        self.anomaly_topic = Topics.from_config(config.kafka).anomalies

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
                    added += outbox.queue_alert(conn, f"{d.event_id}|{name}", name, d.event_id, 1, message)
        return added

    def enqueue_anomalies(self, anomalies: list[Anomaly]) -> int:
        """Queue each anomaly episode once per route, when it opens (its end is stored, not sent)."""
        conn = self._connection()
        added = 0
        with conn.transaction():
            for a in anomalies:
                if a.state != "open":
                    continue
                notice = anomaly_notice(a, self.config.anomalies.finance_usd_per_day)
                message = notice_message(notice, self.config.alerts.dashboard_url)
                for route in routes_for_anomaly(self.config, a):
                    name = route.name if route else CONSOLE
                    added += outbox.queue_alert(conn, f"{a.episode_id}|{name}", name, a.episode_id, 1, message)
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
                    last = outbox.last_queued(conn, n.subject, name, cooldown_s)
                    if last is not None and last.within_cooldown and n.severity <= last.severity:
                        continue  # sent within the cooldown, and no worse now
                    added += outbox.queue_alert(conn, f"{n.subject}|s{n.severity}|{name}|{time.time_ns()}", name,
                                                n.subject, n.severity, message)
        return added

    def figures(self) -> Figures:
        """What the checks judge, read from the rollups; "now" is event time (the latest window's end)."""
        conn = self._connection()
        now = queries.latest_window_end(conn)
        if now is None:
            return Figures(now=None)
        team_month = [(m.team, m.spent_usd, m.budget_usd) for m in queries.team_month_spend(conn, now)]
        if self.forecaster is not None:  # this hour's forecasts start in the background; the last ones are used
            self.forecaster.request(now, [(team, budget) for team, _, budget in team_month])
        return Figures(
            now=now,
            team_month=team_month,
            team_forecasts=self.forecaster.latest(now) if self.forecaster is not None else {},
            idle=queries.idle_cost_last_day(conn, now))

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

    def show_pending(self) -> int:
        """``--dry-run``: print each undelivered alert once, due or not, and leave it to the real
        alerter (unlocked: a dry run never holds one back)."""
        conn = self._connection()
        with conn.transaction():
            alerts = outbox.undelivered(conn, self._shown)
        for alert in alerts:
            self._shown.add(alert.alert_id)
            self.say(f"[dry-run, not sent: {alert.route}] {alert.payload['text']}")
        return len(alerts)

    def deliver_pending(self, limit: int = 50) -> int:
        if self.dry_run:
            self.show_pending()
            return 0
        conn = self._connection()
        done = 0
        with conn.transaction():
            for alert in outbox.claim_pending(conn, limit):
                send = self._sender(alert.route)
                if send is None:
                    self.say(f"[alert:{alert.route}] {alert.payload['text']}")
                    result = Delivery(True, 0, None, "console")
                else:
                    result = send(alert.payload)
                if result.ok:
                    outbox.mark_delivered(conn, alert.alert_id)
                    done += 1
                else:
                    backoff = result.retry_after_s if result.retry_after_s is not None else min(
                        MAX_BACKOFF_S, 0.5 * 2 ** alert.attempts)
                    outbox.schedule_retry(conn, alert.alert_id, f"HTTP {result.status}: {result.detail}", backoff)
                    log.warning("alert %s to route %s failed (HTTP %s); retry in %.1fs", alert.alert_id, alert.route,
                                result.status, backoff)
                status = ("console" if send is None else "delivered") if result.ok else "retry"
                outbox.log_attempt(conn, alert.alert_id, status, f"HTTP {result.status} {result.detail}")
        self.delivered += done
        return done

    def run_once(self, timeout_ms: int = 300) -> None:
        try:
            if self.consumer is not None:
                polled = self.consumer.poll(timeout_ms=timeout_ms, max_records=1000)
                decisions, anomalies = [], []
                for recs in polled.values():
                    for rec in recs:
                        is_anomaly = rec.topic == self.anomaly_topic
                        try:
                            if is_anomaly:
                                anomalies.append(Anomaly.decode(rec.value))
                            else:
                                decisions.append(BreakevenDecision.decode(rec.value))
                        except EventError as exc:
                            # the sink stores bad result records as dead letters; the alerter skips them
                            log.warning("alerter: skipping a bad %s at %s[%d]@%d: %s",
                                        "anomaly" if is_anomaly else "decision", rec.topic, rec.partition,
                                        rec.offset, exc)
                if decisions:
                    self.enqueue(decisions)
                if anomalies:
                    self.enqueue_anomalies(anomalies)
                if polled:
                    self.consumer.commit()
                    if self.metrics is not None:
                        self.metrics.consumed(polled)
            if self.checks_due.due():
                self.run_checks()
            self.deliver_pending()
            if self.metrics is not None:
                self.metrics.refresh(self._connection())
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
        return outbox.pending_count(self._connection())

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()

