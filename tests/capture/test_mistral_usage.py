"""Mistral usage extraction: chat ``usage`` -> canonical usage (cached tokens are a subset)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from mistralai.client.models import ChatCompletionResponse, CompletionEvent

import jevons
from jevons.capture.adapters.mistral import MistralStreamState
from jevons.capture.extract import UnknownShape, extract
from jevons.usage import Usage
from replay.server import FIXTURES, fixture_json

EXPECTED: dict[str, Usage] = {
    "chat_basic": Usage(input_tokens=10, output_tokens=8),
    "chat_cache": Usage(input_tokens=2113, output_tokens=12, cache_read_tokens=2048),
    "chat_tools": Usage(input_tokens=130, output_tokens=46, tool_calls=2),
    "chat_audio": Usage(input_tokens=412, output_tokens=9),
}


def _chunks(name: str) -> list[Any]:
    spec = json.loads((FIXTURES / "mistral" / f"{name}.json").read_text())
    return [item["data"] for item in spec["sse"] if item["data"] != "[DONE]"]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_response_dict_and_sdk_object_give_the_same_canonical_usage(name: str) -> None:
    body = fixture_json(f"mistral/{name}")
    assert jevons.usage_from_response("mistral", body, api="chat") == EXPECTED[name]
    sdk_response = ChatCompletionResponse.model_validate(body)
    assert jevons.usage_from_response("mistral", sdk_response) == EXPECTED[name]


def test_audio_seconds_flag_the_event_for_review_with_raw_usage() -> None:
    body = fixture_json("mistral/chat_audio")
    for form in (body, ChatCompletionResponse.model_validate(body)):
        got = extract("mistral", form)
        assert got.needs_review
        assert got.note is not None and "30 s" in got.note
        assert got.raw_usage is not None and got.raw_usage["prompt_audio_seconds"] == 30


def test_plain_response_is_not_flagged() -> None:
    got = extract("mistral", ChatCompletionResponse.model_validate(fixture_json("mistral/chat_basic")))
    assert not got.needs_review and got.complete
    assert got.model == "mistral-large-2512"
    assert got.raw_usage == {"prompt_tokens": 10, "completion_tokens": 8, "total_tokens": 18}


@pytest.mark.parametrize(
    "usage_block",
    [
        {"prompt_tokens": 100, "completion_tokens": 1, "num_cached_tokens": 64},
        {"prompt_tokens": 100, "completion_tokens": 1, "prompt_token_details": {"cached_tokens": 64}},
        {"prompt_tokens": 100, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": 64}},
    ],
)
def test_every_reported_form_of_cached_tokens_is_read(usage_block: dict[str, Any]) -> None:
    usage = jevons.usage_from_response("mistral", {"usage": usage_block})
    assert usage == Usage(input_tokens=100, output_tokens=1, cache_read_tokens=64)


@pytest.mark.parametrize("form", ["dict", "sdk"])
def test_stream_chunks_fold_into_final_usage(form: str) -> None:
    for name, expected in (
        ("stream_basic", Usage(input_tokens=10, output_tokens=8)),
        ("stream_tools", Usage(input_tokens=130, output_tokens=46, tool_calls=2)),
    ):
        state = MistralStreamState()
        for chunk in _chunks(name):
            state.add(chunk if form == "dict" else CompletionEvent.model_validate({"data": chunk}))
        got = state.result()
        assert got.usage == expected
        assert got.complete
        assert got.model is not None


def test_tool_call_split_over_deltas_counts_once() -> None:
    state = MistralStreamState()
    state.add({"choices": [{"index": 0, "delta": {"tool_calls": [
        {"id": "abc123xyz", "index": 0, "function": {"name": "f", "arguments": "{\"a\""}}]}}]})
    state.add({"choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 0, "function": {"arguments": ": 1}"}}]}, "finish_reason": "tool_calls"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 7}})
    assert state.result().usage.tool_calls == 1


def test_stream_cut_before_usage_chunk_is_incomplete() -> None:
    state = MistralStreamState()
    for chunk in _chunks("stream_basic")[:3]:
        state.add(chunk)
    assert not state.finished
    got = state.result()
    assert not got.complete and got.usage == Usage(requests=1)
    with pytest.raises(UnknownShape):
        state.usage()


@pytest.mark.parametrize(
    "body", [{"choices": []}, {"usage": {"total_tokens": 9}}, {"usage": {"prompt_tokens": "x"}}]
)
def test_unknown_shapes_raise_value_error(body: Any) -> None:
    with pytest.raises(ValueError):
        jevons.usage_from_response("mistral", body)


def test_sdk_defaults_never_turn_an_unknown_shape_into_zero_usage() -> None:
    # the SDK's UsageInfo fills absent counts with 0; they were not reported, so this is unknown
    body = {**fixture_json("mistral/chat_basic"), "usage": {"input": 5, "output": 2}}
    with pytest.raises(ValueError):
        jevons.usage_from_response("mistral", ChatCompletionResponse.model_validate(body))


def test_the_mistralai_alias_reads_the_same_usage() -> None:
    body = fixture_json("mistral/chat_cache")
    assert jevons.usage_from_response("mistralai", body, api="chat") == EXPECTED["chat_cache"]
