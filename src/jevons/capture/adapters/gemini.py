"""Google Gemini (``google-genai``): canonical usage from ``usageMetadata``.

Gemini's accounting, converted:

- ``promptTokenCount`` is the whole prompt *including* the cached part
  (``cachedContentTokenCount``, a subset: the cache read). Tool-use prompts
  (``toolUsePromptTokenCount``: fetched URL context, search results fed back) come *on top* and
  are billed as input, so canonical ``input_tokens = promptTokenCount + toolUsePromptTokenCount``.
- ``thoughtsTokenCount`` is *additive* to ``candidatesTokenCount``: canonical
  ``output_tokens = candidatesTokenCount + thoughtsTokenCount``, ``reasoning_tokens`` the thoughts.
- ``promptTokensDetails`` / ``toolUsePromptTokensDetails`` / ``candidatesTokensDetails`` give
  per-modality counts: ``AUDIO`` and ``IMAGE`` become the audio/image subsets (``VIDEO``,
  ``DOCUMENT`` and ``TEXT`` stay plain input/output, which is how Gemini prices them).
- Each ``functionCall`` part of a candidate is a tool call; each query in
  ``groundingMetadata.webSearchQueries`` is a web search request (Google bills grounding per
  search query on current models).

Reads the REST JSON (camelCase), the same dict in snake_case, and the SDK's pydantic objects.
A stream (``:streamGenerateContent?alt=sse``) repeats a cumulative ``usageMetadata`` in its
chunks; the latest value of each field wins.
"""

from __future__ import annotations

import copy
import functools
import inspect
import operator
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from jevons.capture.adapters import (
    FoldedUsage,
    MethodSpec,
    aiterate_in_call,
    install_attempt_hooks,
    instrument,
    iterate_in_call,
    observe_async,
    observe_sync,
    patch_method,
    record_attempts,
    register_adapter,
)
from jevons.capture.attribution import Attribution, pop_call_attribution
from jevons.capture.extract import Extracted, UnknownShape, register_extractor, to_int, without_none
from jevons.capture.extract import field as _field
from jevons.capture.meter import Call
from jevons.usage import Usage

if TYPE_CHECKING:
    from jevons.capture.meter import Meter

T = TypeVar("T")

__all__ = [
    "API",
    "PROVIDER",
    "GeminiAdapter",
    "GeminiStreamState",
    "extract_response",
    "usage_from_metadata",
    "usage_from_response",
]

PROVIDER = "gemini"
API = "generate_content"


def _camel(snake: str) -> str:
    head, *rest = snake.split("_")
    return head + "".join(part.title() for part in rest)


def _get(obj: Any, key: str) -> Any:
    """``key`` (snake_case) from a dict in either case, or from an SDK object."""
    value = _field(obj, key)
    return _field(obj, _camel(key)) if value is None and isinstance(obj, Mapping) else value


def _count(obj: Any, key: str) -> int:
    return max(to_int(_get(obj, key)), 0)


def _modality_counts(details: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    if not isinstance(details, list | tuple):
        return out
    for entry in details:
        modality = _get(entry, "modality")
        modality = getattr(modality, "value", modality)
        count = _count(entry, "token_count")
        if isinstance(modality, str):
            key = modality.upper()
            out[key] = out.get(key, 0) + count
    return out


def usage_from_metadata(metadata: Any, *, tool_calls: int = 0, web_searches: int = 0) -> Usage:
    """Canonical usage of one ``usageMetadata`` block."""
    if _get(metadata, "prompt_token_count") is None and _get(metadata, "candidates_token_count") is None:
        raise UnknownShape("Gemini usageMetadata has neither promptTokenCount nor candidatesTokenCount")
    tool_prompt = _count(metadata, "tool_use_prompt_token_count")
    thoughts = _count(metadata, "thoughts_token_count")
    input_tokens = _count(metadata, "prompt_token_count") + tool_prompt
    output_tokens = _count(metadata, "candidates_token_count") + thoughts
    prompt_modal = _modality_counts(_get(metadata, "prompt_tokens_details"))
    tool_modal = _modality_counts(_get(metadata, "tool_use_prompt_tokens_details"))
    out_modal = _modality_counts(_get(metadata, "candidates_tokens_details"))
    # subsets as reported: one larger than its total is an inconsistent block, which ``Usage``
    # refuses (the call is then kept for review, unpriced), never quietly capped and billed
    return Usage(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cache_read_tokens=_count(metadata, "cached_content_token_count"),
        reasoning_tokens=thoughts,
        audio_input_tokens=prompt_modal.get("AUDIO", 0) + tool_modal.get("AUDIO", 0),
        image_input_tokens=prompt_modal.get("IMAGE", 0) + tool_modal.get("IMAGE", 0),
        audio_output_tokens=out_modal.get("AUDIO", 0),
        image_output_tokens=out_modal.get("IMAGE", 0),
        web_search_requests=web_searches,
        tool_calls=tool_calls,
    )


def _parts(candidate: Any) -> list[Any]:
    parts = _get(_get(candidate, "content"), "parts")
    return list(parts) if isinstance(parts, list | tuple) else []


def _candidates(response: Any) -> list[Any]:
    candidates = _get(response, "candidates")
    return list(candidates) if isinstance(candidates, list | tuple) else []


def _function_calls(response: Any) -> int:
    return sum(
        1
        for candidate in _candidates(response)
        for part in _parts(candidate)
        if _get(part, "function_call") is not None
    )


def _search_queries(response: Any) -> list[str]:
    queries: list[str] = []
    for candidate in _candidates(response):
        found = _get(_get(candidate, "grounding_metadata"), "web_search_queries")
        if isinstance(found, list | tuple):
            queries.extend(str(q) for q in found)
    return queries


def usage_from_response(response: Any) -> Usage:
    """Canonical usage of a whole ``GenerateContentResponse`` (JSON dict or SDK object)."""
    metadata = _get(response, "usage_metadata")
    if metadata is None:
        raise UnknownShape("Gemini response has no usageMetadata")
    return usage_from_metadata(
        metadata, tool_calls=_function_calls(response), web_searches=len(_search_queries(response))
    )


def _raw(metadata: Any) -> dict[str, Any] | None:
    """The usage block as the REST API sends it (camelCase, no null fields), whatever form the
    caller holds: the REST JSON, the same in snake_case (e.g. a deferred capture's snapshot)
    or the SDK's object."""
    if metadata is None:
        return None
    if isinstance(metadata, Mapping):
        return dict(without_none(metadata, _camel))
    dump = getattr(metadata, "model_dump", None)
    if callable(dump):
        out = dump(mode="json", exclude_none=True, by_alias=True)
        if isinstance(out, dict):
            return out
    return None


def _model(response: Any) -> str | None:
    model = _get(response, "model_version")
    return model if isinstance(model, str) and model else None


def extract_response(response: Any, model: str | None = None) -> Extracted:
    """The extractor registered for ``("gemini", "generate_content")``."""
    return Extracted(
        usage=usage_from_response(response),
        model=_model(response) or model,
        raw_usage=_raw(_get(response, "usage_metadata")),
    )


register_extractor(PROVIDER, API, extract_response, default=True)
register_extractor("google", API, extract_response, default=True)  # the name the price book uses


@dataclass(slots=True)
class GeminiStreamState:
    """Folds the chunks of one ``streamGenerateContent`` stream into the usage they report.

    ``add`` takes each chunk, ``result()`` gives what is known so far (the
    ``StreamAccumulator`` protocol of ``jevons.capture.adapters``). ``finished`` turns true when
    a candidate carries a ``finishReason``; a stream cut off before that is incomplete.
    """

    model: str | None = None
    finished: bool = False
    tool_calls: int = 0
    search_queries: list[str] = field(default_factory=list)
    reported: FoldedUsage = field(default_factory=FoldedUsage)  # the usageMetadata blocks

    def add(self, chunk: Any) -> None:
        self.model = _model(chunk) or self.model
        self.tool_calls += _function_calls(chunk)
        queries = _search_queries(chunk)
        if queries:
            self.search_queries = queries
        metadata = _get(chunk, "usage_metadata")
        if metadata is not None:
            self.reported.fold(_raw(metadata))
        if any(_get(c, "finish_reason") is not None for c in _candidates(chunk)):
            self.finished = True

    def usage(self) -> Usage:
        if not self.reported.raw:
            raise UnknownShape("the Gemini stream reported no usageMetadata")
        return usage_from_metadata(
            self.reported.raw, tool_calls=self.tool_calls, web_searches=len(self.search_queries)
        )

    def result(self) -> Extracted:
        """What the stream reported so far; ``complete`` only once a candidate finished. A
        ``usageMetadata`` without any field this adapter knows (the SDK drops the fields it
        does not declare), or a finished stream without one, is a shape it does not know:
        ``UnknownShape``, and ``review()`` gives its event."""
        raw = self.reported.raw
        if not raw:
            return self.reported.missing("Gemini", self.finished, self.model,
                                         "stream ended before any usageMetadata; usage unknown")
        return Extracted(
            usage=self.usage(), model=self.model, complete=self.finished, raw_usage=dict(raw),
            note=None if self.finished else "stream ended before finishReason; usage is a lower bound",
        )

    def review(self) -> Extracted:
        return self.reported.review(self.model)


# ---------------------------------------------------------------------- wrapping
# The ``jevons*`` keyword arguments of the public call in progress (``generate_content`` and
# friends), handed to each per-request call it makes (automatic function calling and stream
# continuation make several).
_PER_CALL: ContextVar[dict[str, Any] | None] = ContextVar("jevons_gemini_per_call", default=None)


def _bundle(meter: Meter, kwargs: dict[str, Any]) -> dict[str, Any] | None:
    """Remove the ``jevons*`` kwargs from a public call; ``None`` when it had none."""
    per_call = pop_call_attribution(kwargs, meter._error)
    return None if per_call is None else per_call.as_bundle()


def _with_bundle_sync(gen: Iterator[Any], bundle: dict[str, Any]) -> Iterator[Any]:
    """Iterate ``gen`` with the bundle visible to each step (not between steps)."""
    try:
        while True:
            token = _PER_CALL.set(bundle)
            try:
                item = next(gen)
            except StopIteration:
                return
            finally:
                _PER_CALL.reset(token)
            yield item
    finally:
        close = getattr(gen, "close", None)
        if close is not None:
            close()


async def _with_bundle_async(agen: AsyncIterator[Any], bundle: dict[str, Any]) -> AsyncIterator[Any]:
    try:
        while True:
            token = _PER_CALL.set(bundle)
            try:
                item = await agen.__anext__()
            except StopAsyncIteration:
                return
            finally:
                _PER_CALL.reset(token)
            yield item
    finally:
        aclose = getattr(agen, "aclose", None)
        if aclose is not None:
            await aclose()


def _public(meter: Meter, original: Callable[..., Any]) -> Callable[..., Any]:
    """A public method that accepts the ``jevons*`` kwargs and passes them on to the metered
    per-request calls it makes. Without them it is the SDK's method, result untouched."""
    if inspect.iscoroutinefunction(original):

        @functools.wraps(original)
        async def apublic(*args: Any, **kwargs: Any) -> Any:
            bundle = _bundle(meter, kwargs)
            if bundle is None:
                return await original(*args, **kwargs)
            token = _PER_CALL.set(bundle)
            try:
                result = await original(*args, **kwargs)
            finally:
                _PER_CALL.reset(token)
            if inspect.isasyncgen(result):  # generate_content_stream: requests made while iterated
                return _with_bundle_async(result, bundle)
            return result

        return apublic

    @functools.wraps(original)
    def public(*args: Any, **kwargs: Any) -> Any:
        bundle = _bundle(meter, kwargs)
        if bundle is None:
            return original(*args, **kwargs)
        token = _PER_CALL.set(bundle)
        try:
            result = original(*args, **kwargs)
        finally:
            _PER_CALL.reset(token)
        if inspect.isgenerator(result):
            return _with_bundle_sync(result, bundle)
        return result

    return public


def _per_request(metered: Callable[..., Any]) -> Callable[..., Any]:
    """The metered per-request method, given the public call's ``jevons*`` kwargs."""
    if inspect.iscoroutinefunction(metered):

        @functools.wraps(metered)
        async def arequest(*args: Any, **kwargs: Any) -> Any:
            bundle = _PER_CALL.get()
            if bundle is not None:
                kwargs.setdefault("jevons", bundle)
            return await metered(*args, **kwargs)

        return arequest

    @functools.wraps(metered)
    def request(*args: Any, **kwargs: Any) -> Any:
        bundle = _PER_CALL.get()
        if bundle is not None:
            kwargs.setdefault("jevons", bundle)
        return metered(*args, **kwargs)

    return request


#: ``models/gemini-2.5-flash`` and ``gemini-2.5-flash`` name one model
_MODEL_PREFIX = "models/"


# what ``extract_response`` reads again after a crash (see ``jevons.capture.record``): the model
# version, the usage metadata and, of the candidates, one ``{"function_call": {}}`` part per
# function call and one (empty) query per web search query (no content, no query is logged)
_RESPONSE_NAMES = ("model_version", "usage_metadata", "candidates")
_response_fields = operator.attrgetter("model_version", "usage_metadata", "candidates")
_FUNCTION_CALL: dict[str, Any] = {"function_call": {}}


def _response_snapshot(response: Any) -> tuple[tuple[str, ...], tuple[Any, ...]] | None:
    """A ``GenerateContentResponse``'s snapshot, as ``(names, values)`` of its top-level fields;
    ``None`` for anything else or one without ``usage_metadata``: recorded at once."""
    try:
        model, metadata, candidates = _response_fields(response)
    except AttributeError:
        return None
    if metadata is None:
        return None
    calls = queries = 0
    if type(candidates) is list:
        for candidate in candidates:
            parts = getattr(getattr(candidate, "content", None), "parts", None)
            if type(parts) is list:
                for part in parts:
                    if getattr(part, "function_call", None) is not None:
                        calls += 1
            found = getattr(getattr(candidate, "grounding_metadata", None), "web_search_queries", None)
            if isinstance(found, list | tuple):
                queries += len(found)
    kept = [{"content": {"parts": [_FUNCTION_CALL] * calls},
             "grounding_metadata": {"web_search_queries": [""] * queries}}] if calls or queries else []
    return _RESPONSE_NAMES, (model, metadata, kept)


def _observe(call: Call, iterator: Any) -> Any:
    """The SDK's chunk generator, observed. The sync ``_generate_content_stream`` is a generator
    whose request (and its retries) is sent on the first ``next()``, after the metered method
    returned, so the call stays current while each chunk is fetched (``iterate_in_call``): the
    attempt hooks see each HTTP attempt, and an HTTP error there is a known, unbilled attempt."""
    state = GeminiStreamState()
    if hasattr(iterator, "__anext__"):
        return observe_async(call, aiterate_in_call(call, iterator), state)
    return observe_sync(call, iterate_in_call(call, iterator), state)


def _always_stream(kwargs: dict[str, Any]) -> bool:
    return True


def _leave_open() -> None:
    """``close`` of a metered copy: the HTTP clients belong to the original client."""


async def _aleave_open() -> None:
    """``aclose`` of a metered copy (see ``_leave_open``)."""


# per-request method -> public methods that accept the ``jevons*`` kwargs for it
_REQUEST_METHODS = ("_generate_content", "_generate_content_stream")
_PUBLIC_METHODS = ("generate_content", "generate_content_stream")


class GeminiAdapter:
    """Meters ``google.genai.Client``: ``models.generate_content``,
    ``models.generate_content_stream`` and their ``client.aio`` forms (so ``chats`` too).

    Each HTTP request is one metered call: the adapter wraps the SDK's per-request methods
    (``_generate_content``/``_generate_content_stream``), so the several requests of automatic
    function calling or of stream continuation are each recorded with their own usage; the
    public methods only carry the ``jevons*`` kwargs to them. (If a future SDK renames those
    internals, the public methods themselves are metered instead.)

    Each HTTP attempt of the SDK's retries is recorded, streams and ``client.aio`` included: the
    sync stream is iterated with its call in flight (its request is sent on the first chunk),
    and the attempts the httpx hooks cannot see (aiohttp, ``requests``) are recorded at the
    one-attempt methods of the copy's own API client (see ``wrap``).
    """

    name = "gemini"

    def matches(self, client: object) -> bool:
        try:
            from google.genai import Client
        except ImportError:
            return False
        return isinstance(client, Client)

    def wrap(self, meter: Meter, client: T, attribution: Attribution, provider: str | None) -> T:
        c: Any = client
        api_client = c._api_client
        prov = provider or ("vertex_ai" if getattr(api_client, "vertexai", False) else PROVIDER)
        call_spec = MethodSpec(API, prov, PROVIDER, model_prefix=_MODEL_PREFIX,
                               snapshot=_response_snapshot)
        stream_spec = MethodSpec(API, prov, PROVIDER, model_prefix=_MODEL_PREFIX, stream=_observe,
                                 is_stream=_always_stream)
        new: Any = copy.copy(c)
        # ``Client.__del__`` closes its API client's HTTP clients, which the copy shares with
        # the original: the copy keeps the original alive, and closing (or collecting) the copy
        # leaves them open for the original, which owns them.
        vars(new)["_jevons_unwrapped"] = c
        own_api = copy.copy(api_client)
        patch_method(own_api, "close", _leave_open)
        patch_method(own_api, "aclose", _aleave_open)
        new._api_client = own_api
        new._models = copy.copy(c._models)
        new._aio = copy.copy(c._aio)
        new._aio._api_client = own_api
        new._aio._models = copy.copy(c._aio._models)
        for http_client in (getattr(api_client, "_httpx_client", None),
                            getattr(api_client, "_async_httpx_client", None)):
            if http_client is not None:
                install_attempt_hooks(http_client)
        # the SDK's async requests go through aiohttp when it is installed (and Vertex AI's
        # sync ones through ``requests``), which the httpx hooks do not see: each attempt of
        # its retry loop is recorded at its one-attempt method (on the copy's own API client,
        # which the copy's ``models`` use)
        for name in ("_request_once", "_async_request_once"):
            attempt = getattr(own_api, name, None)
            if callable(attempt):
                patch_method(own_api, name, record_attempts(attempt))
        new._models._api_client = own_api
        new._aio._models._api_client = own_api
        for models in (new._models, new._aio._models):
            self._patch(meter, models, call_spec, stream_spec, attribution, prov)
        return new  # type: ignore[no-any-return]

    @staticmethod
    def _patch(meter: Meter, models: Any, call_spec: MethodSpec, stream_spec: MethodSpec,
               attribution: Attribution, provider: str) -> None:
        per_request = all(callable(getattr(models, name, None)) for name in _REQUEST_METHODS)
        targets = _REQUEST_METHODS if per_request else _PUBLIC_METHODS
        for name, spec in zip(targets, (call_spec, stream_spec), strict=True):
            metered = instrument(meter, getattr(models, name), spec, attribution, provider)
            patch_method(models, name, _per_request(metered) if per_request else metered)
        if per_request:
            for name in _PUBLIC_METHODS:
                patch_method(models, name, _public(meter, getattr(models, name)))


register_adapter(GeminiAdapter())
