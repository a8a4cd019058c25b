"""Anthropic Messages API: canonical usage from a ``Message`` or its SSE events.

Anthropic reports the prompt in three disjoint parts — ``input_tokens`` (uncached),
``cache_read_input_tokens`` and ``cache_creation_input_tokens`` — so the canonical
``input_tokens`` is their sum. ``cache_creation.ephemeral_1h_input_tokens`` is the 1-hour part
of the writes; every other write (the 5-minute part, or a write whose TTL is not reported)
counts as a 5-minute write. ``output_tokens`` already includes thinking;
``output_tokens_details.thinking_tokens`` is its reasoning subset.
``server_tool_use.web_search_requests`` are billed per search; ``tool_use`` content blocks are
the model's client tool calls.

A stream reports usage twice: ``message_start`` carries the prompt side (and a provisional
output count), ``message_delta`` the cumulative final counts. Fields the delta leaves out (or
sends as null) keep their ``message_start`` value.

Every function here reads a JSON dict and the SDK's own pydantic objects alike.

Metering (``AnthropicAdapter``): ``messages.create`` (incl. ``stream=True``), ``messages.parse``
and ``messages.stream()`` on ``Anthropic``/``AsyncAnthropic`` and their ``beta.messages``. The
``stream()`` helper posts on its own (not through ``create``) when its manager is entered, so
the adapter meters that deferred request; streams stay the SDK's ``Stream``/``MessageStream``
objects, only their raw event iterator is observed. See docs/capture-providers.md.

``AnthropicBedrockAdapter`` meters the same methods on ``AnthropicBedrock`` /
``AsyncAnthropicBedrock``, which send the Messages API to Bedrock's invoke endpoints: those
calls are Bedrock's (provider ``bedrock``, the model id as called with its cross-region prefix,
the client's ``aws_region``), priced exactly as boto3's ``invoke_model`` of the same model; the
model name inside the reply (``claude-...`` without the Bedrock id) is not used for the price.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from jevons.capture.adapters import (
    MethodSpec,
    Wrapped,
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
from jevons.capture.build import review_usage
from jevons.capture.extract import Extracted, UnknownShape, as_dict, register_extractor, to_int, without_none
from jevons.capture.extract import field as _get
from jevons.capture.meter import Call
from jevons.usage import Usage

if TYPE_CHECKING:
    from jevons.capture.meter import Meter

T = TypeVar("T")

__all__ = [
    "API",
    "PROVIDER",
    "AnthropicAdapter",
    "AnthropicBedrockAdapter",
    "AnthropicStreamState",
    "extract_message",
    "usage_from_message",
    "usage_from_usage_block",
]

PROVIDER = "anthropic"
API = "messages"


def _count(obj: Any, key: str) -> int:
    return max(to_int(_get(obj, key)), 0)


def usage_from_usage_block(block: Any, *, tool_calls: int = 0) -> Usage:
    """Canonical usage of one Anthropic ``usage`` object (``Message.usage``)."""
    if _get(block, "input_tokens") is None and _get(block, "output_tokens") is None:
        raise UnknownShape("Anthropic usage block has neither input_tokens nor output_tokens")
    uncached = _count(block, "input_tokens")
    output = _count(block, "output_tokens")
    cache_read = _count(block, "cache_read_input_tokens")
    writes_reported = _count(block, "cache_creation_input_tokens")
    breakdown = _get(block, "cache_creation")
    write_1h = _count(breakdown, "ephemeral_1h_input_tokens")
    write_5m_reported = _count(breakdown, "ephemeral_5m_input_tokens")
    # whatever part of the writes has no 1h label is a 5m write (unknown TTL counts as 5m)
    write_5m = max(writes_reported - write_1h, write_5m_reported)
    thinking = _count(_get(block, "output_tokens_details"), "thinking_tokens")
    searches = _count(_get(block, "server_tool_use"), "web_search_requests")
    return Usage(
        input_tokens=uncached + cache_read + write_5m + write_1h,
        output_tokens=output,
        cache_read_tokens=cache_read,
        cache_write_5m_tokens=write_5m,
        cache_write_1h_tokens=write_1h,
        reasoning_tokens=min(thinking, output),
        web_search_requests=searches,
        tool_calls=tool_calls,
    )


def _tool_use_blocks(content: Any) -> int:
    if not isinstance(content, list | tuple):
        return 0
    return sum(1 for block in content if _get(block, "type") == "tool_use")


def usage_from_message(message: Any) -> Usage:
    """Canonical usage of a whole ``Message`` (JSON dict or SDK object)."""
    block = _get(message, "usage")
    if block is None:
        raise UnknownShape("Anthropic message has no usage block")
    return usage_from_usage_block(block, tool_calls=_tool_use_blocks(_get(message, "content")))


def _model(message: Any) -> str | None:
    model = _get(message, "model")
    return model if isinstance(model, str) and model else None


def _tier(block: Any) -> str | None:
    tier = _get(block, "service_tier")
    return tier if isinstance(tier, str) and tier else None


def _raw(block: Any) -> dict[str, Any] | None:
    """The usage block as a JSON dict without its null fields, whatever form the caller holds
    (an SDK object is dumped without them: a JSON dict, e.g. a deferred capture's snapshot,
    gives the same block)."""
    raw = as_dict(block)
    return without_none(raw) if isinstance(block, Mapping) else raw


def extract_message(message: Any, model: str | None = None) -> Extracted:
    """The extractor registered for ``("anthropic", "messages")``: a whole ``Message``."""
    block = _get(message, "usage")
    return Extracted(
        usage=usage_from_message(message),
        model=_model(message) or model,
        raw_usage=_raw(block),
        service_tier=_tier(block),
    )


register_extractor(PROVIDER, API, extract_message, default=True)


@dataclass(slots=True)
class AnthropicStreamState:
    """Folds the raw SSE events of one Messages stream into the usage they report.

    ``add`` takes each event (dict or SDK event object) in order; ``result()`` gives what is
    known so far (the ``StreamAccumulator`` protocol of ``jevons.capture.adapters``).
    ``finished`` turns true on ``message_stop`` (or a ``message_delta`` that carries a
    ``stop_reason``), so a stream cut off earlier is known to be incomplete.
    """

    model: str | None = None
    started: bool = False
    finished: bool = False
    tool_calls: int = 0
    raw: dict[str, Any] = field(default_factory=dict)
    # False when the host prices by the model id as called, not the name in the reply (Bedrock)
    report_model: bool = True

    def add(self, event: Any) -> None:
        kind = _get(event, "type")
        if kind == "message_start":
            message = _get(event, "message")
            self.started = True
            self.model = _model(message) or self.model
            self._merge(as_dict(_get(message, "usage")))
            self.tool_calls += _tool_use_blocks(_get(message, "content"))
        elif kind == "content_block_start":
            if _get(_get(event, "content_block"), "type") == "tool_use":
                self.tool_calls += 1
        elif kind == "message_delta":
            self._merge(as_dict(_get(event, "usage")))
            if _get(_get(event, "delta"), "stop_reason") is not None:
                self.finished = True
        elif kind == "message_stop":
            self.finished = True

    def _merge(self, block: dict[str, Any] | None) -> None:
        if not block:
            return
        for key, value in block.items():
            if value is not None:
                self.raw[key] = value

    @property
    def reported_model(self) -> str | None:
        """The model the event names: the reply's, unless the host prices by the id as called."""
        return self.model if self.report_model else None

    @property
    def has_usage(self) -> bool:
        return "input_tokens" in self.raw or "output_tokens" in self.raw

    def usage(self) -> Usage:
        """Usage known so far; an event without any usage yet raises ``UnknownShape``."""
        if not self.has_usage:
            raise UnknownShape("the Anthropic stream reported no usage")
        block = dict(self.raw)
        block.setdefault("input_tokens", 0)
        block.setdefault("output_tokens", 0)
        return usage_from_usage_block(block, tool_calls=self.tool_calls)

    def result(self) -> Extracted:
        """What the stream reported so far; ``complete`` only once it reached its end. A stream
        cut off before ``message_start`` is one request of unknown usage; one whose usage
        blocks have neither count (or that had none) is a shape this adapter does not know:
        ``UnknownShape``, and ``review()`` gives its event."""
        model = self.reported_model
        if not self.has_usage:
            if self.raw or self.started:
                raise UnknownShape(f"Anthropic stream usage in an unknown shape: {self.raw}")
            return Extracted(Usage(), model=model, complete=False,
                             note="stream ended before message_start; usage unknown")
        return Extracted(
            usage=self.usage(),
            model=model,
            complete=self.finished,
            raw_usage=dict(self.raw),
            service_tier=_tier(self.raw),
            note=None if self.finished else "stream ended before message_delta; output is a lower bound",
        )

    def review(self) -> Extracted:
        """The usage the stream reported, in a shape not known here: unpriced, kept for review."""
        return review_usage(dict(self.raw) or None, self.reported_model)


# ---------------------------------------------------------------------- wrapping
def _finish(call: Call, result: Any) -> None:
    """``with_raw_response`` hands back an API-response wrapper: parse it (the SDK caches it)."""
    if hasattr(result, "http_response") and callable(getattr(result, "parse", None)):
        result = result.parse()
    call.finish(result)


def _observe(call: Call, stream: Any) -> Any:
    """The SDK's own ``Stream``/``AsyncStream``, its event iterator swapped for an observing one."""
    return patch_stream(stream, call, AnthropicStreamState(), iterator_attr="_iterator")


def _observe_hosted(call: Call, stream: Any) -> Any:
    """``_observe`` for a host that prices by the model id as called (Bedrock)."""
    return patch_stream(stream, call, AnthropicStreamState(report_model=False), iterator_attr="_iterator")


def _always_stream(kwargs: dict[str, Any]) -> bool:
    return True


# what ``extract_message`` reads again after a crash (see ``jevons.capture.record``): the model,
# the usage block (with its extra fields: what this SDK does not declare yet) and, of the
# content, only one ``{"type": "tool_use"}`` per tool call (the text is not logged)
_MESSAGE_FIELDS = snapshot_fields("model", "usage", model="usage")
_MESSAGE_NAMES = (*_MESSAGE_FIELDS.names, "content")
_message_fields = _MESSAGE_FIELDS.getter
_TOOL_USE = {"type": "tool_use"}


def _message_snapshot(message: Any) -> tuple[tuple[str, ...], tuple[Any, ...]] | None:
    """A ``Message``'s snapshot, as ``(names, values)`` of its top-level fields; ``None`` for
    anything else (a raw-response wrapper, no usage block): recorded at once."""
    try:
        values = _message_fields(message)
    except AttributeError:
        return None
    tools: list[dict[str, str]] = []
    content = getattr(message, "content", None)
    if type(content) is list:
        for block in content:
            if getattr(block, "type", None) == "tool_use":
                tools.append(_TOOL_USE)
    return _MESSAGE_NAMES, (*values, tools)


def _specs(provider: str, extractor: str, region: str | None) -> tuple[MethodSpec, MethodSpec]:
    """(create/parse, the deferred request of a ``.stream()`` manager). ``extractor`` other
    than Anthropic's own: a host pricing by the model id as called, in ``region``."""
    observe = _observe if extractor == PROVIDER else _observe_hosted
    call_spec = MethodSpec(API, provider, extractor, stream=observe, on_result=_finish,
                           snapshot=_message_snapshot, region=region)
    deferred = MethodSpec(API, provider, extractor, stream=observe, is_stream=_always_stream,
                          region=region)
    return call_spec, deferred


def _defer_metered_request(
    meter: Meter, manager: Any, spec: MethodSpec, attribution: Attribution, provider: str, model: Any,
) -> None:
    """Meter the HTTP request a ``.stream()`` manager makes when it is entered.

    ``messages.stream()`` posts directly (not through ``create``), from a callable (sync) or a
    coroutine (async) the manager keeps privately and runs in ``__enter__``/``__aenter__``;
    that callable is replaced by a metered one, so the call begins (guards, budget, run step)
    when the request is really made, and the raw stream it returns is observed in place.
    """
    state = vars(manager)
    slot = next(name for name in state if name.endswith("__api_request"))
    original = state[slot]
    if inspect.iscoroutine(original):
        async def request_async(**_: Any) -> Any:
            return await original

        metered_async = instrument(meter, request_async, spec, attribution, provider)
        state[slot] = metered_async(model=model)  # a coroutine, awaited by ``__aenter__``
        return

    def request(**_: Any) -> Any:
        return original()

    state[slot] = functools.partial(instrument(meter, request, spec, attribution, provider), model=model)


def _metered_stream_helper(
    meter: Meter, original: Callable[..., Any], spec: MethodSpec, attribution: Attribution, provider: str,
) -> Callable[..., Any]:
    @functools.wraps(original)
    def stream(*args: Any, **kwargs: Any) -> Any:
        per_call = pop_call_attribution(kwargs, meter._error)
        manager = original(*args, **kwargs)
        # the per-call attribution ranks above the client's, as ``Meter.begin`` would rank it
        scoped = attribution if per_call is None else per_call.over(attribution)
        try:
            _defer_metered_request(meter, manager, spec, scoped, provider, kwargs.get("model"))
        except Exception as exc:
            meter._error(exc, "wrap")
        return manager

    return stream


class AnthropicAdapter:
    """Meters ``Anthropic`` and ``AsyncAnthropic`` (and subclasses): ``messages.create``
    (incl. ``stream=True``), ``messages.parse``, ``messages.stream()``, and the same methods on
    ``beta.messages``."""

    name = "anthropic"
    provider = PROVIDER  # the events' provider (``wrap``'s ``provider=`` overrides it)
    extractor = PROVIDER  # how a reply is read (``register_extractor`` key, with ``API``)

    def client_types(self) -> tuple[type, ...]:
        import anthropic

        return anthropic.Anthropic, anthropic.AsyncAnthropic

    def region(self, client: Any) -> str | None:
        return None

    def matches(self, client: object) -> bool:
        try:
            return isinstance(client, self.client_types())
        except (ImportError, AttributeError):  # no SDK, or one without this client
            return False

    def wrap(self, meter: Meter, client: T, attribution: Attribution, provider: str | None) -> T:
        prov = provider or self.provider
        call_spec, deferred_spec = _specs(prov, self.extractor, self.region(client))
        new = fresh_copy(client)
        setup = _Setup(prov, call_spec, deferred_spec, watch_retries(new))
        register_wrapped(new, Wrapped(self, meter, client, attribution, provider, setup))
        # ``messages`` is a cached resource of ``Anthropic``, made in ``__init__`` by
        # ``AnthropicBedrock`` (``fresh_copy`` made the copy its own); ``beta`` likewise, and
        # ``AnthropicBedrock``'s is a class of its own
        meter_resources(new, "messages", _meter_messages)
        beta_classes: list[type[Any]] = []
        if isinstance(inspect.getattr_static(type(new), "beta", None), functools.cached_property):
            with contextlib.suppress(ImportError):
                from anthropic.resources.beta import AsyncBeta, Beta

                beta_classes = [Beta, AsyncBeta]
        else:
            own_beta = getattr(new, "beta", None)
            beta_classes = [] if own_beta is None else [type(own_beta)]
        meter_resources(new, "beta.messages", _meter_messages, beta_classes)
        return new


@dataclass(frozen=True)
class _Setup:
    """What a wrapped client's ``messages`` are metered with (``Wrapped.setup``)."""

    prov: str
    call_spec: MethodSpec
    deferred_spec: MethodSpec
    retries_hooked: bool


def _meter_messages(resource: Any, w: Wrapped) -> None:
    """Meter a wrapped client's ``messages`` (or ``beta.messages``): ``create`` and ``parse``,
    and the ``stream()`` helper."""
    setup: _Setup = w.setup
    for name in ("create", "parse"):
        original = getattr(resource, name, None)
        if callable(original):
            patch_method(resource, name, instrument(w.meter, original, setup.call_spec, w.attribution,
                                                    setup.prov, retries_hooked=setup.retries_hooked))
    original_stream = getattr(resource, "stream", None)
    if callable(original_stream):
        patch_method(resource, "stream", _metered_stream_helper(
            w.meter, original_stream, setup.deferred_spec, w.attribution, setup.prov))


class AnthropicBedrockAdapter(AnthropicAdapter):
    """``AnthropicBedrock`` / ``AsyncAnthropicBedrock``: the same methods, served by Bedrock and
    priced as Bedrock (see the module docstring); replies are read by the ``("bedrock",
    "messages")`` extractor, Anthropic's without the reply's model name."""

    name = "anthropic-bedrock"
    provider = "bedrock"
    extractor = "bedrock"

    def client_types(self) -> tuple[type, ...]:
        import anthropic

        return anthropic.AnthropicBedrock, anthropic.AsyncAnthropicBedrock

    def region(self, client: Any) -> str | None:
        region = getattr(client, "aws_region", None)
        return region if isinstance(region, str) and region else None


register_adapter(AnthropicAdapter())
register_adapter(AnthropicBedrockAdapter())
