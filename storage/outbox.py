"""The alert outbox: alerts queued for delivery, their attempts, and the log of every attempt.

An alert is queued once per route under its alert id (the dedupe key), delivered by the alerter,
and either marked delivered or scheduled for another attempt.  Every attempt is also written to
``alert_log``.  The caller owns the transaction: a poll's alerts are queued, and a batch of
pending alerts is claimed and settled, each inside one ``conn.transaction()``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from hybridspend.contracts.redact import redact


@dataclass(frozen=True)
class PendingAlert:
    alert_id: str
    route: str
    payload: dict[str, Any]
    attempts: int


@dataclass(frozen=True)
class LastQueued:
    """The latest alert queued about a subject on a route."""

    severity: int
    within_cooldown: bool


def queue_alert(conn: psycopg.Connection, alert_id: str, route: str, subject: str, severity: int,
                payload: dict[str, Any]) -> int:
    """Queue one alert; 1 when queued, 0 when that alert id was queued already (nothing changes)."""
    return conn.execute(
        "INSERT INTO alert_outbox (alert_id, route, decision_id, subject, severity, payload)"
        " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (alert_id) DO NOTHING",
        (alert_id, route, subject, subject, severity, Jsonb(payload))).rowcount


def last_queued(conn: psycopg.Connection, subject: str, route: str, cooldown_s: float) -> LastQueued | None:
    """The latest alert about ``subject`` on ``route``, and whether it was queued within ``cooldown_s``."""
    with conn.cursor(row_factory=class_row(LastQueued)) as cur:
        return cur.execute(
            "SELECT severity, created_at > now() - make_interval(secs => %s) AS within_cooldown FROM alert_outbox"
            " WHERE subject = %s AND route = %s ORDER BY created_at DESC LIMIT 1",
            (cooldown_s, subject, route)).fetchone()


def claim_pending(conn: psycopg.Connection, limit: int) -> list[PendingAlert]:
    """Undelivered alerts due now, oldest first, locked for this transaction (other alerters skip them)."""
    with conn.cursor(row_factory=class_row(PendingAlert)) as cur:
        return cur.execute(
            "SELECT alert_id, route, payload, attempts FROM alert_outbox"
            " WHERE delivered_at IS NULL AND next_attempt_at <= now()"
            " ORDER BY created_at, alert_id LIMIT %s FOR UPDATE SKIP LOCKED",
            (limit,)).fetchall()


def undelivered(conn: psycopg.Connection, shown: set[str], limit: int = 1000) -> list[PendingAlert]:
    """Undelivered alerts not in ``shown``, oldest first, read without locking them (a dry run must
    not hold back the real alerter)."""
    with conn.cursor(row_factory=class_row(PendingAlert)) as cur:
        return cur.execute(
            "SELECT alert_id, route, payload, attempts FROM alert_outbox"
            " WHERE delivered_at IS NULL AND NOT (alert_id = ANY(%s))"
            " ORDER BY created_at, alert_id LIMIT %s",
            (list(shown), limit)).fetchall()


def mark_delivered(conn: psycopg.Connection, alert_id: str) -> None:
    conn.execute("UPDATE alert_outbox SET delivered_at = now(), attempts = attempts + 1,"
                 " last_error = NULL WHERE alert_id = %s", (alert_id,))


def schedule_retry(conn: psycopg.Connection, alert_id: str, error: str, backoff_s: float) -> None:
    """Count a failed attempt and make the alert due again ``backoff_s`` seconds from now; the
    error is stored redacted (it may quote a webhook URL)."""
    conn.execute(
        "UPDATE alert_outbox SET attempts = attempts + 1, last_error = %s,"
        " next_attempt_at = now() + make_interval(secs => %s) WHERE alert_id = %s",
        (redact(error)[:1000], backoff_s, alert_id))


def log_attempt(conn: psycopg.Connection, alert_id: str, status: str, detail: str) -> None:
    """One row of ``alert_log`` per attempt: delivered, console or retry."""
    conn.execute("INSERT INTO alert_log (alert_id, status, detail) VALUES (%s, %s, %s)",
                 (alert_id, status, redact(detail)[:500]))


def pending_count(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT count(*) FROM alert_outbox WHERE delivered_at IS NULL").fetchone()[0]
