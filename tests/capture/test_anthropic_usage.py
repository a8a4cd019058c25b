"""Anthropic usage extraction: the documented Messages shapes -> canonical usage.

Expected values are computed by hand from Anthropic's accounting (input, cache reads and cache
writes are disjoint parts of the prompt), not from the adapter's code.
"""

from __future__ import annotations

from typing import Any

import pytest
from anthropic.types import Message, RawMessageStreamEvent
from pydantic import TypeAdapter

import jevons
from jevons.capture.adapters.anthropic import AnthropicStreamState
from jevons.capture.extract import UnknownShape, extract
from jevons.usage import Usage
from replay.server import FIXTURES, fixture_json

EXPECTED: dict[str, Usage] = {
    "messages_basic": Usage(input_tokens=21, output_tokens=9),
    # 38 uncached + 2048 written with a 5-minute TTL
    "messages_cache_5m": Usage(input_tokens=38 + 2048, output_tokens=14, cache_write_5m_tokens=2048),
    # 42 uncached + 4096 read + 1024 (5m) + 2048 (1h) written
    "messages_cache_1h": Usage(
        input_tokens=42 + 4096 + 3072, output_tokens=11, cache_read_tokens=4096,
        cache_write_5m_tokens=1024, cache_write_1h_tokens=2048,
    ),
    # a write without a TTL breakdown counts as a 5-minute write
    "messages_cache_unknown_ttl": Usage(input_tokens=510, output_tokens=3, cache_write_5m_tokens=500),
    "messages_thinking": Usage(input_tokens=51, output_tokens=326, reasoning_tokens=301),
    "messages_tools": Usage(input_tokens=403, output_tokens=96, tool_calls=2),
    "messages_web_search": Usage(input_tokens=6039, output_tokens=931, web_search_requests=2),
}

STREAM_EXPECTED: dict[str, Usage] = {
    "stream_basic": Usage(input_tokens=21 + 1024, output_tokens=12, cache_read_tokens=1024),
    "stream_cache_1h": EXPECTED["messages_cache_1h"],
    "stream_thinking": Usage(input_tokens=51, output_tokens=326, reasoning_tokens=301),
    "stream_tools": Usage(input_tokens=403, output_tokens=89, tool_calls=1),
    # the final message_delta restates input_tokens cumulatively: it wins over message_start
    "stream_web_search": Usage(input_tokens=10682, output_tokens=510, web_search_requests=1),
}

_EVENT = TypeAdapter(RawMessageStreamEvent)


def _events(name: str) -> list[dict[str, Any]]:
    import json

    spec = json.loads((FIXTURES / "anthropic" / f"{name}.json").read_text())
    return [item["data"] for item in spec["sse"] if item["data"].get("type") != "ping"]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_message_dict_and_sdk_object_give_the_same_canonical_usage(name: str) -> None:
    body = fixture_json(f"anthropic/{name}")
    assert jevons.usage_from_response("anthropic", body, api="messages") == EXPECTED[name]
    sdk_message = Message.model_validate(body)
    assert jevons.usage_from_response("anthropic", sdk_message) == EXPECTED[name]


def test_extracted_keeps_model_tier_and_raw_block() -> None:
    body = fixture_json("anthropic/messages_cache_1h")
    got = extract("anthropic", Message.model_validate(body))
    assert got.model == "claude-sonnet-4-5-20250929"
    assert got.service_tier == "standard"
    assert got.complete and not got.needs_review
    assert got.raw_usage is not None
    assert got.raw_usage["cache_creation"] == {
        "ephemeral_5m_input_tokens": 1024, "ephemeral_1h_input_tokens": 2048
    }


@pytest.mark.parametrize("name", sorted(STREAM_EXPECTED))
@pytest.mark.parametrize("form", ["dict", "sdk"])
def test_stream_events_fold_into_final_usage(name: str, form: str) -> None:
    state = AnthropicStreamState()
    for event in _events(name):
        state.add(event if form == "dict" else _EVENT.validate_python(event))
    got = state.result()
    assert got.usage == STREAM_EXPECTED[name]
    assert got.complete
    assert got.model is not None and got.model.startswith("claude-")


def test_stream_cut_before_message_delta_is_incomplete_with_prompt_usage() -> None:
    events = _events("stream_cache_1h")
    state = AnthropicStreamState()
    for event in events[:3]:  # message_start and the first content events only
        state.add(event)
    got = state.result()
    assert not got.complete
    # the prompt side is known from message_start; output so far is the provisional count
    assert got.usage.input_tokens == 7210
    assert got.usage.cache_write_1h_tokens == 2048
    assert got.usage.output_tokens == 1


def test_stream_cut_before_message_start_is_one_request_of_unknown_usage() -> None:
    state = AnthropicStreamState()
    state.add({"type": "ping"})
    got = state.result()
    assert not got.complete
    assert got.usage == Usage(requests=1)
    with pytest.raises(UnknownShape):
        state.usage()


@pytest.mark.parametrize(
    "body",
    [
        {"id": "msg_1", "type": "message", "content": []},  # no usage block
        {"usage": {"prompt_tokens": 3, "completion_tokens": 4}},  # someone else's shape
        {"usage": {"input_tokens": "many", "output_tokens": 2}},  # not a count
        "not a message",
    ],
)
def test_unknown_shapes_raise_value_error(body: Any) -> None:
    with pytest.raises(ValueError):
        jevons.usage_from_response("anthropic", body)


def test_cache_breakdown_larger_than_reported_total_is_not_lost() -> None:
    # a 1h-only breakdown and a total that omits it: every reported write is kept
    usage = jevons.usage_from_response(
        "anthropic",
        {"usage": {"input_tokens": 5, "output_tokens": 1, "cache_creation_input_tokens": 0,
                   "cache_creation": {"ephemeral_5m_input_tokens": 7, "ephemeral_1h_input_tokens": 9}}},
    )
    assert (usage.cache_write_5m_tokens, usage.cache_write_1h_tokens, usage.input_tokens) == (7, 9, 21)
