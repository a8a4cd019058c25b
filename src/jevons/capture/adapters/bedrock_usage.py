"""AWS Bedrock: canonical usage from every Bedrock Runtime response shape, as plain dicts.

Four APIs report usage four ways:

- ``converse`` / ``converse_stream`` (the ``metadata`` event): ``usage.inputTokens`` is the
  *uncached* prompt; ``cacheReadInputTokens`` and ``cacheWriteInputTokens`` sit beside it (the
  API reference documents ``totalTokens`` as input + output, and Bedrock's prompt-caching guide
  bills the three prompt parts at three rates), so the canonical ``input_tokens`` is their sum.
  ``cacheDetails`` (newer API versions) splits the writes by TTL (``5m`` / ``1h``).
- ``invoke_model``: the body is the model family's own JSON (read in ``bedrock_families``).
- ``invoke_model_with_response_stream``: each ``chunk`` carries bytes of the family's own stream
  events; the last one usually adds ``amazon-bedrock-invocationMetrics``
  (``inputTokenCount``/``outputTokenCount``, same uncached-prompt semantics as Converse).
- every invoke response carries ``x-amzn-bedrock-input-token-count`` /
  ``x-amzn-bedrock-output-token-count`` HTTP headers: the fallback for any family whose body
  has no usage (Mistral, Cohere Command, DeepSeek-R1, ...).

Nothing here does I/O or touches an SDK object: the wrapper in ``bedrock.py`` feeds dicts.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from jevons.capture.extract import UnknownShape
from jevons.usage import Usage

__all__ = [
    "PROVIDER",
    "BedrockReading",
    "ConverseStreamFold",
    "UnknownShape",
    "as_int",
    "headers_of",
    "message_tool_uses",
    "parse_body",
    "reading_from_converse",
    "token_headers",
    "usage_from_converse_usage",
    "usage_from_headers",
    "usage_from_invocation_metrics",
]

PROVIDER = "bedrock"

HEADER_INPUT = "x-amzn-bedrock-input-token-count"
HEADER_OUTPUT = "x-amzn-bedrock-output-token-count"
HEADER_CACHE_READ = "x-amzn-bedrock-cache-read-input-token-count"
HEADER_CACHE_WRITE = "x-amzn-bedrock-cache-write-input-token-count"
_TOKEN_HEADERS = (HEADER_INPUT, HEADER_OUTPUT, HEADER_CACHE_READ, HEADER_CACHE_WRITE)

Source = Literal["body", "headers", "invocation_metrics", "converse", "none"]


@dataclass(frozen=True, slots=True)
class BedrockReading:
    """What one Bedrock response said about usage.

    ``usage`` is ``None`` when nothing readable was found (the event is then flagged for
    review with ``raw`` kept); ``complete`` is false when the counts are known to be partial
    (a stream cut off before its final usage).
    """

    usage: Usage | None
    raw: dict[str, Any] | None
    source: Source
    complete: bool = True
    family: str | None = None
    notes: tuple[str, ...] = field(default=())


def as_int(value: Any) -> int | None:
    """A non-negative token count from an int or a digit string; anything else is ``None``
    (unlike ``extract.to_int``, which raises: here a missing count selects another reader)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return max(value, 0)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def message_tool_uses(response: Mapping[str, Any]) -> int:
    """The ``toolUse`` blocks of ``output.message.content``: a Converse response or a Nova
    invoke body (the same message shape)."""
    output = response.get("output")
    message = output.get("message") if isinstance(output, Mapping) else None
    content = message.get("content") if isinstance(message, Mapping) else None
    if not isinstance(content, list):
        return 0
    return sum(1 for block in content if isinstance(block, Mapping) and "toolUse" in block)


def usage_from_converse_usage(block: Mapping[str, Any], *, tool_calls: int = 0) -> Usage:
    """Canonical usage of one Converse ``TokenUsage`` block (also Nova's invoke ``usage``).

    Accepts the Converse spelling (``cacheReadInputTokens``) and Nova's invoke-body spelling
    (``cacheReadInputTokenCount``).
    """
    uncached = as_int(block.get("inputTokens"))
    output = as_int(block.get("outputTokens"))
    if uncached is None or output is None:
        raise UnknownShape("Bedrock usage block has no integer inputTokens/outputTokens")
    cache_read = as_int(block.get("cacheReadInputTokens"))
    if cache_read is None:
        cache_read = as_int(block.get("cacheReadInputTokenCount")) or 0
    writes = as_int(block.get("cacheWriteInputTokens"))
    if writes is None:
        writes = as_int(block.get("cacheWriteInputTokenCount")) or 0
    write_1h = 0
    details = block.get("cacheDetails")
    if isinstance(details, list):
        for detail in details:
            if isinstance(detail, Mapping) and detail.get("ttl") == "1h":
                write_1h += as_int(detail.get("inputTokens")) or 0
    return _canonical(uncached, output, cache_read, writes, min(write_1h, writes), tool_calls)


def _canonical(uncached: int, output: int, cache_read: int, writes: int, write_1h: int,
               tool_calls: int) -> Usage:
    """Bedrock counts its cache reads and writes beside the uncached input: canonical input is
    the sum of the three (every Bedrock usage source goes through here)."""
    return Usage(
        input_tokens=uncached + cache_read + writes,
        output_tokens=output,
        cache_read_tokens=cache_read,
        cache_write_5m_tokens=writes - write_1h,
        cache_write_1h_tokens=write_1h,
        tool_calls=tool_calls,
    )


def usage_from_invocation_metrics(metrics: Mapping[str, Any], *, tool_calls: int = 0) -> Usage:
    """Canonical usage of ``amazon-bedrock-invocationMetrics`` (uncached prompt + caches)."""
    uncached = as_int(metrics.get("inputTokenCount"))
    output = as_int(metrics.get("outputTokenCount"))
    if uncached is None or output is None:
        raise UnknownShape("invocation metrics have no inputTokenCount/outputTokenCount")
    cache_read = as_int(metrics.get("cacheReadInputTokenCount")) or 0
    writes = as_int(metrics.get("cacheWriteInputTokenCount")) or 0
    return _canonical(uncached, output, cache_read, writes, 0, tool_calls)


def token_headers(headers: Mapping[str, Any] | None) -> dict[str, str]:
    """The Bedrock token-count headers of a response (names lower-cased), for ``raw_usage``."""
    if not headers:
        return {}
    out: dict[str, str] = {}
    for name, value in headers.items():
        key = str(name).lower()
        if key in _TOKEN_HEADERS:
            out[key] = str(value)
    return out


def usage_from_headers(headers: Mapping[str, Any] | None, *, tool_calls: int = 0) -> Usage | None:
    """Usage from the ``x-amzn-bedrock-*-token-count`` headers, or ``None`` if absent."""
    found = token_headers(headers)
    uncached = as_int(found.get(HEADER_INPUT))
    output = as_int(found.get(HEADER_OUTPUT))
    if uncached is None or output is None:
        return None
    cache_read = as_int(found.get(HEADER_CACHE_READ)) or 0
    writes = as_int(found.get(HEADER_CACHE_WRITE)) or 0
    return _canonical(uncached, output, cache_read, writes, 0, tool_calls)


def headers_of(response: Mapping[str, Any]) -> Mapping[str, Any]:
    """``ResponseMetadata.HTTPHeaders`` of a boto3 response dict (empty when missing)."""
    meta = response.get("ResponseMetadata")
    if isinstance(meta, Mapping):
        headers = meta.get("HTTPHeaders")
        if isinstance(headers, Mapping):
            return headers
    return {}


def reading_from_converse(response: Mapping[str, Any]) -> BedrockReading:
    """Usage of a ``converse`` response dict (boto3's parsed form)."""
    block = response.get("usage")
    tools = message_tool_uses(response)
    if not isinstance(block, Mapping):
        return BedrockReading(None, _raw_keys(response), "none", notes=("converse response has no usage",))
    raw = {str(k): v for k, v in block.items()}
    try:
        usage = usage_from_converse_usage(block, tool_calls=tools)
    except (UnknownShape, ValueError) as exc:
        return BedrockReading(None, raw, "none", notes=(str(exc),))
    return BedrockReading(usage, raw, "converse")


def _raw_keys(response: Mapping[str, Any]) -> dict[str, Any]:
    return {"keys": sorted(str(k) for k in response if k != "ResponseMetadata")}


def parse_body(data: bytes | str | None) -> Mapping[str, Any] | None:
    """The JSON object of an invoke body, or ``None`` when it is not one."""
    if data is None:
        return None
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, Mapping) else None


@dataclass(slots=True)
class ConverseStreamFold:
    """Folds the events of one ``converse_stream`` into its usage.

    ``feed(name, payload)`` takes each event as boto3 parses it (``{"metadata": {...}}`` split
    into its name and body). The ``metadata`` event carries the final usage; without it the
    stream did not finish and the reading is incomplete.
    """

    tool_calls: int = 0
    usage_block: dict[str, Any] | None = None
    stopped: bool = False

    def feed(self, name: str, payload: Mapping[str, Any]) -> None:
        if name == "contentBlockStart":
            start = payload.get("start")
            if isinstance(start, Mapping) and "toolUse" in start:
                self.tool_calls += 1
        elif name == "messageStop":
            self.stopped = True
        elif name == "metadata":
            block = payload.get("usage")
            if isinstance(block, Mapping):
                self.usage_block = {str(k): v for k, v in block.items()}

    @property
    def finished(self) -> bool:
        return self.usage_block is not None

    def reading(self) -> BedrockReading:
        if self.usage_block is None:
            return BedrockReading(
                Usage(tool_calls=self.tool_calls), None, "none", complete=False,
                notes=("the stream ended before its metadata event: usage unknown",),
            )
        try:
            usage = usage_from_converse_usage(self.usage_block, tool_calls=self.tool_calls)
        except (UnknownShape, ValueError) as exc:
            return BedrockReading(None, self.usage_block, "none", notes=(str(exc),))
        return BedrockReading(usage, self.usage_block, "converse")
