"""The compact stored form (schema version 2): positional JSON bodies tagged with a recorded
layout, version 1 ledgers migrated in place, and every older form still read back."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal
from pathlib import Path

import msgspec
import pytest

from jevons.events import Event
from jevons.ledger import EventQuery, open_store
from jevons.ledger import database as db
from jevons.ledger.codec import (
    LAYOUT,
    LAYOUT_SPEC,
    UnknownLayoutError,
    decode_event,
    decode_index,
    encode_event,
    index_row,
)
from jevons.ledger.database import SQLLedger, postgres_ledger, sqlite_ledger
from jevons.ledger.journal import JournaledStore
from jevons.ledger.schema import LEDGER_MIGRATIONS
from jevons.prices.cost import Cost

from .helpers import Outage, make_event, settings_for

_V1_COLS = ("idempotency_key, event_id, ts_us, customer, run_id, model, model_requested, status, "
            "cost_status, total_usd, price_version, body")


def _object_json(event: Event) -> bytes:
    """The version 1 stored form: the dataclass as a JSON object."""
    return msgspec.json.encode(event)


def _other_layout(event: Event) -> tuple[str, str, str]:
    """(layout, spec, body) as another version of the dataclasses would have written them:
    one field fewer (``service_tier``) and one unknown to this version (``shoe_size``)."""
    spec = json.loads(LAYOUT_SPEC)
    values = json.loads(encode_event(event))[1:]
    i = spec.index("service_tier")
    del spec[i], values[i]
    spec.append("shoe_size")
    values.append(44)
    layout = f"Ltest{uuid.uuid4().hex[:8]}"
    return layout, json.dumps(spec), json.dumps([layout, *values])


def test_codec_round_trips_every_form() -> None:
    for e in (make_event(1, run_id="r"), make_event(2, priced=False, customer=None)):
        body = encode_event(e)
        assert body.startswith(f'["{LAYOUT}",'.encode()) and b"\n" not in body
        assert decode_event(body) == e and decode_event(body.decode()) == e
        assert decode_index(body) == index_row(e, body)
        assert decode_event(_object_json(e)) == e  # version 1 rows and logs
        assert decode_event(json.dumps(e.to_dict())) == e  # to_dict lines
        assert decode_index(_object_json(e))[:8] == index_row(e)[:8]
    layout, _, body = _other_layout(make_event(3))
    with pytest.raises(UnknownLayoutError, match=layout):
        decode_event(body)


def test_stored_body_is_the_compact_positional_form(ledger: SQLLedger) -> None:
    e = make_event(1)
    ledger.append(e)
    ((body,),) = ledger._b.read("SELECT body FROM {p}events")
    assert json.loads(body)[0] == LAYOUT
    assert len(body) < 0.45 * len(_object_json(e)), (len(body), len(_object_json(e)))
    ((layout, spec),) = ledger._b.read("SELECT layout, spec FROM {p}body_layouts")
    assert (layout, spec) == (LAYOUT, LAYOUT_SPEC)


def test_bodies_of_another_layout_are_read_by_name(ledger: SQLLedger) -> None:
    """A process running another version of the dataclasses wrote to the same ledger after
    this one loaded the layouts: its events are read by field name, new fields defaulted."""
    e = make_event(7, run_id="r7")
    layout, spec, body = _other_layout(e)
    b = ledger._b
    b.write(lambda cur: cur.execute(
        b.q("INSERT INTO {p}body_layouts (layout, spec, recorded_at_us) VALUES (?, ?, 0)"),
        (layout, spec),
    ))
    assert ledger.insert_rows([(*index_row(e)[:8], body)]) == 1
    (back,) = ledger.query(EventQuery(run_id="r7"))
    assert back == e  # service_tier was missing: its default (None) is what e has
    assert ledger.count(EventQuery(customer="cust_1")) == 1


def _open(backend: str, tmp_path: Path, dsn: str | None, schema: str | None, prefix: str) -> SQLLedger:
    if backend == "sqlite":
        return sqlite_ledger(tmp_path / "v1.db", prefix=prefix)
    assert dsn is not None and schema is not None
    return postgres_ledger(dsn, schema=schema, prefix=prefix)


def test_a_version_1_ledger_is_migrated_and_stays_readable(
    backend: str, dsn_for: str | None, tmp_path: Path, request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    schema = request.getfixturevalue("pg_run_schema") if backend == "postgres" else None
    prefix = f"v{uuid.uuid4().hex[:8]}_"
    old_events = [make_event(0, customer="acme"), make_event(1, customer="acme", run_id="r1"),
                  make_event(2, customer="globex", priced=False, model="new-model")]
    # a ledger as version 1 of the schema made it, with version 1 rows
    with monkeypatch.context() as m:
        m.setattr(db, "LEDGER_MIGRATIONS", LEDGER_MIGRATIONS[:1])
        m.setattr(db.SQLLedger, "_record_layout", lambda self: None)
        old = _open(backend, tmp_path, dsn_for, schema, prefix)
        assert old.schema_versions()["ledger"] == 1
        b = old._b
        rows = [(e.idempotency_key, e.id, index_row(e)[1], e.customer, e.run_id,
                 e.cost.model or e.model_requested, e.model_requested, e.status, e.cost.status,
                 None if e.cost.total_usd is None else str(e.cost.total_usd), e.cost.price_version,
                 _object_json(e).decode()) for e in old_events]
        b.write(lambda cur: cur.executemany(
            b.q(f"INSERT INTO {{p}}events ({_V1_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"), rows))
        old_seqs = [s for s, _ in old.events_after(0, 10)]
        old.close()

    led = _open(backend, tmp_path, dsn_for, schema, prefix)
    try:
        assert led.schema_versions()["ledger"] == 2
        assert led.query() == old_events  # version 1 bodies read as they are
        assert [e.id for e in led.query(EventQuery(customer="acme"))] == [e.id for e in old_events[:2]]
        assert led.query(EventQuery(run_id="r1")) == [old_events[1]]
        # re-pricing a version 1 row keeps its old cost in the history and rewrites it compactly
        ((seq, unpriced),) = led.unpriced()
        assert unpriced == old_events[2]
        cost = Cost("new-model", "new-model", "openai", "priced", Decimal("0.0042"),
                    price_version="openai/new-model@2026-11-02")
        assert led.reprice([(seq, cost)]) == 1
        (hist,) = led.cost_history(seq)
        assert hist.status == "unpriced" and hist.total_usd is None
        (priced,) = led.query(EventQuery(model="new-model"))
        assert priced == old_events[2].with_cost(cost)
        ((body,),) = led._b.read("SELECT body FROM {p}events WHERE seq = ?", (seq,))
        assert json.loads(body)[0] == LAYOUT
        # new rows go after the old ones, in the new form, idempotent against the old keys
        new = make_event(3, customer="acme")
        assert led.append_many([old_events[0], new]) == 1
        seqs = [s for s, _ in led.events_after(0, 10)]
        assert seqs[:3] == old_seqs and seqs[3] > old_seqs[-1] and len(seqs) == 4
        assert led.query(EventQuery(customer="acme"))[-1] == new
    finally:
        led.close()


def test_recovery_reads_every_log_line_form(tmp_path: Path) -> None:
    """A log left by a crashed process may hold version 1 lines (written before an upgrade),
    positional lines, and lines of a layout recorded after this process started."""
    settings = settings_for("sqlite", home=str(tmp_path))
    first = open_store(settings)
    assert isinstance(first, JournaledStore)
    journal = first.directory
    led = first.ledger
    other = make_event(3, key="other-layout")
    layout, spec, other_body = _other_layout(other)
    led._b.write(lambda cur: cur.execute(
        "INSERT INTO jevons_body_layouts (layout, spec, recorded_at_us) VALUES (?, ?, 0)",
        (layout, spec),
    ))
    first.close()
    v1, positional = make_event(1, key="v1"), make_event(2, key="positional")
    (journal / "4343-cafe.jnl").write_bytes(
        _object_json(v1) + b"\n" + encode_event(positional) + b"\n" + other_body.encode() + b"\n"
    )
    store = open_store(settings)
    try:
        assert store.stats()["recovered"] == 3  # type: ignore[attr-defined]
        by_key = {e.idempotency_key: e for e in store.query()}
        assert by_key == {"v1": v1, "positional": positional, "other-layout": other}
    finally:
        store.close()


def test_a_database_far_behind_spills_to_the_log_and_loses_nothing(
    ledger: SQLLedger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows wait in memory for the drain only up to ``memory_rows_bytes``; past that the
    drain reads the log back, then hands over to memory again once caught up."""
    outage = Outage(ledger, monkeypatch)
    # the drain runs only when woken (flush), so the test sees each state
    store = JournaledStore(ledger, tmp_path / "journal", flush_interval_ms=60_000,
                           memory_rows_bytes=5_000)
    events = [make_event(i) for i in range(60)]
    for e in events[:5]:
        assert store.append(e)
    assert len(store._rows) == 5 and not store._spilled
    assert not store.flush(timeout=0.3)  # the database is down: the rows are kept to retry
    for e in events[5:40]:
        assert store.append(e)
    assert store._spilled and not store._rows, "40 events of ~500 bytes are over 5,000 bytes"
    outage.down = False
    assert store.append_many(events[40:]) == 20
    assert store.flush(timeout=30)
    assert not store._spilled
    after = make_event(99, key="after")
    assert store.append(after)
    assert len(store._rows) == 1  # caught up: rows are handed over in memory again
    assert store.flush(timeout=30)
    assert ledger.count() == 61
    assert sorted(e.id for e in ledger.query()) == sorted(e.id for e in [*events, after])
    assert store.stats()["stored"] == 61 and store.stats()["db_duplicates"] == 0
    store.close()


def test_rows_kept_to_retry_count_against_the_memory_bound(
    ledger: SQLLedger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An outage with the drain retrying all along: the rows it failed to commit and keeps to
    retry count against ``memory_rows_bytes`` too, so memory stays bounded; nothing is lost."""
    outage = Outage(ledger, monkeypatch)
    store = JournaledStore(ledger, tmp_path / "journal", flush_interval_ms=60_000,
                           memory_rows_bytes=5_000)
    events = [make_event(i) for i in range(50)]
    for start in range(0, 50, 5):
        for e in events[start : start + 5]:
            assert store.append(e)
        assert not store.flush(timeout=0.2)  # each retry takes the new rows into its carry
    assert store._spilled, "the carried rows alone are over 5,000 bytes"
    assert not store.flush(timeout=0.2)
    assert not store._carry and not store._rows  # the log holds them; memory does not
    outage.down = False
    assert store.flush(timeout=30)
    assert sorted(e.id for e in ledger.query()) == sorted(e.id for e in events)
    store.close()
