"""The real ``mistralai`` SDK, metered, talking HTTP to the replay server (``server_url=``).

Costs are checked against Mistral's published prices (USD per million tokens), which the default
price book carries: Mistral Large 3 (``mistral-large-2512``) $0.50 in / $1.50 out / $0.05
cached; Mistral Small (``mistral-small-2603``) $0.15 / $0.60.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from mistralai.client import Mistral, errors
from mistralai.client.models import ChatCompletionResponse
from mistralai.client.utils.eventstreaming import EventStream, EventStreamAsync

from jevons.capture.meter import Meter
from jevons.events import Event
from jevons.usage import Usage
from replay import RecordedRequest, ReplayServer, Reply, load_fixture

M = Decimal("0.000001")
PATH = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


def _streaming(request: RecordedRequest) -> bool:
    return bool(request.json.get("stream"))


@pytest.fixture
def meter(list_price_meter: Meter) -> Meter:
    return list_price_meter


@pytest.fixture
def client(meter: Meter, replay: ReplayServer) -> Mistral:
    return meter.wrap(Mistral(api_key="test-key", server_url=replay.url), customer="acme")


def only_event(meter: Meter) -> Event:
    events = meter.events()
    assert len(events) == 1, events
    return events[0]


CASES: dict[str, tuple[str, Usage, Decimal]] = {
    "chat_basic": ("mistral-large-latest", Usage(input_tokens=10, output_tokens=8),
                   10 * Decimal("0.50") * M + 8 * Decimal("1.50") * M),
    "chat_cache": ("mistral-large-latest", Usage(input_tokens=2113, output_tokens=12, cache_read_tokens=2048),
                   65 * Decimal("0.50") * M + 2048 * Decimal("0.05") * M + 12 * Decimal("1.50") * M),
    "chat_tools": ("mistral-small-latest", Usage(input_tokens=130, output_tokens=46, tool_calls=2),
                   130 * Decimal("0.15") * M + 46 * Decimal("0.60") * M),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_complete_meters_each_usage_feature(
    name: str, client: Mistral, meter: Meter, replay: ReplayServer
) -> None:
    model, usage, usd = CASES[name]
    replay.on(PATH, f"mistral/{name}")
    response = client.chat.complete(model=model, messages=MESSAGES)  # type: ignore[arg-type]
    assert type(response) is ChatCompletionResponse
    event = only_event(meter)
    assert event.usage == usage
    assert event.cost.status == "priced", event.cost.notes
    assert event.cost.total_usd == usd
    assert (event.provider, event.api, event.model_requested, event.status) == (
        "mistral", "chat", model, "ok")
    assert not event.needs_review


def test_wrapped_client_keeps_its_type_strips_attribution_and_leaves_the_original(
    meter: Meter, replay: ReplayServer
) -> None:
    raw = Mistral(api_key="k", server_url=replay.url)
    client = meter.wrap(raw)
    assert isinstance(client, Mistral)
    replay.on(PATH, "mistral/chat_basic")
    raw.chat.complete(model="mistral-large-latest", messages=MESSAGES)  # type: ignore[arg-type]
    assert meter.events() == []
    client.chat.complete(model="mistral-large-latest", messages=MESSAGES,  # type: ignore[arg-type]
                         jevons={"customer": "globex", "feature": "faq", "tags": {"plan": "pro"}})
    assert not any(k.startswith("jevons") for k in replay.last(PATH).json)
    event = only_event(meter)
    assert (event.customer, event.feature, event.tags) == ("globex", "faq", {"plan": "pro"})
    assert event.model == "mistral-large-2512"


def test_audio_seconds_are_flagged_for_review(client: Mistral, meter: Meter, replay: ReplayServer) -> None:
    replay.on(PATH, "mistral/chat_audio")
    client.chat.complete(model="voxtral-small-latest", messages=MESSAGES)  # type: ignore[arg-type]
    event = only_event(meter)
    assert event.needs_review
    assert event.raw_usage is not None and event.raw_usage["prompt_audio_seconds"] == 30
    assert event.usage == Usage(input_tokens=412, output_tokens=9)


async def test_complete_async(client: Mistral, meter: Meter, replay: ReplayServer) -> None:
    replay.on(PATH, "mistral/chat_cache")
    response = await client.chat.complete_async(model="mistral-large-latest", messages=MESSAGES,  # type: ignore[arg-type]
                                                jevons_feature="contracts")
    assert type(response) is ChatCompletionResponse
    event = only_event(meter)
    assert (event.feature, event.usage, event.cost.total_usd) == ("contracts", *CASES["chat_cache"][1:])


STREAMS = {
    "stream_basic": ("mistral-large-latest", CASES["chat_basic"][1], CASES["chat_basic"][2]),
    "stream_tools": ("mistral-small-latest", CASES["chat_tools"][1], CASES["chat_tools"][2]),
}


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_stream_keeps_the_sdk_event_stream(
    name: str, client: Mistral, meter: Meter, replay: ReplayServer
) -> None:
    model, usage, usd = STREAMS[name]
    replay.on(PATH, f"mistral/{name}")
    with client.chat.stream(model=model, messages=MESSAGES) as stream:  # type: ignore[arg-type]
        assert type(stream) is EventStream
        chunks = [event.data for event in stream]
    assert chunks[-1].usage is not None
    event = only_event(meter)
    assert event.usage == usage and event.cost.total_usd == usd
    assert event.status == "ok" and event.usage_complete


async def test_stream_async(client: Mistral, meter: Meter, replay: ReplayServer) -> None:
    replay.on(PATH, "mistral/stream_basic")
    stream = await client.chat.stream_async(model="mistral-large-latest", messages=MESSAGES,  # type: ignore[arg-type]
                                            jevons_customer="initech")
    assert type(stream) is EventStreamAsync
    async with stream:
        text = "".join([str(e.data.choices[0].delta.content or "") async for e in stream])
    assert text == "Paris is the capital of France."
    event = only_event(meter)
    assert (event.customer, event.usage) == ("initech", CASES["chat_basic"][1])


# --------------------------------------------------------------------------- failed attempts
def test_stream_broken_before_usage_records_an_error_of_unknown_usage(
    client: Mistral, meter: Meter, replay: ReplayServer
) -> None:
    replay.on(PATH, load_fixture("mistral/stream_basic", break_after=3))
    with pytest.raises(Exception) as raised:
        for _ in client.chat.stream(model="mistral-large-latest", messages=MESSAGES):  # type: ignore[arg-type]
            pass
    assert "jevons" not in type(raised.value).__module__
    event = only_event(meter)
    assert event.status == "error" and not event.usage_complete
    assert event.cost.total_usd is None and event.cost.status == "unpriced"  # unknown, never $0


def test_stream_abandoned_early_records_an_aborted_attempt(
    client: Mistral, meter: Meter, replay: ReplayServer
) -> None:
    replay.on(PATH, "mistral/stream_basic")
    with client.chat.stream(model="mistral-large-latest", messages=MESSAGES) as stream:  # type: ignore[arg-type]
        next(stream)
    event = only_event(meter)
    assert event.status == "aborted" and not event.usage_complete


async def test_async_stream_abandoned_early_records_an_aborted_attempt(
    client: Mistral, meter: Meter, replay: ReplayServer
) -> None:
    replay.on(PATH, "mistral/stream_tools")
    stream = await client.chat.stream_async(model="mistral-small-latest", messages=MESSAGES)  # type: ignore[arg-type]
    await stream.__anext__()
    await stream.close()
    assert only_event(meter).status == "aborted"


def test_http_error_passes_through_and_is_recorded(
    client: Mistral, meter: Meter, replay: ReplayServer
) -> None:
    body = {"object": "error", "message": "invalid model", "type": "invalid_model"}
    replay.on(PATH, Reply.error(400, body))
    with pytest.raises(errors.SDKError) as raised:
        client.chat.complete(model="nope", messages=MESSAGES)  # type: ignore[arg-type]
    assert raised.value.status_code == 400
    event = only_event(meter)
    assert event.status == "error" and event.usage.total_tokens == 0


def test_unknown_usage_shape_is_kept_for_review(client: Mistral, meter: Meter, replay: ReplayServer) -> None:
    body: dict[str, Any] = {
        "id": "x", "object": "chat.completion", "model": "mistral-large-2512", "created": 1,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": {"input": 5, "output": 2},
    }
    replay.on(PATH, Reply.json(body))
    response = client.chat.complete(model="mistral-large-latest", messages=MESSAGES)  # type: ignore[arg-type]
    assert response.choices[0].message.content == "hi"
    event = only_event(meter)
    assert event.needs_review and event.cost.total_usd is None
    assert event.raw_usage is not None and event.raw_usage.get("input") == 5


def test_stream_with_an_unknown_usage_shape_keeps_the_raw_block_for_review(
    client: Mistral, meter: Meter, replay: ReplayServer
) -> None:
    replay.on(PATH, "mistral/stream_unknown_shape")
    for _ in client.chat.stream(model="mistral-large-latest", messages=MESSAGES):  # type: ignore[arg-type]
        pass
    event = only_event(meter)
    assert event.status == "ok" and event.needs_review and not event.usage_complete
    assert event.raw_usage == {"input": 10, "output": 8}
    assert event.cost.total_usd is None


def test_streamed_and_non_streamed_routes_can_share_a_path(
    client: Mistral, meter: Meter, replay: ReplayServer
) -> None:
    replay.on(PATH, "mistral/chat_tools", match=lambda r: not _streaming(r))
    replay.on(PATH, "mistral/stream_tools", match=_streaming)
    client.chat.complete(model="mistral-small-latest", messages=MESSAGES)  # type: ignore[arg-type]
    for _ in client.chat.stream(model="mistral-small-latest", messages=MESSAGES):  # type: ignore[arg-type]
        pass
    assert [e.usage for e in meter.events()] == [CASES["chat_tools"][1]] * 2


def test_stream_closed_unread_still_records_the_request(
    client: Mistral, meter: Meter, replay: ReplayServer
) -> None:
    replay.on(PATH, "mistral/stream_basic")
    with client.chat.stream(model="mistral-large-latest", messages=MESSAGES):  # type: ignore[arg-type]
        pass
    event = only_event(meter)
    assert event.status == "aborted" and event.usage == Usage(requests=1)


def test_sdk_retries_are_recorded_as_failed_attempts(meter: Meter, replay: ReplayServer) -> None:
    from mistralai.client.utils.retries import BackoffStrategy, RetryConfig

    retries = RetryConfig("backoff", BackoffStrategy(1, 20, 1.1, 1000), False)
    client = meter.wrap(Mistral(api_key="k", server_url=replay.url, retry_config=retries))
    replay.on(PATH, [Reply.error(503), "mistral/chat_basic"])
    client.chat.complete(model="mistral-large-latest", messages=MESSAGES)  # type: ignore[arg-type]
    first, second = sorted(meter.events(), key=lambda e: e.attempt)
    assert (first.attempt, first.status, second.attempt, second.status) == (1, "error", 2, "ok")
    assert second.usage == CASES["chat_basic"][1]
