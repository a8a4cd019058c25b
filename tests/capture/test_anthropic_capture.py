"""The real ``anthropic`` SDK, metered, talking HTTP to the replay server.

Costs are checked against Anthropic's published list prices (USD per million tokens), which
the default price book carries: Sonnet 4.5 $3 in / $15 out / $0.30 cache read / $3.75 5-minute
write / $6 1-hour write, web search $10 per 1,000; Haiku 4.5 $1 / $5; Opus 4.1 $15 / $75.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import anthropic
import pytest
from anthropic.lib.streaming import AsyncMessageStream, MessageStream
from anthropic.types import Message

from jevons.capture.meter import Meter
from jevons.events import Event
from jevons.prices.book import PriceBook
from jevons.usage import Usage
from replay import ReplayServer, Reply, load_fixture

M = Decimal("0.000001")  # one dollar per million tokens, per token
PATH = "/v1/messages"
ASK: dict[str, Any] = {
    "model": "claude-sonnet-4-5-20250929",
    "max_tokens": 256,
    "messages": [{"role": "user", "content": "What is the capital of France?"}],
}


@pytest.fixture
def meter(list_price_meter: Meter) -> Meter:
    return list_price_meter


@pytest.fixture
def client(meter: Meter, replay: ReplayServer) -> anthropic.Anthropic:
    raw = anthropic.Anthropic(api_key="test-key", base_url=replay.url, max_retries=0)
    return meter.wrap(raw, customer="acme")


@pytest.fixture
def aclient(meter: Meter, replay: ReplayServer) -> anthropic.AsyncAnthropic:
    raw = anthropic.AsyncAnthropic(api_key="test-key", base_url=replay.url, max_retries=0)
    return meter.wrap(raw, customer="acme")


def only_event(meter: Meter) -> Event:
    events = meter.events()
    assert len(events) == 1, events
    return events[0]


# --------------------------------------------------------------------------- usage features
CASES: dict[str, tuple[Usage, Decimal]] = {
    "messages_basic": (Usage(input_tokens=21, output_tokens=9), 21 * 3 * M + 9 * 15 * M),
    "messages_cache_5m": (
        Usage(input_tokens=2086, output_tokens=14, cache_write_5m_tokens=2048),
        38 * 3 * M + 2048 * Decimal("3.75") * M + 14 * 15 * M,
    ),
    "messages_cache_1h": (
        Usage(input_tokens=7210, output_tokens=11, cache_read_tokens=4096, cache_write_5m_tokens=1024,
              cache_write_1h_tokens=2048),
        42 * 3 * M + 4096 * Decimal("0.30") * M + 1024 * Decimal("3.75") * M + 2048 * 6 * M + 11 * 15 * M,
    ),
    "messages_cache_unknown_ttl": (
        Usage(input_tokens=510, output_tokens=3, cache_write_5m_tokens=500),
        10 * 3 * M + 500 * Decimal("3.75") * M + 3 * 15 * M,
    ),
    "messages_thinking": (  # Opus 4.1; thinking is billed as output
        Usage(input_tokens=51, output_tokens=326, reasoning_tokens=301), 51 * 15 * M + 326 * 75 * M,
    ),
    "messages_tools": (  # Haiku 4.5
        Usage(input_tokens=403, output_tokens=96, tool_calls=2), 403 * 1 * M + 96 * 5 * M,
    ),
    "messages_web_search": (
        Usage(input_tokens=6039, output_tokens=931, web_search_requests=2),
        6039 * 3 * M + 931 * 15 * M + 2 * Decimal("0.01"),
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_create_meters_each_usage_feature(
    name: str, client: anthropic.Anthropic, meter: Meter, replay: ReplayServer
) -> None:
    replay.on(PATH, f"anthropic/{name}")
    message = client.messages.create(**ASK)
    assert type(message) is Message
    event = only_event(meter)
    usage, usd = CASES[name]
    assert event.usage == usage
    assert event.cost.status == "priced", event.cost.notes
    assert event.cost.total_usd == usd
    assert event.cost.price_version
    assert (event.provider, event.api, event.status, event.usage_complete) == (
        "anthropic", "messages", "ok", True)
    assert event.raw_usage is not None and "input_tokens" in event.raw_usage


def test_wrapped_client_keeps_its_type_and_strips_attribution(
    client: anthropic.Anthropic, meter: Meter, replay: ReplayServer
) -> None:
    assert isinstance(client, anthropic.Anthropic)
    replay.on(PATH, "anthropic/messages_basic")
    message = client.messages.create(**ASK, jevons_customer="globex", jevons_feature="faq",
                                     jevons_tags={"plan": "pro"})
    assert message.content[0].text == "Paris is the capital of France."  # type: ignore[union-attr]
    sent = replay.last(PATH).json
    assert not any(key.startswith("jevons") for key in sent)
    event = only_event(meter)
    assert (event.customer, event.feature, event.tags) == ("globex", "faq", {"plan": "pro"})
    assert event.model_requested == "claude-sonnet-4-5-20250929"
    assert event.model == "claude-sonnet-4.5"
    assert event.service_tier == "standard"


def test_the_original_client_stays_unmetered(meter: Meter, replay: ReplayServer) -> None:
    raw = anthropic.Anthropic(api_key="k", base_url=replay.url, max_retries=0)
    wrapped = meter.wrap(raw)
    replay.on(PATH, "anthropic/messages_basic")
    raw.messages.create(**ASK)
    assert meter.events() == []
    wrapped.with_options(timeout=5).messages.create(**ASK)  # a derived client stays metered
    assert len(meter.events()) == 1


async def test_async_create_meters_cache_writes(
    aclient: anthropic.AsyncAnthropic, meter: Meter, replay: ReplayServer
) -> None:
    assert isinstance(aclient, anthropic.AsyncAnthropic)
    replay.on(PATH, "anthropic/messages_cache_1h")
    message = await aclient.messages.create(**ASK, jevons_feature="contracts")
    assert type(message) is Message
    event = only_event(meter)
    assert event.usage == CASES["messages_cache_1h"][0]
    assert event.cost.total_usd == CASES["messages_cache_1h"][1]
    assert (event.customer, event.feature) == ("acme", "contracts")


# --------------------------------------------------------------------------- streams
STREAMS: dict[str, tuple[Usage, Decimal]] = {
    "stream_basic": (
        Usage(input_tokens=1045, output_tokens=12, cache_read_tokens=1024),
        21 * 3 * M + 1024 * Decimal("0.30") * M + 12 * 15 * M,
    ),
    "stream_cache_1h": CASES["messages_cache_1h"],
    "stream_thinking": CASES["messages_thinking"],
    "stream_tools": (Usage(input_tokens=403, output_tokens=89, tool_calls=1), 403 * M + 89 * 5 * M),
    "stream_web_search": (
        Usage(input_tokens=10682, output_tokens=510, web_search_requests=1),
        10682 * 3 * M + 510 * 15 * M + Decimal("0.01"),
    ),
}


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_create_stream_true_keeps_the_sdk_stream(
    name: str, client: anthropic.Anthropic, meter: Meter, replay: ReplayServer
) -> None:
    replay.on(PATH, f"anthropic/{name}")
    stream = client.messages.create(**ASK, stream=True)
    assert type(stream) is anthropic.Stream
    with stream:
        kinds = [event.type for event in stream]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    event = only_event(meter)
    assert event.usage == STREAMS[name][0]
    assert event.cost.total_usd == STREAMS[name][1]
    assert event.status == "ok" and event.usage_complete


def test_stream_helper_keeps_text_stream_and_final_message(
    client: anthropic.Anthropic, meter: Meter, replay: ReplayServer
) -> None:
    replay.on(PATH, "anthropic/stream_basic")
    with client.messages.stream(**ASK, jevons_customer="initech") as stream:
        assert type(stream) is MessageStream
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Paris is the capital of France."
    assert final.usage.output_tokens == 12 and final.usage.cache_read_input_tokens == 1024
    event = only_event(meter)
    assert event.customer == "initech"
    assert event.usage == STREAMS["stream_basic"][0]
    assert not any(key.startswith("jevons") for key in replay.last(PATH).json)


def test_stream_helper_request_begins_only_when_entered(
    client: anthropic.Anthropic, meter: Meter, replay: ReplayServer
) -> None:
    replay.on(PATH, "anthropic/stream_tools")
    manager = client.messages.stream(**ASK)
    assert replay.count(PATH) == 0 and meter.events() == []
    with manager as stream:
        final = stream.get_final_message()
    assert [block.type for block in final.content] == ["text", "tool_use"]
    assert only_event(meter).usage.tool_calls == 1


async def test_async_stream_true_and_stream_helper(
    aclient: anthropic.AsyncAnthropic, meter: Meter, replay: ReplayServer
) -> None:
    replay.on(PATH, "anthropic/stream_web_search")
    stream = await aclient.messages.create(**ASK, stream=True)
    assert type(stream) is anthropic.AsyncStream
    kinds = [event.type async for event in stream]
    assert kinds[-1] == "message_stop"
    async with aclient.messages.stream(**ASK, jevons_feature="search") as helper:
        assert type(helper) is AsyncMessageStream
        final = await helper.get_final_message()
    assert final.usage.server_tool_use is not None
    first, second = meter.events()
    for event in (first, second):
        assert event.usage == STREAMS["stream_web_search"][0]
        assert event.cost.total_usd == STREAMS["stream_web_search"][1]
    assert second.feature == "search"


# --------------------------------------------------------------------------- failed attempts
def test_stream_broken_off_records_an_error_with_the_prompt_usage(
    client: anthropic.Anthropic, meter: Meter, replay: ReplayServer
) -> None:
    replay.on(PATH, load_fixture("anthropic/stream_cache_1h", break_after=3))
    stream = client.messages.create(**ASK, stream=True)
    with pytest.raises(Exception) as raised:  # the SDK's own error, unchanged
        for _ in stream:
            pass
    assert "jevons" not in type(raised.value).__module__
    event = only_event(meter)
    assert event.status == "error" and not event.usage_complete
    assert event.usage.input_tokens == 7210 and event.usage.cache_write_1h_tokens == 2048
    assert event.cost.total_usd is not None and event.cost.status == "estimated"


def test_stream_abandoned_early_records_an_aborted_attempt(
    client: anthropic.Anthropic, meter: Meter, replay: ReplayServer
) -> None:
    replay.on(PATH, "anthropic/stream_basic")
    with client.messages.stream(**ASK) as stream:
        for event in stream:
            if event.type == "content_block_delta":
                break
    event = only_event(meter)
    assert event.status == "aborted" and not event.usage_complete
    assert event.usage.input_tokens == 1045  # known from message_start


async def test_async_stream_abandoned_early_records_an_aborted_attempt(
    aclient: anthropic.AsyncAnthropic, meter: Meter, replay: ReplayServer
) -> None:
    replay.on(PATH, "anthropic/stream_basic")
    stream = await aclient.messages.create(**ASK, stream=True)
    async for event in stream:
        if event.type == "content_block_start":
            break
    await stream.close()
    event = only_event(meter)
    assert event.status == "aborted" and event.usage.cache_read_tokens == 1024


def test_http_error_passes_through_and_is_recorded(
    client: anthropic.Anthropic, meter: Meter, replay: ReplayServer
) -> None:
    body = {"type": "error", "error": {"type": "invalid_request_error", "message": "max_tokens: too big"}}
    replay.on(PATH, Reply.error(400, body))
    with pytest.raises(anthropic.BadRequestError) as raised:
        client.messages.create(**ASK)
    assert raised.value.status_code == 400
    event = only_event(meter)
    assert event.status == "error" and event.usage.total_tokens == 0
    assert event.error is not None and "400" in event.error


def test_sdk_retries_are_recorded_as_failed_attempts(meter: Meter, replay: ReplayServer) -> None:
    client = meter.wrap(anthropic.Anthropic(api_key="k", base_url=replay.url, max_retries=2))
    replay.on(PATH, [Reply.error(529, retry_after=0.01), "anthropic/messages_basic"])
    client.messages.create(**ASK)
    first, second = sorted(meter.events(), key=lambda e: e.attempt)
    assert (first.attempt, first.status, second.attempt, second.status) == (1, "error", 2, "ok")
    assert second.usage == CASES["messages_basic"][0]


def test_a_request_sent_again_by_middleware_is_still_an_attempt(meter: Meter, replay: ReplayServer) -> None:
    # a middleware re-sends without the SDK's retry method: the httpx hooks see every request
    def resend_on_timeout(request: Any, call_next: Any) -> Any:
        try:
            return call_next(request)
        except anthropic.APITimeoutError:
            return call_next(request)

    replay.on(PATH, [Reply(delay=1.0, body=b"{}"), "anthropic/messages_basic"])
    client = meter.wrap(anthropic.Anthropic(api_key="k", base_url=replay.url, max_retries=0, timeout=0.3,
                                            middleware=[resend_on_timeout]))
    client.messages.create(**ASK)
    first, second = sorted(meter.events(), key=lambda e: e.attempt)
    # the attempt that timed out may have been billed: kept, flagged, never a silent $0
    assert (first.attempt, first.status, first.usage_complete) == (1, "error", False)
    assert "no response" in (first.error or "") and first.cost.status == "unpriced"
    assert (second.attempt, second.status) == (2, "ok")


def test_unknown_usage_shape_is_kept_for_review(
    client: anthropic.Anthropic, meter: Meter, replay: ReplayServer
) -> None:
    body = {"id": "msg_x", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5-20250929",
            "content": [{"type": "text", "text": "hi"}], "stop_reason": "end_turn",
            "usage": {"tokens_in": 5, "tokens_out": 2}}
    replay.on(PATH, Reply.json(body))
    message = client.messages.create(**ASK)
    assert message.content[0].text == "hi"  # type: ignore[union-attr]
    event = only_event(meter)
    assert event.needs_review and not event.usage_complete
    assert event.raw_usage == {"tokens_in": 5, "tokens_out": 2}
    assert event.cost.total_usd is None  # never a silent $0


def test_stream_with_an_unknown_usage_shape_keeps_the_raw_block_for_review(
    client: anthropic.Anthropic, meter: Meter, replay: ReplayServer
) -> None:
    replay.on(PATH, "anthropic/stream_unknown_shape")
    with client.messages.stream(**ASK) as stream:
        assert stream.get_final_text() == "Paris is the capital of France."
    event = only_event(meter)
    # the stream ran to its end: not "cut before message_start", but a shape to review
    assert event.status == "ok" and event.needs_review and not event.usage_complete
    assert event.raw_usage == {"tokens_in": 1045, "tokens_out": 12}
    assert event.cost.total_usd is None
    assert event.error is not None and "message_start" not in event.error


def test_instrumentation_errors_never_break_the_call(replay: ReplayServer) -> None:
    class BrokenBook(PriceBook):
        def cost(self, *args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("price book exploded")

    seen: list[str] = []

    def bad_sink(event: Event) -> None:
        raise OSError("sink down")

    with Meter(book=BrokenBook(), ledger="memory", sinks=[bad_sink],
               on_error=lambda exc, kind: seen.append(kind)) as meter:
        client = meter.wrap(anthropic.Anthropic(api_key="k", base_url=replay.url, max_retries=0))
        replay.on(PATH, "anthropic/stream_basic")
        with client.messages.stream(**ASK) as stream:
            assert stream.get_final_text() == "Paris is the capital of France."
        replay.on(PATH, "anthropic/messages_basic")
        assert client.messages.create(**ASK).usage.input_tokens == 21
        assert seen.count("price") == 2 and seen.count("sink") == 2
        assert [e.cost.status for e in meter.events()] == ["unpriced", "unpriced"]


def test_beta_messages_are_metered(client: anthropic.Anthropic, meter: Meter, replay: ReplayServer) -> None:
    replay.on(PATH, "anthropic/messages_cache_1h")
    client.beta.messages.create(**ASK)
    assert only_event(meter).usage == CASES["messages_cache_1h"][0]


def test_the_wrapped_copy_has_the_attributes_of_any_client(meter: Meter, replay: ReplayServer) -> None:
    # jevons' hooks are on the SDK's classes, inert for clients it did not wrap: the copy gets
    # no names of its own (see the OpenAI test of the same name for why that matters)
    replay.on(PATH, "anthropic/messages_basic")
    raw = anthropic.Anthropic(api_key="test-key", base_url=replay.url, max_retries=1)
    client = meter.wrap(raw, customer="acme")
    assert set(vars(client)) == set(vars(raw))
    for c in (raw, client):
        c.messages.create(**ASK)
        c.beta.messages.create(**ASK)
        c.with_options(timeout=5).messages.create(**ASK)
    assert set(vars(client)) == set(vars(raw))
    assert [e.customer for e in meter.events()] == ["acme", "acme", "acme"]


def test_stream_helper_closed_unread_still_records_the_request(
    client: anthropic.Anthropic, meter: Meter, replay: ReplayServer
) -> None:
    replay.on(PATH, "anthropic/stream_basic")
    with client.messages.stream(**ASK):
        pass  # the request was sent on entering; nothing was read
    assert replay.count(PATH) == 1
    event = only_event(meter)
    assert event.status == "aborted" and not event.usage_complete
    assert event.cost.total_usd is None  # unknown, re-priceable, never $0
