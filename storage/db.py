"""Schema migrations and the database connection (psycopg 3).

Migrations are the numbered SQL files in ``storage/migrations``; ``schema_version`` records
which ones ran.  A database whose schema is newer than this code knows is refused rather than
written to.  TimescaleDB is used when the extension is available (reported at start-up), plain
PostgreSQL otherwise.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import psycopg

from .timeseries import POSTGRESQL, TIMESCALEDB, after_migration, render

log = logging.getLogger(__name__)

_MIGRATION_NAME = re.compile(r"^(\d{3})_([a-z0-9_]+?)(?:\.(postgresql|timescaledb))?\.sql$")
ENGINES = (POSTGRESQL, TIMESCALEDB)


class SchemaError(RuntimeError):
    pass


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str  # rendered for one engine


def migrations(engine: str = POSTGRESQL) -> list[Migration]:
    """The migrations for an engine: ``NNN_name.sql`` for both, ``NNN_name.<engine>.sql`` for one."""
    found: dict[int, Migration] = {}
    for entry in sorted((Path(__file__).parent / "migrations").iterdir()):
        m = _MIGRATION_NAME.match(entry.name)
        if not m or m.group(3) not in (None, engine):
            continue
        version = int(m.group(1))
        if version in found:
            raise SchemaError(f"two migrations numbered {version:03d} for {engine}")
        found[version] = Migration(version, m.group(2), render(entry.read_text(), engine))
    versions = sorted(found)
    if versions != list(range(1, len(versions) + 1)):
        raise SchemaError(f"migration files must be numbered 001, 002, ... without gaps, found {versions}")
    return [found[v] for v in versions]


def latest_version() -> int:
    return migrations()[-1].version


def connect(dsn: str, **kwargs) -> psycopg.Connection:
    return psycopg.connect(dsn, connect_timeout=10, **kwargs)


def timescaledb_available(conn: psycopg.Connection) -> bool:
    row = conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'").fetchone()
    return row is not None


def current_version(conn: psycopg.Connection) -> int:
    exists = conn.execute("SELECT to_regclass('schema_version')").fetchone()[0]
    if exists is None:
        return 0
    return conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()[0]


def engine_of(conn: psycopg.Connection) -> str:
    """The engine this database's schema was built for (recorded by the first migration)."""
    if conn.execute("SELECT to_regclass('hybridspend_meta')").fetchone()[0] is None:
        raise SchemaError("the database is not migrated: run `hybridspend db migrate`")
    row = conn.execute("SELECT value FROM hybridspend_meta WHERE key = 'engine'").fetchone()
    return row[0]


def migrate(dsn: str, engine: str | None = None) -> tuple[int, int, str]:
    """Apply pending migrations; return (version before, version after, engine).

    The engine is chosen the first time and kept: ``engine`` when given, else TimescaleDB when the
    extension is available, else plain PostgreSQL.  Asking for another engine than the one a
    database was built for is refused.
    """
    if engine is not None and engine not in ENGINES:
        raise SchemaError(f"unknown database engine {engine!r}; expected one of {', '.join(ENGINES)}")
    with connect(dsn, autocommit=True) as conn:
        # one migrator at a time
        conn.execute("SELECT pg_advisory_lock(727274)")
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS hybridspend_meta (key text PRIMARY KEY, value text NOT NULL)")
            available = timescaledb_available(conn)
            if engine == TIMESCALEDB and not available:
                raise SchemaError("engine timescaledb was asked for, but this server has no TimescaleDB extension")
            chosen = engine or (TIMESCALEDB if available else POSTGRESQL)
            conn.execute("INSERT INTO hybridspend_meta VALUES ('engine', %s) ON CONFLICT (key) DO NOTHING",
                         (chosen,))
            built_for = engine_of(conn)
            if engine is not None and built_for != engine:
                raise SchemaError(f"the database was built for engine {built_for}, not {engine}")
            engine = built_for
            if engine == TIMESCALEDB:
                conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
            known = migrations(engine)
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version ("
                " version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            before = current_version(conn)
            if before > known[-1].version:
                raise SchemaError(
                    f"the database schema is version {before}, newer than this hybridspend knows "
                    f"({known[-1].version}); upgrade hybridspend before using this database"
                )
            for mig in known:
                if mig.version <= before:
                    continue
                with conn.transaction():
                    conn.execute(mig.sql)
                    after_migration(conn, mig.version, engine)
                    conn.execute(
                        "INSERT INTO schema_version (version, name) VALUES (%s, %s)", (mig.version, mig.name)
                    )
                log.info("applied migration %03d_%s (%s)", mig.version, mig.name, engine)
            return before, known[-1].version, engine
        finally:
            conn.execute("SELECT pg_advisory_unlock(727274)")


def check_schema(conn: psycopg.Connection) -> None:
    """Refuse to work against a database that is not migrated, or migrated by a newer version."""
    version = current_version(conn)
    latest = latest_version()
    if version < latest:
        raise SchemaError(f"the database schema is version {version}, expected {latest}: run `hybridspend db migrate`")
    if version > latest:
        raise SchemaError(
            f"the database schema is version {version}, newer than this hybridspend knows ({latest}); upgrade hybridspend"
        )


def sync_budgets(dsn: str, budgets: dict) -> None:
    """Make ``team_budgets`` equal the configured budgets (team -> monthly USD)."""
    with connect(dsn) as conn, conn.transaction():
        conn.execute("DELETE FROM team_budgets WHERE NOT (team = ANY(%s))", (list(budgets),))
        for team, amount in budgets.items():
            conn.execute(
                "INSERT INTO team_budgets (team, monthly_budget_usd) VALUES (%s, %s) ON CONFLICT (team) DO UPDATE"
                " SET monthly_budget_usd = EXCLUDED.monthly_budget_usd, updated_at = now()",
                (team, amount),
            )
