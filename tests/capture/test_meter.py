"""The Meter itself: attribution, runs and budgets, guards, sinks, the store hand-off, stats,
and the rule that nothing inside jevons ever breaks the caller's call."""

from __future__ import annotations

import asyncio
import threading
from decimal import Decimal
from typing import Any

import pytest
from openai import OpenAI

import jevons
from jevons.capture.errors import BudgetExceeded, CapReached
from jevons.capture.meter import Meter
from jevons.events import Event
from jevons.ledger.base import EventQuery, MemoryStore
from jevons.prices.book import PriceBook
from jevons.usage import Usage
from replay import ReplayServer

CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "hi"}]


def client_for(replay: ReplayServer) -> OpenAI:
    return OpenAI(base_url=replay.url + "/v1", api_key="sk-test", max_retries=0)


def record(meter: Meter, **kw: Any) -> Event:
    return meter.record(model="gpt-4o-mini", usage=Usage(100, 10), provider="openai", **kw)


# ------------------------------------------------------------------ attribution
def test_attribution_precedence_call_client_context_default(
    replay: ReplayServer, test_book: PriceBook
) -> None:
    replay.on(CHAT, "openai/chat_basic")
    meter = Meter(book=test_book, ledger="memory", customer="default-co", feature="default-f",
                  tags={"env": "prod", "src": "default"})
    client = meter.wrap(client_for(replay), feature="client-f", tags={"src": "client"})
    with meter.context(customer="ctx-co", tags={"src": "ctx", "region": "eu"}):
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, jevons_customer="call-co",
                                       jevons_tags={"src": "call"})
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    a, b, c = meter.events()
    assert (a.customer, a.feature) == ("ctx-co", "client-f")
    assert a.tags == {"env": "prod", "src": "client", "region": "eu"}
    assert (b.customer, b.tags["src"]) == ("call-co", "call")
    assert (c.customer, c.feature, c.tags) == ("default-co", "client-f", {"env": "prod", "src": "client"})


def test_client_attribution_wins_over_context(replay: ReplayServer, meter: Meter) -> None:
    replay.on(CHAT, "openai/chat_basic")
    client = meter.wrap(client_for(replay), customer="acme")
    with meter.context(customer="other", feature="ctx-f"):
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    [event] = meter.events()
    assert (event.customer, event.feature) == ("acme", "ctx-f")


def test_nested_contexts_override_field_by_field(meter: Meter) -> None:
    with meter.context(customer="acme", feature="outer"):
        with meter.context(feature="inner"):
            inner = record(meter)
        outer = record(meter)
    after = record(meter)
    assert (inner.customer, inner.feature) == ("acme", "inner")
    assert (outer.customer, outer.feature) == ("acme", "outer")
    assert after.customer is None


def test_context_is_per_thread(meter: Meter) -> None:
    results: dict[str, str | None] = {}
    barrier = threading.Barrier(4)

    def work(name: str) -> None:
        with meter.context(customer=name):
            barrier.wait()  # every thread is inside its own context at the same time
            results[name] = record(meter).customer

    threads = [threading.Thread(target=work, args=(f"c{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {f"c{i}": f"c{i}" for i in range(4)}
    # a thread that set nothing sees nothing, even while others have contexts
    assert record(meter).customer is None


async def test_context_is_per_asyncio_task(meter: Meter) -> None:
    async def work(name: str) -> str | None:
        with meter.context(customer=name):
            await asyncio.sleep(0.01)  # interleave with the other tasks
            return record(meter).customer

    got = await asyncio.gather(*(work(f"t{i}") for i in range(5)))
    assert got == [f"t{i}" for i in range(5)]


def test_unattributed_events_are_kept_and_counted(meter: Meter) -> None:
    event = record(meter)
    assert event.customer is None and not event.attributed
    assert meter.events() == [event]
    assert meter.stats()["unattributed"] == 1


def test_bad_jevons_kwarg_never_breaks_the_call(replay: ReplayServer, meter: Meter) -> None:
    replay.on(CHAT, "openai/chat_basic")
    client = meter.wrap(client_for(replay), customer="acme")
    result = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, jevons="not a dict")
    assert result.usage is not None
    assert "jevons" not in replay.last(CHAT).json
    assert meter.stats()["errors_by_kind"] == {"attribution": 1}
    assert meter.events()[0].customer == "acme"


# ------------------------------------------------------------------ runs and budgets
def test_run_groups_calls_with_steps_and_totals(replay: ReplayServer, meter: Meter) -> None:
    client = meter.wrap(client_for(replay))
    with meter.run("run-1", customer="acme") as run:
        replay.on(CHAT, "openai/chat_tools")
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        replay.on(CHAT, "openai/chat_basic")
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    record(meter)  # outside the run
    first, second, outside = meter.events()
    assert (first.run_id, first.step, second.run_id, second.step) == ("run-1", 1, "run-1", 2)
    assert first.customer == second.customer == "acme"
    assert outside.run_id is None and outside.step is None
    assert (run.steps, run.input_tokens, run.output_tokens, run.tool_calls) == (2, 82 + 19, 36 + 10, 2)
    assert run.cost_usd == first.cost.total_usd + second.cost.total_usd  # type: ignore[operator]
    assert meter.events(EventQuery(run_id="run-1")) == [first, second]


def test_budget_stops_the_call_that_would_start_past_it(replay: ReplayServer, meter: Meter) -> None:
    replay.on(CHAT, "openai/chat_cached")  # 0.0044 USD per call with the test book
    client = meter.wrap(client_for(replay))
    with meter.run("agent", customer="acme", budget_usd="0.005") as run:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)  # starts under budget
        with pytest.raises(BudgetExceeded) as raised:
            client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert replay.count(CHAT) == 2  # the provider was not called the third time
    assert raised.value.run_id == "agent" and raised.value.budget_usd == Decimal("0.005")
    assert raised.value.spent_usd == run.cost_usd > Decimal("0.005")
    assert isinstance(raised.value, jevons.BudgetExceeded)
    assert meter.stats()["blocked"] == 1 and len(meter.events()) == 2


async def test_run_in_async_code(replay: ReplayServer, meter: Meter) -> None:
    from openai import AsyncOpenAI

    replay.on(CHAT, "openai/chat_basic")
    client = meter.wrap(AsyncOpenAI(base_url=replay.url + "/v1", api_key="x", max_retries=0))
    async with meter.run("async-run", customer="acme") as run:
        await asyncio.gather(*(client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
                               for _ in range(3)))
    assert run.steps == 3 and sorted(e.step for e in meter.events()) == [1, 2, 3]  # type: ignore[type-var]


def test_budget_must_be_exact(meter: Meter) -> None:
    with pytest.raises(TypeError):
        meter.run("r", budget_usd=0.5)  # type: ignore[arg-type]


# ------------------------------------------------------------------ guards
def test_guard_enforcement_reaches_the_caller_before_the_provider(
    replay: ReplayServer, test_book: PriceBook
) -> None:
    seen: list[tuple[Any, ...]] = []

    def cap(customer: str | None, provider: str, model: str, attribution: Any) -> None:
        seen.append((customer, provider, model, attribution.feature))
        if customer == "capped":
            raise CapReached(customer, Decimal(10), Decimal("10.5"))

    replay.on(CHAT, "openai/chat_basic")
    meter = Meter(book=test_book, ledger="memory", guards=[cap])
    client = meter.wrap(client_for(replay), feature="f")
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, jevons_customer="ok")
    with pytest.raises(CapReached):
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, jevons_customer="capped")
    assert replay.count(CHAT) == 1
    assert seen == [("ok", "openai", "gpt-4o-mini", "f"), ("capped", "openai", "gpt-4o-mini", "f")]
    assert meter.stats()["blocked"] == 1


def test_a_broken_guard_is_counted_not_raised(replay: ReplayServer, test_book: PriceBook) -> None:
    def broken(*_: Any) -> None:
        raise RuntimeError("guard bug")

    errors: list[str] = []
    replay.on(CHAT, "openai/chat_basic")
    meter = Meter(book=test_book, ledger="memory", guards=[broken],
                  on_error=lambda e, kind: errors.append(kind))
    client = meter.wrap(client_for(replay), customer="acme")
    assert client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES).usage is not None
    assert errors == ["guard"] and len(meter.events()) == 1


# ------------------------------------------------------------------ sinks, store, errors
def test_sinks_get_each_event_after_the_store(test_book: PriceBook) -> None:
    store = MemoryStore()
    seen: list[tuple[str, bool]] = []

    def sink(event: Event) -> None:
        seen.append((event.id, event in store.query()))

    meter = Meter(book=test_book, ledger=store, sinks=[sink])
    event = record(meter)
    assert seen == [(event.id, True)]


def test_failing_sink_and_store_never_break_the_call(replay: ReplayServer, test_book: PriceBook) -> None:
    class FlakyStore(MemoryStore):
        fail = True

        def append(self, event: Event) -> bool:
            if self.fail:
                raise OSError("disk full")
            return super().append(event)

    def bad_sink(event: Event) -> None:
        raise ValueError("sink down")

    store = FlakyStore()
    replay.on(CHAT, "openai/chat_basic")
    meter = Meter(book=test_book, ledger=store, sinks=[bad_sink])
    client = meter.wrap(client_for(replay), customer="acme")
    assert client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES).usage is not None
    stats = meter.stats()
    assert stats["errors_by_kind"] == {"store": 1, "sink": 1} and stats["backlog"] == 1
    store.fail = False
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # the backlog goes first
    assert len(store.query()) == 2 and meter.stats()["backlog"] == 0


def test_price_failure_gives_an_unpriced_event(test_book: PriceBook) -> None:
    class BrokenBook(PriceBook):
        def cost(self, *args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("book bug")

    meter = Meter(book=BrokenBook(), ledger="memory")
    event = record(meter, customer="acme")
    assert event.cost.status == "unpriced" and event.cost.total_usd is None
    assert meter.stats()["errors_by_kind"] == {"price": 1}


def test_unknown_model_is_unpriced_never_zero(meter: Meter) -> None:
    event = meter.record(model="no-such-model", usage=Usage(10, 10), provider="openai")
    assert event.cost.total_usd is None and event.cost.status == "unpriced"
    assert meter.stats()["unpriced"] == 1


def test_record_api(meter: Meter) -> None:
    with meter.context(customer="acme"):
        event = meter.record(model="gpt-4o-mini", usage={"input_tokens": 1000, "output_tokens": 100},
                             provider="openai", feature="batch", tags={"job": 7}, status="error",
                             attempt=2, usage_complete=False, gateway_cost_usd="0.0002",
                             idempotency_key="job-7-2")
    assert (event.customer, event.feature, event.tags) == ("acme", "batch", {"job": "7"})
    assert (event.status, event.attempt, event.idempotency_key) == ("error", 2, "job-7-2")
    assert event.gateway_cost_usd == Decimal("0.0002")
    assert event.cost.status == "estimated"  # incomplete usage: a lower bound
    assert meter.events() == [event]
    meter.record(model="gpt-4o-mini", usage=Usage(1, 1), provider="openai", idempotency_key="job-7-2")
    assert len(meter.events()) == 1  # the store deduplicates on the idempotency key


def test_event_ids_are_unique(meter: Meter) -> None:
    ids = {record(meter).id for _ in range(200)}
    assert len(ids) == 200


def test_stats_and_close(test_book: PriceBook) -> None:
    flushed: list[str] = []

    class Sink:
        def __call__(self, event: Event) -> None:
            pass

        def flush(self) -> None:
            flushed.append("flush")

    with Meter(book=test_book, ledger="memory", sinks=[Sink()]) as meter:
        record(meter, customer="a")
        record(meter)
        meter.record(model="gpt-4o-mini", usage=Usage(1, 1), provider="openai", status="aborted",
                     usage_complete=False)
    stats = meter.stats()
    assert {k: stats[k] for k in ("events", "ok", "aborted", "unattributed", "incomplete")} == {
        "events": 3, "ok": 2, "aborted": 1, "unattributed": 2, "incomplete": 1}
    assert flushed == ["flush"]


# ------------------------------------------------------------------ construction
def test_ledger_choices(monkeypatch: pytest.MonkeyPatch, test_book: PriceBook) -> None:
    import jevons.ledger as ledger_pkg

    store = MemoryStore()
    assert Meter(book=test_book, ledger=store).store is store
    assert isinstance(Meter(book=test_book, ledger="memory").store, MemoryStore)
    with pytest.raises(ValueError):
        Meter(book=test_book, ledger="sqlite")
    opened: list[Any] = []
    monkeypatch.setattr(ledger_pkg, "open_store", lambda settings, **kw: opened.append(settings) or store,
                        raising=False)
    assert Meter(book=test_book).store is store and len(opened) == 1
    monkeypatch.delattr(ledger_pkg, "open_store", raising=False)
    assert isinstance(Meter(book=test_book).store, MemoryStore)


def test_default_book_never_crashes(monkeypatch: pytest.MonkeyPatch) -> None:
    meter = Meter(ledger="memory")
    assert isinstance(meter.book, PriceBook)
    event = record(meter)
    assert event.cost.status in ("priced", "estimated", "unpriced")


def test_wrap_rejects_unknown_clients(meter: Meter) -> None:
    with pytest.raises(TypeError, match="cannot meter"):
        meter.wrap(object())


def test_wrap_bug_returns_the_client_unwrapped(monkeypatch: pytest.MonkeyPatch, meter: Meter) -> None:
    from jevons.capture.adapters import openai as openai_adapter

    def boom(*_: Any) -> Any:
        raise RuntimeError("adapter bug")

    monkeypatch.setattr(openai_adapter, "fresh_copy", boom)
    raw = OpenAI(api_key="x")
    assert meter.wrap(raw) is raw
    assert meter.stats()["errors_by_kind"] == {"wrap": 1}


def test_stream_accumulator_bug_never_breaks_the_stream(
    replay: ReplayServer, meter: Meter, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jevons.capture.adapters import openai as openai_adapter

    def broken_add(self: Any, chunk: Any) -> None:
        raise KeyError("bug")

    monkeypatch.setattr(openai_adapter.ChatStreamAccumulator, "add", broken_add)
    replay.on(CHAT, "openai/chat_stream")
    client = meter.wrap(client_for(replay), customer="acme")
    chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True))
    assert len(chunks) == 6  # what the caller sees unwrapped (jevons' usage chunk is not passed on)
    [event] = meter.events()
    assert event.needs_review
    assert meter.stats()["errors_by_kind"] == {"extract": 1}


def test_record_inside_a_run_counts_but_is_never_refused(meter: Meter) -> None:
    with meter.run("r", customer="acme", budget_usd="0.0001") as run:
        first = record(meter)
        second = record(meter)  # past the budget: a record of a call already made is kept
    assert (first.step, second.step, run.steps) == (1, 2, 2)
    assert run.cost_usd == first.cost.total_usd + second.cost.total_usd  # type: ignore[operator]


def test_record_raises_when_the_event_is_not_durable(test_book: PriceBook) -> None:
    """record() is an explicit acknowledgement: a store failure reaches its caller (unlike a
    wrapped call), the event is kept in the backlog, and a retry with the same key stores one."""

    class DownStore(MemoryStore):
        down = True

        def append(self, event: Event) -> bool:
            if self.down:
                raise OSError("ledger down")
            return super().append(event)

    store = DownStore()
    meter = Meter(book=test_book, ledger=store)
    with pytest.raises(OSError, match="ledger down"):
        meter.record(model="gpt-4o-mini", usage=Usage(input_tokens=10), provider="openai",
                     idempotency_key="K1")
    store.down = False
    meter.record(model="gpt-4o-mini", usage=Usage(input_tokens=10), provider="openai",
                 idempotency_key="K1")
    assert [e.idempotency_key for e in store.query()] == ["K1"]
    assert meter.stats()["backlog"] == 0


def test_a_result_handler_failure_still_records_the_call(test_book: PriceBook) -> None:
    """The provider answered, then the adapter's result handler broke: the call is kept as an
    event flagged for review (it may have cost money), and the result reaches the caller."""
    from jevons.capture.adapters import MethodSpec, instrument
    from jevons.capture.attribution import Attribution

    def broken_handler(call: Any, result: Any) -> None:
        raise RuntimeError("adapter bug")

    meter = Meter(book=test_book, ledger="memory")
    metered = instrument(meter, lambda **kw: "the response", MethodSpec(api="chat", provider="openai",
                         on_result=broken_handler), Attribution(customer="acme"))
    assert metered(model="gpt-4o-mini") == "the response"
    (event,) = meter.events()
    assert event.needs_review and event.customer == "acme" and event.cost.total_usd is None
    assert meter.stats()["errors_by_kind"] == {"adapter": 1}


def test_a_retried_record_counts_once_in_its_run(test_book: PriceBook) -> None:
    class DownOnce(MemoryStore):
        down = True

        def append(self, event: Event) -> bool:
            if self.down:
                self.down = False
                raise OSError("ledger down")
            return super().append(event)

    meter = Meter(book=test_book, ledger=DownOnce())
    with meter.run("r1", customer="acme") as run:
        with pytest.raises(OSError):
            meter.record(model="gpt-4o-mini", usage=Usage(input_tokens=10), provider="openai",
                         idempotency_key="K")
        meter.record(model="gpt-4o-mini", usage=Usage(input_tokens=10), provider="openai",
                     idempotency_key="K")
    assert run.input_tokens == 10 and meter.stats()["events"] == 1


def test_a_record_made_again_after_it_succeeded_counts_once(test_book: PriceBook) -> None:
    """The same ``record()`` twice (a caller's retry after a timeout on its side): one event
    stored, counted, added to its run and passed to the sinks once."""
    seen: list[Event] = []
    meter = Meter(book=test_book, ledger="memory", sinks=[seen.append])
    with meter.run("r1", customer="acme") as run:
        for _ in range(2):
            meter.record(model="gpt-4o-mini", usage=Usage(input_tokens=1000), provider="openai",
                         idempotency_key="job-1")
    assert len(meter.events()) == 1 and len(seen) == 1
    assert (meter.stats()["events"], meter.stats()["duplicates"]) == (1, 1)
    assert run.input_tokens == 1000 and run.cost_usd == seen[0].cost.total_usd


def test_an_exit_code_is_not_taken_for_an_http_status(test_book: PriceBook) -> None:
    """``SystemExit(130)`` inside a provider call is not an HTTP answer: usage unknown, not $0."""
    meter = Meter(book=test_book, ledger="memory")
    call = meter.begin("openai", "chat", "gpt-4o-mini", meter.default)
    assert call is not None
    event = call.fail(SystemExit(130))
    assert event is not None and not event.usage_complete and "HTTP" not in (event.error or "")


def test_a_record_retried_after_its_store_logged_it_and_raised_counts_once(test_book: PriceBook) -> None:
    """``durability = "sync"``: the append logs the event, then times out waiting for the
    database and raises. The caller's retry (same key) finds the key taken; it is still this
    record's one acknowledgement, so it is counted and sent to the sinks, once."""
    class LoggedThenTimedOut(MemoryStore):
        fail = True

        def append(self, event: Event) -> bool:
            stored = super().append(event)
            if self.fail:
                self.fail = False
                raise OSError("timed out waiting for the commit")
            return stored

    seen: list[Event] = []
    meter = Meter(book=test_book, ledger=LoggedThenTimedOut(), sinks=[seen.append])
    call = {"model": "gpt-4o-mini", "usage": Usage(input_tokens=10), "provider": "openai",
            "idempotency_key": "K"}
    with pytest.raises(OSError):
        meter.record(**call)  # type: ignore[arg-type]
    meter.record(**call)  # type: ignore[arg-type]
    assert len(seen) == 1 and meter.stats()["events"] == 1 and len(meter.events()) == 1
