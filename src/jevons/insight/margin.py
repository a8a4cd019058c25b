"""The margin report on real data: the ledger's events, rated by the real policy engine.

For one period (a calendar month, UTC), every customer with events is rated by
:class:`jevons.policy.engine.PolicyEngine` exactly as its invoice would be (the previous period
too, for the change since then). Money here is ``Decimal`` end to end: these are the numbers an
invoice would show, before rounding.

Grouping (``by``): ``customer`` uses each invoice as is. For ``plan``, ``model``, ``feature``
and ``class`` the revenue of one event is what it billed plus its share (by cost) of its
customer's period-level revenue (fees, true-ups, less promotional credits), so that every
grouping adds up to the same total.

Per customer past the cliff (margin below 0) or under its floor (margin % below its plan's
floor: the period floor, else the highest class floor, else ``default_floor``), the report
gives what drives its cost:

- **output share**: the share of cost on output-side lines (output, reasoning, audio/image out);
- **premium routing**: the share of cost in cost classes other than the policy's default class;
- **loop growth**: the input cost due to context beyond the first step of each agent run
  (``input_i - input_first`` of the run's steps, at each call's own input cost per token);
- **retries**: the cost of wasted attempts: failed ones (status other than ``ok``) and calls
  whose output the application threw away and retried (tagged ``retry=discarded``).

An alert (``jevons.insight.alerts``) is raised when a customer crosses its floor or the cliff:
below it this period and not in the previous one.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jevons.events import Event
from jevons.ledger.base import EventQuery, EventStore
from jevons.policy.engine import Invoice, PolicyEngine, RatedEvent
from jevons.policy.model import Policy
from jevons.policy.periods import period_bounds, period_of
from jevons.policy.rules import rating_context

if TYPE_CHECKING:
    from jevons.insight.alerts import AlertSink, MarginAlert

__all__ = [
    "GROUPINGS",
    "CustomerMargin",
    "DriverBreakdown",
    "GroupRow",
    "MarginError",
    "MarginReport",
    "build_margin_report",
    "driver_breakdown",
    "margin_report_from_settings",
    "previous_period",
]

GROUPINGS: tuple[str, ...] = ("customer", "plan", "model", "feature", "class")
_ZERO = Decimal(0)
_OUTPUT_DIMS = frozenset({"output", "reasoning", "audio_output", "image_output"})


class MarginError(ValueError):
    """The report cannot be made (no policy, no events, bad period)."""


def previous_period(period: str) -> str:
    start, _ = period_bounds(period)
    year, month = start.year, start.month - 1
    if month == 0:
        year, month = year - 1, 12
    return f"{year:04d}-{month:02d}"


def _pct(margin: Decimal, revenue: Decimal) -> Decimal | None:
    return None if revenue == 0 else margin / revenue


def _under_floor(margin_pct: Decimal | None, cost: Decimal, floor: Decimal) -> bool:
    """Margin % below ``floor``; cost with no revenue at all counts as under it."""
    return (margin_pct is None and cost > 0) or (margin_pct is not None and margin_pct < floor)


def _status(margin: Decimal, margin_pct: Decimal | None, cost: Decimal, floor: Decimal) -> str:
    if margin < 0:
        return "past cliff"
    return "under floor" if _under_floor(margin_pct, cost, floor) else "ok"


class _Margin:
    """``margin`` and ``margin_pct`` of anything with ``revenue`` and ``cost``."""

    __slots__ = ()
    revenue: Decimal
    cost: Decimal

    @property
    def margin(self) -> Decimal:
        return self.revenue - self.cost

    @property
    def margin_pct(self) -> Decimal | None:
        return _pct(self.margin, self.revenue)


@dataclass(frozen=True, slots=True)
class DriverBreakdown:
    """Shares of one customer's period cost (0..1 each; they overlap, they are not a split)."""

    output_share: Decimal
    premium_share: Decimal
    loop_growth_share: Decimal
    retry_share: Decimal

    def to_dict(self) -> dict[str, str]:
        return {
            "output_share": str(self.output_share),
            "premium_routing_share": str(self.premium_share),
            "loop_growth_share": str(self.loop_growth_share),
            "retry_share": str(self.retry_share),
        }


def _output_cost(e: Event) -> Decimal:
    return sum((line.usd for line in e.cost.lines if line.dimension in _OUTPUT_DIMS), _ZERO)


def driver_breakdown(
    events: Sequence[Event], rated: dict[str, RatedEvent], default_class: str
) -> DriverBreakdown:
    """What drives this set of events' cost (see the module docstring)."""
    total = _ZERO
    output = premium = growth = retries = _ZERO
    first_input: dict[str, int] = {}  # per agent run: the smallest (first step's) input
    for e in events:
        if e.run_id is not None and e.usage.input_tokens:
            seen = first_input.get(e.run_id)
            first_input[e.run_id] = e.usage.input_tokens if seen is None else min(seen, e.usage.input_tokens)
    for e in events:
        r = rated.get(e.id)
        cost = r.cost if r is not None else (e.cost.total_usd or _ZERO)
        total += cost
        if e.cost.total_usd is not None:
            output += _output_cost(e)
        if r is not None and r.cost_class != default_class:
            premium += cost
        if e.status != "ok" or e.tags.get("retry") == "discarded":
            retries += cost
        if e.run_id is not None and e.cost.total_usd is not None and e.usage.input_tokens:
            base = first_input.get(e.run_id, e.usage.input_tokens)
            extra = e.usage.input_tokens - base
            if extra > 0:
                input_cost = e.cost.total_usd - _output_cost(e)
                growth += input_cost * extra / e.usage.input_tokens
    if total == 0:
        return DriverBreakdown(_ZERO, _ZERO, _ZERO, _ZERO)
    return DriverBreakdown(output / total, premium / total, growth / total, retries / total)


@dataclass(frozen=True, slots=True)
class GroupRow(_Margin):
    key: str
    revenue: Decimal
    cost: Decimal
    events: int
    customers: int

    def to_dict(self) -> dict[str, Any]:
        pct = self.margin_pct
        return {
            "key": self.key,
            "revenue": str(self.revenue),
            "cost": str(self.cost),
            "margin": str(self.margin),
            "margin_pct": None if pct is None else str(pct),
            "events": self.events,
            "customers": self.customers,
        }


@dataclass(frozen=True, slots=True)
class CustomerMargin(_Margin):
    customer: str
    plan: str
    revenue: Decimal
    cost: Decimal
    floor: Decimal
    drivers: DriverBreakdown
    previous: Invoice | None
    events: int

    @property
    def past_cliff(self) -> bool:
        return self.margin < 0

    @property
    def under_floor(self) -> bool:
        return _under_floor(self.margin_pct, self.cost, self.floor)

    @property
    def status(self) -> str:
        return _status(self.margin, self.margin_pct, self.cost, self.floor)

    def previous_status(self) -> str | None:
        """The previous period's status, judged against this period's floor."""
        prev = self.previous
        return None if prev is None else _status(prev.margin, prev.margin_pct, prev.cost, self.floor)

    def to_dict(self) -> dict[str, Any]:
        pct = self.margin_pct
        prev = self.previous
        change: dict[str, Any] | None = None
        if prev is not None:
            change = {
                "previous_revenue": str(prev.revenue),
                "previous_cost": str(prev.cost),
                "previous_margin_pct": None if prev.margin_pct is None else str(prev.margin_pct),
                "cost_change": str(self.cost - prev.cost),
                "margin_pct_change": None
                if pct is None or prev.margin_pct is None
                else str(pct - prev.margin_pct),
                "previous_status": self.previous_status(),
            }
        return {
            "customer": self.customer,
            "plan": self.plan,
            "revenue": str(self.revenue),
            "cost": str(self.cost),
            "margin": str(self.margin),
            "margin_pct": None if pct is None else str(pct),
            "floor": str(self.floor),
            "status": self.status,
            "events": self.events,
            "drivers": self.drivers.to_dict(),
            "change": change,
        }


@dataclass
class MarginReport:
    period: str
    by: str
    policy: str
    rows: list[GroupRow]
    customers: list[CustomerMargin]
    alerts: list[MarginAlert] = field(default_factory=list)
    unpriced_events: int = 0

    @property
    def revenue(self) -> Decimal:
        return sum((r.revenue for r in self.rows), _ZERO)

    @property
    def cost(self) -> Decimal:
        return sum((r.cost for r in self.rows), _ZERO)

    @property
    def margin(self) -> Decimal:
        return self.revenue - self.cost

    @property
    def flagged(self) -> list[CustomerMargin]:
        """Customers past the cliff or under their floor, worst margin first."""
        out = [c for c in self.customers if c.status != "ok"]
        return sorted(out, key=lambda c: (c.margin_pct is not None, c.margin_pct or _ZERO, c.margin))

    def to_dict(self) -> dict[str, Any]:
        pct = _pct(self.margin, self.revenue)
        return {
            "period": self.period,
            "by": self.by,
            "policy": self.policy,
            "revenue": str(self.revenue),
            "cost": str(self.cost),
            "margin": str(self.margin),
            "margin_pct": None if pct is None else str(pct),
            "unpriced_events": self.unpriced_events,
            "rows": [r.to_dict() for r in self.rows],
            "flagged": [c.to_dict() for c in self.flagged],
            "alerts": [a.to_dict() for a in self.alerts],
        }


def _plan_floor(policy: Policy, customer: str, plan: str, default: Decimal) -> Decimal:
    floor = policy.plan_for(customer, plan).margin_floor
    return default if floor is None else floor


def _group_key(by: str, e: Event, r: RatedEvent | None) -> str:
    if by == "plan":
        return r.plan if r is not None else "?"
    if by == "model":
        return e.cost.model or e.model_requested
    if by == "feature":
        return e.feature or e.tags.get("feature") or "(none)"
    if by == "class":
        return r.cost_class if r is not None else "?"
    return e.customer or "(unattributed)"


def build_margin_report(
    events: Iterable[Event],
    policy: Policy,
    *,
    period: str | None = None,
    by: str = "customer",
    default_floor: Decimal = Decimal("0.2"),
    sinks: Sequence[AlertSink] = (),
    sent_state: Path | None = None,
) -> MarginReport:
    """Rate ``events`` (the period's and the previous period's) and report on ``period``
    (default: the latest period with events)."""
    from jevons.insight.alerts import MarginAlert, deliver_alerts

    if by not in GROUPINGS:
        raise MarginError(f"--by must be one of {', '.join(GROUPINGS)}, not {by!r}")
    all_events = [e for e in events if e.customer is not None]
    if period is None:
        if not all_events:
            raise MarginError("the ledger has no attributed events: nothing to report")
        period = max(period_of(e.timestamp) for e in all_events)
    else:
        period_bounds(period)  # validates YYYY-MM
    prev = previous_period(period)
    by_customer: dict[str, list[Event]] = defaultdict(list)
    for e in all_events:
        p = period_of(e.timestamp)
        if p <= period:
            assert e.customer is not None
            by_customer[e.customer].append(e)
    engine = PolicyEngine(policy)
    groups: dict[str, dict[str, Any]] = {}
    customers: list[CustomerMargin] = []
    unpriced = 0
    with rating_context():  # the engine's 80-digit context: allocations add up exactly
        for customer, evs in sorted(by_customer.items()):
            current = [e for e in evs if period_of(e.timestamp) == period]
            if not current:
                continue
            rated_list, rater = engine.rate_customer(customer, evs, through=period)
            invoices = {inv.period: inv for inv in rater.invoices}
            inv = invoices.get(period)
            if inv is None:
                continue
            unpriced += inv.unpriced_events
            rated = {r.event_id: r for r in rated_list if r.period == period}
            usage_billed = sum((r.billed for r in rated.values()), _ZERO)
            extra = inv.revenue - usage_billed  # fees, true-ups, less promotional credits
            plan = next((rated[e.id].plan for e in reversed(current) if e.id in rated), "?")
            customers.append(
                CustomerMargin(
                    customer=customer,
                    plan=plan,
                    revenue=inv.revenue,
                    cost=inv.cost,
                    floor=_plan_floor(policy, customer, plan, default_floor),
                    drivers=driver_breakdown(current, rated, policy.default_class),
                    previous=invoices.get(prev),
                    events=len(current),
                )
            )
            total_cost = inv.cost
            n = len(current)
            allocated = _ZERO
            for i, e in enumerate(current):
                r = rated.get(e.id)
                cost = r.cost if r is not None else _ZERO
                if i == n - 1:  # the remainder, so that a customer's groups add up to its invoice
                    part = extra - allocated
                else:
                    part = extra * cost / total_cost if total_cost else extra / n
                    allocated += part
                key = _group_key(by, e, r)
                g = groups.setdefault(key, {"revenue": _ZERO, "cost": _ZERO, "events": 0, "customers": set()})
                g["revenue"] += (r.billed if r is not None else _ZERO) + part
                g["cost"] += cost
                g["events"] += 1
                g["customers"].add(customer)
    rows = [GroupRow(k, g["revenue"], g["cost"], g["events"], len(g["customers"])) for k, g in groups.items()]
    rows.sort(key=lambda r: (r.margin_pct is not None, r.margin_pct or _ZERO))
    report = MarginReport(period, by, policy.name, rows, customers, unpriced_events=unpriced)
    now = datetime.now(UTC)
    for c in report.flagged:
        before = c.previous_status()
        rank = {"ok": 0, "under floor": 1, "past cliff": 2}
        if before is None or rank[c.status] > rank[before]:
            report.alerts.append(
                MarginAlert(
                    customer=c.customer,
                    period=period,
                    kind="cliff" if c.past_cliff else "floor",
                    plan=c.plan,
                    margin_pct=c.margin_pct,
                    floor=c.floor,
                    revenue=c.revenue,
                    cost=c.cost,
                    previous_status=before,
                    at=now,
                )
            )
    if sinks:
        deliver_alerts(report.alerts, sinks, state_path=sent_state)
    return report


def events_for_report(store: EventStore, period: str | None, policy: Policy | None = None) -> list[Event]:
    """The events a report on ``period`` needs: that period and the one before, and back to the
    first period of any credit grant of ``policy`` (credits carry across periods: without the
    usage that drew a grant earlier, the report would draw it again). All events when the period
    is not given, to find the latest."""
    if period is None:
        return store.query(EventQuery())
    prev = previous_period(period)
    start = period_bounds(prev)[0] if policy is None else PolicyEngine(policy).history_start_all(prev)
    end = period_bounds(period)[1]
    return store.query(EventQuery(since=start, until=end))


def margin_report_from_settings(
    *,
    period: str | None = None,
    by: str = "customer",
    policy_file: str | None = None,
    default_floor: float = 0.2,
    webhook: str | None = None,
) -> MarginReport:
    """``jevons margin``: the configured ledger and policy (``[billing] policy_file``)."""
    from jevons.config import load_settings
    from jevons.insight.alerts import LogAlertSink, WebhookAlertSink
    from jevons.insight.rating import load_policy_file
    from jevons.ledger import open_store

    settings = load_settings()
    ref = policy_file or settings.billing.policy_file
    if not ref:
        raise MarginError("no policy: pass --policy FILE (or builtin:flat) or set [billing] policy_file")
    policy = load_policy_file(ref)
    store = open_store(settings)
    try:
        events = events_for_report(store, period, policy)
    finally:
        store.close()
    sinks: list[AlertSink] = [LogAlertSink()]
    if webhook:
        sinks.append(WebhookAlertSink(webhook))
    return build_margin_report(
        events,
        policy,
        period=period,
        by=by,
        default_floor=Decimal(str(default_floor)),
        sinks=sinks,
        sent_state=settings.home_dir / "insight" / "alerts-sent.json",
    )
