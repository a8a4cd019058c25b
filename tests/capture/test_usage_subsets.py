"""A breakdown larger than its total is an error for every provider (DEVELOPERS.md): the call
is then kept for review and unpriced, never billed on a quietly capped reading. Gemini, Mistral
and Bedrock's OpenAI-shaped invoke bodies used to cap the subset and price the call."""

from __future__ import annotations

from typing import Any

import pytest

import jevons

OVER = {"prompt_tokens": 100, "completion_tokens": 10, "prompt_tokens_details": {"cached_tokens": 5000}}


@pytest.mark.parametrize(("provider", "response", "api", "model"), [
    ("openai", {"usage": OVER}, "chat", None),
    ("mistral", {"usage": OVER}, None, None),
    ("gemini", {"usageMetadata": {"promptTokenCount": 100, "candidatesTokenCount": 10,
                                  "cachedContentTokenCount": 5000}}, None, None),
    ("gemini", {"usageMetadata": {"promptTokenCount": 100, "candidatesTokenCount": 10,
                                  "promptTokensDetails": [{"modality": "AUDIO", "tokenCount": 5000}]}},
     None, None),
    ("gemini", {"usageMetadata": {"promptTokenCount": 100, "candidatesTokenCount": 10,
                                  "candidatesTokensDetails": [{"modality": "IMAGE", "tokenCount": 500}]}},
     None, None),
    ("bedrock", {"usage": {**OVER, "completion_tokens_details": {"reasoning_tokens": 50}}}, "invoke",
     "openai.gpt-oss-20b-1:0"),
    ("bedrock", {"usage": {"prompt_tokens": 100, "completion_tokens": 10,
                           "completion_tokens_details": {"reasoning_tokens": 50}}}, "invoke",
     "qwen.qwen3-32b-v1:0"),
])
def test_a_subset_larger_than_its_total_is_an_error(
    provider: str, response: dict[str, Any], api: str | None, model: str | None,
) -> None:
    with pytest.raises(ValueError):
        jevons.usage_from_response(provider, response, api=api, model=model)


def test_consistent_breakdowns_still_read() -> None:
    usage = jevons.usage_from_response("gemini", {"usageMetadata": {
        "promptTokenCount": 100, "candidatesTokenCount": 10, "thoughtsTokenCount": 5,
        "cachedContentTokenCount": 60, "promptTokensDetails": [{"modality": "AUDIO", "tokenCount": 40}]}})
    assert (usage.input_tokens, usage.output_tokens, usage.reasoning_tokens) == (100, 15, 5)
    assert (usage.cache_read_tokens, usage.audio_input_tokens) == (60, 40)
