"""Deferred capture for Anthropic, Mistral, Gemini and Bedrock's ``converse``: with the durable
ledger, a complete response only has its snapshot logged on the caller's thread. The event the
ledger's background thread builds from the live response, and the one rebuilt from the log line
alone (a process that died first), must both be the event a synchronous meter builds for the
same reply.

Each provider's recorded replies (``tests/replay/fixtures/<provider>``) cover its usage
features: cache reads and writes (5-minute, 1-hour), thinking, tool calls, web searches
(Anthropic's ``server_tool_use``, Gemini's grounding queries), audio input."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import aioboto3
import anthropic
import boto3
import pytest
from deferred_support import begun, log_lines, same_event
from google import genai
from google.genai import types
from mistralai.client import Mistral

from jevons.capture.meter import Meter
from jevons.capture.record import capture_reader
from jevons.events import Event
from jevons.prices.book import PriceBook
from jevons.usage import USAGE_FIELDS, Usage
from replay import ReplayServer
from replay.server import FIXTURES

ATTRIBUTION: dict[str, Any] = {"customer": "acme", "feature": "chat", "tags": {"team": "a"}}


# ---------------------------------------------------------------------- meters
@pytest.fixture
def meter(list_price_meter: Meter) -> Meter:
    """The synchronous in-memory meter, over the published prices (the replies' models)."""
    return list_price_meter


@pytest.fixture
def durable(durable_meter: Callable[[PriceBook], Meter], list_price_book: PriceBook) -> Meter:
    return durable_meter(list_price_book)


def check_deferred(durable: Meter, meter: Meter, book: PriceBook, answer: bytes = b"Paris") -> Event:
    """The durable meter logged one capture line; its event (built by the background thread)
    and the one rebuilt from the line alone are the synchronous meter's."""
    [line] = log_lines(durable)
    assert line.startswith(b'["C1",'), "a capture line, not a built event"
    assert answer not in line, "the answer's text is not logged"
    [deferred] = durable.events()  # the query waits for the background thread
    [synchronous] = meter.events()
    same_event(deferred, synchronous)
    rebuilt = capture_reader(book)(line)
    assert (rebuilt.id, rebuilt.timestamp) == (deferred.id, deferred.timestamp)
    same_event(rebuilt, deferred)
    assert (deferred.customer, deferred.feature, deferred.tags) == ("acme", "chat", {"team": "a"})
    assert deferred.status == "ok" and deferred.usage_complete
    if not deferred.needs_review:
        assert deferred.cost.status == "priced", deferred.cost.notes
    assert durable.stats()["errors"] == 0
    return deferred


def both(durable: Meter, meter: Meter, make: Callable[[Meter], Any], call: Callable[[Any], Any]) -> None:
    assert durable._deferred and not meter._deferred  # the in-memory store builds at once
    for m in (durable, meter):
        call(m.wrap(make(m), **ATTRIBUTION))


async def both_async(durable: Meter, meter: Meter, make: Callable[[Meter], Any],
                     call: Callable[[Any], Awaitable[Any]]) -> None:
    assert durable._deferred and not meter._deferred
    for m in (durable, meter):
        await call(m.wrap(make(m), **ATTRIBUTION))


# ---------------------------------------------------------------------- Anthropic
ASK: dict[str, Any] = {
    "model": "claude-sonnet-4-5-20250929",
    "max_tokens": 256,
    "messages": [{"role": "user", "content": "What is the capital of France?"}],
}

ANTHROPIC: dict[str, Callable[[Usage], bool]] = {
    "messages_basic": lambda u: u.input_tokens == 21 and u.output_tokens == 9,
    "messages_cache_5m": lambda u: u.cache_write_5m_tokens == 2048,
    "messages_cache_1h": lambda u: (u.cache_read_tokens, u.cache_write_5m_tokens, u.cache_write_1h_tokens)
    == (4096, 1024, 2048),
    "messages_cache_unknown_ttl": lambda u: u.cache_write_5m_tokens == 500,
    "messages_thinking": lambda u: u.reasoning_tokens == 301,
    "messages_tools": lambda u: u.tool_calls == 2,
    "messages_web_search": lambda u: u.web_search_requests == 2,
}


def anthropic_client(replay: ReplayServer) -> Callable[[Meter], anthropic.Anthropic]:
    return lambda m: anthropic.Anthropic(api_key="test-key", base_url=replay.url, max_retries=0)


@pytest.mark.parametrize("name", sorted(ANTHROPIC))
def test_anthropic_messages_are_deferred_and_rebuilt(
    name: str, replay: ReplayServer, durable: Meter, meter: Meter, list_price_book: PriceBook,
) -> None:
    replay.on("/v1/messages", f"anthropic/{name}")
    both(durable, meter, anthropic_client(replay), lambda c: c.messages.create(**ASK))
    event = check_deferred(durable, meter, list_price_book)
    assert ANTHROPIC[name](event.usage), event.usage
    assert (event.provider, event.api) == ("anthropic", "messages")


async def test_anthropic_async_create_is_deferred(
    replay: ReplayServer, durable: Meter, meter: Meter, list_price_book: PriceBook,
) -> None:
    replay.on("/v1/messages", "anthropic/messages_cache_1h")

    def make(m: Meter) -> anthropic.AsyncAnthropic:
        return anthropic.AsyncAnthropic(api_key="test-key", base_url=replay.url, max_retries=0)

    async def call(client: anthropic.AsyncAnthropic) -> Any:
        return await client.messages.create(**ASK)

    await both_async(durable, meter, make, call)
    event = check_deferred(durable, meter, list_price_book)
    assert event.usage.cache_read_tokens == 4096 and event.usage.cache_write_1h_tokens == 2048


def test_anthropic_raw_response_is_recorded_at_once(replay: ReplayServer, durable: Meter) -> None:
    replay.on("/v1/messages", "anthropic/messages_basic")
    client = durable.wrap(anthropic_client(replay)(durable), customer="acme")
    raw = client.messages.with_raw_response.create(**ASK)
    assert raw.parse().usage.input_tokens == 21
    [event] = durable.events()
    assert event.status == "ok" and event.usage.input_tokens == 21
    assert durable.stats()["errors"] == 0


# ---------------------------------------------------------------------- Mistral
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]

MISTRAL: dict[str, tuple[str, Callable[[Usage], bool]]] = {
    "chat_basic": ("mistral-large-latest", lambda u: (u.input_tokens, u.output_tokens) == (10, 8)),
    "chat_cache": ("mistral-large-latest", lambda u: u.cache_read_tokens == 2048),
    "chat_tools": ("mistral-small-latest", lambda u: u.tool_calls == 2),
    # audio billed per second: flagged for review, with its raw usage, either way
    "chat_audio": ("voxtral-small-latest", lambda u: u.input_tokens == 412),
}


def mistral_client(replay: ReplayServer) -> Callable[[Meter], Mistral]:
    return lambda m: Mistral(api_key="test-key", server_url=replay.url)


@pytest.mark.parametrize("name", sorted(MISTRAL))
def test_mistral_chat_complete_is_deferred_and_rebuilt(
    name: str, replay: ReplayServer, durable: Meter, meter: Meter, list_price_book: PriceBook,
) -> None:
    model, expect = MISTRAL[name]
    replay.on("/v1/chat/completions", f"mistral/{name}")
    both(durable, meter, mistral_client(replay),
         lambda c: c.chat.complete(model=model, messages=MESSAGES))
    event = check_deferred(durable, meter, list_price_book)
    assert expect(event.usage), event.usage
    assert (event.provider, event.api, event.model_requested) == ("mistral", "chat", model)
    assert event.needs_review == (name == "chat_audio")
    assert event.raw_usage is not None and "total_tokens" in event.raw_usage


async def test_mistral_complete_async_is_deferred(
    replay: ReplayServer, durable: Meter, meter: Meter, list_price_book: PriceBook,
) -> None:
    replay.on("/v1/chat/completions", "mistral/chat_cache")

    async def call(client: Mistral) -> Any:
        return await client.chat.complete_async(model="mistral-large-latest", messages=MESSAGES)  # type: ignore[arg-type]

    await both_async(durable, meter, mistral_client(replay), call)
    event = check_deferred(durable, meter, list_price_book)
    assert event.usage.cache_read_tokens == 2048


# ---------------------------------------------------------------------- Gemini
GENERATE = r"^/v1(beta)?/models/[^/]+:generateContent$"

GEMINI: dict[str, tuple[str, Callable[[Usage], bool]]] = {
    "generate_basic": ("gemini-2.5-flash", lambda u: (u.input_tokens, u.output_tokens) == (9, 8)),
    "generate_thinking": ("gemini-2.5-pro", lambda u: (u.output_tokens, u.reasoning_tokens) == (623, 611)),
    "generate_cache": ("gemini-2.5-flash", lambda u: u.cache_read_tokens == 4096),
    "generate_tools": ("gemini-2.5-flash", lambda u: u.tool_calls == 2 and u.reasoning_tokens == 58),
    "generate_audio": ("gemini-2.5-flash", lambda u: u.audio_input_tokens == 1600),
    "generate_image": ("gemini-2.5-flash-image",
                       lambda u: (u.image_input_tokens, u.image_output_tokens) == (258, 1290)),
    "generate_search": ("gemini-2.5-flash", lambda u: u.web_search_requests == 2 and u.input_tokens == 168),
}


def gemini_client(replay: ReplayServer) -> Callable[[Meter], genai.Client]:
    return lambda m: genai.Client(api_key="test-key", http_options=types.HttpOptions(base_url=replay.url))


@pytest.mark.parametrize("name", sorted(GEMINI))
def test_gemini_generate_content_is_deferred_and_rebuilt(
    name: str, replay: ReplayServer, durable: Meter, meter: Meter, list_price_book: PriceBook,
) -> None:
    model, expect = GEMINI[name]
    replay.on(GENERATE, f"gemini/{name}")
    # ``models/...``: named without the prefix (``MethodSpec.model_prefix``)
    both(durable, meter, gemini_client(replay),
         lambda c: c.models.generate_content(model=f"models/{model}", contents="hello"))
    event = check_deferred(durable, meter, list_price_book)
    assert expect(event.usage), event.usage
    assert (event.provider, event.api, event.model_requested) == ("gemini", "generate_content", model)
    assert event.raw_usage is not None and "promptTokenCount" in event.raw_usage


def test_gemini_takes_the_direct_path_and_names_the_model_without_its_prefix(
    replay: ReplayServer, durable: Meter, monkeypatch: pytest.MonkeyPatch,
) -> None:
    began = begun(durable, monkeypatch)
    replay.on(GENERATE, "gemini/generate_basic")
    client = durable.wrap(gemini_client(replay)(durable), **ATTRIBUTION)
    client.models.generate_content(model="models/gemini-2.5-flash", contents="hello")
    assert began == []
    client.models.generate_content(model="models/gemini-2.5-flash", contents="hello",
                                   jevons_customer="globex")
    assert began == ["gemini-2.5-flash"]
    events = sorted(durable.events(), key=lambda e: e.customer or "")
    assert [(e.customer, e.model_requested, e.cost.status) for e in events] == [
        ("acme", "gemini-2.5-flash", "priced"), ("globex", "gemini-2.5-flash", "priced")]


async def test_gemini_aio_generate_content_is_deferred(
    replay: ReplayServer, durable: Meter, meter: Meter, list_price_book: PriceBook,
) -> None:
    replay.on(GENERATE, "gemini/generate_thinking")

    async def call(client: genai.Client) -> Any:
        return await client.aio.models.generate_content(model="gemini-2.5-pro", contents="hello")

    await both_async(durable, meter, gemini_client(replay), call)
    event = check_deferred(durable, meter, list_price_book)
    assert event.usage.reasoning_tokens == 611


# ---------------------------------------------------------------------- Bedrock
CONVERSE = r"^/model/[^/]+/converse$"
BEDROCK_MESSAGES = [{"role": "user", "content": [{"text": "Summarize this."}]}]

BEDROCK: dict[str, tuple[str, bytes, Callable[[Usage], bool]]] = {
    # (modelId as called, a piece of the answer's text, what the usage must show)
    "converse_claude_cache": ("us.anthropic.claude-sonnet-4-5-20250929-v1:0", b"Here is the summary",
                              lambda u: (u.cache_read_tokens, u.cache_write_5m_tokens, u.tool_calls)
                              == (3200, 1000, 1)),
    "converse_nova": ("amazon.nova-pro-v1:0", b"Bonjour",
                      lambda u: (u.input_tokens, u.output_tokens, u.tool_calls) == (410, 37, 0)),
}


def bedrock_client(replay: ReplayServer) -> Callable[[Meter], Any]:
    return lambda m: boto3.client("bedrock-runtime", region_name="us-east-1", endpoint_url=replay.url,
                                  aws_access_key_id="testing", aws_secret_access_key="testing")


@pytest.mark.parametrize("name", sorted(BEDROCK))
def test_bedrock_converse_is_deferred_and_rebuilt(
    name: str, replay: ReplayServer, durable: Meter, meter: Meter, list_price_book: PriceBook,
) -> None:
    model, answer, expect = BEDROCK[name]
    replay.on(CONVERSE, f"bedrock/{name}")
    both(durable, meter, bedrock_client(replay),
         lambda c: c.converse(modelId=model, messages=BEDROCK_MESSAGES))
    event = check_deferred(durable, meter, list_price_book, answer)
    assert expect(event.usage), event.usage
    assert (event.provider, event.api, event.model_requested, event.region) == (
        "bedrock", "converse", model, "us-east-1")


def test_bedrock_converse_takes_the_direct_path_with_its_region(
    replay: ReplayServer, durable: Meter, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the client's region comes with the method (``MethodSpec.region``), not from a
    # ``prepare``: an ordinary call needs nothing of ``Meter.begin``; one with a per-call
    # kwarg goes through it, and keeps the region too
    began = begun(durable, monkeypatch)
    replay.on(CONVERSE, "bedrock/converse_claude_cache")
    model = BEDROCK["converse_claude_cache"][0]
    client = durable.wrap(bedrock_client(replay)(durable), **ATTRIBUTION)
    client.converse(modelId=model, messages=BEDROCK_MESSAGES)
    assert began == []
    client.converse(modelId=model, messages=BEDROCK_MESSAGES, jevons_customer="globex")
    assert began == [model]
    events = sorted(durable.events(), key=lambda e: e.customer or "")
    assert [(e.customer, e.region, e.cost.status) for e in events] == [
        ("acme", "us-east-1", "priced"), ("globex", "us-east-1", "priced")]


INVOKE = r"^/model/[^/]+/invoke$"
INVOKE_FIXTURES = sorted(p.stem for p in (FIXTURES / "bedrock").glob("invoke_*.json")
                         if not p.stem.startswith("invoke_stream_") and p.stem != "invoke_unknown_shape")


def _texts(value: Any) -> list[str]:
    """Every string of a JSON value (the model's answer is among them)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _texts(v)]
    if isinstance(value, list):
        return [t for v in value for t in _texts(v)]
    return []


@pytest.mark.parametrize("name", INVOKE_FIXTURES)
def test_bedrock_invoke_model_is_deferred_and_rebuilt(
    name: str, replay: ReplayServer, durable: Meter, meter: Meter, list_price_book: PriceBook,
) -> None:
    # the snapshot is the body's reading (usage, raw usage block, flags), never its text
    spec = json.loads((FIXTURES / "bedrock" / f"{name}.json").read_text())
    replay.on(INVOKE, f"bedrock/{name}")
    bodies = []
    for m in (durable, meter):
        client = m.wrap(bedrock_client(replay)(m), **ATTRIBUTION)
        bodies.append(json.loads(client.invoke_model(modelId=spec["_model"], body=b"{}")["body"].read()))
    assert bodies[0] == bodies[1] == spec["json"]  # the caller still reads the whole body
    [line] = log_lines(durable)
    assert line.startswith(b'["C1",'), "a capture line, not a built event"
    answer = [t for t in _texts(spec["json"]) if len(t) > 12 and t != spec["json"].get("model")]
    assert not [t for t in answer if t.encode() in line], "the body's text is not logged"
    [deferred] = durable.events()
    [synchronous] = meter.events()
    same_event(deferred, synchronous)
    rebuilt = capture_reader(list_price_book)(line)
    assert (rebuilt.id, rebuilt.timestamp) == (deferred.id, deferred.timestamp)
    same_event(rebuilt, deferred)
    assert (deferred.api, deferred.region, deferred.status) == ("invoke", "us-east-1", "ok")
    expected = {k: v for k, v in spec.get("_expected", {}).items() if k in USAGE_FIELDS}
    assert {k: getattr(deferred.usage, k) for k in expected} == expected
    assert durable.stats()["errors"] == 0


async def test_bedrock_aioboto3_invoke_model_is_deferred(
    replay: ReplayServer, durable: Meter, meter: Meter, list_price_book: PriceBook,
) -> None:
    spec = json.loads((FIXTURES / "bedrock" / "invoke_anthropic.json").read_text())
    replay.on(INVOKE, "bedrock/invoke_anthropic")
    session = aioboto3.Session()
    for m in (durable, meter):
        async with session.client("bedrock-runtime", region_name="us-east-1", endpoint_url=replay.url,
                                  aws_access_key_id="testing", aws_secret_access_key="testing") as raw:
            response = await m.wrap(raw, **ATTRIBUTION).invoke_model(modelId=spec["_model"], body=b"{}")
            assert json.loads(await response["body"].read()) == spec["json"]
    [line] = log_lines(durable)
    assert line.startswith(b'["C1",')
    [deferred] = durable.events()
    [synchronous] = meter.events()
    same_event(deferred, synchronous)
    same_event(capture_reader(list_price_book)(line), deferred)
    assert deferred.usage.cache_write_1h_tokens == 2000


def test_bedrock_invoke_body_without_usage_is_built_at_once(
    replay: ReplayServer, durable: Meter, meter: Meter,
) -> None:
    # nothing to defer: its review event keeps what the body showed, as the synchronous one
    spec = json.loads((FIXTURES / "bedrock" / "invoke_unknown_shape.json").read_text())
    replay.on(INVOKE, "bedrock/invoke_unknown_shape")
    for m in (durable, meter):
        m.wrap(bedrock_client(replay)(m), **ATTRIBUTION).invoke_model(modelId=spec["_model"], body=b"{}")
    [line] = log_lines(durable)
    assert not line.startswith(b'["C1",'), "an event built on the caller's thread"
    [event] = durable.events()
    [synchronous] = meter.events()
    same_event(event, synchronous)
    assert event.needs_review


async def test_bedrock_aioboto3_converse_is_deferred(
    replay: ReplayServer, durable: Meter, meter: Meter, list_price_book: PriceBook,
) -> None:
    replay.on(CONVERSE, "bedrock/converse_claude_cache")
    session = aioboto3.Session()
    model = BEDROCK["converse_claude_cache"][0]
    for m in (durable, meter):
        async with session.client("bedrock-runtime", region_name="us-east-1", endpoint_url=replay.url,
                                  aws_access_key_id="testing", aws_secret_access_key="testing") as raw:
            client = m.wrap(raw, **ATTRIBUTION)
            await client.converse(modelId=model, messages=BEDROCK_MESSAGES)
    event = check_deferred(durable, meter, list_price_book, b"Here is the summary")
    assert event.usage.cache_read_tokens == 3200 and event.usage.tool_calls == 1
