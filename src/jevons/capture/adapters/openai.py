"""OpenAI (and any OpenAI-compatible gateway reached through the ``openai`` client).

Surfaces metered on ``OpenAI`` / ``AsyncOpenAI`` (and subclasses such as ``AzureOpenAI``):
``chat.completions.create`` (incl. ``stream=True``), ``chat.completions.parse``,
``chat.completions.stream()``, ``responses.create`` (incl. ``stream=True``),
``responses.parse``, ``responses.stream()``, ``completions.create`` and ``embeddings.create``.

Usage semantics: OpenAI's ``prompt_tokens`` / ``input_tokens`` already include
``cached_tokens``, and ``completion_tokens`` / ``output_tokens`` already include reasoning and
audio tokens, which is the canonical form: the breakdowns are copied as subsets. A gateway's
``prompt_tokens_details.cache_write_tokens`` (OpenRouter) is a subset of the prompt too and
becomes a (5-minute) cache write.

On streamed chat completions the adapter asks for the usage chunk
(``stream_options={"include_usage": True}``) unless the caller set ``include_usage`` itself.
A stream that ends without a usage block, or is broken off or abandoned, is recorded with what
is known (output tokens estimated from the content chunks received) and flagged incomplete.

SDK retries: the client class's ``_sleep_for_retry`` is hooked, reporting for wrapped clients
only (``adapters.install_retry_hook``;
an SDK version without it gets httpx event hooks, ``adapters.install_attempt_hooks``), so each
attempt the SDK retries is seen and recorded as an ``error`` event with its attempt number.

Provider name: ``openai``, ``azure`` for ``AzureOpenAI``, ``openrouter`` when the base URL is
OpenRouter's, otherwise whatever ``meter.wrap(client, provider=...)`` says (a gateway name such
as ``openrouter``, ``together``...). Gateways' model names are resolved through the price book.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypeVar

from jevons.capture.adapters import (
    WRAPPED,
    MethodSpec,
    Wrapped,
    awaited_with_bundle,
    fresh_copy,
    instrument,
    meter_resources,
    patch_method,
    patch_stream,
    register_adapter,
    register_wrapped,
    snapshot_fields,
    watch_retries,
)
from jevons.capture.attribution import Attribution, pop_call_attribution
from jevons.capture.build import review_extracted
from jevons.capture.extract import (
    PROVIDER_MODULES,
    Extracted,
    UnknownShape,
    as_dict,
    field,
    fields_of,
    get_extractor,
    register_extractor,
    to_int,
)
from jevons.capture.meter import Call
from jevons.usage import Usage

if TYPE_CHECKING:
    from jevons.capture.meter import Meter

__all__ = [
    "ChatStreamAccumulator",
    "OpenAIAdapter",
    "ResponsesStreamAccumulator",
    "chat_usage",
    "extract_chat",
    "extract_responses",
    "responses_usage",
]

T = TypeVar("T")

# OpenAI's service_tier values -> the price book's tiers
_TIERS = {"default": "standard", "auto": None, "flex": "flex", "priority": "priority",
          "scale": "priority", "batch": "batch"}
# hosts of OpenAI-compatible gateways the adapter recognises by base URL
GATEWAY_HOSTS: dict[str, str] = {"openrouter.ai": "openrouter"}


# ---------------------------------------------------------------------- extraction
def cache_writes(details: Mapping[str, Any]) -> tuple[int, int]:
    """(short-TTL, long-TTL) cache writes from ``cache_write_tokens`` and its TTL breakdown.

    OpenAI reports writes with ``cache_write_tokens_details.{ttl_30m_tokens, ttl_12h_tokens}``;
    the short TTL is counted as the canonical ``cache_write_5m`` class and the long one as
    ``cache_write_1h`` (the price book's short/long write rates). Without a breakdown (or for
    a gateway such as OpenRouter) every write is short-TTL, the ``Usage`` default rule."""
    total = to_int(details.get("cache_write_tokens"))
    if not total:
        return 0, 0
    breakdown = fields_of(details.get("cache_write_tokens_details"))
    long_ttl = to_int(breakdown.get("ttl_12h_tokens")) + to_int(breakdown.get("ttl_1h_tokens"))
    long_ttl = min(long_ttl, total)
    return total - long_ttl, long_ttl


def chat_usage(block: Any, *, tool_calls: int = 0) -> Usage:
    """Canonical usage from a Chat Completions (or legacy completions / embeddings) ``usage``."""
    if block is None:
        raise UnknownShape("response has no usage block")
    b = fields_of(block)
    prompt_tokens = b.get("prompt_tokens")
    completion_tokens = b.get("completion_tokens")
    if prompt_tokens is None and completion_tokens is None:
        raise UnknownShape(f"usage block without prompt_tokens/completion_tokens: {as_dict(block)}")
    prompt = fields_of(b.get("prompt_tokens_details"))
    completion = fields_of(b.get("completion_tokens_details"))
    # counts are almost always plain ints: test inline, call to_int only for anything else
    cached = prompt.get("cached_tokens")
    audio_in = prompt.get("audio_tokens")
    image_in = prompt.get("image_tokens")
    reasoning = completion.get("reasoning_tokens")
    audio_out = completion.get("audio_tokens")
    image_out = completion.get("image_tokens")
    short_writes, long_writes = cache_writes(prompt) if prompt.get("cache_write_tokens") else (0, 0)
    return Usage.of(
        prompt_tokens if type(prompt_tokens) is int else to_int(prompt_tokens),
        completion_tokens if type(completion_tokens) is int else to_int(completion_tokens),
        cached if type(cached) is int else to_int(cached),
        short_writes,
        long_writes,
        reasoning if type(reasoning) is int else to_int(reasoning),
        audio_in if type(audio_in) is int else to_int(audio_in),
        audio_out if type(audio_out) is int else to_int(audio_out),
        image_in if type(image_in) is int else to_int(image_in),
        image_out if type(image_out) is int else to_int(image_out),
        1,
        0,
        tool_calls,
    )


def responses_usage(block: Any, *, tool_calls: int = 0, web_searches: int = 0) -> Usage:
    """Canonical usage from a Responses API ``usage`` block."""
    if block is None:
        raise UnknownShape("response has no usage block")
    b = fields_of(block)
    if b.get("input_tokens") is None and b.get("output_tokens") is None:
        raise UnknownShape(f"usage block without input_tokens/output_tokens: {as_dict(block)}")
    inp = fields_of(b.get("input_tokens_details"))
    out = fields_of(b.get("output_tokens_details"))
    short_writes, long_writes = cache_writes(inp)
    return Usage(
        input_tokens=to_int(b.get("input_tokens")),
        output_tokens=to_int(b.get("output_tokens")),
        cache_read_tokens=to_int(inp.get("cached_tokens")),
        cache_write_5m_tokens=short_writes,
        cache_write_1h_tokens=long_writes,
        audio_input_tokens=to_int(inp.get("audio_tokens")),
        image_input_tokens=to_int(inp.get("image_tokens")),
        reasoning_tokens=to_int(out.get("reasoning_tokens")),
        image_output_tokens=to_int(out.get("image_tokens")),
        tool_calls=tool_calls,
        web_search_requests=web_searches,
    )


def _tier(value: Any) -> str | None:
    return _TIERS.get(value) if isinstance(value, str) else None


def _chat_tool_calls(choices: Any) -> int:
    n = 0
    for choice in choices or ():
        message = fields_of(fields_of(choice).get("message"))
        calls = message.get("tool_calls")
        if calls:
            n += len(calls)
        if message.get("function_call") is not None:
            n += 1
    return n


_TOOL_ITEMS = frozenset({"function_call", "custom_tool_call", "mcp_call", "computer_call",
                         "local_shell_call", "shell_call", "apply_patch_call", "code_interpreter_call",
                         "file_search_call", "image_generation_call", "web_search_call"})


def _responses_tools(response: Any) -> tuple[int, int]:
    tools = searches = 0
    for item in field(response, "output", ()) or ():
        kind = field(item, "type")
        if kind in _TOOL_ITEMS:
            tools += 1
        if kind == "web_search_call":
            searches += 1
    return tools, searches


def extract_chat(response: Any, model: str | None = None) -> Extracted:
    r = fields_of(response)
    tier = r.get("service_tier")
    return Extracted(
        chat_usage(r.get("usage"), tool_calls=_chat_tool_calls(r.get("choices"))),
        r.get("model") or model,
        True,
        False,
        None,
        None,
        _TIERS.get(tier) if type(tier) is str else None,
    )


def extract_responses(response: Any, model: str | None = None) -> Extracted:
    block = field(response, "usage")
    tools, searches = _responses_tools(response)
    status = field(response, "status")
    return Extracted(
        responses_usage(block, tool_calls=tools, web_searches=searches),
        model=field(response, "model") or model,
        service_tier=_tier(field(response, "service_tier")),
        status="error" if status == "failed" else None,
        note=f"response status {status}" if status in ("failed", "incomplete") else None,
    )


def extract_auto(response: Any, model: str | None = None) -> Extracted:
    """Chat-shaped usage (``prompt_tokens``) or Responses-shaped (``input_tokens``)."""
    block = field(response, "usage")
    if field(block, "input_tokens") is not None or field(response, "object") == "response":
        return extract_responses(response, model)
    return extract_chat(response, model)


for _provider in ("openai", "azure"):
    register_extractor(_provider, "chat", extract_chat)
    register_extractor(_provider, "completions", extract_chat)
    register_extractor(_provider, "embeddings", extract_chat)
    register_extractor(_provider, "responses", extract_responses)
    register_extractor(_provider, None, extract_auto)


# ---------------------------------------------------------------------- streams
class ChatStreamAccumulator:
    """Reads ``ChatCompletionChunk``s: the usage chunk, the model, tool calls, content chunks."""

    __slots__ = ("content_chunks", "extractor", "model", "service_tier", "tool_ids", "usage_chunk")

    def __init__(self, extractor: Callable[[Any, str | None], Extracted], model: str) -> None:
        self.extractor = extractor
        self.model: str | None = model or None
        self.usage_chunk: Any = None
        self.service_tier: Any = None
        self.content_chunks = 0
        self.tool_ids: set[tuple[int, int]] = set()

    def add(self, chunk: Any) -> None:
        if field(chunk, "usage") is not None:
            self.usage_chunk = chunk
        model = field(chunk, "model")
        if model:
            self.model = model
        tier = field(chunk, "service_tier")
        if tier is not None:
            self.service_tier = tier
        for choice in field(chunk, "choices", ()) or ():
            delta = field(choice, "delta")
            if delta is None:
                continue
            if field(delta, "content") or field(delta, "refusal") or field(delta, "audio"):
                self.content_chunks += 1
            for tc in field(delta, "tool_calls", ()) or ():
                self.tool_ids.add((to_int(field(choice, "index", 0)), to_int(field(tc, "index", 0))))

    def result(self) -> Extracted:
        if self.usage_chunk is not None:
            x = self.extractor(self.usage_chunk, self.model)
            if self.tool_ids and not x.usage.tool_calls:
                x.usage = replace(x.usage, tool_calls=len(self.tool_ids))
            if x.service_tier is None:
                x.service_tier = _tier(self.service_tier)
            return x
        return Extracted(
            Usage(output_tokens=self.content_chunks, tool_calls=len(self.tool_ids)),
            model=self.model, complete=False, service_tier=_tier(self.service_tier),
            note="stream ended without a usage block; output estimated from content chunks",
        )

    def review(self) -> Extracted:
        """The usage chunk the extractor did not know: kept for review, as a response's is."""
        x = review_extracted(self.usage_chunk)
        x.model = self.model
        x.service_tier = _tier(self.service_tier)
        return x


_FINAL_EVENTS = {"response.completed": None, "response.incomplete": None, "response.failed": "error"}


class ResponsesStreamAccumulator:
    """Reads Responses API stream events; the usage is in ``response.completed`` (or
    ``response.incomplete`` / ``response.failed``)."""

    __slots__ = ("deltas", "extractor", "final", "final_type", "model")

    def __init__(self, extractor: Callable[[Any, str | None], Extracted], model: str) -> None:
        self.extractor = extractor
        self.model: str | None = model or None
        self.final: Any = None
        self.final_type: str | None = None
        self.deltas = 0

    def add(self, event: Any) -> None:
        kind = field(event, "type")
        if kind == "response.output_text.delta" or kind == "response.refusal.delta":
            self.deltas += 1
        elif kind in _FINAL_EVENTS:
            self.final = field(event, "response")
            self.final_type = kind
        elif kind == "response.created":
            model = field(field(event, "response"), "model")
            if model:
                self.model = model

    def result(self) -> Extracted:
        if self.final is not None and field(self.final, "usage") is not None:
            x = self.extractor(self.final, self.model)
            if self.final_type == "response.failed":
                x.status = "error"
                x.note = x.note or "response.failed"
            return x
        return Extracted(
            Usage(output_tokens=self.deltas), model=self.model, complete=False,
            note="stream ended before response.completed; output estimated from text deltas",
        )

    def review(self) -> Extracted:
        """The final response whose usage the extractor did not know: kept for review."""
        x = review_extracted(self.final)
        x.model = field(self.final, "model") or self.model
        if self.final_type == "response.failed":
            x.status = "error"
        return x


# ---------------------------------------------------------------------- wrapping
def _usage_only_chunk(chunk: Any) -> bool:
    """The chunk ``include_usage`` adds at the end of a stream: usage, and no choices."""
    return field(chunk, "usage") is not None and not field(chunk, "choices")


def _prepare_chat(call: Call, kwargs: dict[str, Any], streaming: bool) -> None:
    """Ask a stream for its usage chunk unless the caller said either way; the chunk then
    answers jevons, not the caller, who does not see it (caller code such as
    ``chunk.choices[0]`` would fail on it)."""
    if not streaming:
        return
    options = kwargs.get("stream_options")
    if isinstance(options, dict):
        if "include_usage" not in options:
            kwargs["stream_options"] = {**options, "include_usage": True}
            call.hidden = _usage_only_chunk
    elif options is None or type(options).__name__ in ("Omit", "NotGiven"):
        kwargs["stream_options"] = {"include_usage": True}
        call.hidden = _usage_only_chunk


_RAW_TYPES: tuple[type, ...] | None = None


def _raw_types() -> tuple[type, ...]:
    global _RAW_TYPES
    if _RAW_TYPES is None:
        found: list[type] = []
        for module, name in (("openai._legacy_response", "LegacyAPIResponse"),
                             ("openai._response", "APIResponse"), ("openai._response", "AsyncAPIResponse")):
            with contextlib.suppress(ImportError, AttributeError):
                found.append(getattr(__import__(module, fromlist=[name]), name))
        _RAW_TYPES = tuple(found)
    return _RAW_TYPES


def _finish(call: Call, result: Any) -> None:
    # ``with_raw_response`` hands back an API-response wrapper: parse it (cached by the SDK)
    if isinstance(result, _RAW_TYPES or _raw_types()):
        result = result.parse()  # type: ignore[attr-defined]
    call.finish(result)


def _chat_stream(call: Call, stream: Any) -> Any:
    acc = ChatStreamAccumulator(get_extractor(call.extractor, "chat"), call.model)
    return patch_stream(stream, call, acc)


def _responses_stream(call: Call, stream: Any) -> Any:
    acc = ResponsesStreamAccumulator(get_extractor(call.extractor, "responses"), call.model)
    return patch_stream(stream, call, acc)


# what the extractors read again after a crash: chat-shaped answers keep the usage block (with
# a gateway's ``cost`` among its extra fields), the model and the tier; the tool-call count of
# a chat answer (no price uses it) is left out
_CHAT_SNAPSHOT = snapshot_fields("model", "service_tier", "usage", model="usage")
_MODEL_USAGE_SNAPSHOT = snapshot_fields("model", "usage", model="usage")  # completions, embeddings


def _responses_snapshot(response: Any) -> dict[str, Any]:
    """A Responses answer: its usage, status and the type of each output item (web searches
    and tool calls are counted from them)."""
    return {
        "object": field(response, "object"), "model": field(response, "model"),
        "service_tier": field(response, "service_tier"), "status": field(response, "status"),
        "usage": field(response, "usage"),
        "output": [{"type": field(item, "type")} for item in field(response, "output", ()) or ()],
    }


CHAT = MethodSpec(api="chat", prepare=_prepare_chat, stream=_chat_stream, on_result=_finish,
                  snapshot=_CHAT_SNAPSHOT, prepare_streams_only=True)
CHAT_PARSE = MethodSpec(api="chat", on_result=_finish, snapshot=_CHAT_SNAPSHOT)
RESPONSES = MethodSpec(api="responses", stream=_responses_stream, on_result=_finish,
                       snapshot=_responses_snapshot)
RESPONSES_PARSE = MethodSpec(api="responses", on_result=_finish, snapshot=_responses_snapshot)
COMPLETIONS = MethodSpec(api="completions", prepare=_prepare_chat, stream=_chat_stream, on_result=_finish,
                         snapshot=_MODEL_USAGE_SNAPSHOT, prepare_streams_only=True)
EMBEDDINGS = MethodSpec(api="embeddings", on_result=_finish, snapshot=_MODEL_USAGE_SNAPSHOT)


def provider_of(client: Any) -> str:
    """``openai``, ``azure`` or a gateway recognised by its base URL."""
    if "Azure" in type(client).__name__:
        return "azure"
    host = str(getattr(getattr(client, "base_url", None), "host", "") or "")
    for suffix, name in GATEWAY_HOSTS.items():
        if host == suffix or host.endswith("." + suffix):
            return name
    return "openai"


def _bind_jevons_kwargs(manager: Any, metered_create: Callable[..., Any], bundle: dict[str, Any]) -> None:
    """Give a ``.stream()`` manager's deferred request the call's own attribution: the sync
    manager keeps it as a ``partial`` of the metered ``create`` (rebound with the kwarg); the
    async one as the coroutine that ``create`` already returned (awaited with the bundle)."""
    state = getattr(manager, "__dict__", {})
    for name, value in list(state.items()):
        if isinstance(value, functools.partial) and value.func is metered_create:
            state[name] = functools.partial(value.func, *value.args, **{**value.keywords, "jevons": bundle})
        elif inspect.iscoroutine(value):
            state[name] = awaited_with_bundle(value, bundle)


def _metered_stream_helper(
    meter: Meter, original: Callable[..., Any], metered_create: Callable[..., Any]
) -> Callable[..., Any]:
    """``.stream(...)`` accepts the ``jevons*`` kwargs too; the deferred ``create`` (already
    metered) receives them when the manager is entered. Malformed ones are removed and
    reported, as on ``create``: they must not break the call."""

    @functools.wraps(original)
    def stream(*args: Any, **kwargs: Any) -> Any:
        per_call = pop_call_attribution(kwargs, meter._error)
        manager = original(*args, **kwargs)
        if per_call is not None:
            _bind_jevons_kwargs(manager, metered_create, per_call.as_bundle())
        return manager

    return stream


@dataclass(frozen=True)
class _Setup:
    """What a wrapped client's resources are metered with (``Wrapped.setup``)."""

    prov: str
    extractor: str
    is_async: bool
    retries_hooked: bool


def _meter_method(w: Wrapped, resource: Any, name: str, spec: MethodSpec) -> Callable[..., Any] | None:
    original = getattr(resource, name, None)
    if original is None:
        return None
    setup: _Setup = w.setup
    fn = instrument(w.meter, original, replace(spec, provider=setup.prov, extractor=setup.extractor),
                    w.attribution, setup.prov, is_async=setup.is_async, retries_hooked=setup.retries_hooked)
    patch_method(resource, name, fn)
    return fn


def _meter_chat_completions(resource: Any, w: Wrapped) -> None:
    create = _meter_method(w, resource, "create", CHAT)
    _meter_method(w, resource, "parse", CHAT_PARSE)
    if create is not None and hasattr(resource, "stream"):
        patch_method(resource, "stream", _metered_stream_helper(w.meter, resource.stream, create))


def _meter_responses(resource: Any, w: Wrapped) -> None:
    create = _meter_method(w, resource, "create", RESPONSES)
    _meter_method(w, resource, "parse", RESPONSES_PARSE)
    if create is not None and hasattr(resource, "stream"):
        patch_method(resource, "stream", _metered_stream_helper(w.meter, resource.stream, create))


def _meter_completions(resource: Any, w: Wrapped) -> None:
    _meter_method(w, resource, "create", COMPLETIONS)


def _meter_embeddings(resource: Any, w: Wrapped) -> None:
    _meter_method(w, resource, "create", EMBEDDINGS)


class OpenAIAdapter:
    """Wraps a client by copying it (``fresh_copy``) and registering the copy
    (``register_wrapped``): hooks set once on the SDK's classes (its cached resources,
    ``copy`` / ``with_options``, the retry method) meter what a registered client does and
    leave every other client alone, so the copy has the attributes of any client of its class
    (why: ``adapters.MeteredResource``)."""

    name = "openai"

    def matches(self, client: object) -> bool:
        try:
            import openai
        except ImportError:
            return False
        return isinstance(client, (openai.OpenAI, openai.AsyncOpenAI))

    def wrap(self, meter: Meter, client: T, attribution: Attribution, provider: str | None) -> T:
        previous = WRAPPED.get(client)
        if previous is not None:  # wrapping a wrapped client: re-wrap its original, once
            rewrapped: T = self.wrap(meter, previous.original, attribution.over(previous.attribution),
                                     provider or previous.provider)
            return rewrapped
        prov = provider or provider_of(client)
        import openai

        is_async = isinstance(client, openai.AsyncOpenAI)
        new = fresh_copy(client)
        setup = _Setup(prov, prov if prov in PROVIDER_MODULES else "openai", is_async, watch_retries(new))
        register_wrapped(new, Wrapped(self, meter, client, attribution, provider, setup))
        chat_classes: list[type[Any]] = []
        with contextlib.suppress(ImportError):
            from openai.resources.chat import AsyncChat, Chat

            chat_classes = [AsyncChat if is_async else Chat]
        meter_resources(new, "chat.completions", _meter_chat_completions, chat_classes)
        meter_resources(new, "responses", _meter_responses)
        meter_resources(new, "completions", _meter_completions)
        meter_resources(new, "embeddings", _meter_embeddings)
        return new


def gateway_cost(block: Any) -> Decimal | None:
    """A gateway's own charge for the call (``usage.cost``), exact from its JSON number."""
    cost = field(block, "cost")
    if cost is None or isinstance(cost, bool):
        return None
    return Decimal(str(cost))


register_adapter(OpenAIAdapter())
