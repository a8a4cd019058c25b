"""AWS Bedrock Runtime through boto3 / aioboto3: ``converse``, ``converse_stream``,
``invoke_model`` and ``invoke_model_with_response_stream`` metered.

How the client is wrapped: boto3 clients are classes botocore builds at run time, so the
wrapper is a shallow copy of the client (same class, same HTTP pool, same credentials) whose
four methods are replaced by instance attributes. ``isinstance`` holds and
the caller's original client stays unmetered.

- **Pricing** uses the ``modelId`` exactly as given (``us.``/``global.`` prefix or ARN: the
  book derives the geography from it) and ``region=client.meta.region_name``, provider
  ``bedrock``.
- **invoke_model**: the response ``body`` is a ``StreamingBody`` the caller reads. It is read
  here, its usage extracted, and replaced by a body of the SDK's own class over the same bytes
  (``read()``, ``iter_lines()``, ``iter_chunks()``... behave as before). Reading it is part of
  the call: a connection lost while reading raises from ``invoke_model`` (the SDK's own
  exception, unchanged) and is recorded as an ``error`` attempt. With the durable ledger the
  call logs the body's reading (``_invoke_snapshot``: usage, the raw usage block, never the
  text) and its event is built in the background.
- **Streams** (``converse_stream``'s ``stream``, ``invoke_model_with_response_stream``'s
  ``body``) stay botocore's own ``EventStream`` objects: only their internal raw-message
  generator is swapped for an observing one, so the caller iterates exactly the same events.
  A stream's end, an exception event in it, a broken connection, an early ``close()`` or the
  stream being dropped unread each end the attempt exactly once (``ok``/``error``/``aborted``).
- **Retries**: botocore's own retries are seen through its ``response-received`` event (one
  per HTTP attempt); each failed attempt before the last becomes an ``error`` event.
- An HTTP error (``ClientError``) produced no tokens: an ``error`` event with empty, complete
  usage. The exception reaches the caller unchanged.

The usage readers live in ``bedrock_usage`` (Converse, headers, invocation metrics) and
``bedrock_families`` (each model family's invoke body and stream events).
"""

from __future__ import annotations

import base64
import binascii
import io
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar

from jevons.capture.adapters import (
    MethodSpec,
    instrument,
    observe_async,
    observe_sync,
    patch_method,
    register_adapter,
)
from jevons.capture.adapters.anthropic import extract_message
from jevons.capture.adapters.bedrock_families import InvokeStreamFold, reading_from_invoke
from jevons.capture.adapters.bedrock_usage import (
    PROVIDER,
    BedrockReading,
    ConverseStreamFold,
    headers_of,
    message_tool_uses,
    parse_body,
    reading_from_converse,
)
from jevons.capture.attribution import Attribution
from jevons.capture.extract import Extracted, UnknownShape, register_extractor
from jevons.capture.meter import CURRENT_CALL, Call
from jevons.capture.record import log_capture
from jevons.usage import Usage

if TYPE_CHECKING:
    from jevons.capture.meter import Meter

__all__ = [
    "API_CONVERSE",
    "API_CONVERSE_STREAM",
    "API_INVOKE",
    "API_INVOKE_STREAM",
    "API_MESSAGES",
    "BedrockAdapter",
    "BedrockStreamAccumulator",
    "extracted_from_reading",
]

T = TypeVar("T")

API_CONVERSE = "converse"
API_CONVERSE_STREAM = "converse_stream"
API_INVOKE = "invoke"
#: Anthropic's Messages API served by Bedrock (``anthropic.AnthropicBedrock``)
API_MESSAGES = "messages"
API_INVOKE_STREAM = "invoke_stream"

SERVICE = "bedrock-runtime"
_ATTEMPT_HANDLER_ID = "jevons-bedrock-attempts"


# ====================================================================== readings -> Extracted
def extracted_from_reading(reading: BedrockReading) -> Extracted:
    """The meter's ``Extracted`` for a reading. The model is left unset on purpose: the
    ``modelId`` as called (prefix, ARN) is what the book prices, not the body's own name."""
    if reading.usage is None:
        note = "; ".join(reading.notes) or "Bedrock usage not found; kept for review"
        return Extracted(Usage(), complete=False, needs_review=True, raw_usage=reading.raw, note=note)
    return Extracted(
        reading.usage,
        complete=reading.complete,
        raw_usage=reading.raw,
        note="; ".join(reading.notes) or None,
    )


def _require(reading: BedrockReading) -> Extracted:
    if reading.usage is None:
        raise UnknownShape("; ".join(reading.notes) or "no Bedrock usage in the response")
    return extracted_from_reading(reading)


# ====================================================================== dict extractors
def extract_converse(response: Any, model: str | None) -> Extracted:
    """``converse`` response dict (boto3's parsed form)."""
    if not isinstance(response, Mapping):
        raise UnknownShape(f"a Converse response is a dict, not {type(response).__name__}")
    return _require(reading_from_converse(response))


def _body_of(response: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The JSON body of a boto3 ``invoke_model`` dict. A sync ``StreamingBody`` is read and put
    back as an equivalent unread body, so the caller can still read it."""
    body = response.get("body")
    if isinstance(body, Mapping):
        return body
    if isinstance(body, bytes | bytearray | str):
        return parse_body(bytes(body) if not isinstance(body, str) else body)
    data = _buffered_bytes(body)
    if data is None and body is not None and _is_sync_streaming_body(body) and isinstance(response, dict):
        data = body.read()
        response["body"] = _sync_body(data)
    return parse_body(data)


def extract_invoke(response: Any, model: str | None) -> Extracted:
    """An ``invoke_model`` response: boto3's dict (``body`` + ``ResponseMetadata``) or the
    decoded JSON body alone. ``model`` selects the family; without it the shape decides. Also
    the snapshot of one (``_invoke_snapshot``), read from the append log."""
    if not isinstance(response, Mapping):
        raise UnknownShape(f"an invoke response is a dict, not {type(response).__name__}")
    logged = response.get(_INVOKE_READING)
    if isinstance(logged, Mapping):
        return _require(_reading_of(logged))
    if "body" in response and "ResponseMetadata" in response:
        body = _body_of(response)
        headers: Mapping[str, Any] | None = headers_of(response)
    else:
        body, headers = response, None
    return _require(reading_from_invoke(body, model or "", headers))


#: the one key of an ``invoke_model`` snapshot (``_invoke_snapshot``)
_INVOKE_READING = "jevons_invoke_reading"


def _invoke_snapshot(response: Any) -> dict[str, Any] | None:
    """What rebuilds an ``invoke_model`` event after a crash without logging its body (the
    model's answer): the body's reading (usage, the raw usage block, flags), made on the
    caller's thread because the body's family comes from the ``modelId``, which the body
    jevons buffered carries (``_Buffer``). ``None``, built at once as before: a body jevons
    did not buffer, or one without usage (its review event keeps what the body showed)."""
    if not isinstance(response, Mapping):
        return None
    held = _buffered(response.get("body"))
    if held is None or held.model is None:
        return None
    reading = reading_from_invoke(parse_body(held.data), held.model, headers_of(response))
    if reading.usage is None:
        return None
    return {_INVOKE_READING: {
        "usage": reading.usage.to_dict(compact=True), "raw": reading.raw, "source": reading.source,
        "complete": reading.complete, "family": reading.family, "notes": list(reading.notes),
    }}


def _reading_of(logged: Mapping[str, Any]) -> BedrockReading:
    """The reading an ``invoke_model`` snapshot holds."""
    return BedrockReading(
        Usage.from_dict(dict(logged["usage"])), logged.get("raw"), logged["source"],
        complete=bool(logged.get("complete", True)), family=logged.get("family"),
        notes=tuple(logged.get("notes") or ()),
    )


def extract_hosted_message(response: Any, model: str | None) -> Extracted:
    """An Anthropic ``Message`` from Bedrock (``AnthropicBedrock``): Anthropic's reading, the
    model left unset, since the ``modelId`` as called is what the book prices (as for invoke)."""
    return replace(extract_message(response, model), model=None)


def _stream_items(response: Any, key: str) -> Iterable[Any]:
    if isinstance(response, Mapping):
        response = response.get(key, ())
    if not isinstance(response, Iterable) or isinstance(response, str | bytes):
        raise UnknownShape("a stream is given as the list of its events")
    return response


def extract_converse_stream(response: Any, model: str | None) -> Extracted:
    """The events of a ``converse_stream`` as boto3 yields them (``[{"metadata": {...}}, ...]``)."""
    fold = ConverseStreamFold()
    for event in _stream_items(response, "stream"):
        if isinstance(event, Mapping):
            for name, payload in event.items():
                if isinstance(payload, Mapping):
                    fold.feed(str(name), payload)
    return extracted_from_reading(fold.reading())


def extract_invoke_stream(response: Any, model: str | None) -> Extracted:
    """The events of an ``invoke_model_with_response_stream``: boto3's ``{"chunk": {"bytes":
    b"..."}}`` events, or the decoded chunk dicts themselves. ``model`` selects the family."""
    fold = InvokeStreamFold(model or "")
    for event in _stream_items(response, "body"):
        chunk = _decode_chunk(event)
        if chunk is not None:
            fold.feed(chunk)
    return extracted_from_reading(fold.reading())


def _decode_chunk(event: Any) -> Mapping[str, Any] | None:
    if not isinstance(event, Mapping):
        return None
    part = event.get("chunk")
    if not isinstance(part, Mapping):
        return event  # already a decoded family event
    data = part.get("bytes")
    if isinstance(data, str):  # base64 text, as on the wire
        try:
            data = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            return None
    return parse_body(bytes(data)) if isinstance(data, bytes | bytearray) else None


def extract_any(response: Any, model: str | None) -> Extracted:
    """No ``api`` given: a Converse response (``usage.inputTokens`` with ``metrics``) or an
    invoke response (boto3 dict with ``body``, or a family body)."""
    if isinstance(response, Mapping) and "metrics" in response and isinstance(response.get("usage"), Mapping):
        return extract_converse(response, model)
    return extract_invoke(response, model)


for _api, _fn in (
    (API_CONVERSE, extract_converse),
    (API_CONVERSE_STREAM, extract_converse_stream),
    (API_INVOKE, extract_invoke),
    ("invoke_model", extract_invoke),
    (API_INVOKE_STREAM, extract_invoke_stream),
    (API_MESSAGES, extract_hosted_message),
    ("invoke_model_with_response_stream", extract_invoke_stream),
):
    register_extractor(PROVIDER, _api, _fn)
register_extractor(PROVIDER, None, extract_any)


# ====================================================================== bodies
def _is_sync_streaming_body(body: Any) -> bool:
    from botocore.response import StreamingBody

    return isinstance(body, StreamingBody)


class _Buffer(io.BytesIO):
    """The bytes of a body already read by jevons (marks a body as ours), and the ``modelId``
    it answered (``_invoke_snapshot`` reads the body by its family)."""

    model: str | None = None

    @property
    def data(self) -> bytes:
        return self.getvalue()


def _sync_body(data: bytes, model: str | None = None) -> Any:
    from botocore.response import StreamingBody

    buffer = _Buffer(data)
    buffer.model = model
    return StreamingBody(buffer, len(data))


class _BufferedContent:
    """What aiobotocore's ``StreamingBody`` reads from (``response.content``), over bytes."""

    def __init__(self, data: bytes) -> None:
        self._buffer = io.BytesIO(data)
        self.data = data

    async def read(self, n: int = -1) -> bytes:
        return self._buffer.read(n if n is not None and n >= 0 else -1)

    def at_eof(self) -> bool:
        return self._buffer.tell() >= len(self.data)


class _BufferedResponse:
    """Stands in for the ``aiohttp.ClientResponse`` an aiobotocore body wraps, once read:
    the body comes from memory, every other attribute from the original response."""

    def __init__(self, original: Any, data: bytes, model: str | None = None) -> None:
        self._original = original
        self.content = _BufferedContent(data)
        self.model = model  # the ``modelId`` it answered (see ``_Buffer``)

    @property
    def data(self) -> bytes:
        return self.content.data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._original, name)

    def at_eof(self) -> bool:
        return self.content.at_eof()

    def close(self) -> None:
        return None

    def release(self) -> None:
        return None

    async def __aenter__(self) -> _BufferedResponse:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


def _async_body(original: Any, data: bytes, model: str | None = None) -> Any:
    from aiobotocore.response import StreamingBody  # type: ignore[import-untyped]

    wrapped = getattr(original, "__wrapped__", original)
    return StreamingBody(_BufferedResponse(wrapped, data, model), str(len(data)))


def _buffered(body: Any) -> _Buffer | _BufferedResponse | None:
    """What holds a body this module already replaced (its ``data`` and ``model``: the sync
    and the async body alike), else ``None``."""
    raw = getattr(body, "_raw_stream", None)
    if isinstance(raw, _Buffer):
        return raw
    wrapped = getattr(body, "__wrapped__", None)
    return wrapped if isinstance(wrapped, _BufferedResponse) else None


def _buffered_bytes(body: Any) -> bytes | None:
    """The bytes of a body this module already replaced, else ``None``."""
    held = _buffered(body)
    return None if held is None else held.data


def _client_error_status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    if isinstance(response, Mapping):
        meta = response.get("ResponseMetadata")
        code = meta.get("HTTPStatusCode") if isinstance(meta, Mapping) else None
        if isinstance(code, int):
            return code
    return None


def _record_http_error(exc: BaseException) -> None:
    """A modelled HTTP error: nothing was generated, so the attempt's usage is known (empty).
    Anything else is left to the generic ``call.fail`` (usage unknown, incomplete)."""
    call = CURRENT_CALL.get()
    try:
        status = _client_error_status(exc)
        if status is None or call is None or call.done:
            return
        call.finish_extracted(Extracted(Usage(requests=0), complete=True), "error",
                              f"{type(exc).__name__} (HTTP {status})")
    except Exception as bug:  # never let jevons replace the provider's exception
        if call is not None:
            call.meter._error(bug, "adapter")


def _model_id(kwargs: Mapping[str, Any]) -> str | None:
    model = kwargs.get("modelId")
    return model if isinstance(model, str) else None


def _sync_reading(fn: Callable[..., Any], read_body: bool) -> Callable[..., Any]:
    def call_provider(*args: Any, **kwargs: Any) -> Any:
        try:
            result = fn(*args, **kwargs)
            if read_body and isinstance(result, dict) and _is_sync_streaming_body(result.get("body")):
                result["body"] = _sync_body(result["body"].read(), _model_id(kwargs))
        except Exception as exc:
            _record_http_error(exc)
            raise
        return result

    return call_provider


def _async_reading(fn: Callable[..., Any], read_body: bool) -> Callable[..., Any]:
    async def call_provider(*args: Any, **kwargs: Any) -> Any:
        try:
            result = await fn(*args, **kwargs)
            body = result.get("body") if isinstance(result, dict) else None
            if read_body and body is not None and _buffered(body) is None:
                result["body"] = _async_body(body, await body.read(), _model_id(kwargs))
        except Exception as exc:
            _record_http_error(exc)
            raise
        return result

    return call_provider


def _on_invoke_result(call: Call, result: Any) -> None:
    if log_capture(call.meter, call, result):
        return  # built by the ledger's background thread (``record.log_capture``)
    if not isinstance(result, Mapping):
        call.finish(result)
        return
    data = _buffered_bytes(result.get("body"))
    reading = reading_from_invoke(parse_body(data), call.model, headers_of(result))
    call.finish_extracted(extracted_from_reading(reading))


# ====================================================================== streams
def _header(message: Any, name: str) -> str | None:
    headers = getattr(message, "headers", None)
    value = headers.get(name) if isinstance(headers, Mapping) else None
    return value if isinstance(value, str) else None


_CONVERSE_USAGE_EVENTS = frozenset({"metadata", "contentBlockStart", "messageStop"})


class BedrockStreamAccumulator:
    """Reads the raw event-stream messages of one Bedrock stream (botocore's
    ``EventStreamMessage``: headers + JSON payload) as they pass to the SDK's parser.

    An ``exception`` message ends the attempt as ``error`` right away (botocore raises
    ``EventStreamError`` to the caller from its own parser, outside the observed generator).
    """

    def __init__(self, call: Call, operation: str, fold: ConverseStreamFold | InvokeStreamFold) -> None:
        self.call = call
        self.operation = operation
        self.fold = fold
        self.messages = 0

    def add(self, message: Any) -> None:
        self.messages += 1
        kind = _header(message, ":message-type")
        if kind in ("exception", "error"):
            self._failed(message, kind)
            return
        event_type = _header(message, ":event-type")
        payload = getattr(message, "payload", b"")
        if event_type is None or not payload:
            return
        if isinstance(self.fold, ConverseStreamFold) and event_type not in _CONVERSE_USAGE_EVENTS:
            return  # text deltas, the bulk of a stream, say nothing about usage
        body = parse_body(payload)
        if body is None:
            return
        if isinstance(self.fold, ConverseStreamFold):
            self.fold.feed(event_type, body)
        elif event_type == "chunk":
            chunk = _decode_chunk({"chunk": body})
            if chunk is not None:
                self.fold.feed(chunk)

    def _failed(self, message: Any, kind: str) -> None:
        from botocore.exceptions import EventStreamError

        if kind == "exception":
            code = _header(message, ":exception-type") or "UnknownException"
            body = parse_body(getattr(message, "payload", b"")) or {}
            text = body.get("message") or body.get("Message") or ""
        else:
            code = _header(message, ":error-code") or "UnknownError"
            text = _header(message, ":error-message") or ""
        error = EventStreamError({"Error": {"Code": code, "Message": str(text)}}, self.operation)
        self.call.fail(error, self.result())

    def result(self) -> Extracted:
        """What the stream reported so far. Before its end, missing usage is only not yet
        known (incomplete), not an unknown shape to review."""
        x = extracted_from_reading(self.fold.reading())
        if not self.fold.finished:
            x.complete = False
            x.needs_review = False
        return x


def _abandon(call: Call, acc: BedrockStreamAccumulator) -> None:
    if not call.done:
        call.abort(acc.result(), "stream closed or dropped before its end")


def _observe_event_stream(call: Call, stream: Any, fold: ConverseStreamFold | InvokeStreamFold,
                          operation: str) -> None:
    """Swap the EventStream's raw-message generator for an observing one, in place."""
    acc = BedrockStreamAccumulator(call, operation, fold)
    inner = stream._event_generator
    observed: Any
    if hasattr(inner, "__anext__"):
        observed = observe_async(call, inner, acc)
    else:
        observed = observe_sync(call, inner, acc)
    original_close = stream.close

    def close() -> None:
        # the SDK's close stays synchronous (aiobotocore's too); an early close is an abort
        try:
            _abandon(call, acc)
        finally:
            original_close()

    object.__setattr__(stream, "_event_generator", observed)
    object.__setattr__(stream, "close", close)
    # a stream dropped unread (never iterated, never closed) is an abort too
    finalizer = weakref.finalize(stream, _abandon, call, acc)
    finalizer.atexit = False


def _converse_stream(call: Call, result: Any) -> Any:
    stream = result.get("stream") if isinstance(result, Mapping) else None
    if stream is None:
        raise UnknownShape("converse_stream response without a stream")
    _observe_event_stream(call, stream, ConverseStreamFold(), "ConverseStream")
    return result


def _invoke_stream(call: Call, result: Any) -> Any:
    stream = result.get("body") if isinstance(result, Mapping) else None
    if stream is None:
        raise UnknownShape("invoke_model_with_response_stream response without a body")
    _observe_event_stream(call, stream, InvokeStreamFold(call.model), "InvokeModelWithResponseStream")
    return result


# ====================================================================== deferred capture
_TOOL_USE: dict[str, dict[str, Any]] = {"toolUse": {}}


def _converse_snapshot(response: Any) -> dict[str, Any] | None:
    """What ``extract_converse`` reads again after a crash (see ``jevons.capture.record``):
    the usage block and, of the answer, only one ``{"toolUse": {}}`` per tool call (the text
    is not logged). With it a complete ``converse`` response is priced and built by the
    ledger's background thread, as for the other providers. ``None`` (recorded at once) for
    anything but boto3's dict with a usage block."""
    if type(response) is not dict:
        return None
    usage = response.get("usage")
    if not isinstance(usage, Mapping):
        return None
    tools = [_TOOL_USE] * message_tool_uses(response)
    return {"usage": usage, "output": {"message": {"content": tools}}}


# ====================================================================== the adapter
def _always(kwargs: dict[str, Any]) -> bool:
    return True


_METHODS: dict[str, tuple[MethodSpec, bool]] = {
    # method -> (how it is metered, without the per-client ``prepare``; read the body)
    "converse": (MethodSpec(API_CONVERSE, PROVIDER, model_kwarg="modelId", snapshot=_converse_snapshot),
                 False),
    "converse_stream": (MethodSpec(API_CONVERSE_STREAM, PROVIDER, model_kwarg="modelId",
                                   is_stream=_always, stream=_converse_stream), False),
    "invoke_model": (MethodSpec(API_INVOKE, PROVIDER, model_kwarg="modelId",
                                on_result=_on_invoke_result, snapshot=_invoke_snapshot), True),
    "invoke_model_with_response_stream": (MethodSpec(API_INVOKE_STREAM, PROVIDER, model_kwarg="modelId",
                                                     is_stream=_always, stream=_invoke_stream), False),
}


def _on_attempt(response_dict: Any = None, exception: Any = None, **_: Any) -> None:
    """botocore ``response-received``: one per HTTP attempt, retries included."""
    call = CURRENT_CALL.get()
    if call is None:
        return
    status = response_dict.get("status_code") if isinstance(response_dict, Mapping) else None
    call.http_attempts.append(status if isinstance(status, int) else None)


def _shallow_copy(client: T) -> T:
    """A second client object of the same (generated) class sharing everything with the
    original. ``copy.copy`` cannot be used: botocore's ``__getattr__`` recurses on a client
    whose ``__dict__`` is still empty."""
    new: T = object.__new__(type(client))
    vars(new).update(vars(client))
    return new


def _is_async_client(client: Any) -> bool:
    return any(k.__module__.split(".", 1)[0] == "aiobotocore" for k in type(client).__mro__)


class BedrockAdapter:
    """``Meter.wrap`` for botocore / aiobotocore ``bedrock-runtime`` clients."""

    name = "bedrock"

    def matches(self, client: object) -> bool:
        try:
            from botocore.client import BaseClient
        except ImportError:  # pragma: no cover - boto3 not installed
            return False
        if not isinstance(client, BaseClient):
            return False
        service = client.meta.service_model
        return bool(service.service_name == SERVICE or service.endpoint_prefix == SERVICE)

    def wrap(self, meter: Meter, client: T, attribution: Attribution, provider: str | None) -> T:
        wrapped = _shallow_copy(client)
        meta = wrapped.meta  # type: ignore[attr-defined]
        region = meta.region_name
        meta.events.register(f"response-received.{SERVICE}", _on_attempt,
                             unique_id=_ATTEMPT_HANDLER_ID)
        is_async = _is_async_client(client)

        for method, (spec, read_body) in _METHODS.items():
            original = getattr(client, method, None)
            if original is None:
                continue
            provider_call = (_async_reading if is_async else _sync_reading)(original, read_body)
            metered = instrument(meter, provider_call, replace(spec, region=region), attribution,
                                 provider or PROVIDER)
            patch_method(wrapped, method, metered)
        return wrapped


register_adapter(BedrockAdapter())
