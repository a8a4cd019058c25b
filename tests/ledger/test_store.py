"""The SQL ledger on SQLite and PostgreSQL: same schema, same behaviour."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from jevons.ledger import EventQuery
from jevons.ledger.database import SQLLedger
from jevons.ledger.schema import Migration
from jevons.prices.cost import Cost

from .helpers import T0, make_event


def test_append_is_idempotent_on_the_key(ledger: SQLLedger) -> None:
    e = make_event(1, key="same")
    assert ledger.append(e) is True
    assert ledger.append(make_event(2, key="same")) is False
    assert ledger.count() == 1
    stored = ledger.query()
    assert stored[0].id == e.id and stored[0].usage == e.usage


def test_round_trip_keeps_every_field_and_decimal(ledger: SQLLedger) -> None:
    e = make_event(3, run_id="run-9")
    ledger.append(e)
    (back,) = ledger.query()
    assert back == e
    assert isinstance(back.cost.total_usd, Decimal)
    assert back.cost.total_usd == e.cost.total_usd


def test_append_many_counts_only_new_events(ledger: SQLLedger) -> None:
    events = [make_event(i) for i in range(50)]
    assert ledger.append_many(events) == 50
    assert ledger.append_many([*events[:10], make_event(99)]) == 1
    assert ledger.count() == 51


def test_queries_by_customer_period_run_model_status(ledger: SQLLedger) -> None:
    events = [
        make_event(0, customer="acme", ts=T0),
        make_event(1, customer="acme", ts=T0 + timedelta(days=3), run_id="r1"),
        make_event(2, customer="acme", ts=T0 + timedelta(days=40), model="claude-sonnet-4"),
        make_event(3, customer="globex", ts=T0 + timedelta(days=1), priced=False, run_id="r1"),
        make_event(4, customer="globex", ts=T0 + timedelta(days=2), status="error"),
    ]
    ledger.append_many(events)
    month = EventQuery(customer="acme", since=T0, until=T0 + timedelta(days=30))
    assert [e.id for e in ledger.query(month)] == [events[0].id, events[1].id]
    assert {e.id for e in ledger.query(EventQuery(run_id="r1"))} == {events[1].id, events[3].id}
    assert [e.id for e in ledger.query(EventQuery(model="claude-sonnet-4"))] == [events[2].id]
    assert [e.id for e in ledger.query(EventQuery(status="unpriced"))] == [events[3].id]
    assert [e.id for e in ledger.query(EventQuery(status="error"))] == [events[4].id]
    assert len(ledger.query(EventQuery(limit=2))) == 2
    # the same answers as the in-memory reference implementation
    for q in (month, EventQuery(run_id="r1"), EventQuery(status="priced"), EventQuery(customer="globex")):
        assert [e.id for e in ledger.query(q)] == [
            e.id for e in sorted(events, key=lambda e: e.timestamp) if q.matches(e)
        ]


def test_unpriced_and_reprice_keep_the_old_cost(ledger: SQLLedger) -> None:
    ledger.append_many([make_event(0), make_event(1, priced=False, model="new-model")])
    ((seq, event),) = ledger.unpriced()
    assert event.cost.total_usd is None
    new_cost = Cost("new-model", "new-model", "openai", "priced", Decimal("0.0042"),
                    price_version="openai/new-model@2026-11-02")
    assert ledger.reprice([(seq, new_cost)]) == 1
    assert ledger.unpriced() == []
    (stored,) = ledger.query(EventQuery(model="new-model"))
    assert stored.cost.total_usd == Decimal("0.0042")
    assert stored.cost.price_version == "openai/new-model@2026-11-02"
    (old,) = ledger.cost_history(seq)
    assert old.status == "unpriced" and old.total_usd is None
    assert ledger.query(EventQuery(status="priced"))[-1].id == stored.id


def test_migrations_are_versioned_and_reusable_by_other_components(ledger: SQLLedger) -> None:
    assert ledger.schema_versions()["ledger"] == 2
    assert ledger.ensure_schema("ledger", ()) == []
    wallet = (
        Migration(1, "wallets", "CREATE TABLE {p}wallets (customer TEXT PRIMARY KEY, balance TEXT NOT NULL)"),
        Migration(2, "counters", "CREATE TABLE {p}counters (id {seq_pk}, name TEXT NOT NULL)"),
    )
    assert ledger.ensure_schema("policy_test", wallet[:1]) == [1]
    assert ledger.ensure_schema("policy_test", wallet) == [2]
    assert ledger.ensure_schema("policy_test", wallet) == []
    assert ledger.schema_versions() == {"ledger": 2, "policy_test": 2}


def test_sequence_order_is_insert_order(ledger: SQLLedger) -> None:
    ledger.append_many([make_event(i) for i in range(5)])
    ledger.append_many([make_event(i + 5) for i in range(5)])
    seqs = [s for s, _ in ledger.events_after(0, 100)]
    assert seqs == sorted(seqs) and len(seqs) == 10
    assert [s for s, _ in ledger.events_after(seqs[4], 100)] == seqs[5:]
    assert ledger.max_seq() == seqs[-1]


@pytest.mark.parametrize("bad", ["drop table", "x;y", ""])
def test_bad_table_prefix_is_refused(tmp_path: object, bad: str) -> None:
    from jevons.ledger.database import LedgerError, sqlite_ledger

    with pytest.raises(LedgerError):
        sqlite_ledger(f"{tmp_path}/x.db", prefix=bad)


def test_large_batches_keep_every_row_once_in_order(ledger: SQLLedger) -> None:
    """A batch goes to SQLite in multi-row statements of up to 2,048 rows, the rest in
    power-of-two pieces: sizes around those boundaries, with duplicates inside a batch and
    across pieces, store each key once, in the order given, with the row's columns intact."""
    from jevons.ledger.database import _VALUES_CHUNK, _value_chunks

    n = _VALUES_CHUNK + 300
    events = [make_event(i, customer=f"c{i % 7}", run_id="r" if i % 5 == 0 else None,
                         priced=i % 11 != 0) for i in range(n)]
    # a duplicate inside the first piece and one that lands in a later piece than its original
    batch = [*events[:10], events[3], *events[10:], events[5], events[_VALUES_CHUNK + 1]]
    assert ledger.append_many(batch) == n
    assert ledger.count() == n
    assert ledger.append_many(events[_VALUES_CHUNK - 5 : _VALUES_CHUNK + 5]) == 0
    stored = ledger.events_after(0, n + 10)
    assert [e.idempotency_key for _, e in stored] == [e.idempotency_key for e in events]
    assert stored[-1][1] == events[-1]
    assert ledger.count(EventQuery(customer="c3")) == sum(1 for e in events if e.customer == "c3")
    assert ledger.count(EventQuery(run_id="r")) == sum(1 for e in events if e.run_id == "r")
    assert len(ledger.unpriced()) == sum(1 for i in range(n) if i % 11 == 0)
    for size in (0, 1, 255, _VALUES_CHUNK - 1, _VALUES_CHUNK, 3 * _VALUES_CHUNK + 77):
        pieces = _value_chunks(size)
        assert [start for start, _ in pieces] == [sum(s for _, s in pieces[:k]) for k in range(len(pieces))]
        assert sum(s for _, s in pieces) == size
        assert all(0 < s <= _VALUES_CHUNK for _, s in pieces)


def test_new_sqlite_ledgers_use_16k_pages(tmp_path: object) -> None:
    import sqlite3

    from jevons.ledger.database import sqlite_ledger

    led = sqlite_ledger(f"{tmp_path}/p.db")
    led.append(make_event(1))
    led.close()
    with sqlite3.connect(f"{tmp_path}/p.db") as conn:
        assert conn.execute("PRAGMA page_size").fetchone()[0] == 16384
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_nul_in_a_callers_text_is_stored_and_holds_back_nothing(ledger: SQLLedger) -> None:
    """PostgreSQL text cannot hold NUL: the indexed columns get U+FFFD instead, on both
    backends alike, and the body keeps the exact value. Before, one such event failed its
    whole batch on PostgreSQL, on every retry."""
    odd = make_event(1, customer="acme\x00x", key="key\x00one", run_id="run\x00", model="gpt\x004o")
    batch = [make_event(0), odd, make_event(2)]
    assert ledger.append_many(batch) == 3
    assert ledger.append(make_event(3, key="key\x00one")) is False  # still one event per key
    [back] = ledger.query(EventQuery(customer="acme\ufffdx"))
    assert back == odd  # the event itself, exact
    assert ledger.query(EventQuery(customer="acme\x00x")) == [odd]  # by the name it carries, too
    assert [e.idempotency_key for e in ledger.query(EventQuery(run_id="run\ufffd"))] == ["key\x00one"]
    assert ledger.count() == 3


def test_a_dsn_password_reaches_neither_the_error_nor_the_log(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path,
) -> None:
    """psycopg quotes a DSN it cannot parse, password included."""
    from jevons import Meter
    from jevons.ledger.database import LedgerError, postgres_ledger

    dsn = "postgresql://postgres:hunter2@[127.0.0.1/test"
    with pytest.raises(LedgerError) as raised:
        postgres_ledger(dsn)
    message = str(raised.value)
    assert "hunter2" not in message and "postgres:***@" in message
    assert raised.value.__cause__ is None and raised.value.__suppress_context__

    monkeypatch.setenv("JEVONS_HOME", str(tmp_path))
    monkeypatch.setenv("MY_DSN", dsn)
    monkeypatch.setenv("JEVONS_LEDGER__BACKEND", "postgres")
    monkeypatch.setenv("JEVONS_LEDGER__DSN_ENV", "MY_DSN")
    with caplog.at_level("DEBUG"):
        Meter().close()
    assert "cannot be opened now" in caplog.text  # it runs on its append log meanwhile
    assert "hunter2" not in caplog.text


def test_a_ledger_that_cannot_be_configured_is_reported_not_silent(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    """A configuration error (here: PostgreSQL with no DSN) leaves the meter running on memory,
    and says so: counted in ``stats()`` and passed to ``on_error``."""
    from jevons import Meter
    from jevons.ledger import MemoryStore

    monkeypatch.setenv("JEVONS_HOME", str(tmp_path))
    monkeypatch.setenv("JEVONS_LEDGER__BACKEND", "postgres")
    seen: list[str] = []
    meter = Meter(on_error=lambda exc, kind: seen.append(kind))
    assert isinstance(meter.store, MemoryStore)
    assert seen == ["ledger"] and meter.stats()["errors_by_kind"] == {"ledger": 1}
    meter.close()
