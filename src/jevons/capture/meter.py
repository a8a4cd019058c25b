"""The Meter: wraps provider clients, turns each call attempt into a priced, attributed Event.

```python
meter = jevons.Meter()
client = meter.wrap(OpenAI(), customer="acme", feature="summarize")
client.chat.completions.create(...)   # same arguments, same return value, same exceptions
```

Construction (every argument optional)::

    Meter(book=None, ledger=None, sinks=(), guards=(), on_error=None,
          customer=None, feature=None, tags=None, settings=None, policy=None)

- ``book``: the ``PriceBook``; ``None`` = ``jevons.prices.loader.default_book()`` (an empty book,
  so every call comes back *unpriced*, if the loader is not available).
- ``ledger``: an ``EventStore`` used as is; ``"memory"`` = ``MemoryStore``; ``None`` =
  ``jevons.ledger.open_store(settings)`` when it exists, else ``MemoryStore``. Each event is
  handed to ``store.append(event)`` (durable before it returns) and then to each sink.
- ``sinks``: callables called with each ``Event`` after it is stored. A sink that raises is
  counted (kind ``sink``), never propagated.
- ``guards``: callables ``guard(customer, provider, model, attribution)`` called before every
  provider call (``model`` is the requested model, ``attribution`` the resolved
  ``Attribution``). A guard may raise a ``jevons.capture.errors.JevonsEnforcement`` subclass
  (e.g. ``CapReached``): it reaches the caller and the provider is not called. Any other
  exception from a guard is an instrumentation error (kind ``guard``): counted, the call proceeds.
- ``on_error``: ``on_error(exc, kind)`` for every instrumentation error (``kind`` one of
  ``extract``, ``price``, ``store``, ``sink``, ``guard``, ``adapter``, ``attribution``,
  ``wrap``). Errors are also counted in ``stats()`` and logged (first few per kind at WARNING).
- ``policy``: a ``jevons.policy.runtime.PolicyRuntime`` added as a sink (running balances,
  alerts) and a guard (``CapReached`` for a ``block`` cap); ``None`` (default) = the runtime of
  ``[billing] policy_file`` when the config names one; ``False`` = no policy.
- ``customer``/``feature``/``tags``: the default attribution (see ``jevons.capture.attribution``
  for the precedence: per call > per client > context/run > default).

Use:

- ``meter.wrap(client, customer=, feature=, tags=, provider=)`` — same client type back
  (``isinstance`` holds); ``provider=`` names an OpenAI-compatible gateway (``openrouter``...).
- ``meter.context(customer=, feature=, tags=)`` — ``with`` block attribution (contextvars).
- ``meter.run(run_id=None, customer=, feature=, tags=, budget_usd=)`` — an agent run; yields
  a ``Run`` with running totals; ``budget_usd`` makes over-budget calls raise
  ``BudgetExceeded`` before the provider is called.
- ``meter.record(model=, usage=, provider=, ...)`` — record a call made any other way.
- ``meter.litellm_callback()`` — a LiteLLM custom logger metering ``litellm.completion``.
- ``meter.events(query=None)`` — the events stored (``EventQuery`` filters).
- ``meter.stats()`` — counts: events, ok/error/aborted, unattributed, needs_review, unpriced,
  estimated, incomplete, blocked, errors (total) and errors_by_kind.
- ``meter.close()`` / ``with Meter() as meter:`` — flush sinks and close the store.

Adapter-facing API (see ``jevons.capture.adapters``): ``meter.begin(...) -> Call`` before the
provider call, then exactly one of ``call.finish(response)``, ``call.finish_extracted(x)``,
``call.fail(exc)``, ``call.abort(x)``. None of these raise (except ``begin``, which raises the
``JevonsEnforcement`` of a guard or a run budget, on purpose).

Hot path: no pydantic, no logging, no I/O but ``store.append``; price lookups are cached by the
book; ids are a per-process random prefix plus a counter.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from contextvars import ContextVar
from datetime import UTC, datetime
from decimal import Decimal
from importlib import import_module
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from jevons.capture import attribution as _attr
from jevons.capture import record as _record
from jevons.capture.attribution import _CONTEXT, EMPTY, Attribution
from jevons.capture.build import NO_USAGE as _NO_USAGE
from jevons.capture.build import extract_or_review, make_event, outcome
from jevons.capture.errors import JevonsEnforcement
from jevons.capture.extract import Extracted
from jevons.capture.run import _RUN, Run
from jevons.events import AttemptStatus, Event
from jevons.ledger.base import EventQuery, EventStore, MemoryStore
from jevons.ledger.codec import from_micros
from jevons.prices.book import PriceBook
from jevons.usage import Usage

if TYPE_CHECKING:
    from jevons.config import Settings
    from jevons.policy.runtime import PolicyRuntime

__all__ = ["CURRENT_CALL", "Call", "Guard", "Meter", "Sink"]

log = logging.getLogger("jevons.capture")

T = TypeVar("T")
Sink = Callable[[Event], Any]
Guard = Callable[[str | None, str, str, Attribution], Any]
ErrorHook = Callable[[BaseException, str], Any]

#: what a metered method's deferred captures share: provider, API, extractor, region
CaptureSite = tuple[str, str | None, str, str | None]
#: a deferred capture handed to the store: its ``Call`` (``None`` on the lean path), requested
#: model, attribution, response (or its JSON snapshot), and its event id's parts and timestamp
CaptureItem = tuple["Call | None", str, Attribution, Any, str, int, int]

CURRENT_CALL: ContextVar[Call | None] = ContextVar("jevons_current_call", default=None)
"""The call whose provider request is in flight (HTTP attempt hooks read it)."""

_WARN_FIRST = 5


_IDS = _record.IDS  # the meter's event ids (``record.Ids``)


class Call:
    """One logical provider call in flight: attribution, run step, HTTP attempts seen so far."""

    __slots__ = (
        "api", "attempt_no", "attribution", "deferrer", "done", "extractor", "hidden", "http_attempts",
        "meter", "model", "provider", "region", "run", "step",
    )

    def __init__(
        self,
        meter: Meter,
        provider: str,
        api: str | None,
        model: str,
        attribution: Attribution,
        run: Run | None,
        step: int | None,
        extractor: str,
        region: str | None = None,
    ) -> None:
        self.meter = meter
        self.provider = provider
        self.api = api
        self.model = model
        self.attribution = attribution
        self.run = run
        self.step = step
        self.extractor = extractor
        # the metered method's ``record.deferrer`` (it has a ``MethodSpec.snapshot``): lets
        # ``finish`` defer extraction and pricing to the ledger's background thread (see
        # ``record.log_capture``)
        self.deferrer: _record.Deferrer | None = None
        self.http_attempts: list[int | None] = []  # status per HTTP attempt (None: no response)
        self.done = False
        self.region = region  # the region the client calls, when prices depend on it
        self.attempt_no: int | None = None  # set when the adapter numbers attempts itself
        # stream items that answer what the adapter asked for and the caller did not (OpenAI's
        # usage-only chunk when jevons set ``include_usage``): observed, not passed on
        self.hidden: Callable[[Any], bool] | None = None

    # ---------------------------------------------------------------- outcomes (never raise)
    def finish(self, response: Any) -> Event | None:
        """A complete (non-streamed) response: extract its usage and record the attempt."""
        if self.done:
            return None
        if _record.log_capture(self.meter, self, response):  # deferred (its rule is there)
            return None
        return self.finish_extracted(
            extract_or_review(self.extractor, self.api, response, self.model, self.meter._error))

    def finish_extracted(self, extracted: Extracted, status: AttemptStatus = "ok",
                         error: str | None = None) -> Event | None:
        if self.done:
            return None
        self.done = True
        try:
            attempts = self.http_attempts
            if len(attempts) > 1:  # the SDK retried: the attempts before the last one failed
                self._failed_http_attempts()
            status, error = outcome(extracted, status, error)
            return self.meter._emit(self, extracted, status, self.attempt_no or len(attempts) or 1, error)
        except Exception as exc:
            self.meter._error(exc, "adapter")
            return None

    def abort(self, extracted: Extracted | None = None, reason: str = "stream abandoned") -> Event | None:
        """A stream broken off or abandoned before its end: what is known, flagged incomplete."""
        x = extracted if extracted is not None else Extracted(_NO_USAGE, complete=False)
        if x.complete:
            x.complete = False
        return self.finish_extracted(x, "aborted", reason)

    def fail(self, exc: BaseException, extracted: Extracted | None = None) -> Event | None:
        """The provider call raised. ``extracted``: what a stream reported before it did
        (``None``: nothing came back). An HTTP status error with no usage produced nothing
        billable; anything else (timeout, connection lost, error mid-stream) may have: flagged
        incomplete. The status is the exception's own, else, when nothing came back, the last
        HTTP attempt's as the attempt hooks saw it (an SDK on aiohttp raises errors whose
        status has no common name)."""
        if self.done:
            return None
        status_code = http_status(exc)
        if extracted is None:
            attempts = self.http_attempts
            if status_code is None and attempts and isinstance(exc, Exception):
                last = attempts[-1]
                status_code = last if last is not None and last >= 400 else None
            # an HTTP error status or a connection never made: known to bill nothing
            known = status_code is not None or _never_connected(exc)
            extracted = Extracted(_NO_USAGE, complete=known)
        elif status_code is None:
            extracted.complete = False
        label = f"{type(exc).__name__}" + (f" (HTTP {status_code})" if status_code else "")
        status: AttemptStatus = "aborted" if isinstance(exc, (KeyboardInterrupt, GeneratorExit)) else "error"
        return self.finish_extracted(extracted, status, label)

    # ---------------------------------------------------------------- HTTP attempts
    def _failed_http_attempts(self) -> None:
        """Each HTTP attempt before the last one failed (the SDK retried): one event each."""
        attempts = self.http_attempts
        for i in range(len(attempts) - 1):
            code = attempts[i]
            if code is None:
                x = Extracted(_NO_USAGE, complete=False)
                err = "no response (connection error or timeout); retried"
            else:
                x = Extracted(_NO_USAGE, complete=True)
                err = f"HTTP {code}; retried"
            self.meter._emit(self, x, "error", i + 1, err)


def _never_connected(exc: BaseException) -> bool:
    """True when the exception (or its cause chain) is a failure to open the connection."""
    seen = 0
    cur: BaseException | None = exc
    while cur is not None and seen < 8:
        if type(cur).__name__ in ("ConnectError", "ConnectionRefusedError"):
            return True
        cur = cur.__cause__ or cur.__context__
        seen += 1
    return False


def http_status(exc: BaseException) -> int | None:
    """The HTTP status an SDK exception carries: ``status_code`` (httpx-based SDKs), ``code``
    (google-genai), or its response's ``status_code`` / ``status`` (aiohttp)."""
    response = getattr(exc, "response", None)
    candidates = (
        (getattr(exc, "status_code", None), 100),
        (getattr(response, "status_code", None), 100),
        # names other exceptions use too (``SystemExit.code``): error statuses only
        (getattr(exc, "code", None), 400),
        (getattr(response, "status", None), 400),
    )
    for code, lowest in candidates:
        if isinstance(code, int) and not isinstance(code, bool) and lowest <= code <= 599:
            return code
    return None


class _Scope:
    """``with``/``async with`` around a context-variable change."""

    def __init__(self, enter: Callable[[], Any], exit_: Callable[[], None], value: Any) -> None:
        self._enter = enter
        self._exit = exit_
        self.value = value

    def __enter__(self) -> Any:
        self._enter()
        return self.value

    def __exit__(self, *exc: object) -> None:
        self._exit()

    async def __aenter__(self) -> Any:
        return self.__enter__()

    async def __aexit__(self, *exc: object) -> None:
        self.__exit__()


class Meter:
    """Meters LLM calls into Events. See the module docstring for the full contract."""

    def __init__(
        self,
        *,
        book: PriceBook | None = None,
        ledger: EventStore | str | None = None,
        sinks: Iterable[Sink] = (),
        guards: Iterable[Guard] = (),
        on_error: ErrorHook | None = None,
        customer: str | None = None,
        feature: str | None = None,
        tags: Mapping[str, Any] | None = None,
        settings: Settings | None = None,
        policy: PolicyRuntime | bool | None = None,
    ) -> None:
        self._settings = settings
        self.book = book if book is not None else _default_book()
        self._store_error: BaseException | None = None
        self.store: EventStore = self._open_store(ledger)
        self.sinks: list[Sink] = list(sinks)
        self.guards: list[Guard] = list(guards)
        self.policy = self._open_policy(policy)
        if self.policy is not None:
            self.sinks.append(self.policy)
            self.guards.append(self.policy.guard)
        self.on_error = on_error
        self.default = _attr.make(customer, feature, tags)
        self._lock = threading.Lock()
        self._counts: dict[str, int] = dict.fromkeys(
            ("events", "ok", "error", "aborted", "unattributed", "needs_review", "unpriced",
             "estimated", "incomplete", "blocked", "errors", "unstored", "duplicates"), 0)
        self._errors_by_kind: dict[str, int] = {}
        self._backlog: list[Event] = []  # events the store refused; retried on the next append
        self._closed = False
        if self._store_error is not None:  # counted in stats() and passed to on_error
            self._error(self._store_error, "ledger")
        # deferred captures (see ``record.log_capture``): only with a store that logs them durably, and
        # not with guards (a cap or a policy must see every call's cost before the next call)
        self._deferred = bool(getattr(self.store, "takes_captures", False)) and not self.guards
        # a meter never closed (the process just exits): the calls of its last milliseconds
        # still reach its sinks and the database (they are in the log either way)
        self._at_exit = weakref.finalize(self, _flush_at_exit, self.store) if self._deferred else None

    # ================================================================== setup
    def _open_store(self, ledger: EventStore | str | None) -> EventStore:
        if ledger == "memory":
            return MemoryStore()
        if isinstance(ledger, str):
            raise ValueError(f"Meter(ledger=...) takes an EventStore, 'memory' or None, not {ledger!r}")
        if ledger is not None:
            return ledger
        try:
            ledger_mod = import_module("jevons.ledger")
            open_store = getattr(ledger_mod, "open_store", None)
            if open_store is None:
                return MemoryStore()
            store: EventStore = open_store(self._settings_or_load(),
                                           read_capture=_record.capture_reader(self.book))
            return store
        except Exception as exc:  # a broken ledger must not stop the app from starting
            # (a database that is merely down does not get here: ``open_store`` then runs on
            # its append log until the database answers, losing nothing)
            log.error("jevons: could not open the ledger (%s); events are kept in memory only and "
                      "are lost when this process exits", exc)
            self._store_error = exc
            return MemoryStore()

    def _settings_or_load(self) -> Settings:
        if self._settings is None:
            from jevons.config import load_settings

            self._settings = load_settings()
        return self._settings

    def _open_policy(self, policy: PolicyRuntime | bool | None) -> PolicyRuntime | None:
        """``None``: the runtime of ``[billing] policy_file`` when one is configured; ``False``:
        none; a ``PolicyRuntime``: that one. A configured policy that does not load is an error
        here, at start-up: billing silently without its caps and floors would be worse."""
        if policy is False:
            return None
        if policy is None or policy is True:
            from jevons.policy.runtime import runtime_from_settings

            runtime = runtime_from_settings(self._settings_or_load())
            if runtime is None and policy is True:
                raise ValueError("Meter(policy=True) but no [billing] policy_file is configured")
            return runtime
        return policy

    # ================================================================== public API
    def wrap(
        self,
        client: T,
        *,
        customer: str | None = None,
        feature: str | None = None,
        tags: Mapping[str, Any] | None = None,
        provider: str | None = None,
    ) -> T:
        """The same client (same type), every supported method metered. Unsupported client
        type: ``TypeError``. An adapter bug while wrapping: logged, counted, client returned
        unwrapped (the app keeps working)."""
        from jevons.capture.adapters import find_adapter

        adapter = find_adapter(client)
        if adapter is None:
            raise TypeError(f"jevons cannot meter a {type(client).__module__}.{type(client).__qualname__}")
        try:
            return adapter.wrap(self, client, _attr.make(customer, feature, tags), provider)
        except Exception as exc:
            self._error(exc, "wrap")
            return client

    def context(
        self, *, customer: str | None = None, feature: str | None = None,
        tags: Mapping[str, Any] | None = None,
    ) -> _Scope:
        """``with meter.context(customer="acme"):`` — attribution for calls in the block."""
        return _attribution_scope(_attr.make(customer, feature, tags))

    def run(
        self,
        run_id: str | None = None,
        *,
        customer: str | None = None,
        feature: str | None = None,
        tags: Mapping[str, Any] | None = None,
        budget_usd: Decimal | str | int | None = None,
    ) -> _Scope:
        """``with meter.run("r1", customer="acme", budget_usd="1.50") as run:`` (see ``capture.run``)."""
        if isinstance(budget_usd, float):
            raise TypeError("budget_usd must be a Decimal, str or int (floats are not exact)")
        budget = None if budget_usd is None else Decimal(str(budget_usd))
        attribution = _attr.make(customer, feature, tags)
        run = Run(run_id or _IDS.next(), attribution, budget)
        tokens: list[Any] = []

        def enter() -> None:
            tokens.append(_RUN.set(run))
            tokens.append(_attr._CONTEXT.set(attribution.over(_attr._CONTEXT.get())))

        def exit_() -> None:
            _attr._CONTEXT.reset(tokens.pop())
            _RUN.reset(tokens.pop())

        return _Scope(enter, exit_, run)

    def record(
        self,
        *,
        model: str,
        usage: Usage | Mapping[str, int],
        provider: str,
        customer: str | None = None,
        feature: str | None = None,
        tags: Mapping[str, Any] | None = None,
        api: str | None = None,
        status: AttemptStatus = "ok",
        attempt: int = 1,
        usage_complete: bool = True,
        gateway_cost_usd: Decimal | str | None = None,
        raw_usage: dict[str, Any] | None = None,
        model_served: str | None = None,
        service_tier: str | None = None,
        region: str | None = None,
        error: str | None = None,
        timestamp: datetime | None = None,
        idempotency_key: str | None = None,
    ) -> Event:
        """Record a call made any other way. Attribution and run come from the arguments, then
        the context, then the meter's default. Bad arguments raise ``ValueError``/``TypeError``
        (this is the caller's own code, not a wrapped call), and so does a ledger that cannot
        store the event: ``record`` returns only once the event is durable (the event is also
        kept and retried, so calling again with the same ``idempotency_key`` is safe)."""
        if not isinstance(usage, Usage):
            usage = Usage.from_dict(dict(usage))
        gw = None if gateway_cost_usd is None else Decimal(str(gateway_cost_usd))
        attribution = _attr.make(customer, feature, tags).over(_attr._CONTEXT.get()).over(self.default)
        run = _RUN.get()
        # the call already happened: it counts against the run, but is never refused
        step = run.next_step(check_budget=False) if run is not None else None
        call = Call(self, provider, api, model, attribution, run, step, provider)
        extracted = Extracted(usage, model_served, usage_complete, False, raw_usage, gw,
                              service_tier, region)
        event = self._emit(call, extracted, status, attempt, error, timestamp=timestamp,
                           idempotency_key=idempotency_key, strict=True)
        assert event is not None
        return event

    def litellm_callback(self, **attribution: Any) -> Any:
        """A LiteLLM ``CustomLogger`` that meters ``litellm.completion``/``acompletion``:
        ``litellm.callbacks = [meter.litellm_callback()]``."""
        from jevons.capture.adapters.litellm import JevonsLiteLLMCallback

        return JevonsLiteLLMCallback(self, _attr.make(**attribution))

    def events(self, query: EventQuery | None = None) -> list[Event]:
        return self.store.query(query)

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Wait until every call captured so far has its event built, stored and handed to the
        sinks (deferred captures are completed by the ledger's background thread). False when
        the store did not catch up within ``timeout`` seconds."""
        fn = getattr(self.store, "flush", None)
        if not callable(fn):
            return True
        try:
            return bool(fn(timeout))
        except Exception as exc:
            self._error(exc, "store")
            return False

    def stats(self) -> dict[str, Any]:
        """Counts of the calls metered so far (their events are built first: a short wait at
        most, even with the database down)."""
        settle = getattr(self.store, "settle", None)
        if self._deferred and not self._closed and callable(settle):
            try:
                settle(10.0)
            except Exception as exc:
                self._error(exc, "store")
        with self._lock:
            out: dict[str, Any] = dict(self._counts)
            out["errors_by_kind"] = dict(self._errors_by_kind)
            out["backlog"] = len(self._backlog)
        return out

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._at_exit is not None:
            self._at_exit.detach()
        self._flush_backlog()
        # the store first: its last drain completes the deferred captures, which reach the
        # sinks while they are still open
        try:
            self.store.close()
        except Exception as exc:
            self._error(exc, "store")
        for sink in self.sinks:
            for name in ("flush", "close"):
                fn = getattr(sink, name, None)
                if callable(fn):
                    try:
                        fn()
                    except Exception as exc:
                        self._error(exc, "sink")

    def __enter__(self) -> Meter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # ================================================================== adapter API
    def begin(
        self,
        provider: str,
        api: str | None,
        model: Any,
        client_attribution: Attribution,
        kwargs: MutableMapping[str, Any] | None = None,
        *,
        extractor: str | None = None,
        enforce: bool = True,
        region: str | None = None,
    ) -> Call | None:
        """Start a call: remove ``jevons*`` kwargs from ``kwargs``, resolve attribution, take a
        run step (budget check), run the guards. Raises only ``JevonsEnforcement``. Returns
        ``None`` if jevons itself failed (the adapter then calls the provider unmetered).
        ``enforce=False``: no guards and no budget check (the step is still taken), for an
        integration that cannot stop the call (LiteLLM swallows a callback's exception).
        ``region``: the region the client calls, when prices depend on it."""
        try:
            per_call = None if kwargs is None else _attr.pop_call_attribution(kwargs, self._error)
            attribution = self.attribution_of(client_attribution)
            if per_call is not None:
                attribution = per_call.over(attribution)
            run = _RUN.get()
            model_name = model if type(model) is str else (
                "" if model is None else model if isinstance(model, str) else str(model))
            if self.guards and enforce:
                self._run_guards(attribution, provider, model_name)
            step = run.next_step(check_budget=enforce) if run is not None else None
            return Call(self, provider, api, model_name, attribution, run, step, extractor or provider,
                        region)
        except JevonsEnforcement:
            with self._lock:
                self._counts["blocked"] += 1
            raise
        except Exception as exc:
            self._error(exc, "adapter")
            return None

    def attribution_of(self, client_attribution: Attribution) -> Attribution:
        """A call's attribution before its own ``jevons*`` kwargs: the wrapped client's, over
        the context's (``meter.context``), over the meter's default."""
        context = _CONTEXT.get()
        default = self.default
        if context is EMPTY and default is EMPTY:  # the common case: nothing to merge
            return client_attribution
        return client_attribution.over(context).over(default)

    def _run_guards(self, attribution: Attribution, provider: str, model: str) -> None:
        for guard in self.guards:
            try:
                guard(attribution.customer, provider, model, attribution)
            except JevonsEnforcement:
                raise
            except Exception as exc:
                self._error(exc, "guard")

    # ================================================================== building events
    def _complete_capture(self, site: CaptureSite, item: CaptureItem) -> Event:
        """A deferred capture's event (called by the store's background thread, ``site`` bound
        by ``record.deferrer``), read from the live response, or from its snapshot when that
        is a dict in the provider's JSON shape. The lean path made no ``Call``: it is made
        here, off the caller's thread, from the fields it handed over."""
        call, model, attribution, response, prefix, n, ts = item
        if call is None:
            provider, api, extractor, region = site
            call = Call(self, provider, api, model, attribution, None, None, extractor, region)
        event_id = _record.capture_id(prefix, n)
        extracted = extract_or_review(call.extractor, call.api, response, call.model, self._error)
        status, error = outcome(extracted, "ok", None)
        event = self._emit(call, extracted, status, call.attempt_no or 1, error,
                           timestamp=from_micros(ts), event_id=event_id, store=False)
        assert event is not None
        return event

    def _emit(
        self,
        call: Call,
        x: Extracted,
        status: AttemptStatus,
        attempt: int,
        error: str | None,
        *,
        timestamp: datetime | None = None,
        idempotency_key: str | None = None,
        strict: bool = False,
        event_id: str | None = None,
        store: bool = True,
    ) -> Event | None:
        """Build the event, store it (unless the store is the one asking: ``store=False``),
        hand it to the sinks, add it to its run and count it."""
        if event_id is None:
            event_id = _IDS.next()
        attribution = call.attribution
        run = call.run
        event = make_event(
            self.book, self._error, event_id=event_id, idempotency_key=idempotency_key or event_id,
            timestamp=timestamp or datetime.now(UTC), provider=call.provider, api=call.api,
            model_requested=call.model, x=x, customer=attribution.customer,
            feature=attribution.feature, tags=attribution.tags,
            run_id=None if run is None else run.run_id, step=call.step, attempt=attempt,
            status=status, error=error, region=call.region,
        )
        # stored first: a record() whose store failed raises here, so its retry (same
        # idempotency key) is what counts in the run and the stats, once; a record() made again
        # after it succeeded is stored once and counted, billed and sent to the sinks once
        if store and not self._store(event, strict):
            with self._lock:
                self._counts["duplicates"] += 1
            return event
        for sink in self.sinks:
            try:
                sink(event)
            except Exception as exc:
                self._error(exc, "sink")
        if run is not None:
            run.add(event)
        counts = self._counts
        cost_status = event.cost.status
        with self._lock:
            counts["events"] += 1
            counts[status] += 1
            if attribution.customer is None:
                counts["unattributed"] += 1
            if event.needs_review:
                counts["needs_review"] += 1
            if not event.usage_complete:
                counts["incomplete"] += 1
            if cost_status != "priced":
                counts[cost_status] += 1
        return event

    def _store(self, event: Event, strict: bool) -> bool:
        """Store (durable before this returns). A store failure keeps the event in a backlog
        retried on the next append; for ``record()`` (``strict``) it is also raised, since the
        caller asked for an acknowledgement (retrying with the same idempotency key is safe).
        A wrapped call is never broken: the failure is only counted. False: the store already
        had this idempotency key (and not from this meter's backlog: then this is the retry
        of a ``record()`` that raised, which counts)."""
        flushed = self._flush_backlog() if self._backlog else frozenset()
        try:
            return self.store.append(event) or event.idempotency_key in flushed
        except Exception as exc:
            with self._lock:
                self._backlog.append(event)
                self._counts["unstored"] += 1
            self._error(exc, "store")
            if strict:
                raise
            return True

    def _flush_backlog(self) -> frozenset[str]:
        """Store the backlog; the idempotency keys that left it (stored now, or found stored:
        e.g. a ``sync``-mode append that timed out after logging its event)."""
        with self._lock:
            pending, self._backlog = self._backlog, []
        stored: set[str] = set()
        for i, event in enumerate(pending):
            try:
                self.store.append(event)
                stored.add(event.idempotency_key)
            except Exception:
                with self._lock:
                    self._backlog[:0] = pending[i:]
                break
        return frozenset(stored)

    def _error(self, exc: BaseException, kind: str) -> None:
        """Count, log and report an instrumentation error. Never raises."""
        try:
            with self._lock:
                self._counts["errors"] += 1
                n = self._errors_by_kind.get(kind, 0) + 1
                self._errors_by_kind[kind] = n
            if n <= _WARN_FIRST:
                log.warning("jevons %s error (the call itself is unaffected): %r", kind, exc,
                            exc_info=exc)
            else:
                log.debug("jevons %s error: %r", kind, exc)
            hook = self.on_error
            if hook is not None:
                hook(exc, kind)
        except Exception:
            pass


def _flush_at_exit(store: EventStore) -> None:
    flush = getattr(store, "flush", None)
    if callable(flush):
        try:
            flush(5.0)
        except Exception as exc:  # at exit: say so, never raise
            log.warning("jevons: could not flush the ledger at exit (%r); the append log keeps "
                        "the calls", exc)


def _attribution_scope(attribution: Attribution) -> _Scope:
    tokens: list[Any] = []

    def enter() -> None:
        tokens.append(_attr._CONTEXT.set(attribution.over(_attr._CONTEXT.get())))

    def exit_() -> None:
        _attr._CONTEXT.reset(tokens.pop())

    return _Scope(enter, exit_, attribution)


def _default_book() -> PriceBook:
    try:
        loader = import_module("jevons.prices.loader")
    except ImportError:
        return PriceBook()
    try:
        book: PriceBook = loader.default_book()
        return book
    except Exception as exc:
        log.warning("jevons: the default price book could not be loaded (%s); calls are unpriced", exc)
        return PriceBook()

