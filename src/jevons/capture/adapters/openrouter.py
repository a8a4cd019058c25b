"""OpenRouter (and the gateway rule): OpenAI-compatible responses that carry the gateway's charge.

OpenRouter is reached through the ``openai`` client with ``base_url="https://openrouter.ai/api/v1"``
(the OpenAI adapter recognises the host, or ``meter.wrap(client, provider="openrouter")``
says so for any other URL). Its usage block is OpenAI-shaped (``prompt_tokens`` includes
``prompt_tokens_details.cached_tokens`` and ``cache_write_tokens``) and adds ``cost``: what
OpenRouter charged for the call, in credits (1 credit = 1 USD). jevons keeps that figure beside
its own cost (``Event.gateway_cost_usd``) so the two can be compared; the event's cost still
comes from the price book, with the model resolved from OpenRouter's ``vendor/model`` id.
"""

from __future__ import annotations

from typing import Any

from jevons.capture.adapters.openai import extract_auto, extract_chat, extract_responses, gateway_cost
from jevons.capture.extract import Extracted, as_dict, field, register_extractor

__all__ = ["extract_openrouter_chat", "extract_openrouter_responses"]


def _with_gateway_cost(x: Extracted, response: Any) -> Extracted:
    block = field(response, "usage")
    x.gateway_cost_usd = gateway_cost(block)
    if x.raw_usage is None and block is not None:
        details = field(block, "cost_details")
        if details is not None:
            x.raw_usage = {"cost": field(block, "cost"), "cost_details": as_dict(details)}
    return x


def extract_openrouter_chat(response: Any, model: str | None = None) -> Extracted:
    return _with_gateway_cost(extract_chat(response, model), response)


def extract_openrouter_responses(response: Any, model: str | None = None) -> Extracted:
    return _with_gateway_cost(extract_responses(response, model), response)


def extract_openrouter_auto(response: Any, model: str | None = None) -> Extracted:
    return _with_gateway_cost(extract_auto(response, model), response)


register_extractor("openrouter", "chat", extract_openrouter_chat)
register_extractor("openrouter", "completions", extract_openrouter_chat)
register_extractor("openrouter", "embeddings", extract_openrouter_chat)
register_extractor("openrouter", "responses", extract_openrouter_responses)
register_extractor("openrouter", None, extract_openrouter_auto)
