"""The OpenAI adapter on Chat Completions: the real ``openai`` SDK against the replay server."""

from __future__ import annotations

import threading
from decimal import Decimal

import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from jevons.capture.meter import CURRENT_CALL, Meter
from replay import ReplayServer, Reply, fixture_json

CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "Hello"}]


def client_for(replay: ReplayServer, max_retries: int = 0) -> OpenAI:
    return OpenAI(base_url=replay.url + "/v1", api_key="sk-test", max_retries=max_retries)


def aclient_for(replay: ReplayServer, max_retries: int = 0) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=replay.url + "/v1", api_key="sk-test", max_retries=max_retries)


def test_wrapped_client_keeps_its_type_and_result(replay: ReplayServer, meter: Meter) -> None:
    replay.on(CHAT, "openai/chat_basic")
    raw = client_for(replay)
    client = meter.wrap(raw, customer="acme", feature="summarize")
    assert isinstance(client, OpenAI)
    assert client is not raw
    result = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert isinstance(result, openai.types.chat.ChatCompletion)
    assert result.choices[0].message.content == "Hello! How can I assist you today?"
    [event] = meter.events()
    assert (event.customer, event.feature) == ("acme", "summarize")
    assert (event.provider, event.api) == ("openai", "chat")
    assert event.model_requested == "gpt-4o-mini"
    assert event.model == "gpt-4o-mini"  # resolved from gpt-4o-mini-2024-07-18
    assert (event.usage.input_tokens, event.usage.output_tokens) == (19, 10)
    # 19 * 0.15/M + 10 * 0.60/M
    assert event.cost.total_usd == Decimal("0.00000285") + Decimal("0.000006")
    assert event.cost.status == "priced" and event.status == "ok" and event.attempt == 1
    # the original client is not metered
    raw.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert len(meter.events()) == 1


def test_cached_tokens_are_a_subset_of_prompt(replay: ReplayServer, meter: Meter) -> None:
    replay.on(CHAT, "openai/chat_cached")
    client = meter.wrap(client_for(replay), customer="acme")
    client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    [event] = meter.events()
    assert event.usage.input_tokens == 2048 and event.usage.cache_read_tokens == 1536
    lines = {line.dimension: line for line in event.cost.lines}
    assert lines["input"].tokens == 512 and lines["cache_read"].tokens == 1536
    assert event.cost.total_usd == (512 * Decimal("2.5") + 1536 * Decimal("1.25") + 120 * Decimal(10)) / 10**6


def test_reasoning_audio_tools_and_tier(replay: ReplayServer, meter: Meter) -> None:
    client = meter.wrap(client_for(replay), customer="acme")
    replay.on(CHAT, "openai/chat_reasoning")
    client.chat.completions.create(model="o4-mini", messages=MESSAGES)
    replay.on(CHAT, "openai/chat_audio")
    client.chat.completions.create(model="gpt-4o-audio-preview", messages=MESSAGES)
    replay.on(CHAT, "openai/chat_tools")
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    replay.on(CHAT, "openai/chat_flex")
    client.chat.completions.create(model="o4-mini", messages=MESSAGES, service_tier="flex")
    reasoning, audio, tools, flex = meter.events()
    assert reasoning.usage.reasoning_tokens == 1024 and reasoning.usage.output_tokens == 1186
    assert audio.usage.audio_input_tokens == 110 and audio.usage.audio_output_tokens == 240
    audio_lines = {line.dimension: line.tokens for line in audio.cost.lines}
    assert audio_lines == {"input": 60, "audio_input": 110, "output": 60, "audio_output": 240}
    assert tools.usage.tool_calls == 2
    assert flex.service_tier == "flex"
    # no flex price in the test book: the standard price is used and the cost says so
    assert flex.cost.status == "estimated" and any("flex" in n for n in flex.cost.notes)


def test_per_call_attribution_is_stripped_before_the_provider(replay: ReplayServer, meter: Meter) -> None:
    replay.on(CHAT, "openai/chat_basic")
    client = meter.wrap(client_for(replay), customer="acme", feature="chat", tags={"env": "prod"})
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, jevons_customer="beta",
                                   jevons_tags={"team": "x"})
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES,
                                   jevons={"feature": "search", "tags": {"env": "dev"}})
    first, second = meter.events()
    assert (first.customer, first.feature, first.tags) == ("beta", "chat", {"env": "prod", "team": "x"})
    assert (second.customer, second.feature, second.tags) == ("acme", "search", {"env": "dev"})
    for body in replay.bodies(CHAT):
        assert not any(key.startswith("jevons") for key in body)


def test_stream_requests_usage_and_records_it(replay: ReplayServer, meter: Meter) -> None:
    replay.on(CHAT, "openai/chat_stream")
    client = meter.wrap(client_for(replay), customer="acme")
    stream = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    assert isinstance(stream, openai.Stream)
    assert stream.response.status_code == 200  # the SDK's own stream object
    # the usual caller code: the usage-only chunk (no choices) jevons asked for is not passed on
    text = "".join(c.choices[0].delta.content or "" for c in stream)
    assert text == "Hello! How can I help?"
    assert replay.last(CHAT).json["stream_options"] == {"include_usage": True}
    [event] = meter.events()
    assert event.status == "ok" and event.usage_complete
    assert (event.usage.input_tokens, event.usage.output_tokens) == (19, 10)


def test_stream_usage_chunk_reaches_a_caller_who_asked_for_it(replay: ReplayServer, meter: Meter) -> None:
    replay.on(CHAT, "openai/chat_stream")
    client = meter.wrap(client_for(replay), customer="acme")
    chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True,
                                                 stream_options={"include_usage": True}))
    unwrapped = list(client_for(replay).chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options={"include_usage": True}))
    assert [c.model_dump() for c in chunks] == [c.model_dump() for c in unwrapped]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    [event] = meter.events()  # the unwrapped client is not metered
    assert (event.usage.input_tokens, event.usage.output_tokens) == (19, 10)


def test_stream_keeps_callers_include_usage_choice(replay: ReplayServer, meter: Meter) -> None:
    replay.on(CHAT, "openai/chat_stream_no_usage")
    client = meter.wrap(client_for(replay), customer="acme")
    with client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True,
                                        stream_options={"include_usage": False}) as stream:
        chunks = list(stream)
    assert len(chunks) == 6
    assert replay.last(CHAT).json["stream_options"] == {"include_usage": False}
    [event] = meter.events()
    assert not event.usage_complete and event.status == "ok"
    assert event.usage.output_tokens == 4  # estimated from the content chunks
    assert event.cost.status == "estimated"


def test_stream_abandoned_early_is_recorded_as_aborted(replay: ReplayServer, meter: Meter) -> None:
    replay.on(CHAT, "openai/chat_stream")
    client = meter.wrap(client_for(replay), customer="acme")
    with client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True) as stream:
        for i, _chunk in enumerate(stream):
            if i == 2:
                break
    [event] = meter.events()
    assert event.status == "aborted" and not event.usage_complete
    assert event.usage.output_tokens == 2


def test_stream_broken_off_by_the_network(replay: ReplayServer, meter: Meter) -> None:
    from replay import load_fixture

    replay.on(CHAT, load_fixture("openai/chat_stream").broken_after(3))
    client = meter.wrap(client_for(replay), customer="acme")
    stream = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    got = []
    with pytest.raises(openai.APIConnectionError) as raised:
        for chunk in stream:
            got.append(chunk)
    assert len(got) == 3
    [event] = meter.events()
    assert event.status == "error" and not event.usage_complete
    assert type(raised.value).__name__ in (event.error or "")


def test_stream_tool_calls_are_counted(replay: ReplayServer, meter: Meter) -> None:
    replay.on(CHAT, "openai/chat_stream_tools")
    client = meter.wrap(client_for(replay), customer="acme")
    for _ in client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True):
        pass
    [event] = meter.events()
    assert event.usage.tool_calls == 2 and event.usage.input_tokens == 90


def test_stream_helper_and_final_completion(replay: ReplayServer, meter: Meter) -> None:
    replay.on(CHAT, "openai/chat_stream")
    client = meter.wrap(client_for(replay), customer="acme")
    with client.chat.completions.stream(model="gpt-4o-mini", messages=MESSAGES,
                                        jevons_feature="helper") as stream:
        for _event in stream:
            pass
        final = stream.get_final_completion()
    assert final.choices[0].message.content == "Hello! How can I help?"
    assert final.usage is None  # as unwrapped: the caller did not ask for usage; jevons did
    [event] = meter.events()
    assert event.feature == "helper" and event.usage.output_tokens == 10
    assert replay.last(CHAT).json["stream_options"] == {"include_usage": True}
    assert "jevons" not in str(replay.last(CHAT).json)


def test_stream_helper_with_a_bad_jevons_kwarg_still_streams(replay: ReplayServer, meter: Meter) -> None:
    replay.on(CHAT, "openai/chat_stream")
    client = meter.wrap(client_for(replay), customer="acme")
    with client.chat.completions.stream(model="gpt-4o-mini", messages=MESSAGES,
                                        jevons={"customr": "typo"}) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.content == "Hello! How can I help?"
    assert "jevons" not in str(replay.last(CHAT).json)
    assert meter.stats()["errors_by_kind"] == {"attribution": 1}
    [event] = meter.events()
    assert event.customer == "acme" and event.usage.output_tokens == 10


def test_provider_error_passes_through_unchanged(replay: ReplayServer, meter: Meter) -> None:
    replay.on(CHAT, "openai/error_500")
    client = meter.wrap(client_for(replay), customer="acme")
    with pytest.raises(openai.InternalServerError) as raised:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert raised.value.status_code == 500
    [event] = meter.events()
    assert event.status == "error" and event.attempt == 1 and "500" in (event.error or "")
    assert event.usage.total_tokens == 0 and event.usage_complete


def test_sdk_retries_are_recorded_as_attempts(replay: ReplayServer, meter: Meter) -> None:
    replay.on(CHAT, ["openai/error_429", "openai/error_500", "openai/chat_basic"])
    client = meter.wrap(client_for(replay, max_retries=3), customer="acme")
    result = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert result.usage is not None and result.usage.total_tokens == 29
    assert replay.count(CHAT) == 3
    events = sorted(meter.events(), key=lambda e: e.attempt)
    assert [(e.attempt, e.status) for e in events] == [(1, "error"), (2, "error"), (3, "ok")]
    assert "429" in (events[0].error or "") and "500" in (events[1].error or "")
    assert events[2].usage.input_tokens == 19
    assert len({e.step for e in events}) == 1


def test_retries_of_calls_in_flight_on_two_threads_stay_with_their_own_call(
        replay: ReplayServer, meter: Meter) -> None:
    # the call in flight is per thread (``CURRENT_CALL``, a context variable): two calls
    # retried at the same time must each see only their own failed attempt
    busy = Reply.json({"error": {"message": "busy", "type": "rate_limit"}}, status=429)
    busy.delay = 0.3  # both first attempts are in flight together
    replay.on(CHAT, [busy, busy, "openai/chat_basic", "openai/chat_basic"])
    clients = {name: meter.wrap(client_for(replay, max_retries=1), customer=name) for name in ("a", "b")}
    start = threading.Barrier(2)

    def call(name: str) -> None:
        start.wait()
        clients[name].chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    threads = [threading.Thread(target=call, args=(name,)) for name in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert replay.count(CHAT) == 4
    for name in clients:
        mine = sorted((e for e in meter.events() if e.customer == name), key=lambda e: e.attempt)
        assert [(e.attempt, e.status) for e in mine] == [(1, "error"), (2, "ok")], name
        assert "429" in (mine[0].error or "")
    assert CURRENT_CALL.get() is None


def test_no_call_is_left_in_flight_after_a_call_returns_or_raises(
        replay: ReplayServer, meter: Meter) -> None:
    replay.on(CHAT, ["openai/chat_basic", "openai/error_500"])
    client = meter.wrap(client_for(replay), customer="acme")
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert CURRENT_CALL.get() is None
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert CURRENT_CALL.get() is None
    assert [e.status for e in sorted(meter.events(), key=lambda e: e.timestamp)] == ["ok", "error"]


def test_a_timed_out_attempt_the_sdk_retried_is_an_attempt_without_a_response(
        replay: ReplayServer, meter: Meter) -> None:
    replay.on(CHAT, [Reply(delay=1.0, body=b"{}"), "openai/chat_basic"])
    client = meter.wrap(OpenAI(base_url=replay.url + "/v1", api_key="x", max_retries=1, timeout=0.3),
                        customer="acme")
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    first, second = sorted(meter.events(), key=lambda e: e.attempt)
    assert (first.attempt, first.status, second.attempt, second.status) == (1, "error", 2, "ok")
    # it may have reached the model: unknown usage, flagged, never a silent $0
    assert "no response" in (first.error or "") and not first.usage_complete
    assert first.cost.status == "unpriced"


def test_retries_are_seen_without_per_request_hooks(replay: ReplayServer, meter: Meter) -> None:
    # the SDK's retry method is hooked on its class, reporting for wrapped clients only: a call
    # that is not retried runs no jevons code per HTTP request, and the caller's own client
    # (same class, same HTTP pool) retries unseen and unmetered
    replay.on(CHAT, ["openai/error_429", "openai/chat_basic", "openai/error_429", "openai/chat_basic"])
    raw = client_for(replay, max_retries=1)
    client = meter.wrap(raw, customer="acme")
    assert client._client.event_hooks == {"request": [], "response": []}
    assert "_sleep_for_retry" not in vars(client) and "_sleep_for_retry" not in vars(raw)
    raw.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert meter.events() == []
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert [(e.attempt, e.status) for e in sorted(meter.events(), key=lambda e: e.attempt)] == [
        (1, "error"), (2, "ok")]


def test_the_wrapped_copy_has_the_attributes_of_any_client(replay: ReplayServer, meter: Meter) -> None:
    """jevons adds no name to a wrapped client: its hooks are on the SDK's classes, inert for
    clients it did not wrap. A name added to one instance takes one of the class's 30 shared
    attribute keys (CPython 3.11); past them the copy's ``__dict__`` is a table of its own and
    the SDK's method lookups, specialized for the process's other clients, miss on every call
    of the wrapped one (measured: ~180 generic lookups a chat call)."""
    replay.on(CHAT, "openai/chat_basic")
    replay.on("/v1/embeddings", "openai/embeddings")
    raw = client_for(replay)
    client = meter.wrap(raw, customer="acme")
    assert set(vars(client)) == set(vars(raw))
    for c in (raw, client):
        c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        c.embeddings.create(model="text-embedding-3-small", input="hello")
    assert set(vars(client)) == set(vars(raw)) == set(vars(client_for(replay))) | {"chat", "embeddings"}
    assert [(e.customer, e.model_requested) for e in meter.events()] == [
        ("acme", "gpt-4o-mini"), ("acme", "text-embedding-3-small")]
    # the resources a wrapped client makes are metered once, whichever comes first
    assert client.chat.completions is client.chat.completions
    assert "create" in vars(client.chat.completions) and "create" not in vars(raw.chat.completions)
    assert "create" in vars(client.responses) and "create" not in vars(raw.responses)
    assert "create" in vars(client.completions) and "create" not in vars(raw.completions)


def test_an_sdk_whose_retry_method_changed_is_watched_per_http_attempt(
        replay: ReplayServer, meter: Meter, monkeypatch: pytest.MonkeyPatch) -> None:
    # another signature: the retry hook is not installed, the httpx event hooks are
    original = OpenAI._sleep_for_retry

    def changed(self: OpenAI, **kwargs: object) -> None:
        original(self, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(OpenAI, "_sleep_for_retry", changed)
    replay.on(CHAT, ["openai/error_429", "openai/chat_basic"])
    client = meter.wrap(client_for(replay, max_retries=2), customer="acme")
    assert len(client._client.event_hooks["request"]) == 1
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    events = sorted(meter.events(), key=lambda e: e.attempt)
    assert [(e.attempt, e.status) for e in events] == [(1, "error"), (2, "ok")]
    assert "429" in (events[0].error or "")


def test_sdk_retries_that_all_fail_are_each_an_attempt(replay: ReplayServer, meter: Meter) -> None:
    replay.on(CHAT, "openai/error_500")  # every attempt
    client = meter.wrap(client_for(replay, max_retries=2), customer="acme")
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert replay.count(CHAT) == 3
    events = sorted(meter.events(), key=lambda e: e.attempt)
    assert [(e.attempt, e.status) for e in events] == [(1, "error"), (2, "error"), (3, "error")]
    assert all("500" in (e.error or "") for e in events)
    # an HTTP error status billed nothing: known zero usage, a $0 cost, never unpriced
    assert all(e.usage_complete and e.usage.total_tokens == 0 for e in events)
    assert all(e.cost.status == "priced" and e.cost.total_usd == 0 for e in events)


def test_unknown_shape_is_kept_for_review(replay: ReplayServer, meter: Meter) -> None:
    errors: list[tuple[BaseException, str]] = []
    meter.on_error = lambda exc, kind: errors.append((exc, kind))
    replay.on(CHAT, "openai/chat_unknown_shape")
    client = meter.wrap(client_for(replay), customer="acme")
    result = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert result.choices[0].message.content == "hi"
    [event] = meter.events()
    assert event.needs_review and event.raw_usage == {"in": 5, "out": 7}
    assert event.cost.total_usd is None and event.cost.status == "unpriced"
    assert [kind for _, kind in errors] == ["extract"]
    assert meter.stats()["needs_review"] == 1 and meter.stats()["errors_by_kind"] == {"extract": 1}


def test_stream_with_an_unknown_usage_shape_keeps_the_raw_block_for_review(
    replay: ReplayServer, meter: Meter
) -> None:
    replay.on(CHAT, "openai/chat_stream_unknown_shape")
    client = meter.wrap(client_for(replay), customer="acme")
    stream = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream)
    assert text == "Hello! How can I help?"
    [event] = meter.events()
    # as for a complete response with that usage block: flagged, the block kept, never a silent $0
    assert event.status == "ok" and event.needs_review and not event.usage_complete
    assert event.raw_usage == {"in": 19, "out": 10}
    assert event.cost.status == "unpriced" and event.model == "gpt-4o-mini"
    assert meter.stats()["errors_by_kind"] == {"extract": 1}


def test_with_raw_response_and_with_options_stay_metered(replay: ReplayServer, meter: Meter) -> None:
    replay.on(CHAT, "openai/chat_basic")
    client = meter.wrap(client_for(replay), customer="acme")
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
    assert raw.headers["x-request-id"] == "req_basic"
    assert raw.parse().usage is not None
    client.with_options(timeout=5).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert [e.usage.input_tokens for e in meter.events()] == [19, 19]
    assert all(e.customer == "acme" for e in meter.events())


async def test_async_create_and_stream(replay: ReplayServer, meter: Meter) -> None:
    client = meter.wrap(aclient_for(replay), customer="acme")
    assert isinstance(client, AsyncOpenAI)
    replay.on(CHAT, "openai/chat_basic")
    result = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert result.usage is not None
    replay.on(CHAT, "openai/chat_stream")
    stream = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    assert isinstance(stream, openai.AsyncStream)
    n = 0
    async for _chunk in stream:
        n += 1
    assert n == 6  # the usage-only chunk jevons asked for is not passed on
    async with client.chat.completions.stream(model="gpt-4o-mini", messages=MESSAGES) as helper:
        final = await helper.get_final_completion()
    assert final.choices[0].message.content == "Hello! How can I help?"
    plain, streamed, helped = meter.events()
    assert plain.usage.output_tokens == streamed.usage.output_tokens == helped.usage.output_tokens == 10
    assert all(e.status == "ok" for e in (plain, streamed, helped))
    assert replay.last(CHAT).json["stream_options"] == {"include_usage": True}


async def test_async_stream_closed_early_is_aborted(replay: ReplayServer, meter: Meter) -> None:
    replay.on(CHAT, "openai/chat_stream")
    client = meter.wrap(aclient_for(replay), customer="acme")
    stream = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    async for _chunk in stream:
        break
    await stream.close()
    [event] = meter.events()
    assert event.status == "aborted" and not event.usage_complete


async def test_async_sdk_retries_are_recorded(replay: ReplayServer, meter: Meter) -> None:
    replay.on(CHAT, ["openai/error_429", "openai/chat_stream"])
    client = meter.wrap(aclient_for(replay, max_retries=2), customer="acme")
    stream = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    async for _chunk in stream:
        pass
    events = sorted(meter.events(), key=lambda e: e.attempt)
    assert [(e.attempt, e.status) for e in events] == [(1, "error"), (2, "ok")]
    assert events[1].usage.output_tokens == 10 and events[0].usage.total_tokens == 0


async def test_a_call_cancelled_while_the_sdk_waits_to_retry_made_one_attempt(
        replay: ReplayServer, meter: Meter) -> None:
    import asyncio

    replay.on(CHAT, [Reply.error(429, retry_after=5), "openai/chat_basic"])
    client = meter.wrap(aclient_for(replay, max_retries=2), customer="acme")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES), 0.5)
    assert replay.count(CHAT) == 1
    [event] = meter.events()  # no event for the attempt the SDK never sent
    assert event.attempt == 1 and event.status == "error"


def test_connection_refused_is_a_known_free_error(meter: Meter) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = meter.wrap(OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0),
                        customer="acme")
    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    [event] = meter.events()
    assert event.status == "error" and event.usage_complete and "APIConnectionError" in (event.error or "")
    assert event.usage.total_tokens == 0 and event.cost.total_usd == 0  # never connected: nothing billed


def test_timeout_after_the_request_is_sent_is_incomplete(replay: ReplayServer, meter: Meter) -> None:
    from replay import Reply

    replay.on(CHAT, Reply(delay=1.0, body=b"{}"))  # answers after the client gave up
    client = meter.wrap(OpenAI(base_url=replay.url + "/v1", api_key="x", max_retries=0, timeout=0.2),
                        customer="acme")
    with pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    [event] = meter.events()
    assert event.status == "error" and not event.usage_complete
    assert event.cost.status == "unpriced" and event.cost.total_usd is None  # unknown: never a silent $0


def test_parse_is_metered(replay: ReplayServer, meter: Meter) -> None:
    from pydantic import BaseModel

    class Answer(BaseModel):
        text: str

    body = fixture_json("openai/chat_basic")
    body["choices"][0]["message"]["content"] = '{"text": "hi"}'
    replay.on(CHAT, Reply.json(body))
    client = meter.wrap(client_for(replay), customer="acme")
    parsed = client.chat.completions.parse(model="gpt-4o-mini", messages=MESSAGES, response_format=Answer,
                                           jevons_feature="extract")
    assert parsed.choices[0].message.parsed == Answer(text="hi")
    [event] = meter.events()
    assert event.feature == "extract" and event.usage.input_tokens == 19


def test_stream_helper_left_early_is_aborted(replay: ReplayServer, meter: Meter) -> None:
    replay.on(CHAT, "openai/chat_stream")
    client = meter.wrap(client_for(replay), customer="acme")
    with client.chat.completions.stream(model="gpt-4o-mini", messages=MESSAGES) as stream:
        assert stream._response.status_code == 200
        for _event in stream:
            break
    [event] = meter.events()
    assert event.status == "aborted"


async def test_async_stream_helper_left_early_is_aborted(replay: ReplayServer, meter: Meter) -> None:
    replay.on(CHAT, "openai/chat_stream")
    client = meter.wrap(aclient_for(replay), customer="acme")
    async with client.chat.completions.stream(model="gpt-4o-mini", messages=MESSAGES) as stream:
        async for _event in stream:
            break
    [event] = meter.events()
    assert event.status == "aborted" and not event.usage_complete


def test_stream_closed_or_dropped_unread_is_aborted(replay: ReplayServer, meter: Meter) -> None:
    import gc

    replay.on(CHAT, "openai/chat_stream")
    client = meter.wrap(client_for(replay), customer="acme")
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True).close()
    stream = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    del stream
    gc.collect()
    events = meter.events()
    assert [e.status for e in events] == ["aborted", "aborted"]
    assert all(not e.usage_complete and e.cost.status == "unpriced" for e in events)


def test_wrapping_a_wrapped_client_meters_once(replay: ReplayServer, meter: Meter) -> None:
    replay.on(CHAT, "openai/chat_basic")
    once = meter.wrap(client_for(replay), feature="f")
    twice = meter.wrap(once, customer="acme")
    twice.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    twice.with_options(timeout=3).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    events = meter.events()
    assert len(events) == 2
    assert all((e.customer, e.feature) == ("acme", "f") for e in events)


def test_a_resource_first_used_by_many_threads_at_once_is_metered_once(
        replay: ReplayServer, meter: Meter) -> None:
    # the class hook meters a wrapped client's resource as it is made; threads racing to make
    # it get one resource, metered once: a create wrapped twice would record each call twice
    replay.on("/v1/responses", "openai/responses_basic")
    client = meter.wrap(client_for(replay), customer="acme")
    start = threading.Barrier(8)
    seen: list[object] = []

    def first_use() -> None:
        start.wait()
        seen.append(client.responses)

    threads = [threading.Thread(target=first_use) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(r) for r in seen}) == 1
    client.responses.create(model="gpt-4o-mini", input="hi")
    assert [e.customer for e in meter.events()] == ["acme"]
