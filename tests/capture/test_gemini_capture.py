"""The real ``google-genai`` SDK, metered, talking HTTP to the replay server.

Costs are checked against Google's published Gemini API prices (USD per million tokens), which
the default price book carries: 2.5 Flash $0.30 input (text/image/video), $1.00 audio input,
$0.03 cached, $2.50 output including thinking; 2.5 Pro $1.25 / $10; 2.5 Flash Image $30 per
million image-output tokens; Google Search grounding at the book's $14 per 1,000 queries.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import pytest
from google import genai
from google.genai import errors, types

from jevons.capture.meter import Meter
from jevons.events import Event
from jevons.usage import Usage
from replay import ReplayServer, Reply, load_fixture

M = Decimal("0.000001")
GENERATE = r"^/v1(beta)?/models/[^/]+:generateContent$"
STREAM = r"^/v1(beta)?/models/[^/]+:streamGenerateContent$"


@pytest.fixture
def meter(list_price_meter: Meter) -> Meter:
    return list_price_meter


def _client(replay: ReplayServer) -> genai.Client:
    return genai.Client(api_key="test-key", http_options=types.HttpOptions(base_url=replay.url))


@pytest.fixture
def client(meter: Meter, replay: ReplayServer) -> genai.Client:
    return meter.wrap(_client(replay), customer="acme")


def only_event(meter: Meter) -> Event:
    events = meter.events()
    assert len(events) == 1, events
    return events[0]


CASES: dict[str, tuple[str, Usage, Decimal]] = {
    "generate_basic": ("gemini-2.5-flash", Usage(input_tokens=9, output_tokens=8),
                       9 * Decimal("0.30") * M + 8 * Decimal("2.50") * M),
    "generate_thinking": ("gemini-2.5-pro", Usage(input_tokens=14, output_tokens=623, reasoning_tokens=611),
                          14 * Decimal("1.25") * M + 623 * 10 * M),
    "generate_cache": ("gemini-2.5-flash", Usage(input_tokens=4160, output_tokens=11, cache_read_tokens=4096),
                       64 * Decimal("0.30") * M + 4096 * Decimal("0.03") * M + 11 * Decimal("2.50") * M),
    "generate_tools": ("gemini-2.5-flash",
                       Usage(input_tokens=72, output_tokens=88, reasoning_tokens=58, tool_calls=2),
                       72 * Decimal("0.30") * M + 88 * Decimal("2.50") * M),
    "generate_audio": ("gemini-2.5-flash",
                       Usage(input_tokens=1632, output_tokens=10, audio_input_tokens=1600),
                       32 * Decimal("0.30") * M + 1600 * 1 * M + 10 * Decimal("2.50") * M),
    "generate_image": ("gemini-2.5-flash-image",
                       Usage(input_tokens=270, output_tokens=1297, image_input_tokens=258,
                             image_output_tokens=1290),
                       270 * Decimal("0.30") * M + 7 * Decimal("2.50") * M + 1290 * 30 * M),
    "generate_search": ("gemini-2.5-flash",
                        Usage(input_tokens=168, output_tokens=83, reasoning_tokens=64, web_search_requests=2),
                        168 * Decimal("0.30") * M + 83 * Decimal("2.50") * M + 2 * Decimal("0.014")),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_generate_content_meters_each_usage_feature(
    name: str, client: genai.Client, meter: Meter, replay: ReplayServer
) -> None:
    model, usage, usd = CASES[name]
    replay.on(GENERATE, f"gemini/{name}")
    response = client.models.generate_content(model=model, contents="hello")
    assert type(response) is types.GenerateContentResponse
    assert response.usage_metadata is not None
    event = only_event(meter)
    assert event.usage == usage
    assert event.cost.status == "priced", event.cost.notes
    assert event.cost.total_usd == usd
    assert (event.provider, event.api, event.model_requested, event.status) == (
        "gemini", "generate_content", model, "ok")
    assert event.raw_usage is not None and "promptTokenCount" in event.raw_usage


def test_wrapped_client_keeps_its_type_strips_attribution_and_leaves_the_original(
    meter: Meter, replay: ReplayServer
) -> None:
    raw = _client(replay)
    client = meter.wrap(raw, customer="acme")
    assert isinstance(client, genai.Client)
    replay.on(GENERATE, "gemini/generate_basic")
    response = client.models.generate_content(
        model="models/gemini-2.5-flash", contents="hi", jevons_feature="faq", jevons_tags={"plan": "pro"})
    assert response.text == "Paris is the capital of France."
    assert not any(k.startswith("jevons") for k in replay.last().json)
    raw.models.generate_content(model="gemini-2.5-flash", contents="hi")  # unmetered
    event = only_event(meter)
    assert (event.customer, event.feature, event.tags) == ("acme", "faq", {"plan": "pro"})
    assert event.model_requested == "gemini-2.5-flash"


def test_generate_content_stream_keeps_the_sdk_generator(
    client: genai.Client, meter: Meter, replay: ReplayServer
) -> None:
    replay.on(STREAM, "gemini/stream_thinking")
    chunks = list(client.models.generate_content_stream(model="gemini-2.5-pro", contents="27*453?",
                                                        jevons_customer="globex"))
    assert all(type(c) is types.GenerateContentResponse for c in chunks)
    assert "".join(c.text or "" for c in chunks) == "27 × 453 = 12,231."
    assert replay.last().query == {"alt": ["sse"]}
    event = only_event(meter)
    assert event.customer == "globex"
    assert event.usage == CASES["generate_thinking"][1]
    assert event.cost.total_usd == CASES["generate_thinking"][2]
    assert event.usage_complete


async def test_aio_generate_content_and_stream(
    client: genai.Client, meter: Meter, replay: ReplayServer
) -> None:
    replay.on(GENERATE, "gemini/generate_audio")
    replay.on(STREAM, "gemini/stream_tools")
    response = await client.aio.models.generate_content(model="gemini-2.5-flash", contents="x",
                                                        jevons_feature="transcribe")
    assert type(response) is types.GenerateContentResponse
    stream = await client.aio.models.generate_content_stream(model="gemini-2.5-flash", contents="x",
                                                             jevons_customer="initech")
    calls = [part.function_call.name async for chunk in stream
             for part in chunk.candidates[0].content.parts  # type: ignore[index, union-attr]
             if part.function_call is not None]
    assert calls == ["get_weather"]
    first, second = meter.events()
    assert (first.feature, first.usage) == ("transcribe", CASES["generate_audio"][1])
    assert first.cost.total_usd == CASES["generate_audio"][2]
    assert second.customer == "initech"
    assert second.usage == Usage(input_tokens=72, output_tokens=88, reasoning_tokens=58, tool_calls=1)


def test_chats_go_through_the_metered_models(
    client: genai.Client, meter: Meter, replay: ReplayServer
) -> None:
    replay.on(GENERATE, "gemini/generate_cache")
    chat = client.chats.create(model="gemini-2.5-flash")
    chat.send_message("What is the term?")
    assert only_event(meter).usage.cache_read_tokens == 4096


def get_weather(location: str) -> str:
    """Current weather in a city."""
    return f"sunny in {location}"


def test_automatic_function_calling_records_every_request(
    client: genai.Client, meter: Meter, replay: ReplayServer
) -> None:
    replay.on(GENERATE, ["gemini/generate_tools", "gemini/generate_basic"])
    with meter.run("agent-1") as run:
        response = client.models.generate_content(
            model="gemini-2.5-flash", contents="Weather in Paris and Lyon?",
            config=types.GenerateContentConfig(tools=[get_weather]), jevons_customer="umbrella")
    assert response.text == "Paris is the capital of France."
    assert replay.count() == 2
    first, second = meter.events()
    assert first.usage == CASES["generate_tools"][1]  # the function-calling round trip is billed too
    assert second.usage == CASES["generate_basic"][1]
    assert first.customer == second.customer == "umbrella"
    assert (first.run_id, first.step, second.step) == ("agent-1", 1, 2)
    assert run.cost_usd == CASES["generate_tools"][2] + CASES["generate_basic"][2]


# --------------------------------------------------------------------------- failed attempts
def test_stream_broken_off_records_an_error_with_the_known_usage(
    client: genai.Client, meter: Meter, replay: ReplayServer
) -> None:
    replay.on(STREAM, load_fixture("gemini/stream_basic", break_after=2))
    with pytest.raises(Exception) as raised:
        for _ in client.models.generate_content_stream(model="gemini-2.5-flash", contents="hi"):
            pass
    assert "jevons" not in type(raised.value).__module__
    event = only_event(meter)
    assert event.status == "error" and not event.usage_complete
    assert event.usage == Usage(input_tokens=9, output_tokens=0)


def test_stream_abandoned_early_records_an_aborted_attempt(
    client: genai.Client, meter: Meter, replay: ReplayServer
) -> None:
    replay.on(STREAM, "gemini/stream_basic")
    stream = client.models.generate_content_stream(model="gemini-2.5-flash", contents="hi")
    next(stream)
    stream.close()
    event = only_event(meter)
    assert event.status == "aborted" and not event.usage_complete
    assert event.usage.input_tokens == 9


async def test_async_stream_abandoned_early_records_an_aborted_attempt(
    client: genai.Client, meter: Meter, replay: ReplayServer
) -> None:
    replay.on(STREAM, "gemini/stream_basic")
    stream: Any = await client.aio.models.generate_content_stream(model="gemini-2.5-flash", contents="hi")
    await stream.__anext__()
    await stream.aclose()
    # the SDK's inner async generators are finalised by the event loop, a few ticks later
    for _ in range(20):
        if meter.events():
            break
        await asyncio.sleep(0)
    event = only_event(meter)
    assert event.status == "aborted" and event.usage.input_tokens == 9


def test_http_error_passes_through_and_is_recorded(
    client: genai.Client, meter: Meter, replay: ReplayServer
) -> None:
    body = {"error": {"code": 400, "message": "bad", "status": "INVALID_ARGUMENT"}}
    replay.on(GENERATE, Reply.error(400, body))
    with pytest.raises(errors.ClientError) as raised:
        client.models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert raised.value.code == 400
    event = only_event(meter)
    assert event.status == "error" and event.usage.total_tokens == 0


def test_unknown_usage_shape_is_kept_for_review(
    client: genai.Client, meter: Meter, replay: ReplayServer
) -> None:
    body = {"candidates": [{"content": {"parts": [{"text": "hi"}], "role": "model"}, "finishReason": "STOP"}],
            "modelVersion": "gemini-2.5-flash"}
    replay.on(GENERATE, Reply.json(body))
    assert client.models.generate_content(model="gemini-2.5-flash", contents="hi").text == "hi"
    event = only_event(meter)
    assert event.needs_review and event.cost.total_usd is None
    assert event.raw_usage is not None


def test_stream_with_an_unknown_usage_shape_is_kept_for_review(
    client: genai.Client, meter: Meter, replay: ReplayServer
) -> None:
    replay.on(STREAM, "gemini/stream_unknown_shape")
    text = "".join(c.text or "" for c in client.models.generate_content_stream(
        model="gemini-2.5-flash", contents="hi"))
    assert text == "Paris is the capital of France."
    event = only_event(meter)
    # the SDK drops the fields it does not declare: the block it kept (empty) is what is left
    assert event.status == "ok" and event.needs_review and not event.usage_complete
    assert event.raw_usage == {}
    assert event.cost.total_usd is None


def test_sdk_retries_are_recorded_as_failed_attempts(meter: Meter, replay: ReplayServer) -> None:
    retry = types.HttpRetryOptions(attempts=2, initial_delay=0.01, max_delay=0.02)
    options = types.HttpOptions(base_url=replay.url, retry_options=retry)
    client = meter.wrap(genai.Client(api_key="k", http_options=options))
    replay.on(GENERATE, [Reply.error(503), "gemini/generate_basic"])
    client.models.generate_content(model="gemini-2.5-flash", contents="hi")
    first, second = sorted(meter.events(), key=lambda e: e.attempt)
    assert (first.attempt, first.status, second.attempt, second.status) == (1, "error", 2, "ok")
    assert second.usage == CASES["generate_basic"][1]


def _retrying_client(meter: Meter, replay: ReplayServer) -> genai.Client:
    retry = types.HttpRetryOptions(attempts=2, initial_delay=0.01, max_delay=0.02)
    return meter.wrap(genai.Client(api_key="k", http_options=types.HttpOptions(base_url=replay.url,
                                                                                retry_options=retry)))


def _attempts(meter: Meter) -> list[tuple[int, str, bool, int]]:
    return [(e.attempt, e.status, e.usage_complete, e.usage.input_tokens)
            for e in sorted(meter.events(), key=lambda e: e.attempt)]


def test_stream_sdk_retries_are_recorded_as_failed_attempts(meter: Meter, replay: ReplayServer) -> None:
    # the stream's request (and its retry) is sent while the caller iterates, after the call returned
    client = _retrying_client(meter, replay)
    replay.on(STREAM, [Reply.error(503), "gemini/stream_basic"])
    for _ in client.models.generate_content_stream(model="gemini-2.5-flash", contents="hi"):
        pass
    assert replay.count() == 2
    assert _attempts(meter) == [(1, "error", True, 0), (2, "ok", True, 9)]


async def test_aio_sdk_retries_are_recorded_as_failed_attempts(meter: Meter, replay: ReplayServer) -> None:
    # client.aio sends through aiohttp (when installed), which the httpx hooks do not see
    client = _retrying_client(meter, replay)
    replay.on(GENERATE, [Reply.error(503), "gemini/generate_basic"])
    replay.on(STREAM, [Reply.error(503), "gemini/stream_basic"])
    await client.aio.models.generate_content(model="gemini-2.5-flash", contents="hi")
    stream = await client.aio.models.generate_content_stream(model="gemini-2.5-flash", contents="hi")
    async for _ in stream:
        pass
    assert replay.count() == 4
    assert [(e.attempt, e.status, e.usage_complete) for e in meter.events()] == [
        (1, "error", True), (2, "ok", True), (1, "error", True), (2, "ok", True)]


def test_stream_http_error_is_a_known_unbilled_attempt(
    client: genai.Client, meter: Meter, replay: ReplayServer
) -> None:
    body = {"error": {"code": 400, "message": "bad", "status": "INVALID_ARGUMENT"}}
    replay.on(STREAM, Reply.error(400, body))
    with pytest.raises(errors.ClientError):
        for _ in client.models.generate_content_stream(model="gemini-2.5-flash", contents="hi"):
            pass
    event = only_event(meter)
    # as the docs table says and the non-streamed call does: zero usage, known complete, $0
    assert (event.status, event.usage_complete, event.cost.status) == ("error", True, "priced")
    assert event.cost.total_usd == 0 and event.error == "ClientError (HTTP 400)"


async def test_aio_http_errors_are_known_unbilled_attempts(
    client: genai.Client, meter: Meter, replay: ReplayServer
) -> None:
    body = {"error": {"code": 400, "message": "bad", "status": "INVALID_ARGUMENT"}}
    replay.on(GENERATE, Reply.error(400, body))
    replay.on(STREAM, Reply.error(400, body))
    with pytest.raises(errors.ClientError):
        await client.aio.models.generate_content(model="gemini-2.5-flash", contents="hi")
    with pytest.raises(errors.ClientError):
        stream = await client.aio.models.generate_content_stream(model="gemini-2.5-flash", contents="hi")
        async for _ in stream:
            pass
    assert [(e.status, e.usage_complete, e.cost.total_usd, e.error) for e in meter.events()] == [
        ("error", True, 0, "ClientError (HTTP 400)")] * 2


def test_dropping_or_closing_a_metered_copy_leaves_the_original_working(
    meter: Meter, replay: ReplayServer
) -> None:
    import gc

    raw = _client(replay)
    replay.on(GENERATE, "gemini/generate_basic")
    for customer in ("a", "b"):  # a wrap per request, as a web handler might do
        with meter.wrap(raw, customer=customer) as metered:
            metered.models.generate_content(model="gemini-2.5-flash", contents="hi")
        del metered
        gc.collect()
    assert raw.models.generate_content(model="gemini-2.5-flash", contents="hi").text
    assert [e.customer for e in meter.events()] == ["a", "b"]
