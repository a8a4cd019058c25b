"""``anthropic.AnthropicBedrock`` / ``AsyncAnthropicBedrock``: the Anthropic SDK sending the
Messages API to Bedrock's invoke endpoints (SigV4-signed, AWS event-stream framing for
streams), against the replay server. Such a call is a Bedrock call: it must be priced exactly
as boto3's ``invoke_model`` of the same model id, region and reply (the cross-region prefix
and the client's ``aws_region`` honoured; the ``claude-...`` name inside the reply is not a
Bedrock price key)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import anthropic
import boto3
import pytest
from deferred_support import begun, log_lines, same_event

import jevons
from jevons.capture.meter import Meter
from jevons.capture.record import capture_reader
from jevons.events import Event
from jevons.prices.book import PriceBook
from jevons.usage import Usage
from replay import ReplayServer, Reply, load_fixture
from replay.server import FIXTURES

INVOKE = r"^/model/[^/]+/invoke$"
INVOKE_STREAM = r"^/model/[^/]+/invoke-with-response-stream$"
MESSAGES = [{"role": "user", "content": "Summarize this."}]


def _fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / "bedrock" / f"{name}.json").read_text())
    return data


REPLY = _fixture("invoke_anthropic")  # global.anthropic.claude-haiku-4-5: cache reads, 5m + 1h writes
STREAM = _fixture("invoke_stream_anthropic")  # eu.anthropic.claude-sonnet-4-5: message_start/delta


@pytest.fixture
def bmeter(list_price_meter: Meter) -> Meter:
    return list_price_meter


def claude(replay: ReplayServer, region: str = "us-east-1") -> anthropic.AnthropicBedrock:
    return anthropic.AnthropicBedrock(aws_region=region, aws_access_key="testing", aws_secret_key="testing",
                                      base_url=replay.url, max_retries=0)


def boto(replay: ReplayServer, region: str = "us-east-1") -> Any:
    return boto3.client("bedrock-runtime", region_name=region, endpoint_url=replay.url,
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def same_cost(a: Event, b: Event) -> None:
    assert a.cost.status == b.cost.status == "priced", (a.cost.notes, b.cost.notes)
    assert (a.cost.total_usd, a.cost.price_version, a.cost.lines) == (
        b.cost.total_usd, b.cost.price_version, b.cost.lines)


def test_create_is_a_bedrock_call_priced_like_invoke_model(bmeter: Meter, replay: ReplayServer) -> None:
    replay.on(INVOKE, "bedrock/invoke_anthropic")
    model = REPLY["_model"]
    client = bmeter.wrap(claude(replay), customer="acme", feature="summarize")
    assert isinstance(client, anthropic.AnthropicBedrock)
    message = client.messages.create(model=model, max_tokens=256, messages=MESSAGES)  # type: ignore[arg-type]
    assert message.usage.cache_read_input_tokens == 4096  # the SDK's own object, unchanged
    assert jevons.usage_from_response("bedrock", message, api="messages") == Usage(**REPLY["_expected"])
    assert replay.last().path == f"/model/{model}/invoke"
    bmeter.wrap(boto(replay)).invoke_model(modelId=model, body=b"{}")["body"].read()
    via_sdk, via_boto3 = bmeter.events()
    assert via_sdk.usage == Usage(**REPLY["_expected"]) == via_boto3.usage
    assert (via_sdk.provider, via_sdk.api, via_sdk.model_requested, via_sdk.region) == (
        "bedrock", "messages", model, "us-east-1")
    assert (via_sdk.customer, via_sdk.feature, via_sdk.status) == ("acme", "summarize", "ok")
    same_cost(via_sdk, via_boto3)
    assert ".global@us-east-1" in (via_sdk.cost.price_version or "")  # the prefix decides the variant


def test_stream_is_observed_in_place_and_priced_like_invoke_stream(
    bmeter: Meter, replay: ReplayServer,
) -> None:
    replay.on(INVOKE_STREAM, "bedrock/invoke_stream_anthropic")
    model = STREAM["_model"]
    client = bmeter.wrap(claude(replay, "eu-west-1"))
    stream = client.messages.create(model=model, max_tokens=256, messages=MESSAGES, stream=True)  # type: ignore[arg-type]
    assert isinstance(stream, anthropic.Stream)
    kinds = [event.type for event in stream]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    for _ in bmeter.wrap(boto(replay, "eu-west-1")).invoke_model_with_response_stream(
            modelId=model, body=b"{}")["body"]:
        pass
    via_sdk, via_boto3 = bmeter.events()
    assert via_sdk.usage == Usage(**STREAM["_expected"]) == via_boto3.usage
    assert (via_sdk.provider, via_sdk.region, via_sdk.usage_complete) == ("bedrock", "eu-west-1", True)
    same_cost(via_sdk, via_boto3)


def test_stream_helper_and_final_message(bmeter: Meter, replay: ReplayServer) -> None:
    replay.on(INVOKE_STREAM, "bedrock/invoke_stream_anthropic")
    client = bmeter.wrap(claude(replay), customer="acme")
    with client.messages.stream(model=STREAM["_model"], max_tokens=256, messages=MESSAGES,  # type: ignore[arg-type]
                                jevons_feature="helper") as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Hi" and final.usage.output_tokens == 77
    [event] = bmeter.events()
    assert (event.provider, event.feature, event.model_requested) == ("bedrock", "helper", STREAM["_model"])
    assert event.usage == Usage(**STREAM["_expected"]) and event.cost.status == "priced"
    assert "jevons" not in replay.last().body.decode()


async def test_async_client(bmeter: Meter, replay: ReplayServer) -> None:
    replay.on(INVOKE, "bedrock/invoke_anthropic")
    client = bmeter.wrap(anthropic.AsyncAnthropicBedrock(
        aws_region="us-east-1", aws_access_key="testing", aws_secret_key="testing", base_url=replay.url,
        max_retries=0), customer="acme")
    assert isinstance(client, anthropic.AsyncAnthropicBedrock)
    message = await client.messages.create(model=REPLY["_model"], max_tokens=256, messages=MESSAGES)  # type: ignore[arg-type]
    assert message.usage.output_tokens == 150
    [event] = bmeter.events()
    assert (event.provider, event.region) == ("bedrock", "us-east-1")
    assert event.usage == Usage(**REPLY["_expected"])
    assert event.cost.status == "priced"


def test_throttled_then_retried_by_the_sdk_is_two_attempts(bmeter: Meter, replay: ReplayServer) -> None:
    throttled = Reply.json({"message": "Too many requests"}, 429,
                           {"x-amzn-errortype": "ThrottlingException", "retry-after": "0"})
    replay.on(INVOKE, [throttled, load_fixture("bedrock/invoke_anthropic")])
    client = bmeter.wrap(anthropic.AnthropicBedrock(
        aws_region="us-east-1", aws_access_key="testing", aws_secret_key="testing", base_url=replay.url,
        max_retries=1))
    message = client.messages.create(model=REPLY["_model"], max_tokens=256, messages=MESSAGES)  # type: ignore[arg-type]
    assert message.usage.output_tokens == 150
    first, second = sorted(bmeter.events(), key=lambda e: e.attempt)
    assert (first.attempt, first.status, first.provider) == (1, "error", "bedrock")
    assert "429" in (first.error or "") and first.usage.total_tokens == 0
    assert (second.attempt, second.status, second.usage) == (2, "ok", Usage(**REPLY["_expected"]))


def test_http_error_passes_through_unchanged(bmeter: Meter, replay: ReplayServer) -> None:
    replay.on(INVOKE, Reply.json({"message": "bad model"}, 400, {"x-amzn-errortype": "ValidationException"}))
    with pytest.raises(anthropic.BadRequestError) as raised:
        bmeter.wrap(claude(replay)).messages.create(
            model=REPLY["_model"], max_tokens=256, messages=MESSAGES)  # type: ignore[arg-type]
    assert raised.value.status_code == 400
    [event] = bmeter.events()
    assert (event.status, event.provider, event.usage.total_tokens) == ("error", "bedrock", 0)


def test_plain_anthropic_clients_keep_their_own_provider(bmeter: Meter, replay: ReplayServer) -> None:
    replay.on("/v1/messages", "anthropic/messages_basic")
    client = bmeter.wrap(anthropic.Anthropic(api_key="k", base_url=replay.url, max_retries=0))
    client.messages.create(model="claude-sonnet-4-5-20250929", max_tokens=256, messages=MESSAGES)  # type: ignore[arg-type]
    [event] = bmeter.events()
    assert (event.provider, event.region) == ("anthropic", None)


def test_deferred_capture_is_rebuilt_as_the_same_bedrock_event(
    durable_meter: Callable[[PriceBook], Meter], list_price_meter: Meter, list_price_book: PriceBook,
    replay: ReplayServer,
) -> None:
    replay.on(INVOKE, "bedrock/invoke_anthropic")
    durable = durable_meter(list_price_book)
    for m in (durable, list_price_meter):
        m.wrap(claude(replay), customer="acme").messages.create(
            model=REPLY["_model"], max_tokens=256, messages=MESSAGES)  # type: ignore[arg-type]
    [line] = log_lines(durable)
    assert line.startswith(b'["C1",'), "a capture line, not a built event"
    [deferred] = durable.events()
    [synchronous] = list_price_meter.events()
    same_event(deferred, synchronous)
    rebuilt = capture_reader(list_price_book)(line)
    same_event(rebuilt, deferred)
    assert (rebuilt.provider, rebuilt.region, rebuilt.cost.status) == ("bedrock", "us-east-1", "priced")


def test_an_ordinary_call_takes_the_direct_path_with_its_region(
    durable_meter: Callable[[PriceBook], Meter], list_price_book: PriceBook, replay: ReplayServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    replay.on(INVOKE, "bedrock/invoke_anthropic")
    durable = durable_meter(list_price_book)
    began = begun(durable, monkeypatch)
    durable.wrap(claude(replay, region="eu-west-1"), customer="acme").messages.create(
        model=REPLY["_model"], max_tokens=256, messages=MESSAGES)  # type: ignore[arg-type]
    assert began == []
    [event] = durable.events()
    assert (event.provider, event.region, event.cost.status) == ("bedrock", "eu-west-1", "priced")


def test_the_original_client_stays_unmetered(bmeter: Meter, replay: ReplayServer) -> None:
    # AnthropicBedrock makes its resources in __init__: the wrapped copy gets its own, so
    # patching them (and the retry hook) leaves the caller's client as it was
    replay.on(INVOKE, "bedrock/invoke_anthropic")
    raw = claude(replay)
    wrapped = bmeter.wrap(raw, customer="acme")
    raw.messages.create(model=REPLY["_model"], max_tokens=256, messages=MESSAGES)  # type: ignore[arg-type]
    assert bmeter.events() == []
    assert "_sleep_for_retry" not in vars(raw)
    wrapped.messages.create(model=REPLY["_model"], max_tokens=256, messages=MESSAGES)  # type: ignore[arg-type]
    wrapped.beta.messages.create(model=REPLY["_model"], max_tokens=256, messages=MESSAGES)  # type: ignore[arg-type]
    assert [e.customer for e in bmeter.events()] == ["acme", "acme"]
