"""Bedrock through the real boto3 / aioboto3 SDKs, talking HTTP (and AWS event-stream framing)
to the replay server: one fixture per API and per model family, priced by the default book
with the ``modelId``'s cross-region prefix and the client's region honoured."""

from __future__ import annotations

import base64
import gc
import json
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import aioboto3
import boto3
import pytest
from botocore.config import Config
from botocore.eventstream import EventStream
from botocore.exceptions import ClientError, EventStreamError
from botocore.response import StreamingBody

from jevons.capture.adapters import bedrock_families
from jevons.capture.meter import Meter
from jevons.events import Event
from jevons.prices.book import PriceBook
from jevons.prices.model import Dim
from jevons.usage import Usage
from replay import ReplayServer, Reply, load_fixture
from replay.server import FIXTURES

BEDROCK = FIXTURES / "bedrock"
CONVERSE = r"^/model/[^/]+/converse$"
CONVERSE_STREAM = r"^/model/[^/]+/converse-stream$"
INVOKE = r"^/model/[^/]+/invoke$"
INVOKE_STREAM = r"^/model/[^/]+/invoke-with-response-stream$"


def _spec(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((BEDROCK / f"{name}.json").read_text())
    return data


def _names(api: str) -> list[str]:
    return sorted(p.stem for p in BEDROCK.glob("*.json") if _spec(p.stem)["_api"] == api)


def _expected(name: str) -> Usage:
    return Usage(**_spec(name)["_expected"])


@pytest.fixture
def bmeter(list_price_meter: Meter) -> Meter:
    return list_price_meter


ClientFactory = Callable[..., Any]


@pytest.fixture
def make_client(replay: ReplayServer) -> ClientFactory:
    def make(region: str = "us-east-1", attempts: int = 1) -> Any:
        return boto3.client(
            "bedrock-runtime", region_name=region, endpoint_url=replay.url,
            aws_access_key_id="testing", aws_secret_access_key="testing",
            config=Config(retries={"mode": "standard", "total_max_attempts": attempts}),
        )

    return make


def _only(meter: Meter) -> Event:
    events = meter.events()
    assert len(events) == 1, [(e.api, e.status, e.error) for e in events]
    return events[0]


def _hand_priced(book: PriceBook, model: str, region: str, usage: Usage) -> tuple[Decimal, str]:
    """The cost by hand: each disjoint bucket times its rate from the version the book finds."""
    _, version, _ = book.lookup(model, provider="bedrock", region=region)
    assert version is not None, f"{model} does not resolve in the default book"
    rates = version.rates
    total = (
        usage.uncached_input_tokens * rates[Dim.INPUT]
        + usage.cache_read_tokens * rates[Dim.CACHE_READ]
        + usage.cache_write_5m_tokens * rates[Dim.CACHE_WRITE_5M]
        + usage.output_tokens * rates[Dim.OUTPUT]
    )
    return total, version.version_id


# ---------------------------------------------------------------------- wrapping
def test_wrapped_client_keeps_its_type_and_the_original_stays_unmetered(
    bmeter: Meter, make_client: ClientFactory, replay: ReplayServer,
) -> None:
    raw = make_client()
    client = bmeter.wrap(raw, customer="acme")
    assert type(client) is type(raw) and isinstance(client, type(raw))
    replay.on(CONVERSE, "bedrock/converse_nova")
    raw.converse(modelId="amazon.nova-pro-v1:0", messages=[])
    assert bmeter.events() == []
    client.converse(modelId="amazon.nova-pro-v1:0", messages=[], jevons_feature="chat")
    event = _only(bmeter)
    assert (event.customer, event.feature) == ("acme", "chat")
    assert (event.provider, event.api) == ("bedrock", "converse")
    # the jevons_* kwarg never reached AWS (boto3 would have refused it); the id is path-quoted
    assert replay.last().path == "/model/amazon.nova-pro-v1%3A0/converse"


# ---------------------------------------------------------------------- converse
@pytest.mark.parametrize(("model", "region", "variant"), [
    ("us.anthropic.claude-sonnet-4-5-20250929-v1:0", "us-east-1", "standard@us-east-1"),
    ("global.anthropic.claude-sonnet-4-5-20250929-v1:0", "us-east-1", "standard.global@us-east-1"),
    ("eu.anthropic.claude-sonnet-4-5-20250929-v1:0", "eu-west-1", "standard@eu-west-1"),
    ("arn:aws:bedrock:us-west-2:123456789012:inference-profile/us.anthropic.claude-sonnet-4-5-20250929-v1:0",
     "us-west-2", "standard@us-west-2"),
])
def test_converse_with_cache_priced_by_prefix_and_region(
    model: str, region: str, variant: str, bmeter: Meter, list_price_book: PriceBook,
    make_client: ClientFactory, replay: ReplayServer,
) -> None:
    replay.on(CONVERSE, "bedrock/converse_claude_cache")
    response = bmeter.wrap(make_client(region)).converse(modelId=model, messages=[])
    assert response["usage"]["cacheReadInputTokens"] == 3200  # the caller's dict is untouched
    event = _only(bmeter)
    assert event.usage == _expected("converse_claude_cache")
    assert event.model_requested == model and event.region == region
    assert event.cost.status == "priced"
    total, version_id = _hand_priced(list_price_book, model, region, event.usage)
    assert event.cost.total_usd == total
    assert event.cost.price_version == version_id and f":{variant}:" in version_id


def test_global_profile_costs_less_than_the_regional_one(
    bmeter: Meter, make_client: ClientFactory, replay: ReplayServer,
) -> None:
    replay.on(CONVERSE, "bedrock/converse_claude_cache")
    client = bmeter.wrap(make_client())
    client.converse(modelId="us.anthropic.claude-sonnet-4-5-20250929-v1:0", messages=[])
    client.converse(modelId="global.anthropic.claude-sonnet-4-5-20250929-v1:0", messages=[])
    regional, global_ = (e.cost.total_usd for e in bmeter.events())
    assert regional is not None and global_ is not None
    assert regional == global_ * Decimal("1.1")  # Bedrock's regional premium on Sonnet 4.5


# ---------------------------------------------------------------------- converse_stream
def test_converse_stream_yields_the_same_events_and_records_cache_usage(
    bmeter: Meter, make_client: ClientFactory, replay: ReplayServer,
) -> None:
    model = "global.anthropic.claude-sonnet-4-5-20250929-v1:0"
    replay.on(CONVERSE_STREAM, "bedrock/converse_stream_claude")
    plain = list(make_client().converse_stream(modelId=model, messages=[])["stream"])
    response = bmeter.wrap(make_client()).converse_stream(modelId=model, messages=[])
    assert type(response["stream"]) is EventStream
    assert list(response["stream"]) == plain
    assert plain[-1]["metadata"]["usage"]["cacheWriteInputTokens"] == 500
    event = _only(bmeter)
    assert (event.status, event.usage_complete, event.api) == ("ok", True, "converse_stream")
    assert event.usage == _expected("converse_stream_claude")
    assert event.cost.status == "priced" and "standard.global" in (event.cost.price_version or "")


def test_stream_error_event_after_tokens_is_an_error_attempt(
    bmeter: Meter, make_client: ClientFactory, replay: ReplayServer,
) -> None:
    replay.on(CONVERSE_STREAM, "bedrock/converse_stream_error")
    client = bmeter.wrap(make_client())
    stream = client.converse_stream(modelId="us.amazon.nova-lite-v1:0", messages=[])["stream"]
    seen = []
    with pytest.raises(EventStreamError) as info:
        for item in stream:
            seen.append(item)
    assert info.value.response["Error"]["Code"] == "modelStreamErrorException"
    assert len(seen) == 2
    event = _only(bmeter)
    assert (event.status, event.usage_complete) == ("error", False)
    assert "EventStreamError" in (event.error or "")


def test_stream_broken_off_by_the_network_is_an_incomplete_error(
    bmeter: Meter, make_client: ClientFactory, replay: ReplayServer,
) -> None:
    replay.on(INVOKE_STREAM, load_fixture("bedrock/invoke_stream_anthropic").broken_after(3))
    body = bmeter.wrap(make_client()).invoke_model_with_response_stream(
        modelId="eu.anthropic.claude-sonnet-4-5-20250929-v1:0", body=b"{}")["body"]
    with pytest.raises(Exception):  # noqa: B017 - whatever botocore/urllib3 raise, unchanged
        for _ in body:
            pass
    event = _only(bmeter)
    assert (event.status, event.usage_complete) == ("error", False)
    # what message_start said is kept: the prompt side of the bill is known
    assert event.usage.input_tokens == 1540 and event.usage.cache_write_5m_tokens == 1500
    assert event.cost.status == "estimated"


def test_stream_closed_early_is_aborted(
    bmeter: Meter, make_client: ClientFactory, replay: ReplayServer,
) -> None:
    replay.on(CONVERSE_STREAM, "bedrock/converse_stream_claude")
    stream = bmeter.wrap(make_client()).converse_stream(
        modelId="us.anthropic.claude-sonnet-4-5-20250929-v1:0", messages=[])["stream"]
    for item in stream:
        if "contentBlockDelta" in item:
            break
    stream.close()
    event = _only(bmeter)
    assert (event.status, event.usage_complete) == ("aborted", False)


def test_stream_dropped_unread_is_aborted(
    bmeter: Meter, make_client: ClientFactory, replay: ReplayServer,
) -> None:
    replay.on(INVOKE_STREAM, "bedrock/invoke_stream_llama")
    response = bmeter.wrap(make_client()).invoke_model_with_response_stream(
        modelId="meta.llama3-1-8b-instruct-v1:0", body=b"{}")
    del response
    gc.collect()
    event = _only(bmeter)
    assert (event.status, event.usage_complete) == ("aborted", False)


# ---------------------------------------------------------------------- invoke_model
@pytest.mark.parametrize("name", [n for n in _names("invoke") if n != "invoke_unknown_shape"])
def test_invoke_model_every_family(
    name: str, bmeter: Meter, list_price_book: PriceBook, make_client: ClientFactory, replay: ReplayServer,
) -> None:
    spec = _spec(name)
    replay.on(INVOKE, f"bedrock/{name}")
    region = "us-east-1"
    response = bmeter.wrap(make_client(region)).invoke_model(modelId=spec["_model"], body=b"{}")
    body = response["body"]
    assert isinstance(body, StreamingBody)
    assert json.loads(body.read()) == spec["json"]  # the caller reads the body as before
    event = _only(bmeter)
    assert event.usage == _expected(name)
    assert (event.status, event.usage_complete, event.needs_review) == ("ok", True, False)
    assert event.cost.total_usd is not None, event.cost.notes
    version = list_price_book.lookup(spec["_model"], provider="bedrock", region=region)[1]
    assert version is not None and event.cost.price_version == version.version_id


def test_invoke_body_supports_the_sdk_reading_helpers(
    bmeter: Meter, make_client: ClientFactory, replay: ReplayServer,
) -> None:
    replay.on(INVOKE, "bedrock/invoke_llama")
    client = bmeter.wrap(make_client())
    body = client.invoke_model(modelId="meta.llama3-1-8b-instruct-v1:0", body=b"{}")["body"]
    first = body.read(10)
    rest = b"".join(body.iter_chunks(7))
    assert json.loads(first + rest)["generation_token_count"] == 29


def test_invoke_unknown_shape_is_kept_for_review(
    bmeter: Meter, make_client: ClientFactory, replay: ReplayServer,
) -> None:
    spec = _spec("invoke_unknown_shape")
    replay.on(INVOKE, "bedrock/invoke_unknown_shape")
    response = bmeter.wrap(make_client()).invoke_model(modelId=spec["_model"], body=b"{}")
    assert json.loads(response["body"].read()) == spec["json"]
    event = _only(bmeter)
    assert event.needs_review and not event.usage_complete
    assert event.raw_usage == {"body_keys": ["result", "seeds"]}
    assert event.cost.status == "unpriced" and event.cost.total_usd is None


def test_http_error_passes_through_as_an_error_attempt(
    bmeter: Meter, make_client: ClientFactory, replay: ReplayServer,
) -> None:
    replay.on(INVOKE, Reply.json({"message": "Too many requests"}, 429,
                                 {"x-amzn-errortype": "ThrottlingException"}))
    with pytest.raises(ClientError) as info:
        bmeter.wrap(make_client()).invoke_model(modelId="amazon.nova-pro-v1:0", body=b"{}")
    assert info.value.response["Error"]["Code"] == "ThrottlingException"
    event = _only(bmeter)
    assert (event.status, event.usage_complete) == ("error", True)
    assert event.usage.total_tokens == 0 and event.error == "ThrottlingException (HTTP 429)"


def test_botocore_retries_are_separate_attempts(
    bmeter: Meter, make_client: ClientFactory, replay: ReplayServer,
) -> None:
    failure = Reply.json({"message": "boom"}, 500, {"x-amzn-errortype": "InternalServerException"})
    replay.on(CONVERSE, [failure, load_fixture("bedrock/converse_nova")])
    bmeter.wrap(make_client(attempts=2)).converse(modelId="amazon.nova-pro-v1:0", messages=[])
    first, second = sorted(bmeter.events(), key=lambda e: e.attempt)
    assert (first.attempt, first.status, first.error) == (1, "error", "HTTP 500; retried")
    assert (second.attempt, second.status) == (2, "ok")
    assert second.usage == _expected("converse_nova")


# ---------------------------------------------------------------------- invoke stream
@pytest.mark.parametrize("name", _names("invoke_stream"))
def test_invoke_stream_every_family(
    name: str, bmeter: Meter, make_client: ClientFactory, replay: ReplayServer,
) -> None:
    spec = _spec(name)
    replay.on(INVOKE_STREAM, f"bedrock/{name}")
    response = bmeter.wrap(make_client("us-west-2")).invoke_model_with_response_stream(
        modelId=spec["_model"], body=b"{}")
    assert type(response["body"]) is EventStream
    chunks = [json.loads(event["chunk"]["bytes"]) for event in response["body"]]
    assert chunks == [frame["chunk"] for frame in spec["frames"]]
    event = _only(bmeter)
    assert event.usage == _expected(name)
    assert (event.status, event.usage_complete, event.region) == ("ok", True, "us-west-2")
    assert event.cost.total_usd is not None, event.cost.notes


def test_instrumentation_errors_never_break_the_stream(
    bmeter: Meter, make_client: ClientFactory, replay: ReplayServer, monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(self: object, chunk: object) -> None:
        raise RuntimeError("adapter bug")

    monkeypatch.setattr(bedrock_families.InvokeStreamFold, "feed", broken)
    replay.on(INVOKE_STREAM, "bedrock/invoke_stream_nova")
    body = bmeter.wrap(make_client()).invoke_model_with_response_stream(
        modelId="us.amazon.nova-micro-v1:0", body=b"{}")["body"]
    assert len(list(body)) == len(_spec("invoke_stream_nova")["frames"])
    event = _only(bmeter)
    assert event.needs_review and event.status == "ok"
    assert bmeter.stats()["errors_by_kind"] == {"extract": 1}


def test_instrumentation_errors_never_break_invoke_model(
    bmeter: Meter, make_client: ClientFactory, replay: ReplayServer, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from jevons.capture.adapters import bedrock

    def broken(*args: object) -> None:
        raise RuntimeError("adapter bug")

    monkeypatch.setattr(bedrock, "reading_from_invoke", broken)
    replay.on(INVOKE, "bedrock/invoke_nova")
    response = bmeter.wrap(make_client()).invoke_model(modelId="eu.amazon.nova-lite-v1:0", body=b"{}")
    assert json.loads(response["body"].read()) == _spec("invoke_nova")["json"]
    assert bmeter.stats()["errors"] == 1


# ---------------------------------------------------------------------- aioboto3
def _aclient(replay: ReplayServer, region: str = "eu-west-1") -> Any:
    return aioboto3.Session().client(
        "bedrock-runtime", region_name=region, endpoint_url=replay.url,
        aws_access_key_id="testing", aws_secret_access_key="testing",
        config=Config(retries={"mode": "standard", "total_max_attempts": 1}),
    )


async def test_aioboto3_converse_and_converse_stream(bmeter: Meter, replay: ReplayServer) -> None:
    replay.on(CONVERSE, "bedrock/converse_claude_cache")
    replay.on(CONVERSE_STREAM, "bedrock/converse_stream_claude")
    model = "eu.anthropic.claude-sonnet-4-5-20250929-v1:0"
    async with _aclient(replay) as raw:
        client = bmeter.wrap(raw, customer="acme")
        assert type(client) is type(raw)
        await client.converse(modelId=model, messages=[])
        response = await client.converse_stream(modelId=model, messages=[])
        events = [e async for e in response["stream"]]
    assert events[-1]["metadata"]["usage"]["inputTokens"] == 25
    converse, stream = sorted(bmeter.events(), key=lambda e: e.api or "")
    assert converse.usage == _expected("converse_claude_cache")
    assert stream.usage == _expected("converse_stream_claude") and stream.usage_complete
    assert converse.region == stream.region == "eu-west-1"
    assert "@eu-west-1" in (converse.cost.price_version or "") and converse.cost.status == "priced"


async def test_aioboto3_invoke_model_body_is_still_readable(bmeter: Meter, replay: ReplayServer) -> None:
    replay.on(INVOKE, "bedrock/invoke_anthropic")
    spec = _spec("invoke_anthropic")
    async with _aclient(replay, "us-east-1") as raw:
        response = await bmeter.wrap(raw).invoke_model(modelId=spec["_model"], body=b"{}")
        data = await response["body"].read()
        assert await response["body"].read() == b""  # read once, like the SDK's own body
    assert json.loads(data) == spec["json"]
    event = _only(bmeter)
    assert event.usage == _expected("invoke_anthropic")
    assert event.usage.cache_write_1h_tokens == 2000
    assert "standard.global@us-east-1" in (event.cost.price_version or "")


async def test_aioboto3_invoke_stream_and_early_close(bmeter: Meter, replay: ReplayServer) -> None:
    replay.on(INVOKE_STREAM, "bedrock/invoke_stream_gpt_oss")
    spec = _spec("invoke_stream_gpt_oss")
    async with _aclient(replay, "us-east-1") as raw:
        client = bmeter.wrap(raw)
        response = await client.invoke_model_with_response_stream(modelId=spec["_model"], body=b"{}")
        chunks = [json.loads(e["chunk"]["bytes"]) async for e in response["body"]]
        early = await client.invoke_model_with_response_stream(modelId=spec["_model"], body=b"{}")
        async for _ in early["body"]:
            break
        early["body"].close()  # aiobotocore's close is synchronous and stays so
    assert chunks == [f["chunk"] for f in spec["frames"]]
    done, aborted = sorted(bmeter.events(), key=lambda e: e.status != "ok")
    assert done.usage == _expected("invoke_stream_gpt_oss") and done.status == "ok"
    assert (aborted.status, aborted.usage_complete) == ("aborted", False)


def test_wire_chunks_are_base64_json(replay: ReplayServer) -> None:
    # the fixture's chunks travel as the real service sends them: base64 in ``bytes``
    reply = load_fixture("bedrock/invoke_stream_llama")
    assert reply.chunks is not None
    payload = reply.chunks[0][reply.chunks[0].index(b'{"bytes"'):-4]
    inner = json.loads(base64.b64decode(json.loads(payload)["bytes"]))
    assert inner["prompt_token_count"] == 18


def test_invoke_stream_exception_after_message_start_keeps_the_prompt_side(
    bmeter: Meter, make_client: ClientFactory, replay: ReplayServer,
) -> None:
    frames = _spec("invoke_stream_anthropic")["frames"][:3]
    frames.append({"exception": "modelStreamErrorException", "message": "upstream failed"})
    replay.on(INVOKE_STREAM, Reply.framed(frames, framing="aws-eventstream"))
    body = bmeter.wrap(make_client()).invoke_model_with_response_stream(
        modelId="us.anthropic.claude-sonnet-4-5-20250929-v1:0", body=b"{}")["body"]
    with pytest.raises(EventStreamError):
        list(body)
    event = _only(bmeter)
    assert (event.status, event.usage_complete) == ("error", False)
    assert event.usage.input_tokens == 1540 and event.usage.cache_write_5m_tokens == 1500
    assert event.cost.status == "estimated" and event.cost.total_usd is not None
