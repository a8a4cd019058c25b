"""The OpenAI adapter on the Responses API (and embeddings), sync and async, streamed and not."""

from __future__ import annotations

from decimal import Decimal

import openai
from openai import AsyncOpenAI, OpenAI

from jevons import usage_from_response
from jevons.capture.meter import Meter
from replay import ReplayServer, fixture_json

RESPONSES = "/v1/responses"


def client_for(replay: ReplayServer) -> OpenAI:
    return OpenAI(base_url=replay.url + "/v1", api_key="sk-test", max_retries=0)


def test_responses_create_records_cache_and_reasoning(replay: ReplayServer, meter: Meter) -> None:
    replay.on(RESPONSES, "openai/responses_reasoning")
    client = meter.wrap(client_for(replay), customer="acme")
    result = client.responses.create(model="o4-mini", input="Why is the sky blue?", jevons_feature="qa")
    assert isinstance(result, openai.types.responses.Response)
    assert "jevons_feature" not in replay.last(RESPONSES).json
    [event] = meter.events()
    assert event.api == "responses" and event.feature == "qa"
    u = event.usage
    assert (u.input_tokens, u.cache_read_tokens) == (1200, 1024)
    assert (u.output_tokens, u.reasoning_tokens) == (900, 640)
    assert (u.tool_calls, u.web_search_requests) == (2, 1)
    # the test book has no web-search price: the call is flagged, never priced at $0 for it
    assert event.cost.status == "unpriced" and "web_search" in event.cost.missing


def test_responses_basic_priced(replay: ReplayServer, meter: Meter) -> None:
    replay.on(RESPONSES, "openai/responses_basic")
    client = meter.wrap(client_for(replay), customer="acme")
    client.responses.create(model="gpt-4o-mini", input="Tell me a story")
    [event] = meter.events()
    assert event.cost.total_usd == (36 * Decimal("0.15") + 87 * Decimal("0.60")) / 10**6


def test_responses_stream_and_stream_helper(replay: ReplayServer, meter: Meter) -> None:
    replay.on(RESPONSES, "openai/responses_stream")
    client = meter.wrap(client_for(replay), customer="acme")
    kinds = [e.type for e in client.responses.create(model="gpt-4o-mini", input="hi", stream=True)]
    assert kinds[-1] == "response.completed" and len(kinds) == 10
    assert "stream_options" not in replay.last(RESPONSES).json
    with client.responses.stream(model="gpt-4o-mini", input="hi", jevons_customer="beta") as stream:
        for _ in stream:
            pass
        final = stream.get_final_response()
    assert final.output_text.startswith("In a peaceful grove")
    first, second = meter.events()
    assert first.usage.output_tokens == second.usage.output_tokens == 87
    assert (first.customer, second.customer) == ("acme", "beta")
    assert first.usage_complete and second.usage_complete


def test_responses_stream_failed_is_an_error_attempt_with_usage(replay: ReplayServer, meter: Meter) -> None:
    replay.on(RESPONSES, "openai/responses_stream_failed")
    client = meter.wrap(client_for(replay), customer="acme")
    events = list(client.responses.create(model="gpt-4o-mini", input="hi", stream=True))
    assert events[-1].type == "response.failed"
    [event] = meter.events()
    assert event.status == "error" and event.usage.output_tokens == 12
    # 36 input x 0.15/M + 12 output x 0.60/M
    assert event.usage.input_tokens == 36
    assert event.cost.total_usd == Decimal("0.0000126")


def test_responses_stream_with_an_unknown_usage_shape_keeps_the_raw_block_for_review(
    replay: ReplayServer, meter: Meter
) -> None:
    replay.on(RESPONSES, "openai/responses_stream_unknown_shape")
    client = meter.wrap(client_for(replay), customer="acme")
    kinds = [e.type for e in client.responses.create(model="gpt-4o-mini", input="hi", stream=True)]
    assert kinds[-1] == "response.completed"
    [event] = meter.events()
    assert event.status == "ok" and event.needs_review and not event.usage_complete
    assert event.raw_usage == {"in": 36, "out": 87}
    assert event.cost.total_usd is None


def test_responses_stream_abandoned(replay: ReplayServer, meter: Meter) -> None:
    replay.on(RESPONSES, "openai/responses_stream")
    client = meter.wrap(client_for(replay), customer="acme")
    stream = client.responses.create(model="gpt-4o-mini", input="hi", stream=True)
    for event in stream:
        if event.type == "response.output_text.delta":
            break
    stream.close()
    [recorded] = meter.events()
    assert recorded.status == "aborted" and recorded.usage.output_tokens == 1
    assert not recorded.usage_complete and recorded.cost.status == "estimated"


async def test_async_responses(replay: ReplayServer, meter: Meter) -> None:
    client = meter.wrap(AsyncOpenAI(base_url=replay.url + "/v1", api_key="sk-test", max_retries=0),
                        customer="acme")
    replay.on(RESPONSES, "openai/responses_basic")
    await client.responses.create(model="gpt-4o-mini", input="hi")
    replay.on(RESPONSES, "openai/responses_stream")
    stream = await client.responses.create(model="gpt-4o-mini", input="hi", stream=True)
    async for _ in stream:
        pass
    async with client.responses.stream(model="gpt-4o-mini", input="hi") as helper:
        final = await helper.get_final_response()
    assert final.usage is not None
    assert [e.usage.output_tokens for e in meter.events()] == [87, 87, 87]


def test_embeddings(replay: ReplayServer, meter: Meter) -> None:
    replay.on("/v1/embeddings", "openai/embeddings")
    client = meter.wrap(client_for(replay), customer="acme")
    client.embeddings.create(model="text-embedding-3-small", input="hello")
    [event] = meter.events()
    assert event.api == "embeddings" and event.usage.input_tokens == 8
    assert event.cost.status == "unpriced"  # not in the test book: kept, flagged, never $0


def test_usage_from_response_dicts_and_objects() -> None:
    chat = fixture_json("openai/chat_cached")
    u = usage_from_response("openai", chat, api="chat")
    assert (u.input_tokens, u.cache_read_tokens, u.output_tokens) == (2048, 1536, 120)
    assert usage_from_response("openai", chat) == u  # shape detected
    parsed = openai.types.chat.ChatCompletion.model_validate(chat)
    assert usage_from_response("openai", parsed, api="chat") == u
    audio = usage_from_response("openai", fixture_json("openai/chat_audio"))
    assert (audio.audio_input_tokens, audio.audio_output_tokens) == (110, 240)
    resp = fixture_json("openai/responses_reasoning")
    r = usage_from_response("openai", resp, api="responses")
    assert (r.input_tokens, r.cache_read_tokens) == (1200, 1024)
    assert (r.reasoning_tokens, r.web_search_requests) == (640, 1)
    assert usage_from_response("openai", openai.types.responses.Response.model_validate(resp)) == r
    # OpenRouter adds cache writes (a subset of prompt_tokens) and its own charge
    orr = usage_from_response("openrouter", fixture_json("openrouter/chat_claude"))
    assert (orr.input_tokens, orr.cache_read_tokens, orr.cache_write_5m_tokens) == (2000, 1200, 500)


def test_usage_from_response_rejects_unknown_shapes() -> None:
    import pytest

    with pytest.raises(ValueError):
        usage_from_response("openai", fixture_json("openai/chat_unknown_shape"), api="chat")
    with pytest.raises(ValueError, match="no usage extractor"):
        usage_from_response("nosuchprovider", {})
    with pytest.raises(ValueError, match="has no API"):
        usage_from_response("openai", {}, api="nosuchapi")


def test_responses_cache_writes_by_ttl() -> None:
    u = usage_from_response("openai", fixture_json("openai/responses_cache_write"), api="responses")
    assert (u.input_tokens, u.cache_read_tokens) == (6000, 1000)
    assert (u.cache_write_5m_tokens, u.cache_write_1h_tokens) == (3000, 1000)
    assert u.uncached_input_tokens == 1000


async def test_async_stream_helpers_keep_the_per_call_attribution(replay: ReplayServer, meter: Meter) -> None:
    """``AsyncOpenAI``'s ``.stream()`` helpers create their request coroutine at once, before
    jevons could hand it the kwarg: the per-call attribution must still reach the event."""
    replay.on(RESPONSES, "openai/responses_stream")
    replay.on("/v1/chat/completions", "openai/chat_stream")
    client = meter.wrap(AsyncOpenAI(base_url=replay.url + "/v1", api_key="sk-test", max_retries=0),
                        customer="client", feature="default")
    async with client.responses.stream(model="gpt-4o-mini", input="hi", jevons_customer="percall",
                                       jevons_tags={"k": "v"}) as stream:
        async for _ in stream:
            pass
    messages = [{"role": "user", "content": "hi"}]
    async with client.chat.completions.stream(model="gpt-4o-mini", messages=messages,  # type: ignore[arg-type]
                                              jevons={"customer": "percall-2"}) as chat:
        async for _ in chat:
            pass
    responses, chat_event = meter.events()
    assert (responses.customer, responses.feature, responses.tags) == ("percall", "default", {"k": "v"})
    assert chat_event.customer == "percall-2" and chat_event.usage.output_tokens == 10
    assert all("jevons" not in body for body in replay.bodies(RESPONSES))
