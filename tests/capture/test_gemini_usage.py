"""Gemini usage extraction: ``usageMetadata`` -> canonical usage.

Expected values follow Gemini's documented accounting: ``promptTokenCount`` includes the cached
content; tool-use prompt tokens and thinking tokens come on top of prompt and candidates.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from google.genai import types

import jevons
from jevons.capture.adapters.gemini import GeminiStreamState
from jevons.capture.extract import UnknownShape, extract
from jevons.usage import Usage
from replay.server import FIXTURES, fixture_json

EXPECTED: dict[str, Usage] = {
    "generate_basic": Usage(input_tokens=9, output_tokens=8),
    # thinking is additive: 12 candidates + 611 thoughts
    "generate_thinking": Usage(input_tokens=14, output_tokens=12 + 611, reasoning_tokens=611),
    # the cached 4096 are inside the 4160 prompt tokens
    "generate_cache": Usage(input_tokens=4160, output_tokens=11, cache_read_tokens=4096),
    "generate_tools": Usage(input_tokens=72, output_tokens=30 + 58, reasoning_tokens=58, tool_calls=2),
    "generate_audio": Usage(input_tokens=1632, output_tokens=10, audio_input_tokens=1600),
    "generate_image": Usage(
        input_tokens=270, output_tokens=1297, image_input_tokens=258, image_output_tokens=1290
    ),
    # 12 prompt + 156 tool-use prompt (search results fed back); two search queries
    "generate_search": Usage(
        input_tokens=12 + 156, output_tokens=19 + 64, reasoning_tokens=64, web_search_requests=2
    ),
}

STREAM_EXPECTED: dict[str, Usage] = {
    "stream_basic": Usage(input_tokens=9, output_tokens=8),
    "stream_thinking": Usage(input_tokens=14, output_tokens=623, reasoning_tokens=611),
    "stream_tools": Usage(input_tokens=72, output_tokens=88, reasoning_tokens=58, tool_calls=1),
}


def _chunks(name: str) -> list[dict[str, Any]]:
    spec = json.loads((FIXTURES / "gemini" / f"{name}.json").read_text())
    return [item["data"] for item in spec["sse"]]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_response_dict_and_sdk_object_give_the_same_canonical_usage(name: str) -> None:
    body = fixture_json(f"gemini/{name}")
    assert jevons.usage_from_response("gemini", body, api="generate_content") == EXPECTED[name]
    sdk_response = types.GenerateContentResponse.model_validate(body)
    assert jevons.usage_from_response("gemini", sdk_response) == EXPECTED[name]


def test_snake_case_dict_is_read_too() -> None:
    body = types.GenerateContentResponse.model_validate(fixture_json("gemini/generate_search")).model_dump(
        mode="json", exclude_none=True
    )
    assert "usage_metadata" in body
    assert jevons.usage_from_response("gemini", body) == EXPECTED["generate_search"]


def test_extracted_keeps_model_and_camel_case_raw_block() -> None:
    body = fixture_json("gemini/generate_thinking")
    for form in (body, types.GenerateContentResponse.model_validate(body)):
        got = extract("gemini", form)
        assert got.model == "gemini-2.5-pro"
        assert got.raw_usage is not None
        assert got.raw_usage["thoughtsTokenCount"] == 611
        assert got.raw_usage["candidatesTokenCount"] == 12


@pytest.mark.parametrize("name", sorted(STREAM_EXPECTED))
@pytest.mark.parametrize("form", ["dict", "sdk"])
def test_stream_chunks_fold_into_final_usage(name: str, form: str) -> None:
    state = GeminiStreamState()
    for chunk in _chunks(name):
        state.add(chunk if form == "dict" else types.GenerateContentResponse.model_validate(chunk))
    got = state.result()
    assert got.usage == STREAM_EXPECTED[name]
    assert got.complete


def test_stream_cut_before_finish_is_incomplete() -> None:
    state = GeminiStreamState()
    for chunk in _chunks("stream_basic")[:2]:
        state.add(chunk)
    got = state.result()
    assert not got.complete
    assert got.usage == Usage(input_tokens=9, output_tokens=0)


@pytest.mark.parametrize(
    "body",
    [
        {"candidates": []},
        {"usageMetadata": {"totalTokenCount": 12}},
        {"usageMetadata": {"promptTokenCount": 1.5}},
    ],
)
def test_unknown_shapes_raise_value_error(body: Any) -> None:
    with pytest.raises(ValueError):
        jevons.usage_from_response("gemini", body)


def test_stream_without_usage_is_one_request_of_unknown_usage() -> None:
    state = GeminiStreamState()
    state.add({"candidates": [{"content": {"parts": [{"text": "hi"}]}}]})
    got = state.result()
    assert not got.complete and got.usage == Usage(requests=1)
    with pytest.raises(UnknownShape):
        state.usage()


def test_tool_use_prompt_modalities_count_as_input_modalities() -> None:
    usage = jevons.usage_from_response(
        "gemini",
        {"usageMetadata": {
            "promptTokenCount": 10, "candidatesTokenCount": 5, "toolUsePromptTokenCount": 300,
            "toolUsePromptTokensDetails": [{"modality": "IMAGE", "tokenCount": 258},
                                           {"modality": "TEXT", "tokenCount": 42}],
        }},
    )
    assert usage == Usage(input_tokens=310, output_tokens=5, image_input_tokens=258)


def test_the_google_alias_reads_the_same_usage() -> None:
    body = fixture_json("gemini/generate_cache")
    assert jevons.usage_from_response("google", body) == EXPECTED["generate_cache"]
