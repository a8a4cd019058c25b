"""Durable ledger and outbox: hot-path append latency, batched record throughput, drain rate.

Measured in one run, each beside a peer so that the machine's speed cancels out:

1. hot-path ``append`` latency (p50/p99) of the default store (append log + background group
   commit, ``durability = "strict"``) on SQLite and PostgreSQL, beside ``MemoryStore.append``
   (no durability) and a one-transaction-per-event SQLite insert (the naive durable store);
2. durable record throughput, events/s, when events are recorded in batches
   (``append_many`` of 1,000, until committed), SQLite and PostgreSQL;
   goals >= 100,000/s (SQLite) and >= 30,000/s (PostgreSQL);
3. drain throughput to a local Lago-shaped HTTP server (``POST /api/v1/events/batch``, 100 a
   request, deduplicating on ``transaction_id``), events/s; goal >= 5,000/s.

PostgreSQL parts run when ``JEVONS_TEST_PG_DSN`` is set (a throw-away schema is used and
dropped). The capture overhead with durability on is ``bench/bench_capture.py --ledger default``.

    .venv/bin/python bench/bench_ledger.py [--events 50000] [--latency-events 20000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sqlite3
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

from jevons.capture.meter import _IDS
from jevons.events import Event
from jevons.ledger.base import MemoryStore
from jevons.ledger.codec import ROW_COLUMNS, encode_event, index_row
from jevons.ledger.database import SQLLedger, postgres_ledger, sqlite_ledger
from jevons.ledger.journal import JournaledStore
from jevons.prices.cost import Cost, CostLine
from jevons.sinks.lago import LagoSink
from jevons.sinks.outbox import Outbox
from jevons.usage import Usage

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def make_events(n: int, keys: str = "random") -> list[Event]:
    """``n`` events; ``keys="meter"``: the ids and keys ``jevons.Meter`` gives (a per-process
    prefix and a counter), ``"random"``: uuid4 keys, as a caller's own idempotency keys may be."""
    usage = Usage(input_tokens=1200, output_tokens=300, cache_read_tokens=1024)
    lines = (
        CostLine("input", 176, Decimal("0.0000025"), Decimal("0.00044")),
        CostLine("cache_read", 1024, Decimal("0.00000125"), Decimal("0.00128")),
        CostLine("output", 300, Decimal("0.00001"), Decimal("0.003")),
    )
    cost = Cost("gpt-4o", "gpt-4o", "openai", "priced", Decimal("0.00472"), lines,
                "openai/gpt-4o@2026-01-01", "bundled", T0)
    out = []
    for i in range(n):
        if keys == "meter":
            event_id = key = _IDS.next()
        else:
            event_id, key = uuid.uuid4().hex, uuid.uuid4().hex
        out.append(Event(event_id, key, T0 + timedelta(milliseconds=i), "openai", "gpt-4o",
                         usage, cost, customer=f"cust_{i % 50}", feature="chat", tags={"team": "a"}))
    return out


def raw_sqlite_rate(path: Path, events: list[Event], *, in_memory: bool = False) -> float:
    """The same rows inserted by plain ``sqlite3`` (``executemany`` per 1,000, one commit
    each, WAL, ``synchronous=FULL``) into the ledger's own schema: the database's ceiling.
    ``in_memory``: into a copy of the schema in memory, no file and no I/O at all: what the
    SQLite library alone costs a row on this CPU."""
    sqlite_ledger(path).close()  # creates the schema
    conn = sqlite3.connect(path, isolation_level=None)
    if in_memory:
        mem = sqlite3.connect(":memory:", isolation_level=None)
        conn.backup(mem)
        conn.close()
        conn = mem
    else:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
    rows = [index_row(e, encode_event(e)) for e in events]
    os.sync()  # as before every timed run: no earlier run's write-back during this one
    sql = (f"INSERT INTO jevons_events ({', '.join(ROW_COLUMNS)}) VALUES "
           f"({', '.join('?' * len(ROW_COLUMNS))}) ON CONFLICT (idempotency_key) DO NOTHING")
    t = time.perf_counter()
    for i in range(0, len(rows), 1000):
        conn.execute("BEGIN")
        conn.executemany(sql, rows[i : i + 1000])
        conn.execute("COMMIT")
    rate = len(rows) / (time.perf_counter() - t)
    conn.close()
    return rate


def percentiles(samples_ns: list[int]) -> tuple[float, float]:
    s = sorted(samples_ns)
    return s[len(s) // 2] / 1000, s[min(int(len(s) * 0.99), len(s) - 1)] / 1000


def latency(append: Callable[[Event], object], events: list[Event]) -> tuple[float, float]:
    clock = time.perf_counter_ns
    samples: list[int] = []
    for e in events:
        t = clock()
        append(e)
        samples.append(clock() - t)
    return percentiles(samples)


class NaiveSQLite:
    """The peer: one committed transaction per event (WAL, synchronous=FULL)."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.execute("CREATE TABLE e (k TEXT PRIMARY KEY, body BLOB)")

    def append(self, e: Event) -> None:
        self.conn.execute("INSERT INTO e VALUES (?, ?) ON CONFLICT DO NOTHING",
                          (e.idempotency_key, encode_event(e)))


class LagoShaped(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        # headers and body go out in two writes: without this, Nagle + delayed ACK add 40 ms
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    seen: ClassVar[set[str]] = set()

    def log_message(self, format: str, *args: object) -> None:
        return None

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        for ev in body["events"]:
            self.seen.add(ev["transaction_id"])
        data = b'{"events":[]}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def run(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="jevons-bench-"))
    dsn = os.environ.get("JEVONS_TEST_PG_DSN")
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    backends: list[tuple[str, Callable[[], SQLLedger]]] = [
        ("sqlite", lambda: sqlite_ledger(tmp / f"{uuid.uuid4().hex}.db"))
    ]
    if dsn:
        backends.append(("postgres", lambda: postgres_ledger(dsn, schema=schema,
                                                             prefix=f"b{uuid.uuid4().hex[:6]}_")))
    else:
        print("(JEVONS_TEST_PG_DSN not set: PostgreSQL skipped)")
    n_lat = args.latency_events

    print(f"\n1. hot-path append latency, {n_lat} events, microseconds (p50 / p99)")
    mem = MemoryStore()
    m50, m99 = latency(mem.append, make_events(n_lat))
    print(f"  MemoryStore.append (not durable)          {m50:8.2f} / {m99:8.2f}")
    naive = NaiveSQLite(tmp / "naive.db")
    k = min(n_lat, 2000)
    n50, n99 = latency(naive.append, make_events(k))
    print(f"  SQLite, one commit per event ({k})       {n50:8.2f} / {n99:8.2f}")
    for name, make in backends:
        store = JournaledStore(make(), tmp / f"journal-{name}")
        j50, j99 = latency(store.append, make_events(n_lat))
        store.flush(timeout=120)
        store.close()
        print(f"  jevons strict append log -> {name:8s}     {j50:8.2f} / {j99:8.2f}"
              f"   ({n50 / j50:.0f}x faster than commit-per-event at p50)")

    n = args.events
    reps = args.repeats
    print(f"\n2. durable record throughput, {n} events in batches of 1,000, events/s "
          f"(median of {reps} runs, then the range: one run swings by a fifth on shared cores)")
    print("   keys: 'meter' = the ids jevons.Meter gives every event (prefix + counter), the")
    print("   goal's case; 'random' = uuid4, as a caller's own idempotency keys may be")

    def record_rate(make: Callable[[], SQLLedger], keys: str, label: str) -> tuple[float, int]:
        events = make_events(n, keys)
        store = JournaledStore(make(), tmp / f"journal-batch-{label}-{uuid.uuid4().hex[:6]}")
        os.sync()  # the previous run's dirty pages are written back now, not during this one
        t = time.perf_counter()
        for i in range(0, n, 1000):
            store.append_many(events[i : i + 1000])
        store.flush(timeout=600)
        rate = n / (time.perf_counter() - t)
        stored = store.ledger.count()
        store.close()
        return rate, stored

    def summary(rates: list[float]) -> str:
        return f"{statistics.median(rates):10,.0f}/s   ({min(rates):,.0f}-{max(rates):,.0f})"

    for name, make in backends:
        goal = 100_000 if name == "sqlite" else 30_000
        results: dict[str, list[float]] = {"meter": [], "random": [], "peer": [], "peer-mem": []}
        stored_counts: set[int] = set()
        for _ in range(reps):  # interleaved, so that drift in the machine's speed hits all alike
            for keys in ("meter", "random"):
                rate, stored = record_rate(make, keys, f"{name}-{keys}")
                results[keys].append(rate)
                stored_counts.add(stored)
            if name == "sqlite":
                results["peer"].append(raw_sqlite_rate(tmp / f"raw-{uuid.uuid4().hex}.db",
                                                       make_events(n, "meter")))
                results["peer-mem"].append(raw_sqlite_rate(tmp / f"raw-mem-{uuid.uuid4().hex}.db",
                                                           make_events(n, "meter"), in_memory=True))
        for keys in ("meter", "random"):
            rate = statistics.median(results[keys])
            print(f"  append log + group commit -> {name:8s} {keys:6s} {summary(results[keys])}   "
                  f"(goal {goal:,}: {rate / goal:.2f}x; stored {sorted(stored_counts)})")
        if name == "sqlite":
            print(f"  peer: sqlite3 executemany, same rows   {summary(results['peer'])}   (the database "
                  "alone: a WAL file, the same table and indexes, no jevons)")
            print(f"  peer: the same, in memory              {summary(results['peer-mem'])}   (no file, "
                  "no I/O: the SQLite library's own cost a row on this CPU)")

    print(f"\n3. drain to a local Lago-shaped server, {n} events, price mode, 100 a request")
    server = ThreadingHTTPServer(("127.0.0.1", 0), LagoShaped)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    for name, make in backends[:1] + backends[1:]:
        led = make()
        led.append_many(make_events(n))
        LagoShaped.seen = set()
        box = Outbox(led, {"lago": LagoSink("lago", url, "key", mode="price")}, fetch_size=2000)
        t = time.perf_counter()
        report = box.drain("lago")
        rate = report.delivered / (time.perf_counter() - t)
        box.close()
        led.close()
        print(f"  {name:8s} -> Lago  {rate:10,.0f}/s   (goal 5,000: {rate / 5000:.2f}x; "
              f"{len(LagoShaped.seen)} received)")
    server.shutdown()
    if dsn:
        import psycopg

        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--latency-events", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3, help="runs of part 2 (median printed)")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    run(args)


if __name__ == "__main__":
    main()
