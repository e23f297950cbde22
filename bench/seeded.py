"""Databases seeded once and timed by every run of `hybridspend bench`: seeding a big fleet takes minutes and
is never what is timed.  Each keeps a record of what was seeded in it (``bench_seed``), by fleet size and days;
the server holding them is restarted, cold, for each run (``bench/run.py``)."""

from __future__ import annotations

import psycopg
from psycopg.types.json import Jsonb


def kept_database(admin_dsn: str, name: str) -> str:
    """The database ``name``, created where it does not exist yet (a fresh one is ``sink._fresh_database``)."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')
    return psycopg.conninfo.make_conninfo(admin_dsn, dbname=name)


def earlier_seed(dsn: str, gpus: int, days: int) -> dict | None:
    """What an earlier run seeded in this database at this size, or None where it is not seeded."""
    with psycopg.connect(dsn) as conn:
        if not conn.execute("SELECT to_regclass('bench_seed') IS NOT NULL").fetchone()[0]:
            return None
        row = conn.execute("SELECT seeded FROM bench_seed WHERE gpus = %s AND days = %s", (gpus, days)).fetchone()
    return row[0] if row else None


def mark_seeded(dsn: str, gpus: int, days: int, seeded: dict) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS bench_seed (gpus int, days int, seeded jsonb)")
        conn.execute("INSERT INTO bench_seed VALUES (%s, %s, %s)", (gpus, days, Jsonb(seeded)))
