"""Where real-time policy state lives: customer rating state, applied events, credit grants.

Tables (prefix ``policy_``): ``policy_state`` (one JSON row per customer: allowance pools,
cap counter, credits drawn...), ``policy_applied`` (idempotency key -> the rated event, so an
event is never applied twice), ``policy_grants`` (credit grants added with
``jevons credits grant``).

Every change to a customer happens in one transaction that holds that customer's lock:
SQLite ``BEGIN IMMEDIATE`` (one writer at a time across threads and processes), PostgreSQL
``SELECT ... FOR UPDATE`` on the customer's state row. So 16 threads and 4 processes charging
one customer never overdraw a wallet or apply an event twice.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from jevons.policy.engine import CustomerState, Grant

if TYPE_CHECKING:
    from jevons.config import Settings

__all__ = ["PolicyStore", "PostgresPolicyStore", "SqlitePolicyStore", "StoreTx", "open_policy_store"]

T = TypeVar("T")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")

_DDL = (
    "CREATE TABLE IF NOT EXISTS policy_state (customer TEXT PRIMARY KEY, state TEXT)",
    "CREATE TABLE IF NOT EXISTS policy_applied (idempotency_key TEXT PRIMARY KEY, "
    "customer TEXT NOT NULL, rated TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS policy_grants (id TEXT PRIMARY KEY, customer TEXT NOT NULL, "
    "amount TEXT NOT NULL, kind TEXT NOT NULL, priority INTEGER NOT NULL, effective TEXT NOT NULL, "
    "expires TEXT, created TEXT NOT NULL)",
)


class _Cursor(Protocol):
    def execute(self, sql: Any, params: Any = ..., /) -> Any: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...


def _grant_row(row: Any) -> Grant:
    gid, customer, amount, kind, priority, effective, expires = row
    return Grant(gid, customer, Decimal(amount), kind, int(priority), datetime.fromisoformat(effective),
                 datetime.fromisoformat(expires) if expires else None)


class StoreTx:
    """One customer's locked transaction."""

    def __init__(self, cur: _Cursor, ph: str, customer: str) -> None:
        self.cur, self.ph, self.customer = cur, ph, customer

    def q(self, sql: str) -> str:
        return sql.replace("?", self.ph)

    def applied(self, key: str) -> dict[str, Any] | None:
        self.cur.execute(self.q("SELECT rated FROM policy_applied WHERE idempotency_key = ?"), (key,))
        row = self.cur.fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def record_applied(self, key: str, rated: dict[str, Any]) -> None:
        self.cur.execute(
            self.q("INSERT INTO policy_applied (idempotency_key, customer, rated) VALUES (?, ?, ?)"),
            (key, self.customer, json.dumps(rated)),
        )

    def load_state(self) -> CustomerState | None:
        self.cur.execute(self.q("SELECT state FROM policy_state WHERE customer = ?"), (self.customer,))
        row = self.cur.fetchone()
        return None if row is None or row[0] is None else CustomerState.from_dict(json.loads(row[0]))

    def save_state(self, state: CustomerState) -> None:
        self.cur.execute(self.q("UPDATE policy_state SET state = ? WHERE customer = ?"),
                         (json.dumps(state.to_dict()), self.customer))

    def grants(self) -> list[Grant]:
        self.cur.execute(self.q(
            "SELECT id, customer, amount, kind, priority, effective, expires FROM policy_grants "
            "WHERE customer = ? ORDER BY created, id"), (self.customer,))
        return [_grant_row(r) for r in self.cur.fetchall()]


class PolicyStore:
    """Base of the two backends: ``locked(customer)`` yields a :class:`StoreTx`."""

    ph = "?"

    @contextmanager
    def locked(self, customer: str) -> Iterator[StoreTx]:  # pragma: no cover - abstract
        raise NotImplementedError
        yield

    def read(self, fn: Callable[[StoreTx], T], customer: str) -> T:
        with self.locked(customer) as tx:
            return fn(tx)

    def add_grant(self, grant: Grant) -> None:
        with self.locked(grant.customer) as tx:
            tx.cur.execute(tx.q(
                "INSERT INTO policy_grants (id, customer, amount, kind, priority, effective, expires, "
                "created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"),
                (grant.id, grant.customer, str(grant.amount), grant.kind, grant.priority,
                 grant.effective.isoformat(), grant.expires.isoformat() if grant.expires else None,
                 datetime.now().astimezone().isoformat()))

    def grants(self, customer: str | None = None) -> list[Grant]:
        if customer is not None:
            return self.read(lambda tx: tx.grants(), customer)
        rows = self._all_grants()
        return [_grant_row(r) for r in rows]

    def _all_grants(self) -> list[Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class SqlitePolicyStore(PolicyStore):
    """One SQLite file; a connection per thread; writers serialised by ``BEGIN IMMEDIATE``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        conn = self._conn()
        conn.execute("PRAGMA journal_mode=WAL")
        for ddl in _DDL:
            conn.execute(ddl)

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=60, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout=60000")
            conn.execute("PRAGMA synchronous=FULL")
            self._local.conn = conn
        return conn

    @contextmanager
    def locked(self, customer: str) -> Iterator[StoreTx]:
        conn = self._conn()
        cur = conn.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            cur.execute("INSERT OR IGNORE INTO policy_state (customer, state) VALUES (?, NULL)",
                        (customer,))
            yield StoreTx(cur, "?", customer)
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        cur.execute("COMMIT")

    def _all_grants(self) -> list[Any]:
        return self._conn().execute(
            "SELECT id, customer, amount, kind, priority, effective, expires FROM policy_grants "
            "ORDER BY customer, created, id").fetchall()

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


class PostgresPolicyStore(PolicyStore):
    """PostgreSQL (psycopg 3); a connection per thread; the customer row locked FOR UPDATE."""

    ph = "%s"

    def __init__(self, dsn: str, *, schema: str = "public") -> None:
        import psycopg

        if not _IDENT.match(schema):
            raise ValueError(f"invalid PostgreSQL schema name {schema!r}")
        self.dsn, self.schema = dsn, schema
        self._psycopg = psycopg
        self._local = threading.local()
        with psycopg.connect(dsn, autocommit=True) as boot:
            boot.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            boot.execute(f'SET search_path TO "{schema}"')
            boot.execute("SELECT pg_advisory_lock(hashtext('jevons_policy_ddl'))")
            try:
                for ddl in _DDL:
                    boot.execute(ddl)
            finally:
                boot.execute("SELECT pg_advisory_unlock(hashtext('jevons_policy_ddl'))")

    def _conn(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            conn = self._psycopg.connect(self.dsn, options=f"-c search_path={self.schema}")
            self._local.conn = conn
        return conn

    @contextmanager
    def locked(self, customer: str) -> Iterator[StoreTx]:
        conn = self._conn()
        with conn.transaction(), conn.cursor() as cur:
            cur.execute("INSERT INTO policy_state (customer, state) VALUES (%s, NULL) "
                        "ON CONFLICT (customer) DO NOTHING", (customer,))
            cur.execute("SELECT customer FROM policy_state WHERE customer = %s FOR UPDATE", (customer,))
            yield StoreTx(cur, "%s", customer)

    def _all_grants(self) -> list[Any]:
        with self._conn().transaction(), self._conn().cursor() as cur:
            cur.execute("SELECT id, customer, amount, kind, priority, effective, expires "
                        "FROM policy_grants ORDER BY customer, created, id")
            return list(cur.fetchall())

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


def open_policy_store(settings: Settings | None = None) -> PolicyStore:
    """SQLite file ``$JEVONS_HOME/policy/policy.db``, or the ledger's PostgreSQL database."""
    from jevons.config import load_settings

    settings = settings or load_settings()
    if settings.ledger.backend == "postgres":
        from jevons.ledger import resolve_dsn

        return PostgresPolicyStore(resolve_dsn(settings), schema=settings.ledger.pg_schema)
    return SqlitePolicyStore(settings.home_dir / "policy" / "policy.db")
