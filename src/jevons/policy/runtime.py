"""Real-time policy enforcement: a ``Meter`` sink that rates each event as it is stored, a
guard that blocks calls past a hard cap, and the running balances both read.

```python
runtime = PolicyRuntime(PolicyEngine(load_policy("policy.toml")), open_policy_store())
meter = jevons.Meter(sinks=[runtime], guards=[runtime.guard])
lago = LagoSink(..., amount_for=runtime.amount_for)   # the policy's charge, not a bare markup
```

The sink applies an event at most once (keyed by its idempotency key) in one transaction
holding the customer's lock (see :mod:`jevons.policy.store`), with the very
:class:`~jevons.policy.engine.CustomerRater` batch rating uses: running balances equal a batch
re-rating of the same events when events arrive in time order (a late event is rated where it
lands; ``jevons rerate`` recomputes a period). Alerts (cap/allowance thresholds, low credit
balance; once per period each) go to logging and to every ``on_alert`` hook.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from jevons.capture.errors import CapReached
from jevons.config import Settings
from jevons.events import Event
from jevons.policy.engine import Alert, CustomerRater, Grant, PolicyEngine, RatedEvent
from jevons.policy.periods import period_of
from jevons.policy.rules import rating_context
from jevons.policy.store import PolicyStore, StoreTx

__all__ = ["PolicyRuntime", "log_alert", "runtime_from_settings", "webhook_alert_hook"]

log = logging.getLogger("jevons.policy")

AlertHook = Callable[[Alert], Any]


def log_alert(alert: Alert) -> None:
    log.warning("policy alert for %s (%s): %s", alert.customer, alert.period, alert.message)


def webhook_alert_hook(url: str, *, timeout: float = 10.0) -> AlertHook:
    """An alert hook that POSTs each alert as JSON to ``url`` (errors are logged, not raised)."""
    import httpx

    def post(alert: Alert) -> None:
        try:
            httpx.post(url, json=alert.to_dict(), timeout=timeout).raise_for_status()
        except httpx.HTTPError as exc:
            log.warning("alert webhook %s failed: %s", url, exc)

    return post


def _key(customer: str | None) -> str:
    return customer or ""


class PolicyRuntime:
    """Sink (``runtime(event)``), guard (``runtime.guard``) and ``amount_for`` in one."""

    def __init__(
        self,
        engine: PolicyEngine,
        store: PolicyStore,
        *,
        on_alert: Iterable[AlertHook] = (),
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.engine = engine
        self.store = store
        self.hooks: list[AlertHook] = [log_alert, *on_alert]
        self.clock = clock

    def _rater(self, tx: StoreTx, customer: str | None) -> CustomerRater:
        grants = {g.id: g for g in self.engine.grants_for(customer)}
        grants.update({g.id: g for g in tx.grants()})
        return CustomerRater(self.engine.policies, customer, list(grants.values()), tx.load_state())

    def apply(self, event: Event) -> RatedEvent | dict[str, Any]:
        """Rate ``event`` into its customer's running state, once. Returns the rated event (or,
        for an event applied before, its stored JSON form)."""
        alerts: list[Alert] = []
        with self.store.locked(_key(event.customer)) as tx:
            done = tx.applied(event.idempotency_key)
            if done is not None:
                return done
            rater = self._rater(tx, event.customer)
            st = rater.state
            if st is not None and period_of(event.timestamp) < st.period:
                # a late event of a period already closed: its running balances are final;
                # record it (worth its stand-alone charge) and leave it to `jevons rerate`
                log.warning("event %s of %s arrived after its period closed for %r; re-rate %s",
                            event.id, period_of(event.timestamp), event.customer,
                            period_of(event.timestamp))
                late = {"event_id": event.id, "late": True,
                        "billed": str(self.engine.amount_for(event))}
                tx.record_applied(event.idempotency_key, late)
                return late
            rated = rater.rate(event)
            assert rater.state is not None
            tx.save_state(rater.state)
            tx.record_applied(event.idempotency_key, rated.to_dict())
            alerts = rater.alerts
        for alert in alerts:
            for hook in self.hooks:
                try:
                    hook(alert)
                except Exception as exc:  # an alert hook never breaks billing
                    log.warning("alert hook %r failed: %s", hook, exc)
        return rated

    __call__ = apply

    def amount_for(self, event: Event) -> Decimal:
        """The usage amount billed for ``event`` under the policy (after allowance, discounts
        and cap; before credits), applying it first if this runtime has not seen it yet."""
        rated = self.apply(event)
        return rated.billed if isinstance(rated, RatedEvent) else Decimal(rated["billed"])

    def balances(self, customer: str | None, at: datetime | None = None) -> dict[str, Any]:
        """Allowance left, cap headroom, credits: what enforcement reads."""
        def read(tx: StoreTx) -> dict[str, Any]:
            rater = self._rater(tx, customer)
            when = at or self.clock()
            if rater.state is None and rater.grants:
                rater.start(when)  # months since the first grant owe their fees (not saved)
            if rater.state is not None and rater.state.period < period_of(when):
                with rating_context():
                    rater.advance_to(period_of(when))  # a new period: fresh counters (not saved)
            return rater.balances(when)
        return self.store.read(read, _key(customer))

    def guard(self, customer: str | None, provider: str, model: str, attribution: Any = None) -> None:
        """``Meter(guards=[runtime.guard])``: raise ``CapReached`` before the provider call when
        the customer's plan says ``cap_enforcement = "block"`` and its cap is reached."""
        now = self.clock()
        try:
            pol = self.engine.policies.at(now)
            plan = pol.plan_for(customer, pol.plan_at(customer, now))
        except LookupError:
            return
        if plan.cap is None or plan.cap_enforcement != "block":
            return
        def billed(tx: StoreTx) -> Decimal:
            state = tx.load_state()
            if state is None or state.period != period_of(now):
                return Decimal(0)
            return state.billed_total
        charged = self.store.read(billed, _key(customer))
        if charged >= plan.cap:
            raise CapReached(customer or "", plan.cap, charged)

    def grant(self, grant: Grant) -> None:
        self.store.add_grant(grant)


def runtime_from_settings(settings: Settings | None = None) -> PolicyRuntime | None:
    """The real-time runtime of ``[billing] policy_file``, or ``None`` when no policy is set.

    This is how configuration alone turns enforcement and policy-priced billing on: ``Meter()``
    adds it as a sink and guard, and the outbox's Lago price mode bills its ``amount_for``.
    """
    from jevons.config import load_settings
    from jevons.policy.loader import load_policies
    from jevons.policy.store import open_policy_store

    settings = settings or load_settings()
    if not settings.billing.policy_file:
        return None
    policies = load_policies([settings.billing.policy_file])
    return PolicyRuntime(PolicyEngine(policies), open_policy_store(settings))
