"""AWS Bedrock ``invoke_model`` bodies: each model family's own response JSON and stream events.

- **Anthropic**: ``usage.{input_tokens, cache_read_input_tokens, cache_creation_input_tokens}``
  beside each other (Anthropic semantics, read by ``adapters.anthropic``); stream:
  ``message_start`` / ``message_delta``.
- **Amazon Nova**: ``usage.{inputTokens, outputTokens, cacheReadInputTokenCount,
  cacheWriteInputTokenCount}`` (uncached prompt, like Converse); stream: ``metadata.usage``.
- **Amazon Titan** text / embeddings: ``inputTextTokenCount``, ``results[].tokenCount``;
  stream: ``inputTextTokenCount``, ``totalOutputTextTokenCount``.
- **Meta Llama**: ``prompt_token_count``, ``generation_token_count`` (cumulative per chunk).
- **OpenAI gpt-oss, Qwen, DeepSeek V3, AI21 Jamba** (chat-completions JSON):
  ``usage.{prompt_tokens, completion_tokens}``; ``prompt_tokens_details.cached_tokens`` and
  ``completion_tokens_details.reasoning_tokens`` are subsets (OpenAI semantics); stream: a
  chunk with ``usage``.
- **Cohere Command R**: ``meta.billed_units.{input_tokens, output_tokens}`` when present.
- **AI21 Jurassic-2**: ``len(prompt.tokens)``, ``len(completions[].data.tokens)``.
- **Mistral, Cohere Command, DeepSeek-R1**: no usage in the body: the
  ``x-amzn-bedrock-*-token-count`` headers (invoke) or the invocation metrics (stream).

The family is taken from the model id (ARN and cross-region prefix removed: the vendor part).
A body whose family parser finds nothing is also tried against every other shape, since the
field names do not overlap, so an application-inference-profile ARN (no vendor in it) still
reads. The last stream chunk's ``amazon-bedrock-invocationMetrics`` answers for any family.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from jevons.capture.adapters.anthropic import (
    AnthropicStreamState,
    usage_from_message,
)
from jevons.capture.adapters.bedrock_usage import (
    BedrockReading,
    UnknownShape,
    as_int,
    message_tool_uses,
    token_headers,
    usage_from_converse_usage,
    usage_from_headers,
    usage_from_invocation_metrics,
)
from jevons.prices.resolve import parse_bedrock
from jevons.usage import Usage

__all__ = [
    "FAMILIES",
    "InvokeStreamFold",
    "family_of",
    "reading_from_invoke",
    "usage_from_invoke_body",
]

FAMILIES = (
    "anthropic", "nova", "titan", "meta", "openai", "qwen", "deepseek", "ai21", "mistral", "cohere",
)

INVOCATION_METRICS = "amazon-bedrock-invocationMetrics"

Found = tuple[Usage, dict[str, Any]]


def family_of(model: str | None) -> str | None:
    """The model family of a Bedrock model id, inference-profile id or ARN (``None``: unknown)."""
    if not model:
        return None
    parsed = parse_bedrock(model, hinted=True)
    base = (parsed.model if parsed is not None else model).strip().lower()
    vendor, _, rest = base.partition(".")
    if not rest:
        return None
    if vendor == "amazon":
        if rest.startswith("nova"):
            return "nova"
        if rest.startswith("titan"):
            return "titan"
        return None
    return vendor if vendor in FAMILIES else None


def _plain(block: Any) -> dict[str, Any]:
    return {str(k): v for k, v in block.items()} if isinstance(block, Mapping) else {}


def _anthropic(body: Mapping[str, Any]) -> Found | None:
    block = body.get("usage")
    if not isinstance(block, Mapping) or "input_tokens" not in block:
        return None
    try:
        return usage_from_message(body), _plain(block)
    except ValueError:
        return None


def _nova(body: Mapping[str, Any]) -> Found | None:
    block = body.get("usage")
    if not isinstance(block, Mapping) or "inputTokens" not in block:
        return None
    try:
        return usage_from_converse_usage(block, tool_calls=message_tool_uses(body)), _plain(block)
    except (UnknownShape, ValueError):
        return None


def _openai_usage(block: Mapping[str, Any], *, tool_calls: int = 0) -> Usage | None:
    prompt = as_int(block.get("prompt_tokens"))
    completion = as_int(block.get("completion_tokens"))
    if prompt is None or completion is None:
        return None
    details = block.get("prompt_tokens_details")
    cached = as_int(details.get("cached_tokens")) if isinstance(details, Mapping) else None
    out_details = block.get("completion_tokens_details")
    reasoning = as_int(out_details.get("reasoning_tokens")) if isinstance(out_details, Mapping) else None
    return Usage(
        input_tokens=prompt,
        output_tokens=completion,
        # as reported: a subset larger than its total is refused by ``Usage`` (kept for review)
        cache_read_tokens=cached or 0,
        reasoning_tokens=reasoning or 0,
        tool_calls=tool_calls,
    )


def _openai(body: Mapping[str, Any]) -> Found | None:
    block = body.get("usage")
    if not isinstance(block, Mapping) or "prompt_tokens" not in block:
        return None
    tools = 0
    choices = body.get("choices")
    if isinstance(choices, list):
        for choice in choices:
            message = choice.get("message") if isinstance(choice, Mapping) else None
            calls = message.get("tool_calls") if isinstance(message, Mapping) else None
            tools += len(calls) if isinstance(calls, list) else 0
    try:
        usage = _openai_usage(block, tool_calls=tools)
    except ValueError:
        return None
    return (usage, _plain(block)) if usage is not None else None


def _meta(body: Mapping[str, Any]) -> Found | None:
    prompt = as_int(body.get("prompt_token_count"))
    generated = as_int(body.get("generation_token_count"))
    if prompt is None or generated is None:
        return None
    raw = {"prompt_token_count": prompt, "generation_token_count": generated}
    return Usage(input_tokens=prompt, output_tokens=generated), raw


def _titan(body: Mapping[str, Any]) -> Found | None:
    prompt = as_int(body.get("inputTextTokenCount"))
    if prompt is None:
        return None
    results = body.get("results")
    generated = 0
    if isinstance(results, list):
        generated = sum(as_int(r.get("tokenCount")) or 0 for r in results if isinstance(r, Mapping))
    elif "embedding" not in body and "embeddings" not in body and "embeddingsByType" not in body:
        return None
    raw = {"inputTextTokenCount": prompt, "outputTokenCount": generated}
    return Usage(input_tokens=prompt, output_tokens=generated), raw


def _cohere(body: Mapping[str, Any]) -> Found | None:
    meta = body.get("meta")
    billed = meta.get("billed_units") if isinstance(meta, Mapping) else None
    if not isinstance(billed, Mapping):
        return None
    prompt = as_int(billed.get("input_tokens"))
    generated = as_int(billed.get("output_tokens"))
    if prompt is None:
        return None
    tools = body.get("tool_calls")
    calls = len(tools) if isinstance(tools, list) else 0
    return Usage(input_tokens=prompt, output_tokens=generated or 0, tool_calls=calls), _plain(billed)


def _ai21_jurassic(body: Mapping[str, Any]) -> Found | None:
    prompt = body.get("prompt")
    completions = body.get("completions")
    if not isinstance(prompt, Mapping) or not isinstance(completions, list):
        return None
    tokens = prompt.get("tokens")
    if not isinstance(tokens, list):
        return None
    generated = 0
    for completion in completions:
        data = completion.get("data") if isinstance(completion, Mapping) else None
        out = data.get("tokens") if isinstance(data, Mapping) else None
        generated += len(out) if isinstance(out, list) else 0
    raw = {"prompt_tokens": len(tokens), "completion_tokens": generated}
    return Usage(input_tokens=len(tokens), output_tokens=generated), raw


_PARSERS: dict[str, Callable[[Mapping[str, Any]], Found | None]] = {
    "anthropic": _anthropic,
    "nova": _nova,
    "openai": _openai,
    "meta": _meta,
    "titan": _titan,
    "cohere": _cohere,
    "ai21_jurassic": _ai21_jurassic,
}
_FAMILY_PARSER = {
    "anthropic": "anthropic", "nova": "nova", "titan": "titan", "meta": "meta", "openai": "openai",
    "qwen": "openai", "deepseek": "openai", "ai21": "openai", "mistral": "openai", "cohere": "cohere",
}


def usage_from_invoke_body(body: Mapping[str, Any], family: str | None) -> Found | None:
    """Usage and the raw usage fields of an invoke body: its family's reader, then any other."""
    first = _FAMILY_PARSER.get(family or "")
    order = ([first] if first else []) + [name for name in _PARSERS if name != first]
    for name in order:
        found = _PARSERS[name](body)
        if found is not None:
            return found
    return None


def reading_from_invoke(
    body: Mapping[str, Any] | None,
    model: str,
    headers: Mapping[str, Any] | None = None,
) -> BedrockReading:
    """Usage of an ``invoke_model`` response: the family's body first, then the headers.

    The body is preferred because it is richer (cache and reasoning breakdowns); the headers
    answer for families whose body has no usage. Neither: ``usage=None`` with what was seen
    kept as ``raw`` so the event can be reviewed.
    """
    family = family_of(model)
    hdrs = token_headers(headers)
    if body is not None:
        found = usage_from_invoke_body(body, family)
        if found is not None:
            usage, raw = found
            if hdrs:
                raw = {**raw, "headers": hdrs}
            return BedrockReading(usage, raw, "body", family=family)
    header_usage = usage_from_headers(headers)
    if header_usage is not None:
        return BedrockReading(header_usage, {"headers": hdrs}, "headers", family=family)
    seen: dict[str, Any] = {"headers": hdrs} if hdrs else {}
    if body is not None:
        seen["body_keys"] = sorted(str(k) for k in body)
    return BedrockReading(
        None, seen or None, "none", family=family,
        notes=(f"no usage in the {family or 'unknown-family'} invoke body nor in the token headers",),
    )


@dataclass(slots=True)
class InvokeStreamFold:
    """Folds the decoded chunks of one ``invoke_model_with_response_stream`` into its usage.

    ``feed`` takes each chunk's JSON (the ``bytes`` of a ``chunk`` event, decoded). The family's
    own usage is kept as it comes; ``amazon-bedrock-invocationMetrics`` (normally on the last
    chunk) marks the end. ``reading`` prefers the family's usage once the family says it is
    final (it carries cache and TTL detail), else the invocation metrics, else whatever partial
    counts were seen (incomplete).
    """

    model: str
    family: str | None = None
    metrics: dict[str, Any] | None = None
    anthropic: AnthropicStreamState = field(default_factory=AnthropicStreamState)
    body_usage: dict[str, Any] | None = None  # Nova metadata.usage / chat-completions usage
    body_kind: str | None = None
    counts: dict[str, int] = field(default_factory=dict)  # Llama / Titan running counts
    body_final: bool = False
    tool_calls: int = 0  # Nova's toolUse blocks
    # chat-completions families: (choice, index) of each tool call, its fragments counted once
    openai_tools: set[tuple[Any, Any]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.family = family_of(self.model)

    def feed(self, chunk: Mapping[str, Any]) -> None:
        metrics = chunk.get(INVOCATION_METRICS)
        if isinstance(metrics, Mapping):
            self.metrics = _plain(metrics)
        kind = chunk.get("type")
        if isinstance(kind, str) and kind.startswith(("message_", "content_block_")):
            self.anthropic.add(chunk)
            self.body_final = self.body_final or self.anthropic.finished
            return
        self._feed_nova(chunk)
        self._feed_openai_tools(chunk)
        usage = chunk.get("usage")
        if isinstance(usage, Mapping) and "prompt_tokens" in usage:
            self.body_usage, self.body_kind, self.body_final = _plain(usage), "openai", True
        for key in ("prompt_token_count", "generation_token_count", "inputTextTokenCount",
                    "totalOutputTextTokenCount"):
            value = as_int(chunk.get(key))
            if value is not None:
                self.counts[key] = max(value, self.counts.get(key, 0))
        if chunk.get("stop_reason") is not None and "generation_token_count" in self.counts:
            self.body_final = True
        if chunk.get("completionReason") is not None and "inputTextTokenCount" in self.counts:
            self.body_final = True

    def _feed_nova(self, chunk: Mapping[str, Any]) -> None:
        start = chunk.get("contentBlockStart")
        if isinstance(start, Mapping):
            inner = start.get("start")
            if isinstance(inner, Mapping) and "toolUse" in inner:
                self.tool_calls += 1
        metadata = chunk.get("metadata")
        if isinstance(metadata, Mapping):
            usage = metadata.get("usage")
            if isinstance(usage, Mapping):
                self.body_usage, self.body_kind, self.body_final = _plain(usage), "nova", True

    def _feed_openai_tools(self, chunk: Mapping[str, Any]) -> None:
        choices = chunk.get("choices")
        for position, choice in enumerate(choices if isinstance(choices, list) else ()):
            delta = choice.get("delta") if isinstance(choice, Mapping) else None
            calls = delta.get("tool_calls") if isinstance(delta, Mapping) else None
            for slot, call in enumerate(calls if isinstance(calls, list) else ()):
                index = call.get("index", slot) if isinstance(call, Mapping) else slot
                self.openai_tools.add((choice.get("index", position), index))

    @property
    def finished(self) -> bool:
        return self.metrics is not None or self.body_final

    def _body_reading(self) -> tuple[Usage, dict[str, Any]] | None:
        if self.anthropic.has_usage:
            return self.anthropic.usage(), dict(self.anthropic.raw)
        if self.body_usage is not None and self.body_kind == "nova":
            return usage_from_converse_usage(self.body_usage, tool_calls=self.tool_calls), self.body_usage
        if self.body_usage is not None and self.body_kind == "openai":
            usage = _openai_usage(self.body_usage, tool_calls=len(self.openai_tools))
            return (usage, self.body_usage) if usage is not None else None
        if "prompt_token_count" in self.counts or "generation_token_count" in self.counts:
            return Usage(
                input_tokens=self.counts.get("prompt_token_count", 0),
                output_tokens=self.counts.get("generation_token_count", 0),
            ), dict(self.counts)
        if "inputTextTokenCount" in self.counts:
            return Usage(
                input_tokens=self.counts["inputTextTokenCount"],
                output_tokens=self.counts.get("totalOutputTextTokenCount", 0),
            ), dict(self.counts)
        return None

    def reading(self) -> BedrockReading:
        try:
            body = self._body_reading()
        except ValueError:
            body = None
        if body is not None and self.body_final:
            usage, raw = body
            if self.metrics is not None:
                raw = {**raw, INVOCATION_METRICS: self.metrics}
            return BedrockReading(usage, raw, "body", family=self.family)
        if self.metrics is not None:
            try:
                usage = usage_from_invocation_metrics(self.metrics, tool_calls=self.tool_calls)
                return BedrockReading(usage, {INVOCATION_METRICS: self.metrics}, "invocation_metrics",
                                      family=self.family)
            except (UnknownShape, ValueError) as exc:
                return BedrockReading(None, {INVOCATION_METRICS: self.metrics}, "none",
                                      family=self.family, notes=(str(exc),))
        if body is not None:
            usage, raw = body
            return BedrockReading(usage, raw, "body", complete=False, family=self.family,
                                  notes=("the stream ended before its final usage: counts are partial",))
        return BedrockReading(
            Usage(), None, "none", complete=False, family=self.family,
            notes=("the stream ended before reporting any usage",),
        )
