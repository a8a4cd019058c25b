"""Deferred capture: with the durable ledger, a wrapped call only logs a snapshot of its
response on the caller's thread; the event is built by the ledger's background thread, and
rebuilt from the log line alone when the process dies first. Either way it must be the same
event a synchronous meter builds."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from deferred_support import log_lines, same_event
from openai import OpenAI

from jevons.capture.attribution import make
from jevons.capture.meter import Meter
from jevons.capture.record import capture_reader
from jevons.config import Settings
from jevons.events import Event
from jevons.ledger import open_ledger, open_store
from jevons.ledger.journal import JournaledStore
from jevons.prices.book import PriceBook
from jevons.prices.loader import default_book
from ledger.helpers import acks_until_killed, settings_for
from replay import ReplayServer

REPO = Path(__file__).resolve().parents[2]
CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "hi"}]


def openai_client(replay: ReplayServer, **kw: Any) -> OpenAI:
    return OpenAI(base_url=replay.url + "/v1", api_key="sk-test", max_retries=0, **kw)


@pytest.fixture
def durable(durable_meter: Callable[[PriceBook], Meter], test_book: PriceBook) -> Meter:
    return durable_meter(test_book)


def test_the_durable_meter_defers_and_builds_the_same_event(
    replay: ReplayServer, durable: Meter, meter: Meter,
) -> None:
    replay.on(CHAT, "openai/chat_cached")
    assert durable._deferred and not meter._deferred  # the in-memory store builds at once
    for m in (durable, meter):
        client = m.wrap(openai_client(replay), customer="acme", feature="chat", tags={"team": "a"})
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    [line] = log_lines(durable)
    assert line.startswith(b'["C1",'), "a capture line, not a built event"
    [deferred] = durable.events()  # query waits for the background thread
    [synchronous] = meter.events()
    same_event(deferred, synchronous)
    assert deferred.cost.status == "priced" and deferred.usage.cache_read_tokens > 0


def test_sinks_and_stats_see_the_event_once_flushed(
    replay: ReplayServer, durable_settings: Settings, test_book: PriceBook,
) -> None:
    replay.on(CHAT, "openai/chat_basic")
    seen: list[Event] = []
    with Meter(book=test_book, settings=durable_settings, sinks=[seen.append], policy=False) as m:
        client = m.wrap(openai_client(replay), customer="acme")
        for _ in range(3):
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert m.flush(timeout=30)
        assert len(seen) == 3 and len({e.id for e in seen}) == 3
        assert [e.id for e in m.events()] == [e.id for e in seen]  # the sinks' order is the log's
        stats = m.stats()
        assert (stats["events"], stats["ok"], stats["errors"]) == (3, 3, 0)


def test_a_logged_line_rebuilds_the_live_event_gateway_cost_included(
    replay: ReplayServer, durable: Meter, test_book: PriceBook,
) -> None:
    # OpenRouter's charge lives in the usage block's extra fields: the snapshot keeps them
    replay.on("/api/v1/chat/completions", "openrouter/chat_claude")
    client = durable.wrap(OpenAI(base_url=replay.url + "/api/v1", api_key="k", max_retries=0),
                          customer="acme", provider="openrouter")
    client.chat.completions.create(model="anthropic/claude-sonnet-4", messages=MESSAGES)
    [line] = log_lines(durable)
    rebuilt = capture_reader(test_book)(line)
    [live] = durable.events()
    assert rebuilt.id == live.id and rebuilt.timestamp == live.timestamp
    same_event(rebuilt, live)
    assert rebuilt.gateway_cost_usd == Decimal("0.007635")


@pytest.mark.parametrize("name", ["responses_basic", "responses_cache_write", "responses_reasoning"])
def test_responses_are_deferred_and_rebuilt(
    name: str, replay: ReplayServer, durable: Meter, meter: Meter, test_book: PriceBook,
) -> None:
    # the Responses snapshot is a dict (usage, status, output item types): the background
    # thread builds from it as a rebuild after a crash does
    replay.on("/v1/responses", f"openai/{name}")
    for m in (durable, meter):
        m.wrap(openai_client(replay), customer="acme").responses.create(model="o4-mini", input="hi")
    [line] = log_lines(durable)
    assert line.startswith(b'["C1",'), "a capture line, not a built event"
    [deferred] = durable.events()
    [synchronous] = meter.events()
    same_event(deferred, synchronous)
    same_event(capture_reader(test_book)(line), deferred)
    assert deferred.api == "responses" and deferred.usage.input_tokens > 0
    assert durable.stats()["errors"] == 0


def test_a_raw_response_is_recorded_at_once(replay: ReplayServer, durable: Meter) -> None:
    replay.on(CHAT, "openai/chat_basic")
    client = durable.wrap(openai_client(replay), customer="acme")
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
    assert raw.parse().usage is not None
    [event] = durable.events()
    assert event.status == "ok" and event.usage.input_tokens > 0
    assert durable.stats()["errors"] == 0


def test_every_source_of_attribution_reaches_a_deferred_call(replay: ReplayServer, durable: Meter) -> None:
    # the direct path (context, meter default) and the general one (per-call kwargs) both defer
    replay.on(CHAT, "openai/chat_basic")
    client = durable.wrap(openai_client(replay), feature="chat")
    durable.default = make(None, None, {"env": "test"})  # as Meter(tags={"env": "test"}) sets it
    with durable.context(customer="ctx", tags={"team": "a"}):
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, jevons_customer="kw")
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert all(line.startswith(b'["C1",') for line in log_lines(durable))
    events = durable.events()
    assert [(e.customer, e.feature, e.tags) for e in events] == [
        ("ctx", "chat", {"team": "a", "env": "test"}),
        ("kw", "chat", {"team": "a", "env": "test"}),
        (None, "chat", {"env": "test"}),
    ]


def test_a_call_after_the_meter_closed_passes_through_with_one_error(
        replay: ReplayServer, durable: Meter) -> None:
    replay.on(CHAT, "openai/chat_basic")
    errors: list[tuple[str, str]] = []
    durable.on_error = lambda exc, kind: errors.append((kind, str(exc)))
    client = durable.wrap(openai_client(replay), customer="acme")
    durable.close()
    result = client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert result.usage is not None and result.usage.total_tokens == 29  # the call is unaffected
    stats = durable.stats()
    assert (stats["errors"], stats["unstored"]) == (1, 1)  # reported once, not per path tried
    assert errors == [("store", "jevons ledger store is closed")]


def test_a_guard_added_after_the_meter_was_made_still_sees_every_call(
        replay: ReplayServer, durable: Meter) -> None:
    replay.on(CHAT, "openai/chat_basic")
    client = durable.wrap(openai_client(replay), customer="acme")
    seen: list[tuple[str | None, str]] = []
    durable.guards.append(lambda customer, provider, model, attribution: seen.append((customer, model)))
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert seen == [("acme", "gpt-4o-mini")]
    # and the call was built before it returned, so a cap sees its cost before the next call
    assert not log_lines(durable)[-1].startswith(b'["C1",')


def test_a_call_the_sdk_retried_is_one_event_per_attempt(replay: ReplayServer, durable: Meter) -> None:
    replay.on(CHAT, ["openai/error_429", "openai/chat_basic"])
    client = durable.wrap(openai_client(replay).with_options(max_retries=2), customer="acme")
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    events = sorted(durable.events(), key=lambda e: e.attempt)
    assert [(e.attempt, e.status) for e in events] == [(1, "error"), (2, "ok")]
    assert "429" in (events[0].error or "") and events[1].usage.input_tokens > 0


def test_runs_and_guards_keep_building_on_the_callers_thread(
    replay: ReplayServer, durable: Meter, durable_settings: Settings, test_book: PriceBook,
) -> None:
    replay.on(CHAT, "openai/chat_basic")
    client = durable.wrap(openai_client(replay), customer="acme")
    with durable.run("r1", budget_usd="1") as run:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert run.attempts == 1 and run.cost_usd > 0  # no flush: the total is current
    assert not log_lines(durable)[-1].startswith(b'["C1",')
    guarded = Meter(book=test_book, settings=durable_settings, guards=[lambda *a: None], policy=False)
    try:
        assert not guarded._deferred  # a cap must see each call's cost before the next one
    finally:
        guarded.close()


def test_a_failing_build_is_rebuilt_from_the_line(
    replay: ReplayServer, durable: Meter, monkeypatch: pytest.MonkeyPatch,
) -> None:
    replay.on(CHAT, "openai/chat_basic")

    def broken(item: Any) -> Event:
        raise RuntimeError("bug while building")

    monkeypatch.setattr(durable, "_complete_capture", broken)
    client = durable.wrap(openai_client(replay), customer="acme")
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    [event] = durable.events()
    assert event.customer == "acme" and event.cost.status == "priced"


RECORDER = textwrap.dedent(
    """
    import sys
    from openai import OpenAI
    from jevons import Meter

    meter = Meter()  # default durable store; the drain is set to never run (see the env)
    client = meter.wrap(OpenAI(base_url=sys.argv[1], api_key="k", max_retries=0), customer="acme")
    i = 0
    while True:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
                                       jevons_tags={"n": str(i)})
        sys.stdout.write(f"ok {i}\\n")
        sys.stdout.flush()
        i += 1
    """
)


@pytest.mark.slow
def test_sigkill_after_wrapped_calls_loses_none(replay: ReplayServer, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Calls whose process died before their events were built are rebuilt at the next start:
    priced as of their own time, with their attribution, once each."""
    replay.on(CHAT, "openai/chat_basic")
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("JEVONS_")}
    env.update({"JEVONS_HOME": str(home), "JEVONS_LEDGER__FLUSH_INTERVAL_MS": "3600000",
                "PYTHONPATH": str(REPO / "src")})
    err_path = tmp_path / "recorder.stderr"
    with open(err_path, "w") as err_file:
        proc = subprocess.Popen([sys.executable, "-c", RECORDER, replay.url + "/v1"], env=env,
                                stdout=subprocess.PIPE, stderr=err_file, text=True)
    acked = acks_until_killed(proc, 200, err_path)
    logs = list((home / "ledger" / "journal").rglob("*.jnl"))
    assert logs and any(b'["C1",' in p.read_bytes() for p in logs), "the calls were only logged"

    for k, v in env.items():
        if k.startswith("JEVONS_"):
            monkeypatch.setenv(k, v)
    settings = settings_for("sqlite", home=str(home))
    store = open_store(settings)  # start-up recovery rebuilds the logged calls
    store.close()
    ledger = open_ledger(settings)
    try:
        events = ledger.query()
    finally:
        ledger.close()
    tags = [e.tags["n"] for e in events]
    assert len(tags) == len(set(tags)), "a call stored twice"
    assert set(acked) <= set(tags) and len(set(tags) - set(acked)) <= 1  # + the one in flight
    book = default_book()
    for e in events:
        assert (e.customer, e.status, e.api, e.provider) == ("acme", "ok", "chat", "openai")
        assert e.cost.status == "priced"
        assert e.cost.total_usd == book.cost(e.model or "", e.usage, provider="openai",
                                             at=e.timestamp).total_usd


def test_stats_and_sinks_do_not_wait_for_a_database_that_is_down(
    replay: ReplayServer, durable_settings: Settings, test_book: PriceBook,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    replay.on(CHAT, "openai/chat_basic")
    seen: list[Event] = []
    m = Meter(book=test_book, settings=durable_settings, sinks=[seen.append], policy=False)
    store = m.store
    assert isinstance(store, JournaledStore)

    def down(rows: object) -> int:
        raise RuntimeError("database is down")

    real = store.ledger.insert_rows
    monkeypatch.setattr(store.ledger, "insert_rows", down)
    client = m.wrap(openai_client(replay), customer="acme")
    for _ in range(2):
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    t0 = time.monotonic()
    assert m.stats()["events"] == 2 and len(seen) == 2  # built, not committed
    assert time.monotonic() - t0 < 8
    assert not m.flush(timeout=0.3)  # not committed: flush says so
    monkeypatch.setattr(store.ledger, "insert_rows", real)  # the database is back
    assert m.flush(timeout=30) and len(m.events()) == 2 and len(seen) == 2
    m.close()


EXITER = textwrap.dedent(
    """
    import sys
    from openai import OpenAI
    from jevons import Meter

    out = open(sys.argv[2], "a")
    meter = Meter(sinks=[lambda e: out.write(e.id + "\\n") or out.flush()])
    client = meter.wrap(OpenAI(base_url=sys.argv[1], api_key="k", max_retries=0), customer="acme")
    for _ in range(3):
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    # no meter.close(): the process just ends
    """
)


def test_a_meter_never_closed_still_delivers_and_stores_at_exit(replay: ReplayServer, tmp_path: Path) -> None:
    replay.on(CHAT, "openai/chat_basic")
    home, sink_file = tmp_path / "home", tmp_path / "sink.txt"
    env = {k: v for k, v in os.environ.items() if not k.startswith("JEVONS_")}
    env.update({"JEVONS_HOME": str(home), "JEVONS_LEDGER__FLUSH_INTERVAL_MS": "3600000",
                "PYTHONPATH": str(REPO / "src")})
    done = subprocess.run([sys.executable, "-c", EXITER, replay.url + "/v1", str(sink_file)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    delivered = sink_file.read_text().split()
    assert len(delivered) == 3  # the sink saw every call, though the drain never ran on its own
    ledger = open_ledger(settings_for("sqlite", home=str(home)))
    try:
        assert sorted(e.id for e in ledger.query()) == sorted(delivered)
    finally:
        ledger.close()


def test_a_sync_ledger_builds_every_call_on_the_callers_thread(tmp_path: Path, test_book: PriceBook) -> None:
    settings = settings_for("sqlite", home=str(tmp_path / "home"), durability="sync")
    with Meter(book=test_book, settings=settings, policy=False) as m:
        assert not m._deferred  # no snapshot taken only to be refused by the store
