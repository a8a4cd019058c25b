"""Provider adapters: the contract every ``jevons/capture/adapters/<provider>.py`` follows.

One module per provider; provider-specific code lives nowhere else. A module does two things
at import time, and nothing else:

1. **Registers its extractors** (``jevons.capture.extract.register_extractor``): one function
   per API, ``fn(response, model) -> Extracted``, that reads a response given as a JSON dict *or*
   as the SDK's object (use ``extract.field(obj, name)`` which reads both, and
   ``extract.to_int``), converts the provider's semantics into canonical ``Usage`` (input
   includes cache reads/writes, output includes reasoning, breakdowns are subsets) and raises
   (e.g. ``extract.UnknownShape``) on a shape it does not know. Pass ``default=True`` for the
   API used when ``usage_from_response`` is called without ``api``. The mapping from provider
   name to module is ``extract.PROVIDER_MODULES`` (``anthropic``, ``bedrock``, ``gemini``,
   ``mistral`` are already mapped to ``adapters/<name>.py``).

2. **Registers an adapter** (``register_adapter(obj)``): an object with ``name`` (str),
   ``matches(client) -> bool`` and ``wrap(meter, client, attribution, provider) -> client``.
   ``Meter.wrap`` imports the adapter module from ``ADAPTER_MODULES`` keyed by the top-level
   package of the client's class (``openai``, ``anthropic``, ``google``, ``mistralai``,
   ``botocore``, ``aiobotocore``) and asks each registered adapter ``matches``.

``wrap`` must return an object of the client's own type (``isinstance`` holds): the helpers
below make a shallow copy of the client (``fresh_copy``, which drops cached sub-resources so the
copy builds its own) and replace methods on the copy's resource objects with instance
attributes (``patch_method``), so the caller's original client stays unmetered and two wraps of
one client with different attribution do not interfere. The SDK's own stream objects are kept:
``patch_stream`` swaps the stream's internal iterator for an observing one.
On Stainless SDKs (OpenAI, Anthropic) the copy gets no names of its own: ``register_wrapped``
records it, and hooks set once on the SDK's classes (``meter_resources``, which hooks its cached
resources, ``hook_copies``, ``install_retry_hook``) meter what a registered client does and
leave every other client of the class alone (why: ``MeteredResource``).

Wrapping a method: ``instrument(meter, bound_method, spec, attribution, provider,
is_async=...)`` returns the metered function (``is_async`` is detected when omitted, but SDKs
that wrap their async methods in plain decorators need it explicitly: the OpenAI adapter passes
``isinstance(client, AsyncOpenAI)``). Per call it:

1. ``meter.begin(provider, api, model, attribution, kwargs)`` — removes the ``jevons*`` keyword
   arguments (``jevons_customer=``, ``jevons_feature=``, ``jevons_tags=``, ``jevons={...}``),
   resolves attribution, takes the run step (may raise ``BudgetExceeded``), runs the guards (may
   raise ``CapReached``) and returns a ``Call``;
2. ``spec.prepare(call, kwargs, streaming)`` may adjust the provider kwargs (OpenAI asks for
   usage on streams);
3. calls the provider with ``CURRENT_CALL`` set to the call, so HTTP attempt hooks
   (``install_attempt_hooks(http_client)``, httpx/httpx2 event hooks; on Stainless SDKs
   ``watch_retries(sdk_client)``, the cheaper retry hook where it applies) count each attempt
   of the SDK's own retries: every attempt before the last becomes an ``error`` event with its
   attempt number (on the lean path, ``retries_hooked=True``, no ``Call`` is made while the
   provider runs: the retry hook keeps what it sees in ``_RETRIES`` instead, see there);
4. on an exception: ``call.fail(exc)`` and re-raise it unchanged; on a stream:
   ``spec.stream(call, result)`` returns the instrumented stream; otherwise
   ``spec.on_result(call, result)`` (default ``call.finish(result)``, which runs the
   extractor registered for ``(spec.extractor or provider, spec.api)``).

A ``Call`` ends exactly once, and none of its methods raise: ``finish(response)``,
``finish_extracted(Extracted, status="ok")``, ``fail(exc, extracted=None)``,
``abort(extracted=None)`` (stream abandoned or cut off). A stream accumulator is any object
with ``add(item)`` (called for each streamed item) and ``result() -> Extracted`` (called at the
end, on error or on abort; return ``complete=False`` when the usage block was not seen). A
stream whose usage block the adapter does not know is an event flagged for review with the raw
block kept, as a complete response is: ``result()`` raises (as an extractor does; the error is
counted) and the accumulator's optional ``review() -> Extracted`` gives that event
(``build.review_usage``; without ``review`` the raw block is lost).

SDKs that send a stream's request lazily (on the first ``next()``, after the metered method
returned: Gemini) iterate it through ``iterate_in_call``/``aiterate_in_call`` so the attempt
hooks still see its HTTP attempts; SDKs whose HTTP attempts bypass httpx (aiohttp, requests)
wrap their one-attempt function with ``record_attempts``.

Tests: the ``replay`` fixture (``tests/capture/conftest.py``) is a started
``replay.ReplayServer`` reset for each test; point the SDK at ``replay.url`` and script answers
with ``replay.on(path, Reply.json(...) | Reply.sse([...]) | "provider/fixture_name")``;
``replay.requests`` records what the SDK sent. The ``meter`` fixture is a ``Meter`` with an
in-memory store and the small price book ``test_book`` (extend ``TEST_PRICES`` there, or pass
your own ``PriceBook``). See ``tests/replay/server.py`` for the fixture file format and
``register_framing`` for custom stream framing.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import threading
import weakref
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    Iterator,
    Mapping,
    Sequence,
)
from contextvars import ContextVar
from dataclasses import dataclass, field
from importlib import import_module
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from jevons.capture.attribution import _CALL_KWARG_NAMES, _CONTEXT, EMPTY, Attribution
from jevons.capture.build import review_extracted, review_usage
from jevons.capture.extract import Extracted, UnknownShape
from jevons.capture.meter import CURRENT_CALL, Call, http_status
from jevons.capture.record import Deferrer, FieldSnapshot, deferrer, log_capture
from jevons.capture.run import _RUN
from jevons.usage import Usage

if TYPE_CHECKING:
    from jevons.capture.meter import Meter

__all__ = [
    "ADAPTER_MODULES",
    "WRAPPED",
    "Adapter",
    "FieldSnapshot",
    "FoldedUsage",
    "MethodSpec",
    "StreamAccumulator",
    "Wrapped",
    "aiterate_in_call",
    "awaited_with_bundle",
    "find_adapter",
    "fresh_copy",
    "hook_copies",
    "hook_resource",
    "install_attempt_hooks",
    "install_retry_hook",
    "instrument",
    "iterate_in_call",
    "meter_resource",
    "meter_resources",
    "observe_async",
    "observe_sync",
    "patch_method",
    "patch_stream",
    "record_attempts",
    "register_adapter",
    "register_wrapped",
    "snapshot_fields",
    "watch_retries",
]

T = TypeVar("T")

# top-level package of a client's class -> adapter module
ADAPTER_MODULES: dict[str, str] = {
    "openai": "jevons.capture.adapters.openai",
    "anthropic": "jevons.capture.adapters.anthropic",
    "google": "jevons.capture.adapters.gemini",
    "mistralai": "jevons.capture.adapters.mistral",
    "botocore": "jevons.capture.adapters.bedrock",
    "aiobotocore": "jevons.capture.adapters.bedrock",
    "boto3": "jevons.capture.adapters.bedrock",
}


class Adapter(Protocol):
    name: str

    def matches(self, client: object) -> bool: ...

    def wrap(self, meter: Meter, client: T, attribution: Attribution, provider: str | None) -> T: ...


_ADAPTERS: list[Adapter] = []


def register_adapter(adapter: Adapter) -> None:
    """Register (or replace, by ``name``) an adapter; later registrations are asked first."""
    _ADAPTERS[:] = [a for a in _ADAPTERS if a.name != adapter.name]
    _ADAPTERS.insert(0, adapter)


def find_adapter(client: object) -> Adapter | None:
    for klass in type(client).__mro__:
        module = ADAPTER_MODULES.get(klass.__module__.split(".", 1)[0])
        if module is not None:
            with contextlib.suppress(ImportError):
                import_module(module)
    for adapter in _ADAPTERS:
        if adapter.matches(client):
            return adapter
    return None


# ---------------------------------------------------------------------- client copies
def fresh_copy(client: T) -> T:
    """A shallow copy of ``client`` sharing its HTTP pool, whose sub-resources are its own, so
    that patching them leaves the original untouched: cached ones (``functools.cached_property``
    values such as ``client.chat``) are dropped and built again on first use; ones the client
    made in its ``__init__`` (``AnthropicBedrock().messages``: an object whose ``_client`` is
    the client) are made again for the copy, the way the client made them."""
    new = copy.copy(client)
    state = getattr(new, "__dict__", None)
    if state is not None:
        for klass in type(client).__mro__:
            for name, attr in vars(klass).items():
                if isinstance(attr, functools.cached_property):
                    state.pop(name, None)
        for name, value in list(state.items()):
            if getattr(value, "_client", None) is client:
                state[name] = type(value)(new)
    return new


def patch_method(obj: Any, name: str, replacement: Callable[..., Any]) -> None:
    """Replace ``obj.name`` for this instance only (methods calling ``self.name`` see it)."""
    object.__setattr__(obj, name, replacement)


# ---------------------------------------------------------------------- HTTP attempts
_current_call = CURRENT_CALL.get


def _on_request(request: Any) -> None:
    call = _current_call()
    if call is not None:
        call.http_attempts.append(None)


def _on_response(response: Any) -> None:
    call = _current_call()
    if call is not None:
        attempts = call.http_attempts
        if attempts:
            attempts[-1] = response.status_code


async def _aon_request(request: Any) -> None:
    _on_request(request)


async def _aon_response(response: Any) -> None:
    _on_response(response)


def install_attempt_hooks(http_client: Any) -> bool:
    """Add request/response event hooks to an httpx (or httpx2) client so each HTTP attempt
    of a metered call is seen, including the SDK's internal retries. Idempotent; the hooks do
    nothing outside a metered call. Returns False when the client has no event hooks."""
    hooks = getattr(http_client, "event_hooks", None)
    if not isinstance(hooks, dict):
        return False
    is_async = any("Async" in k.__name__ for k in type(http_client).__mro__)
    req, resp = (_aon_request, _aon_response) if is_async else (_on_request, _on_response)
    requests = list(hooks.get("request", ()))
    if req in requests:
        return True
    http_client.event_hooks = {
        **hooks,
        "request": [*requests, req],
        "response": [*hooks.get("response", ()), resp],
    }
    return True


# A metered call on the lean path (``instrument``) sets no ``CURRENT_CALL``: the retry hook
# then pushes what it sees onto ``_RETRIES``, a chain of ``(previous, failed, status, depth)``
# nodes in the caller's context, and the call compares the chain before and after the provider
# returned (a context variable read, no allocation: a call that is not retried pays nothing
# more). ``failed``: the attempt failed with ``status`` and is retried; else the next attempt
# is sent. A retry of an unmetered request made through the wrapped client (``files.create``)
# pushes too; no call reads it, and the chain starts over past ``_RETRY_CHAIN_MAX`` nodes.
_RetryNode = tuple[Any, bool, int | None, int]
_RETRIES: ContextVar[_RetryNode | None] = ContextVar("jevons_retries", default=None)
_retries_seen = _RETRIES.get
_RETRY_CHAIN_MAX = 256
#: ``_on_retry``'s answer on the lean path (no call in flight, a node pushed)
_LEAN = object()


def _push_retry(failed: bool, status: int | None) -> None:
    last = _RETRIES.get()
    depth = 0 if last is None else last[3] + 1
    _RETRIES.set((last if depth < _RETRY_CHAIN_MAX else None, failed, status,
                  depth if depth < _RETRY_CHAIN_MAX else 0))


def attempts_since(mark: _RetryNode | None) -> list[int | None]:
    """The HTTP attempts (status of each, ``None``: no response or not known) that the retry
    hook saw since ``mark`` (``_RETRIES`` before the lean call), as ``Call.http_attempts``
    would hold them; ``[]`` when it saw none."""
    nodes = []
    node = _RETRIES.get()
    while node is not None and node is not mark:
        nodes.append(node)
        node = node[0]
    attempts: list[int | None] = []
    for _previous, failed, status, _depth in reversed(nodes):
        if not failed:
            attempts.append(None)
        elif attempts:
            attempts[-1] = status
        else:
            attempts.append(status)
    return attempts


def _on_retry(response: Any) -> Any:
    """The SDK will retry the call in flight once it has waited: its last attempt failed with
    ``response`` (``None``: no response, a timeout or connection error). Returns the call (or
    ``_LEAN``), for ``_retrying`` once the wait is over."""
    status = None if response is None else response.status_code
    call = _current_call()
    if call is None:
        _push_retry(True, status)
        return _LEAN
    attempts = call.http_attempts
    if attempts:
        attempts[-1] = status
    else:
        attempts.append(status)
    return call


def _retrying(call: Any) -> None:
    """The SDK waited and now sends the next attempt (an entry whose outcome ends the call).
    Not before the wait: a call cancelled or interrupted while waiting made no such attempt."""
    if call is _LEAN:
        _push_retry(False, None)
    elif call is not None:
        call.http_attempts.append(None)


_RETRY_PARAMETERS = frozenset({"retries_taken", "max_retries", "options", "response"})


#: the SDK clients whose retries the hook on their class reports (``install_retry_hook``)
_RETRY_WATCHED: weakref.WeakSet[Any] = weakref.WeakSet()
_CLASS_HOOKS_LOCK = threading.Lock()


def _retry_hook(sleep: Callable[..., Any]) -> Callable[..., Any]:
    """``sleep`` (a Stainless client class's ``_sleep_for_retry``) reporting each retry of a
    watched client's call in flight (``_on_retry`` / ``_retrying``); any other client of the
    class passes straight through."""
    if inspect.iscoroutinefunction(sleep):

        @functools.wraps(sleep)
        async def asleep_for_retry(self: Any, **kwargs: Any) -> Any:
            if self not in _RETRY_WATCHED:
                return await sleep(self, **kwargs)
            call = _on_retry(kwargs.get("response"))
            result = await sleep(self, **kwargs)
            _retrying(call)
            return result

        hook: Callable[..., Any] = asleep_for_retry
    else:

        @functools.wraps(sleep)
        def sleep_for_retry(self: Any, **kwargs: Any) -> Any:
            if self not in _RETRY_WATCHED:
                return sleep(self, **kwargs)
            call = _on_retry(kwargs.get("response"))
            result = sleep(self, **kwargs)
            _retrying(call)
            return result

        hook = sleep_for_retry
    hook._jevons_retry_hook = True  # type: ignore[attr-defined]
    return hook


def install_retry_hook(sdk_client: Any) -> bool:
    """See the SDK's own retries on a Stainless-generated client (``openai``, ``anthropic``):
    its request loop calls ``self._sleep_for_retry(..., response=<failed response or None>)``
    once for each failed attempt it retries, so a hook there records every retried attempt,
    with its HTTP status, at no cost to a call that is not retried (the httpx event hooks of
    ``install_attempt_hooks`` run on every request: 4-7 us of a metered call's added
    latency, measured).

    The hook is set once on the client's class, and reports only for the clients passed here
    (a weak set); for any other client of the class it only calls the SDK's method. Why on the
    class: a name set on one instance takes one of the class's shared attribute keys (at most
    30 in CPython 3.11, the client's own use two dozen); past them the instance's ``__dict__``
    becomes a table of its own, and the SDK's method lookups, specialized for the process's
    other clients of the class, fall back to generic ones on every call of this one (measured
    in session 14 with callgrind: ~180 a chat call, and most of the data-cache misses jevons
    added above python-floor).

    False when the client has no such method, or one whose keyword arguments differ (an SDK
    version that changed it), or one of its own on the instance: install the httpx hooks
    instead. False too for a client with middleware (``middleware=`` of the Anthropic SDK): a
    middleware may send a request again without that method (the SDK's refusal fallback
    does), and only the httpx hooks see every request."""
    sleep = getattr(sdk_client, "_sleep_for_retry", None)
    if sleep is None or not callable(sleep) or getattr(sdk_client, "_middleware", None):
        return False
    if "_sleep_for_retry" in getattr(sdk_client, "__dict__", {}):
        return False  # (set on this instance by someone else: the class's hook would not run)
    cls = type(sdk_client)
    with _CLASS_HOOKS_LOCK:
        current = getattr(cls, "_sleep_for_retry", None)
        if not getattr(current, "_jevons_retry_hook", False):
            try:
                parameters = set(inspect.signature(sleep).parameters)
            except (TypeError, ValueError):
                return False
            if parameters != _RETRY_PARAMETERS or not callable(current):
                return False
            type.__setattr__(cls, "_sleep_for_retry", _retry_hook(current))
        _RETRY_WATCHED.add(sdk_client)
    return True


def watch_retries(sdk_client: Any) -> bool:
    """See every attempt of a Stainless SDK client's calls: its retry method hooked where it
    can be (``install_retry_hook``), else httpx event hooks on its HTTP client. True: the
    retry hook sees them, nothing else (pass ``retries_hooked=True`` to ``instrument``)."""
    if install_retry_hook(sdk_client):
        return True
    install_attempt_hooks(getattr(sdk_client, "_client", None))
    return False


def record_attempts(attempt: Callable[..., Any]) -> Callable[..., Any]:
    """``attempt`` (an SDK's function that makes one HTTP attempt, called again for each of its
    retries) recording each attempt of the metered call in flight, as the httpx hooks do, for
    transports they do not see (aiohttp, requests): the status of a success is taken as 200,
    that of a failure is the exception's (``Call.fail``'s rule, ``None``: no response). An
    attempt the hooks already counted is not counted twice; outside a metered call it only
    calls ``attempt``."""
    if inspect.iscoroutinefunction(attempt):

        @functools.wraps(attempt)
        async def arecorded(*args: Any, **kwargs: Any) -> Any:
            call = _current_call()
            if call is None:
                return await attempt(*args, **kwargs)
            with _attempt_of(call):
                return await attempt(*args, **kwargs)

        return arecorded

    @functools.wraps(attempt)
    def recorded(*args: Any, **kwargs: Any) -> Any:
        call = _current_call()
        if call is None:
            return attempt(*args, **kwargs)
        with _attempt_of(call):
            return attempt(*args, **kwargs)

    return recorded


@contextlib.contextmanager
def _attempt_of(call: Call) -> Iterator[None]:
    """One entry in ``call.http_attempts`` for the attempt made in the block, unless the httpx
    hooks already made it: 200 when it returns, the exception's HTTP status when it raises."""
    attempts = call.http_attempts
    seen = len(attempts)
    try:
        yield
    except BaseException as exc:
        if len(attempts) == seen:
            attempts.append(http_status(exc))
        raise
    if len(attempts) == seen:
        attempts.append(200)


# ---------------------------------------------------------------------- methods
def _default_is_stream(kwargs: dict[str, Any]) -> bool:
    return kwargs.get("stream") is True


def _default_on_result(call: Call, result: Any) -> None:
    call.finish(result)


@dataclass(frozen=True, slots=True)
class MethodSpec:
    """How to meter one SDK method."""

    api: str
    provider: str = ""  # default provider (wrap's ``provider=`` overrides)
    extractor: str | None = None  # extractor provider key (default: the provider)
    model_kwarg: str = "model"
    prepare: Callable[[Call, dict[str, Any], bool], None] | None = None
    stream: Callable[[Call, Any], Any] | None = None
    is_stream: Callable[[dict[str, Any]], bool] = _default_is_stream
    on_result: Callable[[Call, Any], None] = _default_on_result
    # what of a complete response must be logged for its extractor to read it again after a
    # crash (a dict in the provider's JSON shape, or a ``(names, values)`` pair of its top-level
    # fields; pydantic models in it are fine; ``None`` for a response it does not know, which
    # is then read at once; see ``snapshot_fields``): with one, a complete
    # response's extraction and pricing are left to the ledger's background thread (see
    # ``jevons.capture.record``); no snapshot: the response is read on the caller's thread
    snapshot: Callable[[Any], Any] | None = None
    # ``prepare`` only changes streaming calls (not called for the others: one call fewer)
    prepare_streams_only: bool = False
    # the region the client calls (Bedrock, a cloud-hosted Anthropic): priced by it, and set
    # on every call without a ``prepare``, so that such a call may take the direct path
    region: str | None = None
    # a prefix the SDK accepts on model names and prices do not use (Gemini's ``models/``),
    # removed from the requested model on both paths
    model_prefix: str | None = None


_UNOBSERVED = "stream could not be observed"
_UNREADABLE = "response could not be read"


def instrument(
    meter: Meter,
    fn: Callable[..., Any],
    spec: MethodSpec,
    attribution: Attribution,
    provider: str | None = None,
    *,
    is_async: bool | None = None,
    retries_hooked: bool = False,
) -> Callable[..., Any]:
    """The metered version of ``fn``. ``is_async``: whether ``fn`` returns an awaitable; by
    default detected (``inspect.iscoroutinefunction`` on ``fn`` and what it wraps). Pass it
    explicitly when the SDK decorates its async methods with plain functions.
    ``retries_hooked``: the client's HTTP attempts are seen by the retry hook alone
    (``watch_retries`` returned True), which lets ordinary calls take the lean path."""
    prov = provider or spec.provider
    api = spec.api
    extractor = spec.extractor or prov
    model_kw = spec.model_kwarg
    prepare = spec.prepare
    streams_only = spec.prepare_streams_only
    on_stream = spec.stream
    is_stream = spec.is_stream
    default_is_stream = is_stream is _default_is_stream
    on_result = spec.on_result
    snapshot = spec.snapshot
    region = spec.region
    model_prefix = spec.model_prefix
    begin = meter.begin
    set_call = CURRENT_CALL.set
    reset_call = CURRENT_CALL.reset
    # The direct path. A complete response of a call that needs nothing of ``begin`` but
    # the attribution (no ``jevons*`` kwargs, no run, no guard) and nothing of ``prepare``
    # (not a stream) is handed to ``record.log_capture`` from the metered function itself:
    # the same steps as ``begin`` / ``_prepare`` / ``on_result`` / ``Call.finish``, six Python
    # frames fewer. Why: inside a real SDK call each frame of jevons runs on CPU caches the
    # SDK left cold (about 1 us a frame, measured), and this is every ordinary call's path.
    # The spec's contract makes it exact: a response its snapshot knows needs nothing of
    # ``on_result`` but ``Call.finish`` (``MethodSpec.snapshot``).
    direct = snapshot is not None and default_is_stream and (prepare is None or streams_only)
    no_call_kwargs = _CALL_KWARG_NAMES.isdisjoint
    context_of = _CONTEXT.get
    run_of = _RUN.get
    attribution_of = meter.attribution_of
    # the method's deferrer (see ``record.deferrer``), made once
    defer = None if snapshot is None else deferrer(meter, snapshot, prov, api, extractor, region, attribution)

    def _start(kwargs: dict[str, Any]) -> tuple[Call | None, bool, bool]:
        """``(call, streaming, direct)``: the call started by the direct path when it applies,
        else by ``begin`` (``None``: jevons failed, call the provider unmetered) and
        ``spec.prepare``."""
        model = kwargs.get(model_kw)
        if model_prefix is not None and type(model) is str:
            model = model.removeprefix(model_prefix)
        if (direct and type(model) is str and not meter.guards and no_call_kwargs(kwargs)
                and kwargs.get("stream") is not True and run_of() is None):
            try:
                # nothing to merge in the common case: ``attribution_of`` only when there is
                alone = context_of() is EMPTY and meter.default is EMPTY
                call = Call(meter, prov, api, model, attribution if alone else attribution_of(attribution),
                            None, None, extractor, region)
            except Exception as exc:
                meter._error(exc, "adapter")
                return None, False, False
            call.deferrer = defer
            return call, False, True
        started = begin(prov, api, model, attribution, kwargs, extractor=extractor, region=region)
        if started is None:
            return None, False, False
        started.deferrer = defer
        return started, _prepare(started, kwargs), False

    # The pre- and post-call work is shared by the sync and async wrappers.

    def _prepare(call: Call, kwargs: dict[str, Any]) -> bool:
        """Whether the call streams; lets ``spec.prepare`` adjust the provider kwargs."""
        streaming = False
        try:
            streaming = kwargs.get("stream") is True if default_is_stream else is_stream(kwargs)
            if prepare is not None and (streaming or not streams_only):
                prepare(call, kwargs, streaming)
        except Exception as exc:
            meter._error(exc, "adapter")
        return streaming

    def _after(call: Call, result: Any, streaming: bool) -> Any:
        """The provider returned: instrument its stream, or record its response."""
        if streaming and on_stream is not None:
            try:
                return on_stream(call, result)
            except Exception as exc:
                meter._error(exc, "adapter")
                call.finish_extracted(review_extracted(None), "ok", _UNOBSERVED)
                return result
        try:
            on_result(call, result)
        except Exception as exc:
            meter._error(exc, "adapter")
            # the provider answered (and may have billed): keep the call, flagged for review
            call.finish_extracted(review_extracted(None), "ok", _UNREADABLE)
        return result

    if is_async is None:
        is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(inspect.unwrap(fn))
    if is_async:

        @functools.wraps(fn)
        async def ametered(*args: Any, **kwargs: Any) -> Any:
            bundle = _deferred_bundle()
            if bundle is not None:  # a helper's request made before jevons could pass it
                kwargs["jevons"] = bundle
                _DEFERRED_BUNDLE.set(None)  # for this call only, not one the SDK makes inside it
            call, streaming, taken = _start(kwargs)
            if call is None:
                return await fn(*args, **kwargs)
            token = set_call(call)
            try:
                result = await fn(*args, **kwargs)
            except BaseException as exc:
                call.fail(exc)
                raise
            finally:
                reset_call(token)
            if taken and log_capture(meter, call, result):  # else built now (see ``log_capture``)
                return result
            return _after(call, result, streaming)

        return ametered

    @functools.wraps(fn)
    def metered(*args: Any, **kwargs: Any) -> Any:
        call, streaming, taken = _start(kwargs)
        if call is None:
            return fn(*args, **kwargs)
        token = set_call(call)
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            call.fail(exc)
            raise
        finally:
            reset_call(token)
        if taken and log_capture(meter, call, result):  # else built now (see ``log_capture``)
            return result
        return _after(call, result, streaming)

    if not (direct and retries_hooked) or defer is None or model_prefix is not None:
        return metered  # (a model prefix: the general paths remove it)
    general = metered
    write: Deferrer = defer

    # The lean path: the direct path's call, with no ``Call`` and no ``CURRENT_CALL`` while
    # the provider runs, on a client whose attempts only the retry hook sees (it then pushes
    # onto ``_RETRIES``, see there). The response goes to the method's deferrer from here; the
    # ``Call`` is made only when one is needed: by the drain thread for the event, or here when
    # the provider raised, the SDK retried or the response is not deferred. Why: an ordinary
    # call's whole added latency is this function, run on the CPU caches the SDK left cold;
    # measured with callgrind it runs 37,700 instructions on the general path against 23,700
    # for the least a wrapper can do (``bench/bench_capture.py``'s python-floor).

    def _lean_call(model: str, mark: _RetryNode | None) -> Call | None:
        """The ``Call`` the lean path did not make, with the attempts the retry hook saw
        (``None``: jevons failed, counted)."""
        try:
            call = Call(meter, prov, api, model, attribution_of(attribution), None, None, extractor, region)
            call.http_attempts = attempts_since(mark)
            _RETRIES.set(mark)
        except Exception as exc:
            meter._error(exc, "adapter")
            return None
        return call

    def _lean_after(model: str, mark: _RetryNode | None, result: Any) -> Any:
        """The response of a lean call that ``write`` did not take, or that the SDK retried:
        recorded at once by its ``Call`` (not offered to ``write`` again: ``log_capture``'s rule
        declines a retried call, and ``write`` would decline the response it just declined)."""
        call = _lean_call(model, mark)
        if call is None:
            return result
        return _after(call, result, False)

    def _lean_failed(model: str, mark: _RetryNode | None, exc: BaseException) -> None:
        call = _lean_call(model, mark)
        if call is not None:
            call.fail(exc)

    # Both wrappers test whether a call takes the lean path inline, the same test (the direct
    # path's, see ``_start``, and a meter that defers): no function of its own, because a
    # Python frame on this path costs more than its few lines. Measured (session 11, 24 fresh
    # processes): sharing this test and the three other inline copies on the path (the
    # deferrer's snapshot and attribution check, ``append_capture``'s write) in functions
    # added 2.4 and 3.5 us a call at the median in two runs, slower in 18 and 21 of 24.
    if is_async:

        @functools.wraps(fn)
        async def alean(*args: Any, **kwargs: Any) -> Any:
            model = kwargs.get(model_kw)
            if not (type(model) is str and not meter.guards and no_call_kwargs(kwargs)
                    and kwargs.get("stream") is not True and run_of() is None and meter._deferred
                    and _deferred_bundle() is None):
                return await general(*args, **kwargs)
            mark = _retries_seen()
            try:
                result = await fn(*args, **kwargs)
            except BaseException as exc:
                _lean_failed(model, mark, exc)
                raise
            if _retries_seen() is mark and write(result, model):
                return result
            return _lean_after(model, mark, result)

        return alean

    @functools.wraps(fn)
    def lean(*args: Any, **kwargs: Any) -> Any:
        model = kwargs.get(model_kw)
        if not (type(model) is str and not meter.guards and no_call_kwargs(kwargs)
                and kwargs.get("stream") is not True and run_of() is None and meter._deferred):
            return general(*args, **kwargs)
        mark = _retries_seen()
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            _lean_failed(model, mark, exc)
            raise
        if _retries_seen() is mark and write(result, model):
            return result
        return _lean_after(model, mark, result)

    return lean


#: the per-call attribution (``jevons=`` bundle) of a request coroutine an SDK helper created
#: before jevons could give it the kwarg (``AsyncOpenAI``'s ``.stream()``): set while that
#: coroutine is awaited (``awaited_with_bundle``), read by the async metered method
_DEFERRED_BUNDLE: ContextVar[dict[str, Any] | None] = ContextVar("jevons_deferred_bundle", default=None)
_deferred_bundle = _DEFERRED_BUNDLE.get


async def awaited_with_bundle(request: Awaitable[T], bundle: dict[str, Any]) -> T:
    """Await ``request`` (a metered method's coroutine, not started) with ``bundle`` as its
    ``jevons=`` attribution."""
    token = _DEFERRED_BUNDLE.set(bundle)
    try:
        return await request
    finally:
        _DEFERRED_BUNDLE.reset(token)


def snapshot_fields(*names: str, model: str | None = None) -> FieldSnapshot:
    """A ``MethodSpec.snapshot`` that keeps the top-level fields ``names`` of a response (an
    SDK object or a dict), and the extra fields of the one named ``model`` (see
    ``jevons.capture.record.FieldSnapshot``)."""
    return FieldSnapshot(*names, extras_of=model)


@dataclass(frozen=True)
class Wrapped:
    """A client an adapter's ``wrap`` returned, as the hooks on its SDK's classes see it
    (``WRAPPED``): ``setup`` is what the adapter meters its resources with."""

    adapter: Adapter
    meter: Meter
    original: Any  # the client it copies (wrapping a wrapped client re-wraps this one)
    attribution: Attribution
    provider: str | None  # as passed to ``wrap``
    setup: Any


#: every client an adapter's ``wrap`` returned and registered (``register_wrapped``)
WRAPPED: weakref.WeakKeyDictionary[Any, Wrapped] = weakref.WeakKeyDictionary()
#: the resources already metered: a resource is made once per client, but two threads may
#: both find it new
_METERED_RESOURCES: weakref.WeakSet[Any] = weakref.WeakSet()


def register_wrapped(client: Any, wrapped: Wrapped) -> None:
    """Register a wrapped copy (before any of its resources is used), and set the hooks of its
    class's ``copy`` / ``with_options`` (``hook_copies``)."""
    WRAPPED[client] = wrapped
    hook_copies(type(client))


def meter_resource(resource: Any, client: Any, meter_it: Callable[[Any, Wrapped], None]) -> None:
    """Meter ``resource`` (one of ``client``'s) with ``meter_it`` if ``client`` is a wrapped
    one, once. A failure is counted and leaves the resource unmetered: the client works on."""
    w = WRAPPED.get(client)
    if w is None:
        return
    with _CLASS_HOOKS_LOCK:
        if resource in _METERED_RESOURCES:
            return
        _METERED_RESOURCES.add(resource)
    try:
        meter_it(resource, w)
    except Exception as exc:
        w.meter._error(exc, "wrap")


def _client_itself(client: Any) -> Any:
    return client


def _client_of_resource(resource: Any) -> Any:
    """The client of a Stainless resource (``client.chat`` for ``client.chat.completions``)."""
    return getattr(resource, "_client", None)


class MeteredResource(functools.cached_property[Any]):
    """A client class's cached resource (``client.responses``, ``client.chat.completions``...)
    whose methods are metered when it is made for a wrapped client (``WRAPPED``): set once on
    the SDK's class in place of its own ``cached_property`` (``hook_resource``), it does what
    that did, then meters the new resource (``meter_resource``). A client jevons did not wrap
    gets the SDK's resource unchanged; and since a cached resource is read from the instance's
    ``__dict__`` once made, no call pays for this.

    Why not patch the wrapped copy's resources as it is made (as before session 14): the copy
    then held every resource, used or not, and jevons' other names, more than the 30 shared
    attribute keys CPython 3.11 gives a class's instances; its ``__dict__`` became a table of
    its own, and the SDK's method lookups, specialized for the process's other clients of the
    class, fell back to generic ones on each of its calls (see ``install_retry_hook``)."""

    def __init__(self, original: functools.cached_property[Any], client_of: Callable[[Any], Any],
                 meter_it: Callable[[Any, Wrapped], None]) -> None:
        super().__init__(original.func)
        self.attrname = original.attrname
        self.__doc__ = original.__doc__
        self.original = original
        self.client_of = client_of
        self.meter_it = meter_it

    def __get__(self, instance: Any, owner: type[Any] | None = None) -> Any:
        value = super().__get__(instance, owner)
        if instance is not None:
            meter_resource(value, self.client_of(instance), self.meter_it)
        return value


def hook_resource(owner: type[Any], name: str, client_of: Callable[[Any], Any],
                  meter_it: Callable[[Any, Wrapped], None]) -> bool:
    """Set a ``MeteredResource`` for ``owner.name`` (once; ``client_of(instance)``: the client an
    instance of ``owner`` belongs to). False: ``name`` is no cached resource there (another
    SDK version, or made in ``__init__``): meter the wrapped copy's own with ``meter_resource``."""
    with _CLASS_HOOKS_LOCK:
        current = inspect.getattr_static(owner, name, None)
        if isinstance(current, MeteredResource):
            if name in vars(owner):
                return True
            current = current.original  # (a subclass gets a hook of its own)
        if type(current) is not functools.cached_property:
            return False
        type.__setattr__(owner, name, MeteredResource(current, client_of, meter_it))
    return True


def meter_resources(client: Any, path: str, meter_it: Callable[[Any, Wrapped], None],
                    owners: Sequence[type[Any]] | None = None) -> None:
    """Meter the resource at ``path`` of a registered wrapped ``client`` (``"responses"``, or one
    level down, ``"chat.completions"``) with ``meter_it``. Where it is a cached resource of the
    class holding it (``owners``: those classes; by default the client's own), the class is
    hooked (``hook_resource``) and the resource is metered as it is made, so the copy gets no
    name it would not have unwrapped; otherwise (made in ``__init__``, another SDK version) the
    client's own is reached and metered now."""
    *parents, name = path.split(".")
    client_of = _client_of_resource if parents else _client_itself
    hooked = [hook_resource(owner, name, client_of, meter_it)
              for owner in (owners if owners is not None else [type(client)])]
    if hooked and all(hooked):
        return
    resource = client
    for part in path.split("."):
        resource = getattr(resource, part, None)
        if resource is None:
            return
    meter_resource(resource, client, meter_it)


def _copy_hook(original: Callable[..., Any]) -> Callable[..., Any]:
    """``original`` (a client class's ``copy`` / ``with_options``), whose copy of a wrapped
    client is wrapped too, with the same meter, attribution and provider."""

    @functools.wraps(original)
    def copy_metered(self: Any, *args: Any, **kwargs: Any) -> Any:
        new = original(self, *args, **kwargs)
        w = WRAPPED.get(self)
        return new if w is None else w.adapter.wrap(w.meter, new, w.attribution, w.provider)

    copy_metered._jevons_copy_hook = True  # type: ignore[attr-defined]
    return copy_metered


def hook_copies(cls: type[Any]) -> None:
    """Keep the copies a wrapped client makes of itself (``copy`` / ``with_options`` of
    Stainless clients) metered: hooked once on ``cls``, inert for clients not wrapped."""
    with _CLASS_HOOKS_LOCK:
        for name in ("copy", "with_options"):
            current = getattr(cls, name, None)
            if callable(current) and not getattr(current, "_jevons_copy_hook", False):
                type.__setattr__(cls, name, _copy_hook(current))


# ---------------------------------------------------------------------- streams
class StreamAccumulator(Protocol):
    """``add`` each item, ``result()`` at the end; optionally ``review() -> Extracted``, the
    event flagged for review (raw usage kept) when ``result()`` raised on a usage block it does
    not know (see the module docstring)."""

    def add(self, item: Any) -> None: ...

    def result(self) -> Extracted: ...


@dataclass(slots=True)
class FoldedUsage:
    """The usage blocks a stream reported, folded into one (a later non-null field wins), for
    providers that send their counts in pieces (Gemini, Mistral). ``seen``: a block arrived,
    whether or not this adapter knows its fields (the SDK may drop the ones it does not
    declare): then a stream without known counts is a shape to review, not an empty one."""

    raw: dict[str, Any] = field(default_factory=dict)
    seen: bool = False

    def fold(self, block: Mapping[str, Any] | None) -> None:
        """Take one reported usage block (``None`` or empty: the block had no field read)."""
        self.seen = True
        if block:
            self.raw.update({k: v for k, v in block.items() if v is not None})

    def missing(self, provider: str, finished: bool, model: str | None, note: str) -> Extracted:
        """The result of a stream with no known counts: ``UnknownShape`` when a block came or
        the stream finished (``review`` gives its event), else usage unknown, incomplete."""
        if self.seen or finished:
            raise UnknownShape(f"{provider} stream usage in an unknown shape: {self.raw or None}")
        return Extracted(Usage(), model=model, complete=False, note=note)

    def review(self, model: str | None) -> Extracted:
        """The usage the stream reported, in a shape not known here: unpriced, kept for review."""
        return review_usage(dict(self.raw) if self.seen else None, model)


def _result(call: Call, acc: StreamAccumulator) -> Extracted:
    try:
        return acc.result()
    except Exception as exc:
        call.meter._error(exc, "extract")
        return _review(call, acc)


def _review(call: Call, acc: StreamAccumulator) -> Extracted:
    """The event of a stream whose usage ``acc`` could not read: flagged for review with the
    raw usage block kept (the accumulator's ``review()``), as a complete response's would be."""
    review = getattr(acc, "review", None)
    if callable(review):
        try:
            x = review()
            if isinstance(x, Extracted):
                x.needs_review = True
                return x
        except Exception as exc:
            call.meter._error(exc, "extract")
    return review_extracted(None)


def iterate_in_call(call: Call, iterator: Iterator[T]) -> Generator[T, None, None]:
    """``iterator``'s items, with ``call`` the current call while each one is fetched (not
    while the caller holds it: a call made in the loop body is not mistaken for it). For SDKs
    whose stream sends its request on the first ``next()``, after the metered method returned:
    the attempt hooks then still see each HTTP attempt of the SDK's retries."""
    set_call = CURRENT_CALL.set
    reset_call = CURRENT_CALL.reset
    try:
        while True:
            token = set_call(call)
            try:
                item = next(iterator)
            except StopIteration:
                return
            finally:
                reset_call(token)
            yield item
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()


async def aiterate_in_call(call: Call, iterator: AsyncIterator[T]) -> AsyncGenerator[T, None]:
    """The ``async for`` twin of ``iterate_in_call``."""
    set_call = CURRENT_CALL.set
    reset_call = CURRENT_CALL.reset
    try:
        while True:
            token = set_call(call)
            try:
                item = await iterator.__anext__()
            except StopAsyncIteration:
                return
            finally:
                reset_call(token)
            yield item
    finally:
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()


def _is_hidden(call: Call, hidden: Callable[[Any], bool], item: Any) -> bool:
    """``hidden(item)``; an error in it passes the item on (and is reported)."""
    try:
        return hidden(item)
    except Exception as exc:
        call.meter._error(exc, "adapter")
        return False


def observe_sync(
    call: Call, iterator: Iterator[Any], acc: StreamAccumulator
) -> Generator[Any, None, None]:
    """Yield ``iterator``'s items unchanged, feeding ``acc``; end ``call`` when the stream ends
    (``ok``), raises (``error``, re-raised) or is closed early (``aborted``). Items
    ``call.hidden`` picks out are fed to ``acc`` but not yielded: the caller sees the stream it
    asked for."""
    adding = True
    seen = False  # an item arrived: the provider answered, a later error may have been billed
    hidden = call.hidden
    try:
        for item in iterator:
            seen = True
            if adding:
                try:
                    acc.add(item)
                except Exception as exc:
                    adding = False  # one error per stream, not one per chunk
                    call.meter._error(exc, "extract")
            if hidden is not None and _is_hidden(call, hidden, item):
                continue
            yield item
    except GeneratorExit:
        call.abort(_result(call, acc))
        raise
    except BaseException as exc:
        call.fail(exc, _result(call, acc) if seen else None)  # nothing seen: nothing billed unless it says so
        raise
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            with contextlib.suppress(Exception):
                close()
    x = _result(call, acc)
    if not adding:
        x.needs_review = True
    call.finish_extracted(x)


async def observe_async(
    call: Call, iterator: AsyncIterator[Any], acc: StreamAccumulator
) -> AsyncGenerator[Any, None]:
    """The ``async for`` twin of ``observe_sync``."""
    adding = True
    seen = False
    hidden = call.hidden
    try:
        async for item in iterator:
            seen = True
            if adding:
                try:
                    acc.add(item)
                except Exception as exc:
                    adding = False
                    call.meter._error(exc, "extract")
            if hidden is not None and _is_hidden(call, hidden, item):
                continue
            yield item
    except GeneratorExit:
        call.abort(_result(call, acc))
        raise
    except BaseException as exc:
        call.fail(exc, _result(call, acc) if seen else None)  # nothing seen: nothing billed unless it says so
        raise
    finally:
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):
                await aclose()
    x = _result(call, acc)
    if not adding:
        x.needs_review = True
    call.finish_extracted(x)


def patch_stream(stream: T, call: Call, acc: StreamAccumulator, *, iterator_attr: str = "_iterator") -> T:
    """Instrument an SDK stream object in place (its type, iteration, context manager and
    helpers stay the SDK's): its internal iterator is replaced by an observing one, and its
    ``close`` also ends the observation (an early close records an ``aborted`` attempt)."""
    inner = getattr(stream, iterator_attr)
    # a stream dropped without being read or closed still records its (aborted) attempt
    with contextlib.suppress(TypeError):
        weakref.finalize(stream, _abort_if_open, call, acc)
    if hasattr(inner, "__anext__"):
        agen = observe_async(call, inner, acc)
        object.__setattr__(stream, iterator_attr, agen)
        original_aclose = stream.close  # type: ignore[attr-defined]

        async def aclose() -> None:
            try:
                await agen.aclose()
                if not call.done:  # closed before it was ever iterated: the request was made
                    call.abort(_result(call, acc))
            finally:
                await original_aclose()

        object.__setattr__(stream, "close", aclose)
        response = getattr(stream, "response", None)
        original_raclose = getattr(response, "aclose", None)
        if original_raclose is not None:

            async def response_aclose() -> None:
                # a helper (e.g. the SDK's ``.stream()`` manager) closing the HTTP response
                # while the caller stopped reading: end the observation as abandoned
                if _suspended(agen, "ag"):
                    with contextlib.suppress(Exception):
                        await agen.aclose()
                    if not call.done:
                        call.abort(_result(call, acc))
                await original_raclose()

            _set_attr(response, "aclose", response_aclose)
        return stream
    gen = observe_sync(call, inner, acc)
    object.__setattr__(stream, iterator_attr, gen)
    original_close = stream.close  # type: ignore[attr-defined]

    def close() -> None:
        try:
            gen.close()
            if not call.done:  # closed before it was ever iterated: the request was made
                call.abort(_result(call, acc))
        finally:
            original_close()

    object.__setattr__(stream, "close", close)
    response = getattr(stream, "response", None)
    original_rclose = getattr(response, "close", None)
    if original_rclose is not None:

        def response_close() -> None:
            # not while the generator runs: the SDK closes the response itself at the end
            if _suspended(gen, "gi"):
                with contextlib.suppress(Exception):
                    gen.close()
                if not call.done:
                    call.abort(_result(call, acc))
            original_rclose()

        _set_attr(response, "close", response_close)
    return stream


def _abort_if_open(call: Call, acc: StreamAccumulator) -> None:
    if not call.done:
        call.abort(_result(call, acc), "stream dropped without being read to its end")


def _suspended(generator: Any, prefix: str) -> bool:
    """Started or not, not finished and not running right now (``gi_``/``ag_`` attributes)."""
    return getattr(generator, f"{prefix}_frame", None) is not None and not getattr(
        generator, f"{prefix}_running", False)


def _set_attr(obj: Any, name: str, value: Any) -> None:
    with contextlib.suppress(AttributeError, TypeError):
        object.__setattr__(obj, name, value)


def no_usage(complete: bool = False) -> Extracted:
    """An ``Extracted`` with nothing known (e.g. a stream that ended before any usage)."""
    return Extracted(Usage(requests=1), complete=complete)
