"""Bedrock usage extraction from dicts: every API and model family -> canonical usage.

Each fixture under ``tests/replay/fixtures/bedrock/`` carries ``_model`` (the ``modelId`` as
called), ``_api`` and ``_expected``: the canonical usage computed by hand from the family's
documented accounting (Converse / Nova / Anthropic report cache beside the uncached prompt;
chat-completions families report cached and reasoning tokens as subsets).
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import pytest
from botocore.response import StreamingBody

import jevons
from jevons.capture.adapters.bedrock_families import family_of
from jevons.capture.extract import UnknownShape, extract
from jevons.usage import Usage
from replay.server import FIXTURES

BEDROCK = FIXTURES / "bedrock"
# families whose invoke body has no usage: only the x-amzn-bedrock-*-token-count headers tell
HEADERS_ONLY = {"invoke_mistral", "invoke_cohere", "invoke_deepseek"}


def _spec(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((BEDROCK / f"{name}.json").read_text())
    return data


def _names(api: str) -> list[str]:
    return sorted(p.stem for p in BEDROCK.glob("*.json") if _spec(p.stem)["_api"] == api
                  and "_expected" in _spec(p.stem))


def _expected(spec: dict[str, Any]) -> Usage:
    return Usage(**spec["_expected"])


@pytest.mark.parametrize("name", _names("converse"))
def test_converse_dict(name: str) -> None:
    spec = _spec(name)
    assert jevons.usage_from_response("bedrock", spec["json"], api="converse") == _expected(spec)
    # without ``api`` the shape (usage + metrics) says it is Converse
    assert jevons.usage_from_response("bedrock", spec["json"]) == _expected(spec)


@pytest.mark.parametrize("name", _names("invoke"))
def test_invoke_json_body_of_every_family(name: str) -> None:
    spec = _spec(name)
    body, model = spec["json"], spec["_model"]
    if name in HEADERS_ONLY:
        # these bodies carry no usage: the JSON body alone cannot answer (the headers can)
        with pytest.raises(UnknownShape):
            jevons.usage_from_response("bedrock", body, api="invoke", model=model)
        return
    assert jevons.usage_from_response("bedrock", body, api="invoke", model=model) == _expected(spec)


def _boto3_invoke_dict(spec: dict[str, Any]) -> dict[str, Any]:
    data = json.dumps(spec["json"]).encode()
    return {
        "ResponseMetadata": {"HTTPStatusCode": 200, "HTTPHeaders": dict(spec["headers"])},
        "contentType": "application/json",
        "body": StreamingBody(io.BytesIO(data), len(data)),
    }


@pytest.mark.parametrize("name", _names("invoke"))
def test_invoke_boto3_dict_reads_the_body_and_falls_back_to_headers(name: str) -> None:
    spec = _spec(name)
    response = _boto3_invoke_dict(spec)
    usage = jevons.usage_from_response("bedrock", response, api="invoke", model=spec["_model"])
    assert usage == _expected(spec)
    # the caller can still read the body, byte for byte
    assert isinstance(response["body"], StreamingBody)
    assert json.loads(response["body"].read()) == spec["json"]


def test_invoke_without_usage_or_headers_is_an_unknown_shape() -> None:
    spec = _spec("invoke_unknown_shape")
    with pytest.raises(UnknownShape):
        jevons.usage_from_response("bedrock", _boto3_invoke_dict(spec), api="invoke", model=spec["_model"])


@pytest.mark.parametrize("name", _names("invoke_stream"))
def test_invoke_stream_chunks_of_every_family(name: str) -> None:
    spec = _spec(name)
    chunks = [frame["chunk"] for frame in spec["frames"]]
    decoded = extract("bedrock", chunks, api="invoke_stream", model=spec["_model"])
    assert decoded.usage == _expected(spec)
    assert decoded.complete
    # boto3's own event form: {"chunk": {"bytes": b"..."}}
    boto_events = [{"chunk": {"bytes": json.dumps(c).encode()}} for c in chunks]
    assert jevons.usage_from_response("bedrock", boto_events, api="invoke_stream",
                                      model=spec["_model"]) == _expected(spec)
    # and the wire form: base64 text in ``bytes``
    wire = [{"chunk": {"bytes": base64.b64encode(json.dumps(c).encode()).decode()}} for c in chunks]
    assert jevons.usage_from_response("bedrock", wire, api="invoke_stream",
                                      model=spec["_model"]) == _expected(spec)


def test_converse_stream_events() -> None:
    spec = _spec("converse_stream_claude")
    events = [{f["event"]: f["body"]} for f in spec["frames"]]
    x = extract("bedrock", events, api="converse_stream")
    assert x.usage == _expected(spec)
    assert x.complete
    assert x.raw_usage == {"inputTokens": 25, "outputTokens": 60, "totalTokens": 2585,
                           "cacheReadInputTokens": 2000, "cacheWriteInputTokens": 500}


def test_converse_stream_without_metadata_is_incomplete() -> None:
    spec = _spec("converse_stream_claude")
    events = [{f["event"]: f["body"]} for f in spec["frames"] if f["event"] != "metadata"]
    x = extract("bedrock", events, api="converse_stream")
    assert not x.complete
    assert x.usage.input_tokens == 0 and x.usage.tool_calls == 1


def test_converse_cache_details_split_writes_by_ttl() -> None:
    # newer API versions add cacheDetails (1h before 5m); unlisted writes stay 5-minute writes
    response = {
        "output": {"message": {"role": "assistant", "content": [{"text": "ok"}]}},
        "stopReason": "end_turn",
        "usage": {"inputTokens": 10, "outputTokens": 5, "totalTokens": 4015,
                  "cacheReadInputTokens": 1000, "cacheWriteInputTokens": 3000,
                  "cacheDetails": [{"ttl": "1h", "inputTokens": 2000}, {"ttl": "5m", "inputTokens": 1000}]},
        "metrics": {"latencyMs": 1},
    }
    assert jevons.usage_from_response("bedrock", response, api="converse") == Usage(
        input_tokens=10 + 1000 + 3000, output_tokens=5, cache_read_tokens=1000,
        cache_write_5m_tokens=1000, cache_write_1h_tokens=2000,
    )


def test_converse_without_usage_is_an_unknown_shape() -> None:
    with pytest.raises(UnknownShape):
        jevons.usage_from_response("bedrock", {"output": {}, "stopReason": "end_turn"}, api="converse")


def test_headers_fallback_with_cache_headers() -> None:
    headers = {"X-Amzn-Bedrock-Input-Token-Count": "100", "X-Amzn-Bedrock-Output-Token-Count": "7",
               "X-Amzn-Bedrock-Cache-Read-Input-Token-Count": "900",
               "X-Amzn-Bedrock-Cache-Write-Input-Token-Count": "50"}
    response = {"ResponseMetadata": {"HTTPHeaders": headers}, "body": b'{"outputs": []}'}
    model = "mistral.mistral-small-2402-v1:0"
    usage = jevons.usage_from_response("bedrock", response, api="invoke", model=model)
    assert usage == Usage(input_tokens=1050, output_tokens=7, cache_read_tokens=900, cache_write_5m_tokens=50)


def test_body_shape_is_read_even_when_the_model_id_names_no_vendor() -> None:
    # an application inference profile ARN says nothing about the family: the shape does
    arn = "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/abc123"
    body = _spec("invoke_anthropic")["json"]
    assert family_of(arn) is None
    assert jevons.usage_from_response("bedrock", body, api="invoke", model=arn) == _expected(
        _spec("invoke_anthropic"))


@pytest.mark.parametrize(("model", "family"), [
    ("us.anthropic.claude-sonnet-4-5-20250929-v1:0", "anthropic"),
    ("global.anthropic.claude-haiku-4-5-20251001-v1:0", "anthropic"),
    ("arn:aws:bedrock:eu-west-1:123456789012:inference-profile/eu.amazon.nova-pro-v1:0", "nova"),
    ("amazon.titan-text-express-v1", "titan"),
    ("meta.llama3-1-8b-instruct-v1:0", "meta"),
    ("apac.mistral.pixtral-large-2502-v1:0", "mistral"),
    ("cohere.command-r-plus-v1:0", "cohere"),
    ("ai21.jamba-1-5-mini-v1:0", "ai21"),
    ("openai.gpt-oss-20b-1:0", "openai"),
    ("us.deepseek.r1-v1:0", "deepseek"),
    ("qwen.qwen3-32b-v1:0", "qwen"),
    ("stability.sd3-large-v1:0", None),
])
def test_family_of_model_ids(model: str, family: str | None) -> None:
    assert family_of(model) == family


def test_titan_text_llama_cohere_r_and_jurassic_bodies() -> None:
    titan = {"inputTextTokenCount": 8, "results": [{"tokenCount": 20, "outputText": "x",
                                                    "completionReason": "FINISH"}]}
    assert jevons.usage_from_response("bedrock", titan, api="invoke", model="amazon.titan-text-express-v1") \
        == Usage(input_tokens=8, output_tokens=20)
    command_r = {"text": "hi", "finish_reason": "COMPLETE",
                 "meta": {"billed_units": {"input_tokens": 31, "output_tokens": 4}}}
    assert jevons.usage_from_response("bedrock", command_r, api="invoke", model="cohere.command-r-v1:0") \
        == Usage(input_tokens=31, output_tokens=4)
    jurassic = {"prompt": {"text": "a b", "tokens": [{}, {}, {}]},
                "completions": [{"data": {"text": "c", "tokens": [{}, {}]}}]}
    assert jevons.usage_from_response("bedrock", jurassic, api="invoke", model="ai21.j2-ultra-v1") \
        == Usage(input_tokens=3, output_tokens=2)


def test_invoke_stream_cut_off_keeps_the_partial_counts_as_incomplete() -> None:
    spec = _spec("invoke_stream_anthropic")
    chunks = [frame["chunk"] for frame in spec["frames"]][:3]  # message_start .. first delta
    x = extract("bedrock", chunks, api="invoke_stream", model=spec["_model"])
    assert not x.complete
    assert x.usage.input_tokens == 1540  # the prompt side is known from message_start
    assert x.usage.cache_write_5m_tokens == 1500


def test_invocation_metrics_answer_when_the_family_has_no_usage_events() -> None:
    chunks = [{"outputs": [{"text": "x"}]},
              {"amazon-bedrock-invocationMetrics": {"inputTokenCount": 5, "outputTokenCount": 6,
                                                    "cacheReadInputTokenCount": 100}}]
    x = extract("bedrock", chunks, api="invoke_stream", model="mistral.mistral-large-2407-v1:0")
    assert x.usage == Usage(input_tokens=105, output_tokens=6, cache_read_tokens=100)
    assert x.raw_usage == {"amazon-bedrock-invocationMetrics": chunks[1]["amazon-bedrock-invocationMetrics"]}


def test_fixture_files_are_well_formed() -> None:
    names = sorted(p.stem for p in Path(BEDROCK).glob("*.json"))
    apis = {_spec(n)["_api"] for n in names}
    assert apis == {"converse", "converse_stream", "invoke", "invoke_stream"}
    families = {family_of(_spec(n)["_model"]) for n in names if _spec(n)["_api"] == "invoke_stream"}
    assert families == {"anthropic", "nova", "meta", "mistral", "cohere", "ai21", "openai", "deepseek",
                        "qwen"}


def test_invoke_stream_counts_tool_calls_of_chat_completions_families() -> None:
    """gpt-oss, Qwen, DeepSeek and AI21 stream OpenAI-shaped deltas: each tool call once,
    however many fragments its arguments arrive in (as the non-streamed invoke counts them)."""
    from jevons.capture.adapters.bedrock_families import InvokeStreamFold

    def delta(*calls: dict[str, Any]) -> dict[str, Any]:
        return {"choices": [{"index": 0, "delta": {"tool_calls": list(calls)}}]}

    fold = InvokeStreamFold("openai.gpt-oss-120b-1:0")
    for chunk in (
        delta({"index": 0, "id": "c1", "function": {"name": "a", "arguments": ""}}),
        delta({"index": 0, "function": {"arguments": "{\"x\":"}}),
        delta({"index": 0, "function": {"arguments": "1}"}}),
        delta({"index": 1, "id": "c2", "function": {"name": "b", "arguments": "{}"}}),
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}],
         "usage": {"prompt_tokens": 50, "completion_tokens": 20}},
    ):
        fold.feed(chunk)
    reading = fold.reading()
    assert reading.usage is not None and reading.usage.tool_calls == 2
    assert (reading.usage.input_tokens, reading.usage.output_tokens) == (50, 20)
