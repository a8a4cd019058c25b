"""The ledger in a SQL database: SQLite (WAL, embedded) or PostgreSQL (psycopg 3, shared).

``SQLLedger`` is a complete ``EventStore`` on its own (each ``append`` is one committed
transaction) and is what the append-log store (``jevons.ledger.journal``) drains into with
group commit. It also holds the outbox state: one cursor per sink over the event sequence,
and the events a sink parked (dead-lettered, or held waiting for a price).

Sequence order is commit order on both backends, which is what makes a cursor safe: SQLite has
one writer at a time, and on PostgreSQL every insert transaction takes a transaction-scoped
advisory lock before it draws sequence numbers, so a reader never sees seq N+1 committed while
seq N is still in flight.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import re
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any, Protocol, TypeVar

from jevons.config import dsn_password
from jevons.events import Event
from jevons.ledger.base import EventQuery
from jevons.ledger.codec import (
    LAYOUT,
    LAYOUT_SPEC,
    ROW_COLUMNS,
    IndexRow,
    UnknownLayoutError,
    decode_event,
    encode_event,
    index_row,
    register_layout,
    ts_micros,
)
from jevons.ledger.schema import LEDGER_MIGRATIONS, Dialect, Migration, now_us, render
from jevons.prices.cost import Cost

__all__ = ["LedgerError", "ParkedEvent", "SQLLedger", "SinkState", "postgres_ledger", "sqlite_ledger"]

T = TypeVar("T")
# rows per multi-row INSERT statement: 18,432 bound parameters (SQLite >= 3.32 allows 32,766);
# a statement step runs without the GIL, and taking the GIL back after it can wait a whole
# switch interval (5 ms) behind an appending thread, so fewer, longer steps are cheaper
_VALUES_CHUNK = 2048
# SQLite tuning of the writer connection (issue 4: a 1,000-event batch is ~10 us a row):
# pages of 16 KB (new databases only; an existing file keeps its page size until VACUUM)
# halve the pages a batch of random idempotency keys dirties in the unique index and cost
# fewer WAL frames per row; a 16 MB page cache (the default is 2 MB) keeps that index and
# the hot ends of the others in memory instead of re-reading them on every batch
_SQLITE_PAGE_SIZE = 16384
_SQLITE_WRITER_CACHE_KIB = 16384
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_EVENT_COLS = ", ".join(ROW_COLUMNS)


class LedgerError(RuntimeError):
    """The ledger database could not be opened or written."""


@dataclass(frozen=True, slots=True)
class SinkState:
    sink: str
    position: int
    delivered: int
    last_success_us: int | None
    last_error: str | None
    last_error_us: int | None


@dataclass(frozen=True, slots=True)
class ParkedEvent:
    sink: str
    seq: int
    reason: str  # "dead_letter" or "waiting_for_price"
    error: str | None
    parked_at_us: int


class _Cursor(Protocol):
    def execute(self, sql: Any, params: Any = ..., /) -> Any: ...
    def executemany(self, sql: Any, params: Any, /) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def fetchone(self) -> Any: ...

    @property
    def rowcount(self) -> int: ...


class _Backend:
    """Connections of one dialect: a locked writer connection and per-thread readers."""

    dialect: Dialect
    identity: str
    _writer: Any  # the one write connection, opened by the dialect

    def __init__(self, prefix: str) -> None:
        if not _IDENT.match(prefix):
            raise LedgerError(f"invalid table prefix {prefix!r}")
        self.prefix = prefix
        self._write_lock = threading.Lock()
        self._local = threading.local()
        self._readers: list[Any] = []
        self._readers_lock = threading.Lock()

    def q(self, sql: str) -> str:
        """``sql`` with ``{p}`` filled in and ``?`` placeholders in this dialect's style."""
        sql = sql.replace("{p}", self.prefix)
        return sql if self.dialect == "sqlite" else sql.replace("?", "%s")

    def write(self, fn: Callable[[_Cursor], T]) -> T:
        raise NotImplementedError

    def read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect_reader()
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return self._run_read(conn, self.q(sql), params)

    def _connect_reader(self) -> Any:
        raise NotImplementedError

    def _run_read(self, conn: Any, sql: str, params: Sequence[Any]) -> list[Any]:
        raise NotImplementedError

    def lock_inserts(self, cur: _Cursor) -> None:
        """Make sequence order equal commit order for this transaction's inserts."""

    def close(self) -> None:
        with self._readers_lock:
            for conn in self._readers:
                with contextlib.suppress(Exception):  # a reader of another thread
                    conn.close()
            self._readers.clear()
        with self._write_lock:
            self._writer.close()


class _SQLiteBackend(_Backend):
    dialect: Dialect = "sqlite"

    def __init__(self, path: Path, prefix: str, *, synchronous: str = "FULL") -> None:
        super().__init__(prefix)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.identity = sqlite_identity(path, prefix)
        self._synchronous = synchronous
        try:
            self._writer = self._open()
            # page_size must come before WAL: it only takes on a database not yet written
            self._writer.execute(f"PRAGMA page_size={_SQLITE_PAGE_SIZE}")
            self._writer.execute("PRAGMA journal_mode=WAL")
            self._writer.execute(f"PRAGMA cache_size=-{_SQLITE_WRITER_CACHE_KIB}")
            # multi-row inserts need SQLite >= 3.32's bound-parameter limit (a build can lower it)
            self.multi_values = sqlite3.sqlite_version_info >= (3, 32, 0) and self._writer.getlimit(
                sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) >= _VALUES_CHUNK * len(ROW_COLUMNS)
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot open SQLite ledger {path}: {exc}") from exc

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
        conn.execute("PRAGMA busy_timeout=30000")
        conn.execute(f"PRAGMA synchronous={self._synchronous}")
        return conn

    def write(self, fn: Callable[[_Cursor], T]) -> T:
        with self._write_lock:
            cur = self._writer.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                out = fn(cur)
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")
            return out

    def _connect_reader(self) -> Any:
        return self._open()

    def _run_read(self, conn: Any, sql: str, params: Sequence[Any]) -> list[Any]:
        rows: list[Any] = conn.execute(sql, tuple(params)).fetchall()
        return rows

class _PostgresBackend(_Backend):
    dialect: Dialect = "postgres"

    def __init__(self, dsn: str, prefix: str, schema: str) -> None:
        super().__init__(prefix)
        import psycopg

        if not _IDENT.match(schema):
            raise LedgerError(f"invalid PostgreSQL schema name {schema!r}")
        self._psycopg = psycopg
        self.dsn = dsn
        self.schema = schema
        self.identity = postgres_identity(dsn, schema, prefix)
        self._lock_key = int.from_bytes(
            hashlib.sha256(f"jevons:{schema}:{prefix}".encode()).digest()[:8], "big", signed=True
        )
        try:
            with psycopg.connect(dsn) as boot, boot.transaction():
                # concurrent CREATE SCHEMA IF NOT EXISTS can still collide: serialise it
                boot.execute("SELECT pg_advisory_xact_lock(%s)", (self._lock_key,))
                boot.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            self._writer = self._open(autocommit=False)
        except psycopg.Error as exc:
            # psycopg quotes a DSN it cannot parse, password included: the message is scrubbed
            # and the original exception not chained (a logged traceback would show it)
            raise LedgerError(f"cannot open PostgreSQL ledger: {_scrub(_first_line(exc), dsn)}") from None

    def _open(self, *, autocommit: bool) -> Any:
        return self._psycopg.connect(
            self.dsn, autocommit=autocommit, options=f"-c search_path={self.schema}"
        )

    def write(self, fn: Callable[[_Cursor], T]) -> T:
        with self._write_lock:
            if self._writer.closed or self._writer.broken:
                self._writer = self._open(autocommit=False)
            try:
                with self._writer.transaction(), self._writer.cursor() as cur:
                    return fn(cur)
            except self._psycopg.OperationalError:
                # a dropped connection: reconnect next time; the caller retries
                try:
                    self._writer.close()
                finally:
                    self._writer = self._open(autocommit=False)
                raise

    def lock_inserts(self, cur: _Cursor) -> None:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (self._lock_key,))

    def _connect_reader(self) -> Any:
        return self._open(autocommit=True)

    def _run_read(self, conn: Any, sql: str, params: Sequence[Any]) -> list[Any]:
        if conn.closed or conn.broken:
            conn = self._open(autocommit=True)
            self._local.conn = conn
        rows: list[Any] = conn.execute(sql, tuple(params)).fetchall()
        return rows

def sqlite_identity(path: Path, prefix: str) -> str:
    """The name a SQLite ledger goes by (``SQLLedger.identity``), known without opening it."""
    return f"sqlite:{path.resolve()}:{prefix}"


def postgres_identity(dsn: str, schema: str, prefix: str) -> str:
    """The name a PostgreSQL ledger goes by (secrets redacted), known without connecting."""
    return f"postgres:{_redact(dsn)}:{schema}:{prefix}"


_NUL = "\x00"
_NUL_STAND_IN = "\ufffd"


def _nul_free(rows: Sequence[IndexRow]) -> Sequence[IndexRow]:
    """``rows`` with NUL characters in their indexed text columns replaced by U+FFFD.

    A caller's customer, idempotency key, run id or model name may hold a NUL; PostgreSQL text
    cannot, and one such row would fail its whole batch on every retry, holding back every
    later event. Both backends store the same replacement (same rows, same queries); the body
    keeps the exact value (JSON writes it as ``\u0000``). One scan of the batch (~0.5 us a
    row); rows are rebuilt only when one has a NUL."""
    if _NUL not in "".join([f"{r[0]}{r[2]}{r[3]}{r[4]}{r[5]}{r[6]}{r[7]}" for r in rows]):
        return rows
    return [
        (*(v.replace(_NUL, _NUL_STAND_IN) if isinstance(v, str) else v for v in r[:-1]), r[-1])  # type: ignore[misc]
        for r in rows
    ]


def _redact(dsn: str) -> str:
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", re.sub(r"password=\S+", "password=***", dsn))


def _scrub(text: str, dsn: str) -> str:
    """``text`` (an error message) with ``dsn``'s password replaced by ``***`` wherever it
    appears, in the DSN's own spelling or alone."""
    password = dsn_password(dsn)
    if password:
        text = text.replace(password, "***")
    return _redact(text)


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


class SQLLedger:
    """Events, cost history and the sinks' outbox state in one SQL database."""

    def __init__(self, backend: _Backend) -> None:
        self._b = backend
        self.ensure_schema("ledger", LEDGER_MIGRATIONS)
        self._record_layout()

    # -- stored-form layouts --------------------------------------------------------------
    def _record_layout(self) -> None:
        """Record this process's stored-form layout before writing anything with it, so that
        every other process (and version) can read what it writes; load the others."""
        b = self._b

        def run(cur: _Cursor) -> None:
            cur.execute(
                b.q("INSERT INTO {p}body_layouts (layout, spec, recorded_at_us) VALUES (?, ?, ?) "
                    "ON CONFLICT (layout) DO NOTHING"),
                (LAYOUT, LAYOUT_SPEC, now_us()),
            )

        b.write(run)
        self.load_layouts()

    def load_layouts(self) -> None:
        """Make every layout recorded in this ledger readable in this process."""
        for layout, spec in self._b.read("SELECT layout, spec FROM {p}body_layouts"):
            register_layout(str(layout), str(spec))

    def decode(self, body: str | bytes) -> Event:
        """An event from its stored body (any version or layout this ledger has seen)."""
        try:
            return decode_event(body)
        except UnknownLayoutError:
            self.load_layouts()  # written by a process that started after we loaded them
            return decode_event(body)

    # -- schema ---------------------------------------------------------------------------
    @property
    def dialect(self) -> Dialect:
        return self._b.dialect

    @property
    def prefix(self) -> str:
        return self._b.prefix

    @property
    def identity(self) -> str:
        """A name of this database (secrets redacted): the append log is kept per identity."""
        return self._b.identity

    def ensure_schema(self, component: str, migrations: Sequence[Migration]) -> list[int]:
        """Apply ``component``'s migrations not yet applied; return the versions applied.

        Other layers call this with their own component name and migrations list (the policy
        engine's wallets and counters), in the same database and with the same table prefix.
        """
        b = self._b
        table = f"{b.prefix}schema_migrations"
        create = (
            f"CREATE TABLE IF NOT EXISTS {table} (component TEXT NOT NULL, version INTEGER NOT NULL,"
            " description TEXT NOT NULL, applied_at_us BIGINT NOT NULL, PRIMARY KEY (component, version))"
        )

        def setup(cur: _Cursor) -> list[int]:
            b.lock_inserts(cur)  # serialises concurrent migrators on PostgreSQL
            cur.execute(create)
            cur.execute(b.q(f"SELECT version FROM {table} WHERE component = ?"), (component,))
            done = {int(r[0]) for r in cur.fetchall()}
            applied: list[int] = []
            for m in sorted(migrations, key=lambda m: m.version):
                if m.version in done:
                    continue
                for stmt in render(m.sql, b.dialect, b.prefix):
                    cur.execute(stmt)
                cur.execute(
                    b.q(f"INSERT INTO {table} (component, version, description, applied_at_us) "
                        "VALUES (?, ?, ?, ?)"),
                    (component, m.version, m.description, now_us()),
                )
                applied.append(m.version)
            return applied

        return b.write(setup)

    def schema_versions(self) -> dict[str, int]:
        rows = self._b.read(
            "SELECT component, MAX(version) FROM {p}schema_migrations GROUP BY component"
        )
        return {str(r[0]): int(r[1]) for r in rows}

    # -- writes ---------------------------------------------------------------------------
    def insert_rows(self, rows: Sequence[IndexRow]) -> int:
        """Insert encoded events in one transaction; duplicates (by key) are skipped. Returns
        the number stored. Returns only after the commit (durable)."""
        if not rows:
            return 0
        rows = _nul_free(rows)
        b = self._b
        if b.dialect == "sqlite":
            if isinstance(b, _SQLiteBackend) and b.multi_values:

                def ins_values(cur: _Cursor) -> int:
                    before = _total_changes(cur)
                    for start, size in _value_chunks(len(rows)):
                        # one multi-row INSERT per chunk: the parameters are bound in C, then
                        # all of the chunk's rows go in in one statement step, which runs
                        # without the GIL (executemany would hand the GIL back and forth on
                        # every row, stalling the appending threads; unpacking a JSON
                        # parameter with json_each costs SQLite ~5 us a row more than this)
                        cur.execute(
                            b.q(_values_insert(size)),
                            list(chain.from_iterable(rows[start : start + size])),
                        )
                    return _total_changes(cur) - before

                return b.write(ins_values)
            sql = b.q(
                f"INSERT INTO {{p}}events ({_EVENT_COLS}) VALUES ({','.join('?' * len(ROW_COLUMNS))}) "
                "ON CONFLICT (idempotency_key) DO NOTHING"
            )

            def ins_sqlite(cur: _Cursor) -> int:
                before = _total_changes(cur)
                cur.executemany(sql, rows)
                return _total_changes(cur) - before

            return b.write(ins_sqlite)
        stage = (
            "CREATE TEMP TABLE IF NOT EXISTS jevons_stage_v2 (idempotency_key text, ts_us bigint, "
            "customer text, run_id text, model text, model_requested text, status text, "
            "cost_status text, body text) ON COMMIT DELETE ROWS"
        )
        move = (
            f"INSERT INTO {b.prefix}events ({_EVENT_COLS}) SELECT {_EVENT_COLS} FROM jevons_stage_v2 "
            "ORDER BY ts_us ON CONFLICT (idempotency_key) DO NOTHING"
        )

        def ins_pg(cur: _Cursor) -> int:
            # COPY into a session-local stage table, then one INSERT .. ON CONFLICT: the
            # fastest path psycopg offers (~5x an unnest of arrays)
            cur.execute(stage)
            with cur.copy(f"COPY jevons_stage_v2 ({_EVENT_COLS}) FROM STDIN") as cp:  # type: ignore[attr-defined]
                for row in rows:
                    cp.write_row(row)
            b.lock_inserts(cur)
            cur.execute(move)
            return max(cur.rowcount, 0)

        return b.write(ins_pg)

    def append(self, event: Event) -> bool:
        return self.insert_rows([index_row(event)]) == 1

    def append_many(self, events: Iterable[Event]) -> int:
        rows = [index_row(e) for e in events]
        total = 0
        for i in range(0, len(rows), 10_000):
            total += self.insert_rows(rows[i : i + 10_000])
        return total

    # -- reads ----------------------------------------------------------------------------
    def _where(self, q: EventQuery | None) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        if q is not None:
            if q.customer is not None:
                clauses.append("customer = ?")
                params.append(q.customer)
            if q.since is not None:
                clauses.append("ts_us >= ?")
                params.append(ts_micros(q.since))
            if q.until is not None:
                clauses.append("ts_us < ?")
                params.append(ts_micros(q.until))
            if q.run_id is not None:
                clauses.append("run_id = ?")
                params.append(q.run_id)
            if q.model is not None:
                clauses.append("(model = ? OR model_requested = ?)")
                params += [q.model, q.model]
            if q.status is not None:
                clauses.append("(status = ? OR cost_status = ?)")
                params += [q.status, q.status]
        # text is matched as stored: a NUL stands as U+FFFD (``_nul_free``)
        params = [p.replace(_NUL, _NUL_STAND_IN) if isinstance(p, str) else p for p in params]
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params

    def query(self, q: EventQuery | None = None) -> list[Event]:
        return [e for _, e in self.query_with_seq(q)]

    def query_with_seq(self, q: EventQuery | None = None) -> list[tuple[int, Event]]:
        where, params = self._where(q)
        sql = f"SELECT seq, body FROM {{p}}events{where} ORDER BY ts_us, seq"
        if q is not None and q.limit is not None:
            sql += " LIMIT ?"
            params.append(int(q.limit))
        return [(int(r[0]), self.decode(r[1])) for r in self._b.read(sql, params)]

    def count(self, q: EventQuery | None = None) -> int:
        where, params = self._where(q)
        return int(self._b.read(f"SELECT COUNT(*) FROM {{p}}events{where}", params)[0][0])

    def max_seq(self) -> int:
        return int(self._b.read("SELECT COALESCE(MAX(seq), 0) FROM {p}events")[0][0])

    def events_after(self, position: int, limit: int) -> list[tuple[int, Event]]:
        rows = self._b.read(
            "SELECT seq, body FROM {p}events WHERE seq > ? ORDER BY seq LIMIT ?", (position, limit)
        )
        return [(int(r[0]), self.decode(r[1])) for r in rows]

    def events_by_seq(self, seqs: Sequence[int]) -> list[tuple[int, Event]]:
        out: list[tuple[int, Event]] = []
        for i in range(0, len(seqs), 500):
            chunk = list(seqs[i : i + 500])
            marks = ",".join("?" * len(chunk))
            rows = self._b.read(
                f"SELECT seq, body FROM {{p}}events WHERE seq IN ({marks}) ORDER BY seq", chunk
            )
            out += [(int(r[0]), self.decode(r[1])) for r in rows]
        return out

    def unpriced(self, limit: int | None = None, *, after: int = 0) -> list[tuple[int, Event]]:
        """Unpriced events (seq > ``after``), oldest first: what ``jevons reprice`` works on."""
        sql = "SELECT seq, body FROM {p}events WHERE cost_status = 'unpriced' AND seq > ? ORDER BY seq"
        params: list[Any] = [after]
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return [(int(r[0]), self.decode(r[1])) for r in self._b.read(sql, params)]

    def iter_all(self, batch: int = 5000) -> Iterator[tuple[int, Event]]:
        pos = 0
        while True:
            chunk = self.events_after(pos, batch)
            if not chunk:
                return
            yield from chunk
            pos = chunk[-1][0]

    # -- re-pricing -----------------------------------------------------------------------
    def reprice(self, updates: Sequence[tuple[int, Cost]]) -> int:
        """Replace the cost of events (by seq), keeping each old cost in ``cost_history``."""
        if not updates:
            return 0
        b = self._b

        def run(cur: _Cursor) -> int:
            n = 0
            for seq, cost in updates:
                cur.execute(b.q("SELECT body FROM {p}events WHERE seq = ?"), (seq,))
                row = cur.fetchone()
                if row is None:
                    continue
                old = self.decode(row[0])
                new = old.with_cost(cost)
                cur.execute(
                    b.q("INSERT INTO {p}cost_history (event_seq, replaced_at_us, old_cost, "
                        "new_price_version) VALUES (?, ?, ?, ?)"),
                    (seq, now_us(), encode_event_cost(old), cost.price_version),
                )
                ir = index_row(new)
                cur.execute(
                    b.q("UPDATE {p}events SET model = ?, cost_status = ?, body = ? WHERE seq = ?"),
                    (ir[4], ir[7], ir[8], seq),
                )
                n += 1
            return n

        return b.write(run)

    def cost_history(self, seq: int) -> list[Cost]:
        import json

        rows = self._b.read(
            "SELECT old_cost FROM {p}cost_history WHERE event_seq = ? ORDER BY id", (seq,)
        )
        return [Cost.from_dict(json.loads(r[0])) for r in rows]

    # -- outbox state ---------------------------------------------------------------------
    def sink_state(self, sink: str) -> SinkState:
        rows = self._b.read(
            "SELECT position, delivered, last_success_us, last_error, last_error_us "
            "FROM {p}sink_cursors WHERE sink = ?",
            (sink,),
        )
        if not rows:
            return SinkState(sink, 0, 0, None, None, None)
        r = rows[0]
        return SinkState(sink, int(r[0]), int(r[1]), r[2], r[3], r[4])

    def _ensure_cursor(self, cur: _Cursor, sink: str) -> None:
        cur.execute(
            self._b.q("INSERT INTO {p}sink_cursors (sink, position, delivered) VALUES (?, 0, 0) "
                      "ON CONFLICT (sink) DO NOTHING"),
            (sink,),
        )

    def commit_delivery(
        self,
        sink: str,
        *,
        position: int | None,
        delivered: int,
        park: Sequence[tuple[int, str, str | None]] = (),
        unpark: Sequence[int] = (),
    ) -> None:
        """Advance ``sink``'s cursor, park (seq, reason, error) and release parked events, in
        one transaction."""
        b = self._b
        at = now_us()

        def run(cur: _Cursor) -> None:
            self._ensure_cursor(cur, sink)
            if position is not None:
                cur.execute(
                    b.q("UPDATE {p}sink_cursors SET position = ? WHERE sink = ? AND position < ?"),
                    (position, sink, position),
                )
            if delivered:
                cur.execute(
                    b.q("UPDATE {p}sink_cursors SET delivered = delivered + ?, last_success_us = ? "
                        "WHERE sink = ?"),
                    (delivered, at, sink),
                )
            if unpark:
                cur.executemany(
                    b.q("DELETE FROM {p}sink_parked WHERE sink = ? AND event_seq = ?"),
                    [(sink, s) for s in unpark],
                )
            if park:
                cur.executemany(
                    b.q("INSERT INTO {p}sink_parked (sink, event_seq, reason, error, parked_at_us) "
                        "VALUES (?, ?, ?, ?, ?) ON CONFLICT (sink, event_seq) DO UPDATE SET "
                        "reason = excluded.reason, error = excluded.error"),
                    [(sink, s, reason, err, at) for s, reason, err in park],
                )

        b.write(run)

    def acquire_lease(self, sink: str, owner: str, ttl_s: float, *, take_from: str | None = None) -> bool:
        """Take (or extend) the right to drain ``sink`` for ``ttl_s`` seconds; ``False`` when
        another drainer holds it. One drainer per sink keeps duplicate sends rare.
        ``take_from`` takes over the lease of a holder known to be dead."""
        b = self._b
        at = now_us()

        def run(cur: _Cursor) -> bool:
            self._ensure_cursor(cur, sink)
            cur.execute(
                b.q("UPDATE {p}sink_cursors SET lease_owner = ?, lease_until_us = ? WHERE sink = ? "
                    "AND (lease_owner IS NULL OR lease_owner = ? OR lease_owner = ? "
                    "OR lease_until_us < ?)"),
                (owner, at + int(ttl_s * 1e6), sink, owner, take_from or owner, at),
            )
            return bool(cur.rowcount == 1)

        return b.write(run)

    def lease_owner(self, sink: str) -> str | None:
        rows = self._b.read("SELECT lease_owner FROM {p}sink_cursors WHERE sink = ?", (sink,))
        return None if not rows or rows[0][0] is None else str(rows[0][0])

    def release_lease(self, sink: str, owner: str) -> None:
        b = self._b

        def run(cur: _Cursor) -> None:
            cur.execute(
                b.q("UPDATE {p}sink_cursors SET lease_owner = NULL, lease_until_us = NULL "
                    "WHERE sink = ? AND lease_owner = ?"),
                (sink, owner),
            )

        b.write(run)

    def record_sink_error(self, sink: str, error: str | None) -> None:
        b = self._b

        def run(cur: _Cursor) -> None:
            self._ensure_cursor(cur, sink)
            cur.execute(
                b.q("UPDATE {p}sink_cursors SET last_error = ?, last_error_us = ? WHERE sink = ?"),
                (error, now_us() if error else None, sink),
            )

        b.write(run)

    def parked(self, sink: str, reason: str | None = None) -> list[ParkedEvent]:
        sql = "SELECT sink, event_seq, reason, error, parked_at_us FROM {p}sink_parked WHERE sink = ?"
        params: list[Any] = [sink]
        if reason is not None:
            sql += " AND reason = ?"
            params.append(reason)
        rows = self._b.read(sql + " ORDER BY event_seq", params)
        return [ParkedEvent(str(r[0]), int(r[1]), str(r[2]), r[3], int(r[4])) for r in rows]

    def parked_counts(self, sink: str) -> dict[str, int]:
        rows = self._b.read(
            "SELECT reason, COUNT(*) FROM {p}sink_parked WHERE sink = ? GROUP BY reason", (sink,)
        )
        return {str(r[0]): int(r[1]) for r in rows}

    def released_waiting(self, sink: str, limit: int, *, after: int = 0) -> list[tuple[int, Event]]:
        """Events ``sink`` held waiting for a price that now have one (seq > ``after``)."""
        rows = self._b.read(
            "SELECT e.seq, e.body FROM {p}sink_parked k JOIN {p}events e ON e.seq = k.event_seq "
            "WHERE k.sink = ? AND k.reason = 'waiting_for_price' AND e.cost_status <> 'unpriced' "
            "AND e.seq > ? ORDER BY e.seq LIMIT ?",
            (sink, after, limit),
        )
        return [(int(r[0]), self.decode(r[1])) for r in rows]

    def pending(self, sink: str, position: int) -> tuple[int, int | None]:
        """(events after ``position``, timestamp in us of the oldest of them)."""
        rows = self._b.read(
            "SELECT COUNT(*), MIN(ts_us) FROM {p}events WHERE seq > ?", (position,)
        )
        return int(rows[0][0]), (None if rows[0][1] is None else int(rows[0][1]))

    def close(self) -> None:
        self._b.close()


def encode_event_cost(event: Event) -> str:
    import json

    return json.dumps(event.cost.to_dict(), separators=(",", ":"))


def _value_chunks(n: int) -> list[tuple[int, int]]:
    """(start, size) pieces of ``n`` rows: full chunks, then the rest in powers of two, so that
    only a handful of distinct statements are ever prepared (and stay cached)."""
    out: list[tuple[int, int]] = []
    start = 0
    while n - start >= _VALUES_CHUNK:
        out.append((start, _VALUES_CHUNK))
        start += _VALUES_CHUNK
    size = 1 << (_VALUES_CHUNK.bit_length() - 1)  # the rest (< 2 * size) in binary
    while start < n and size:
        if n - start >= size:
            out.append((start, size))
            start += size
        size //= 2
    return out


@functools.lru_cache(maxsize=16)
def _values_insert(size: int) -> str:
    one = "(" + ",".join("?" * len(ROW_COLUMNS)) + ")"
    return (
        f"INSERT INTO {{p}}events ({_EVENT_COLS}) VALUES {','.join([one] * size)} "
        "ON CONFLICT (idempotency_key) DO NOTHING"
    )


def _total_changes(cur: _Cursor) -> int:
    conn = cur.connection  # type: ignore[attr-defined]
    return int(conn.total_changes)


def sqlite_ledger(path: str | Path, *, prefix: str = "jevons_", synchronous: str = "FULL") -> SQLLedger:
    return SQLLedger(_SQLiteBackend(Path(path), prefix, synchronous=synchronous))


def postgres_ledger(dsn: str, *, schema: str = "public", prefix: str = "jevons_") -> SQLLedger:
    return SQLLedger(_PostgresBackend(dsn, prefix, schema))


# kept for callers that want the raw encoder next to the database
encode = encode_event
