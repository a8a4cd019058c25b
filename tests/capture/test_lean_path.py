"""The lean path (``adapters.instrument``): on a durable meter, an ordinary call of a client
whose attempts only the retry hook sees (OpenAI, Anthropic) makes no ``Call`` and sets no
``CURRENT_CALL`` while the provider runs; the retry hook then keeps what it sees in the
caller's context (``_RETRIES``). Each test here would fail if that bookkeeping lost an
attempt, gave one call's attempts to another, or left the path unused."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Callable
from typing import Any

import anthropic
import httpx
import openai
import pytest
from deferred_support import log_lines

from jevons.capture.adapters import _RETRIES, _RETRY_CHAIN_MAX, _push_retry, attempts_since
from jevons.capture.meter import CURRENT_CALL, Meter
from jevons.prices.book import PriceBook
from replay import ReplayServer, Reply

CHAT = "/v1/chat/completions"
MODELS = "/v1/models"
MESSAGES = [{"role": "user", "content": "hi"}]
ASK: dict[str, Any] = {"model": "claude-sonnet-4-5", "max_tokens": 64,
                       "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def durable(durable_meter: Callable[[PriceBook], Meter], test_book: PriceBook) -> Meter:
    return durable_meter(test_book)


def attempts(meter: Meter) -> list[tuple[int, str]]:
    return [(e.attempt, e.status) for e in sorted(meter.events(), key=lambda e: e.attempt)]


def test_an_ordinary_call_runs_with_no_call_in_flight_and_is_deferred(
        replay: ReplayServer, durable: Meter, meter: Meter) -> None:
    replay.on(CHAT, "openai/chat_basic")
    seen: dict[str, object] = {}
    for name, m in (("durable", durable), ("memory", meter)):
        hook = [lambda _r, name=name: seen.__setitem__(name, CURRENT_CALL.get())]
        spy = httpx.Client(event_hooks={"request": hook})
        raw = openai.OpenAI(base_url=replay.url + "/v1", api_key="k", max_retries=0, http_client=spy)
        m.wrap(raw, customer="acme").chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert seen["durable"] is None, "the lean path makes no Call"
    assert seen["memory"] is not None, "a meter that builds at once keeps the general path"
    [line] = log_lines(durable)
    assert line.startswith(b'["C1",')
    [event] = durable.events()
    assert (event.customer, event.status, event.attempt, event.usage.input_tokens) == ("acme", "ok", 1, 19)


def test_sdk_retries_are_one_event_per_attempt(replay: ReplayServer, durable: Meter) -> None:
    replay.on(CHAT, ["openai/error_429", "openai/error_500", "openai/chat_basic"])
    client = durable.wrap(openai.OpenAI(base_url=replay.url + "/v1", api_key="k", max_retries=3),
                          customer="acme")
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    events = sorted(durable.events(), key=lambda e: e.attempt)
    assert [(e.attempt, e.status) for e in events] == [(1, "error"), (2, "error"), (3, "ok")]
    assert "429" in (events[0].error or "") and "500" in (events[1].error or "")
    assert events[2].usage.input_tokens == 19
    assert _RETRIES.get() is None, "the call took its attempts off the chain"
    # the next call of the context is not retried: one event, attempt 1, deferred
    replay.on(CHAT, "openai/chat_basic")
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert len(durable.events()) == 4 and log_lines(durable)[-1].startswith(b'["C1",')


def test_retried_then_failed_keeps_every_attempt(replay: ReplayServer, durable: Meter) -> None:
    replay.on(CHAT, ["openai/error_429", "openai/error_500"])
    client = durable.wrap(openai.OpenAI(base_url=replay.url + "/v1", api_key="k", max_retries=1),
                          customer="acme")
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    events = sorted(durable.events(), key=lambda e: e.attempt)
    assert [(e.attempt, e.status) for e in events] == [(1, "error"), (2, "error")]
    assert "429" in (events[0].error or "") and "500" in (events[1].error or "")
    assert all(e.customer == "acme" and e.usage.total_tokens == 0 for e in events)


def test_a_failed_call_that_was_not_retried_is_one_error(replay: ReplayServer, durable: Meter) -> None:
    replay.on(CHAT, "openai/error_500")
    client = durable.wrap(openai.OpenAI(base_url=replay.url + "/v1", api_key="k", max_retries=0))
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    [event] = durable.events()
    assert (event.attempt, event.status) == (1, "error") and "500" in (event.error or "")


def test_a_retried_unmetered_request_is_not_counted_by_the_next_call(
        replay: ReplayServer, durable: Meter) -> None:
    replay.on(MODELS, [Reply.error(500), Reply.json({"object": "list", "data": []})], method="GET")
    replay.on(CHAT, "openai/chat_basic")
    client = durable.wrap(openai.OpenAI(base_url=replay.url + "/v1", api_key="k", max_retries=1))
    client.models.list()  # not metered, retried once through the wrapped client's hook
    assert replay.count(MODELS) == 2 and _RETRIES.get() is not None
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert attempts(durable) == [(1, "ok")]


def test_async_retries_are_one_event_per_attempt(replay: ReplayServer, durable: Meter) -> None:
    replay.on(CHAT, ["openai/error_429", "openai/chat_basic"])
    client = durable.wrap(openai.AsyncOpenAI(base_url=replay.url + "/v1", api_key="k", max_retries=2),
                          customer="acme")

    async def main() -> None:
        await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    asyncio.run(main())
    events = sorted(durable.events(), key=lambda e: (e.attempt, e.status))
    assert [(e.attempt, e.status) for e in events] == [(1, "error"), (1, "ok"), (2, "ok")]


def test_retries_on_two_threads_stay_with_their_own_call(replay: ReplayServer, durable: Meter) -> None:
    # thread A's call is retried while thread B's is not: B's single event stays attempt 1
    replay.on(CHAT, ["openai/error_429", "openai/chat_basic", "openai/chat_basic"])
    client = durable.wrap(openai.OpenAI(base_url=replay.url + "/v1", api_key="k", max_retries=2))
    first_done = threading.Event()

    def a() -> None:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, extra_headers={"x": "a"})
        first_done.set()

    def b() -> None:
        first_done.wait(10)
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, extra_headers={"x": "b"})

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert attempts(durable) == [(1, "error"), (1, "ok"), (2, "ok")]


def test_anthropic_retries_on_the_lean_path(replay: ReplayServer, durable: Meter) -> None:
    replay.on("/v1/messages", [Reply.error(529, retry_after=0.01), "anthropic/messages_basic"])
    client = durable.wrap(anthropic.Anthropic(api_key="k", base_url=replay.url, max_retries=2))
    client.messages.create(**ASK)
    assert attempts(durable) == [(1, "error"), (2, "ok")]
    client.messages.create(**ASK)  # not retried: deferred
    assert log_lines(durable)[-1].startswith(b'["C1",')


def test_the_retry_chain_is_bounded_and_read_since_a_mark() -> None:
    def run() -> None:
        for _ in range(3 * _RETRY_CHAIN_MAX):  # retries of requests no call reads
            _push_retry(True, 500)
        node = _RETRIES.get()
        assert node is not None and node[3] < _RETRY_CHAIN_MAX
        depth = 0
        while node is not None:
            depth, node = depth + 1, node[0]
        assert depth <= _RETRY_CHAIN_MAX
        mark = _RETRIES.get()
        _push_retry(True, 429)
        _push_retry(False, None)
        _push_retry(True, None)
        _push_retry(False, None)
        assert attempts_since(mark) == [429, None, None]
        assert attempts_since(_RETRIES.get()) == []

    contextvars.copy_context().run(run)


def test_a_method_with_a_model_prefix_keeps_the_general_paths_which_remove_it(
        replay: ReplayServer, durable: Meter) -> None:
    """The lean path's inline test does not remove a model prefix (``MethodSpec.model_prefix``,
    Gemini's ``models/``): such a method is not given it, even on a client whose retries the
    hook sees, and the prefix is removed from the requested model as on the direct path."""
    from dataclasses import replace

    from jevons.capture.adapters import instrument
    from jevons.capture.adapters.openai import CHAT as CHAT_SPEC
    from jevons.capture.attribution import make

    replay.on(CHAT, "openai/chat_basic")
    raw = openai.OpenAI(base_url=replay.url + "/v1", api_key="k", max_retries=0)
    seen: list[object] = []

    def create(**kwargs: Any) -> Any:
        seen.append(CURRENT_CALL.get())
        return raw.chat.completions.create(**{**kwargs, "model": kwargs["model"].removeprefix("models/")})

    metered = instrument(durable, create, replace(CHAT_SPEC, model_prefix="models/"), make("acme", None),
                         "openai", is_async=False, retries_hooked=True)
    metered(model="models/gpt-4o-mini", messages=MESSAGES)
    assert seen[0] is not None, "the direct path, with its Call, not the lean path"
    [event] = durable.events()
    assert (event.model_requested, event.customer, event.status) == ("gpt-4o-mini", "acme", "ok")
