"""Versioned schema migrations, per component, identical on SQLite and PostgreSQL.

A component (``ledger``, later ``policy`` for wallets and counters) owns an ordered list of
``Migration``; ``migrate()`` applies the ones a database has not seen yet, each in its own
transaction, and records them in ``jevons_schema_migrations`` (component, version). SQL is
written once with two placeholders that are filled per dialect:

- ``{seq_pk}``: an auto-increasing 64-bit primary key
  (``INTEGER PRIMARY KEY AUTOINCREMENT`` / ``BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY``)
- ``{p}``: the table prefix (``jevons_`` by default), so that tests can share a database.

Statements are separated by ``;`` at line ends. Never edit a released migration: add one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

__all__ = ["LEDGER_MIGRATIONS", "Dialect", "Migration", "now_us", "render"]

Dialect = Literal["sqlite", "postgres"]

_SEQ_PK: dict[Dialect, str] = {
    "sqlite": "INTEGER PRIMARY KEY AUTOINCREMENT",
    "postgres": "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
}


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    description: str
    sql: str


def render(sql: str, dialect: Dialect, prefix: str) -> list[str]:
    """The statements of ``sql`` for ``dialect``."""
    text = sql.replace("{seq_pk}", _SEQ_PK[dialect]).replace("{p}", prefix)
    return [s.strip() for s in text.split(";\n") if s.strip().rstrip(";").strip()]


LEDGER_MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "events, cost history, sink cursors and parked (dead-lettered / held) events",
        """
CREATE TABLE {p}events (
    seq {seq_pk},
    idempotency_key TEXT NOT NULL UNIQUE,
    event_id TEXT NOT NULL,
    ts_us BIGINT NOT NULL,
    customer TEXT,
    run_id TEXT,
    model TEXT,
    model_requested TEXT NOT NULL,
    status TEXT NOT NULL,
    cost_status TEXT NOT NULL,
    total_usd TEXT,
    price_version TEXT,
    body TEXT NOT NULL
);
CREATE INDEX {p}events_customer_ts ON {p}events (customer, ts_us);
CREATE INDEX {p}events_ts ON {p}events (ts_us);
CREATE INDEX {p}events_run ON {p}events (run_id) WHERE run_id IS NOT NULL;
CREATE INDEX {p}events_unpriced ON {p}events (seq) WHERE cost_status = 'unpriced';
CREATE TABLE {p}cost_history (
    id {seq_pk},
    event_seq BIGINT NOT NULL,
    replaced_at_us BIGINT NOT NULL,
    old_cost TEXT NOT NULL,
    new_price_version TEXT
);
CREATE INDEX {p}cost_history_event ON {p}cost_history (event_seq);
CREATE TABLE {p}sink_cursors (
    sink TEXT PRIMARY KEY,
    position BIGINT NOT NULL DEFAULT 0,
    delivered BIGINT NOT NULL DEFAULT 0,
    last_success_us BIGINT,
    last_error TEXT,
    last_error_us BIGINT,
    lease_owner TEXT,
    lease_until_us BIGINT
);
CREATE TABLE {p}sink_parked (
    sink TEXT NOT NULL,
    event_seq BIGINT NOT NULL,
    reason TEXT NOT NULL,
    error TEXT,
    parked_at_us BIGINT NOT NULL,
    PRIMARY KEY (sink, event_seq)
);
""",
    ),
    Migration(
        2,
        "compact event rows: positional JSON bodies (layouts recorded), only queried columns",
        # event_id, total_usd and price_version were copies of what the body holds and were
        # never queried; every event row carried them (issue 4: rows are the write cost).
        # Bodies written from now on are jevons.ledger.codec's positional form, whose field
        # names per layout fingerprint live in body_layouts; version 1 bodies stay readable.
        """
ALTER TABLE {p}events DROP COLUMN event_id;
ALTER TABLE {p}events DROP COLUMN total_usd;
ALTER TABLE {p}events DROP COLUMN price_version;
CREATE TABLE {p}body_layouts (
    layout TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    recorded_at_us BIGINT NOT NULL
);
""",
    ),
)


def now_us() -> int:
    return time.time_ns() // 1000
