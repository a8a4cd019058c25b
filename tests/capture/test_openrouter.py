"""OpenRouter through the OpenAI client: native model names resolved through the price book,
the gateway's own charge kept beside jevons' cost."""

from __future__ import annotations

from decimal import Decimal

from openai import OpenAI

from jevons.capture.adapters.openai import provider_of
from jevons.capture.meter import Meter
from replay import ReplayServer

CHAT = "/api/v1/chat/completions"


def openrouter_client(replay: ReplayServer) -> OpenAI:
    return OpenAI(base_url=replay.url + "/api/v1", api_key="sk-or-test", max_retries=0)


def test_gateway_cost_is_kept_beside_our_cost(replay: ReplayServer, meter: Meter) -> None:
    replay.on(CHAT, "openrouter/chat_claude")
    client = meter.wrap(openrouter_client(replay), customer="acme", provider="openrouter")
    client.chat.completions.create(model="anthropic/claude-sonnet-4",
                                   messages=[{"role": "user", "content": "hi"}])
    [event] = meter.events()
    assert event.provider == "openrouter"
    assert event.gateway_cost_usd == Decimal("0.007635")
    assert (event.cost.provider, event.model) == ("anthropic", "claude-sonnet-4")
    u = event.usage
    assert (u.input_tokens, u.cache_read_tokens, u.cache_write_5m_tokens) == (2000, 1200, 500)
    assert u.output_tokens == 300
    expected = (300 * Decimal(3) + 1200 * Decimal("0.30") + 500 * Decimal("3.75") + 300 * Decimal(15)) / 10**6
    assert event.cost.total_usd == expected
    assert event.cost.total_usd == event.gateway_cost_usd  # the gateway charged the list price


def test_openai_model_through_openrouter(replay: ReplayServer, meter: Meter) -> None:
    replay.on(CHAT, "openrouter/chat_gpt4o_mini")
    client = meter.wrap(openrouter_client(replay), customer="acme", provider="openrouter")
    client.chat.completions.create(model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    [event] = meter.events()
    assert event.model == "gpt-4o-mini" and event.cost.total_usd == Decimal("0.00000885")
    assert event.gateway_cost_usd == Decimal("0.00000885")


def test_openrouter_stream_keeps_the_gateway_cost(replay: ReplayServer, meter: Meter) -> None:
    replay.on(CHAT, "openrouter/chat_stream")
    client = meter.wrap(openrouter_client(replay), customer="acme", provider="openrouter")
    stream = client.chat.completions.create(model="anthropic/claude-sonnet-4",
                                            messages=[{"role": "user", "content": "hi"}], stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "Bonjour!"
    [event] = meter.events()
    assert event.gateway_cost_usd == Decimal("0.007635") and event.usage.cache_write_5m_tokens == 500


def test_openrouter_recognised_by_base_url() -> None:
    assert provider_of(OpenAI(base_url="https://openrouter.ai/api/v1", api_key="x")) == "openrouter"
    assert provider_of(OpenAI(api_key="x")) == "openai"
    assert provider_of(OpenAI(base_url="http://127.0.0.1:9/v1", api_key="x")) == "openai"


def test_unknown_gateway_prices_by_native_name(replay: ReplayServer, meter: Meter) -> None:
    replay.on("/v1/chat/completions", "openai/chat_basic")
    client = meter.wrap(OpenAI(base_url=replay.url + "/v1", api_key="x", max_retries=0),
                        customer="acme", provider="together")
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    [event] = meter.events()
    assert event.provider == "together" and event.cost.status == "priced" and event.gateway_cost_usd is None
