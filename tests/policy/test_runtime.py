"""Real-time enforcement: the Meter sink and guard, atomic counters on SQLite and PostgreSQL."""

from __future__ import annotations

import multiprocessing
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal as D
from pathlib import Path

import pytest

from jevons.capture.errors import CapReached
from jevons.policy.engine import Alert, Grant, PolicyEngine
from jevons.policy.loader import parse_policy
from jevons.policy.runtime import PolicyRuntime
from jevons.policy.store import PolicyStore, PostgresPolicyStore, SqlitePolicyStore

from .helpers import at, event

POLICY = """
default_plan = "p"
[plans.p]
cap = 150
cap_enforcement = "block"
alerts = [0.5, 1.0]
low_credit_usd = 20
allowance = { amount = 10 }
[plans.p.classes.base]
mode = "price"
markup = 2
"""
GRANT = Grant("g1", "acme", D(100), "paid", 0, datetime(2026, 1, 1, tzinfo=UTC))


def runtime(store: PolicyStore, **kw: object) -> PolicyRuntime:
    return PolicyRuntime(PolicyEngine(parse_policy(POLICY)), store, clock=lambda: at(28), **kw)  # type: ignore[arg-type]


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[SqlitePolicyStore]:
    store = SqlitePolicyStore(tmp_path / "policy.db")
    yield store
    store.close()


@pytest.fixture
def pg_store(pg_dsn: str) -> Iterator[PostgresPolicyStore]:
    schema = f"policy_test_{uuid.uuid4().hex[:10]}"
    store = PostgresPolicyStore(pg_dsn, schema=schema)
    yield store
    store.close()
    import psycopg

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def test_sink_applies_each_event_once_and_tracks_balances(sqlite_store: SqlitePolicyStore) -> None:
    alerts: list[Alert] = []
    rt = runtime(sqlite_store, on_alert=[alerts.append])
    rt.grant(GRANT)
    e1, e2 = event("10", when=at(1)), event("30", when=at(2))
    assert rt.amount_for(e1) == D(10)  # 20 charge, 10 of it included
    rt(e1)  # a retry: not applied twice
    assert rt.amount_for(e2) == D(60)
    bal = rt.balances("acme", at(3))
    assert bal["billed"] == D(70)
    assert bal["cap_headroom"] == D(80)
    assert bal["credits"]["total"] == D(30)
    assert bal["allowance_left"] == {"0:*": D(0)}
    keys = [a.key for a in alerts]
    # e1's 10 of included charge uses the whole allowance: both thresholds cross on it, in order
    assert keys == ["allowance:0:*:0.5", "allowance:0:*:1"]
    rt(event("20", when=at(3)))
    keys = [a.key for a in alerts]
    assert "cap:0.5" in keys and "low_credit" in keys
    assert keys.count("low_credit") == 1  # once per period


def test_guard_blocks_before_the_provider_once_the_cap_is_reached(sqlite_store: SqlitePolicyStore) -> None:
    rt = runtime(sqlite_store)
    rt.guard("acme", "openai", "gpt-4o", None)  # nothing charged yet
    rt(event("80", when=at(27)))
    with pytest.raises(CapReached) as info:
        rt.guard("acme", "openai", "gpt-4o", None)
    assert info.value.cap_usd == D(150)
    rt.guard("bob", "openai", "gpt-4o", None)  # another customer is not blocked


def test_meter_sink_and_guard(sqlite_store: SqlitePolicyStore) -> None:
    import jevons
    from jevons.capture.attribution import Attribution
    from jevons.prices.book import PriceBook

    text = POLICY.replace("cap = 150", 'cap = "0.1"').replace("allowance = { amount = 10 }", "")
    rt = PolicyRuntime(PolicyEngine(parse_policy(text)), sqlite_store)
    meter = jevons.Meter(book=PriceBook(), ledger="memory", sinks=[rt], guards=[rt.guard])
    meter.begin("openai", "chat", "gpt-4o", Attribution(customer="acme"))
    meter.record(model="gpt-4o", usage={"input_tokens": 1000, "output_tokens": 500}, provider="openai",
                 customer="acme")
    assert meter.stats()["errors"] == 0
    # unpriced -> fallback cost 0.0525 x 2 = 0.105 charge, capped at 0.1
    assert rt.balances("acme")["billed"] == D("0.1")
    with pytest.raises(CapReached):
        meter.begin("openai", "chat", "gpt-4o", Attribution(customer="acme"))


def _hammer(store: PolicyStore, events: list, threads: int) -> None:
    rt = runtime(store)
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for e in events[i::threads] + events[(i + 1) % threads::threads]:  # with duplicates
                rt(e)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert not errors, errors


def _events(n: int) -> list:
    return [event("1.5", when=at(1 + i % 27), eid=f"c{i:04d}") for i in range(n)]


def _check(store: PolicyStore, events: list) -> None:
    rt = runtime(store)
    bal = rt.balances("acme", at(28))
    # 3 per event, 10 included, cap 150: order does not change these totals
    assert bal["billed"] == D(150)
    assert bal["credits"]["total"] == D(0)
    assert bal["credits"]["paid"] == D(0)  # the one grant is paid and fully drawn
    batch, rater = PolicyEngine(parse_policy(POLICY), extra_grants=[GRANT]).rate_customer("acme", events)
    assert rater.state is not None and rater.state.billed_total == bal["billed"]
    assert sum(r.credits_applied for r in batch) == D(100)


def _proc(kind: str, where: str, schema: str, start: int) -> None:
    store: PolicyStore = SqlitePolicyStore(where) if kind == "sqlite" else PostgresPolicyStore(
        where, schema=schema)
    evs = _events(80)
    _hammer(store, evs[start::4] + evs[(start + 1) % 4::4], 4)
    store.close()


def _concurrency(store: PolicyStore, kind: str, where: str, schema: str = "") -> None:
    store.add_grant(GRANT)
    evs = _events(80)
    _hammer(store, evs, 16)
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_proc, args=(kind, where, schema, i)) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    _check(store, evs)


def test_sixteen_threads_and_four_processes_on_sqlite(sqlite_store: SqlitePolicyStore) -> None:
    _concurrency(sqlite_store, "sqlite", str(sqlite_store.path))


@pytest.mark.postgres
def test_sixteen_threads_and_four_processes_on_postgres(pg_store: PostgresPolicyStore) -> None:
    _concurrency(pg_store, "postgres", pg_store.dsn, pg_store.schema)


@pytest.mark.postgres
def test_postgres_grants_and_balances(pg_store: PostgresPolicyStore) -> None:
    rt = runtime(pg_store)
    rt.grant(GRANT)
    rt(event("20", when=at(1)))
    assert [g.id for g in pg_store.grants()] == ["g1"]
    assert rt.balances("acme", at(2))["credits"]["total"] == D(70)


def test_a_late_event_of_a_closed_period_is_recorded_not_rated_into_the_new_one(
    sqlite_store: SqlitePolicyStore,
) -> None:
    rt = runtime(sqlite_store)
    rt(event("10", when=at(2, month=4)))
    late = rt(event("10", when=at(20, month=3)))
    assert isinstance(late, dict) and late["late"] is True and late["billed"] == "20"
    assert rt.balances("acme", at(3, month=4))["billed"] == D(10)


def test_alerts_reach_a_webhook_once_per_period(sqlite_store: SqlitePolicyStore) -> None:
    import http.server
    import json

    from jevons.policy.runtime import webhook_alert_hook

    received: list[dict] = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            return None

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        rt = runtime(sqlite_store, on_alert=[webhook_alert_hook(f"http://127.0.0.1:{server.server_address[1]}/")])
        rt(event("40", when=at(1)))  # 80 charge, 70 billed: allowance 100%, cap 0.5 not yet
        rt(event("5", when=at(2)))
        rt(event("5", when=at(3)))
    finally:
        server.shutdown()
        server.server_close()
    keys = [r["key"] for r in received]
    assert keys == ["allowance:0:*:0.5", "allowance:0:*:1", "cap:0.5"]
    assert received[-1]["customer"] == "acme" and received[-1]["period"] == "2026-03"
