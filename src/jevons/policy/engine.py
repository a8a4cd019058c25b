"""The billing engine: events in time order + policy versions -> rated events and invoices.

Rating is a deterministic function of (events in time order, policy versions, credit grants).
One customer is rated by one :class:`CustomerRater`, whose whole state
(:class:`CustomerState`: allowance pools, fixed-discount pool, period totals, credits drawn,
alerts sent) is plain data that serialises to JSON. The batch path (``jevons rate``,
``jevons invoice``) feeds a fresh rater every event; the real-time path
(:mod:`jevons.policy.runtime`) loads the state from the database under a lock, feeds one event
and writes it back -- the same code, so running balances equal a batch re-rating.

Per event (see :mod:`jevons.policy.rules` for each rule): class -> list charge by mode ->
event floor -> allowance -> discount (not below the floor) -> cap -> credits.
Per period, at its end: fees (prorated by plan segment) -> commitment true-up -> period-floor
true-up -> credits on fees and true-ups. Periods are calendar months in UTC; a customer's first
period is the earlier of its first event's and its first credit grant's, and every period from
there on is closed (fees are due even in a month without usage).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, ROUND_HALF_UP, Decimal
from typing import Any, Literal

from jevons.events import Event
from jevons.policy import rules as R
from jevons.policy.loader import PolicySet
from jevons.policy.model import AllowanceSpec, CreditGrantSpec, Plan, PlanClass, Policy
from jevons.policy.periods import Segment, next_period, period_bounds, period_of, segments

__all__ = [
    "Alert",
    "CustomerRater",
    "CustomerState",
    "Grant",
    "Invoice",
    "InvoiceLine",
    "PolicyEngine",
    "RatedEvent",
    "RatingError",
    "allowance_pool",
    "event_class",
    "event_cost",
    "event_list_charge",
]

log = logging.getLogger("jevons.policy")

_ZERO = Decimal(0)
_CENT = Decimal("0.01")
_FAR = datetime.max.replace(tzinfo=UTC)
_LINE_FIELDS = (
    "events", "cost", "list_charge", "floor_uplift", "gross", "included", "overage",
    "discount", "absorbed", "absorbed_cost", "billed", "unpriced",
)


class RatingError(ValueError):
    """An event that cannot be rated under the policy (e.g. its customer has no plan)."""


# ------------------------------------------------------------------------------ inputs


@dataclass(frozen=True, slots=True)
class Grant:
    """A prepaid credit grant in a customer's wallet."""

    id: str
    customer: str
    amount: Decimal
    kind: Literal["paid", "promotional"]
    priority: int
    effective: datetime
    expires: datetime | None = None

    @property
    def order(self) -> tuple[int, datetime, datetime, str]:
        """Draw order: priority (lower first), earliest expiry, oldest, then id."""
        return (self.priority, self.expires or _FAR, self.effective, self.id)

    def live(self, at: datetime) -> bool:
        return self.effective <= at and (self.expires is None or at < self.expires)

    @classmethod
    def from_spec(cls, customer: str, spec: CreditGrantSpec, fallback_id: str) -> Grant:
        return cls(spec.id or fallback_id, customer, spec.amount, spec.kind, spec.priority,
                   spec.effective, spec.expires)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "customer": self.customer, "amount": str(self.amount), "kind": self.kind,
            "priority": self.priority, "effective": self.effective.isoformat(),
            "expires": self.expires.isoformat() if self.expires else None,
        }


def event_cost(event: Event, policy: Policy) -> tuple[Decimal, bool]:
    """The event's cost, and whether it is an unpriced call rated at the policy's fallback."""
    total = event.cost.total_usd
    if total is not None:
        return total, False
    fb = policy.unpriced
    u = event.usage
    return (u.input_tokens * fb.input_usd_per_mtok + u.output_tokens * fb.output_usd_per_mtok) / R.MTOK, True


def event_class(event: Event, policy: Policy) -> str:
    rate: Decimal | None = None
    for line in event.cost.lines:
        if line.dimension == "input":
            rate = line.usd_per_token * R.MTOK
            break
    return policy.classify(
        model=event.cost.model or event.model_requested,
        provider=event.cost.provider or event.provider,
        feature=event.feature or event.tags.get("feature"),
        reasoning_tokens=event.usage.reasoning_tokens,
        input_usd_per_mtok=rate,
    )


def event_list_charge(event: Event, pc: PlanClass, cost: Decimal) -> Decimal:
    """Step 1 for one event: the list charge of its class's mode (token rates on the event's
    plan token buckets, or ``cost`` x markup). Call inside :func:`R.rating_context`."""
    u = event.usage
    return R.list_charge(
        pc.mode, cost, markup=pc.markup, usd_per_mtok=pc.usd_per_mtok,
        buckets=lambda: R.plan_token_buckets(
            input_tokens=u.input_tokens, output_tokens=u.output_tokens,
            cache_read_tokens=u.cache_read_tokens, cache_write_tokens=u.cache_write_tokens,
            reasoning_tokens=u.reasoning_tokens,
        ),
    )


def allowance_pool(segment: int, cls: str, pc: PlanClass,
                   plan: Plan) -> tuple[str, AllowanceSpec | None, R.AllowanceUnit]:
    """The allowance a class draws from in one plan segment (its own pool, else the plan's
    shared one): the pool's state key, its spec (``None``: no allowance) and its unit
    (``usd_charge`` when none)."""
    spec = pc.allowance or plan.allowance
    key = f"{segment}:{cls}" if pc.allowance else f"{segment}:*"
    return key, spec, spec.unit if spec is not None else "usd_charge"


# ------------------------------------------------------------------------------ outputs


@dataclass(frozen=True, slots=True)
class RatedEvent:
    event_id: str
    idempotency_key: str
    customer: str | None
    timestamp: datetime
    period: str
    plan: str
    cost_class: str
    mode: str
    cost: Decimal
    unpriced: bool  # rated at the policy's fallback cost: flagged
    list_charge: Decimal
    floor: Decimal
    charge: Decimal  # gross, after the floor
    included: Decimal
    overage: Decimal
    discount: Decimal
    net: Decimal
    billed: Decimal
    absorbed: Decimal
    absorbed_cost: Decimal
    credits: tuple[tuple[str, str, Decimal], ...]  # (grant id, kind, amount)

    @property
    def credits_applied(self) -> Decimal:
        return sum((c[2] for c in self.credits), _ZERO)

    @property
    def due(self) -> Decimal:
        return self.billed - self.credits_applied

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in self.__slots__:
            value = getattr(self, name)
            if isinstance(value, Decimal):
                value = str(value)
            elif isinstance(value, datetime):
                value = value.isoformat()
            elif name == "credits":
                value = [{"grant": g, "kind": k, "amount": str(a)} for g, k, a in value]
            out[name] = value
        out["due"] = str(self.due)
        return out


@dataclass(frozen=True, slots=True)
class Alert:
    customer: str | None
    period: str
    key: str  # e.g. "cap:0.8", "allowance:0:base:0.5", "low_credit"
    message: str
    at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {"customer": self.customer, "period": self.period, "key": self.key,
                "message": self.message, "at": self.at.isoformat()}


@dataclass(frozen=True, slots=True)
class InvoiceLine:
    kind: str  # fee | usage | commitment_true_up | period_floor_true_up | credit_paid | credit_promotional
    description: str
    amount: Decimal  # exact
    rounded: Decimal  # to cents, by the policy's rounding rule
    detail: dict[str, Decimal] = field(default_factory=dict)
    cost_class: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "description": self.description, "class": self.cost_class,
            "amount": str(self.rounded), "amount_exact": str(self.amount),
            "detail": {k: str(v) for k, v in self.detail.items()},
        }


@dataclass(frozen=True, slots=True)
class Invoice:
    """One customer's period. ``total_due`` is the sum of the rounded lines (so the lines always
    add up to it); ``total_exact`` the sum of the exact ones."""

    customer: str | None
    period: str
    lines: tuple[InvoiceLine, ...]
    total_due: Decimal
    total_exact: Decimal
    cost: Decimal
    revenue: Decimal  # fees + usage + true-ups - promotional credits (paid credits are revenue)
    margin: Decimal
    margin_pct: Decimal | None  # margin / revenue (None when there is no revenue)
    absorbed_cost: Decimal
    events: int
    unpriced_events: int
    rounding: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "customer": self.customer, "period": self.period,
            "lines": [line.to_dict() for line in self.lines],
            "total_due": str(self.total_due), "total_exact": str(self.total_exact),
            "cost": str(self.cost), "revenue": str(self.revenue), "margin": str(self.margin),
            "margin_pct": None if self.margin_pct is None else str(self.margin_pct),
            "absorbed_cost": str(self.absorbed_cost), "events": self.events,
            "unpriced_events": self.unpriced_events, "rounding": self.rounding,
        }


# ------------------------------------------------------------------------------ state


def _dec_map(d: dict[str, Any]) -> dict[str, Decimal]:
    return {k: Decimal(v) for k, v in d.items()}


@dataclass
class CustomerState:
    """Everything rating one customer carries between events (JSON-serialisable)."""

    customer: str | None
    period: str  # the open period
    pools: dict[str, Decimal] = field(default_factory=dict)  # "segment:class|*" -> left
    pool_sizes: dict[str, Decimal] = field(default_factory=dict)
    fixed_left: Decimal = _ZERO
    billed_total: Decimal = _ZERO
    classes: dict[str, dict[str, Decimal]] = field(default_factory=dict)  # class -> line totals
    drawn: dict[str, Decimal] = field(default_factory=dict)  # grant id -> drawn (all time)
    period_credits: dict[str, Decimal] = field(default_factory=dict)  # kind -> drawn this period
    alerts: list[str] = field(default_factory=list)  # keys sent this period
    last_event_at: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "customer": self.customer, "period": self.period,
            "pools": {k: str(v) for k, v in self.pools.items()},
            "pool_sizes": {k: str(v) for k, v in self.pool_sizes.items()},
            "fixed_left": str(self.fixed_left), "billed_total": str(self.billed_total),
            "classes": {c: {k: str(v) for k, v in t.items()} for c, t in self.classes.items()},
            "drawn": {k: str(v) for k, v in self.drawn.items()},
            "period_credits": {k: str(v) for k, v in self.period_credits.items()},
            "alerts": list(self.alerts),
            "last_event_at": self.last_event_at.isoformat() if self.last_event_at else None,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CustomerState:
        last = d.get("last_event_at")
        return cls(
            customer=d["customer"], period=d["period"], pools=_dec_map(d["pools"]),
            pool_sizes=_dec_map(d["pool_sizes"]), fixed_left=Decimal(d["fixed_left"]),
            billed_total=Decimal(d["billed_total"]),
            classes={c: _dec_map(t) for c, t in d["classes"].items()},
            drawn=_dec_map(d["drawn"]), period_credits=_dec_map(d["period_credits"]),
            alerts=list(d["alerts"]),
            last_event_at=datetime.fromisoformat(last) if last else None,
        )


# ------------------------------------------------------------------------------ the rater


def _round(amount: Decimal, rule: str) -> Decimal:
    return amount.quantize(_CENT, rounding=ROUND_HALF_UP if rule == "half_up" else ROUND_HALF_EVEN)


class CustomerRater:
    """Rates one customer's events in time order and closes its periods."""

    def __init__(
        self,
        policies: PolicySet,
        customer: str | None,
        grants: Sequence[Grant] = (),
        state: CustomerState | None = None,
    ) -> None:
        self.policies = policies
        self.customer = customer
        self.grants = sorted(grants, key=lambda g: g.order)
        self.state = state
        self.invoices: list[Invoice] = []
        self.alerts: list[Alert] = []
        self._segments: dict[str, list[Segment]] = {}

    # -- periods

    def segments(self, period: str) -> list[Segment]:
        segs = self._segments.get(period)
        if segs is None:
            segs = segments(self.policies, self.customer, period)
            self._segments[period] = segs
        return segs

    def first_period(self, first_event_at: datetime) -> str:
        starts = [g.effective for g in self.grants]
        return period_of(min([first_event_at, *starts]))

    def _open(self, period: str) -> None:
        with R.rating_context():
            self._open_period(period)

    def _open_period(self, period: str) -> None:
        st = self.state
        assert st is not None
        st.period = period
        st.pools, st.pool_sizes = {}, {}
        start, end = period_bounds(period)
        total = Decimal(int((end - start).total_seconds()))
        for seg in self.segments(period):
            for cname, pc in seg.plan.classes.items():
                key, spec, _ = allowance_pool(seg.index, cname, pc, seg.plan)
                if spec is not None and key not in st.pools:
                    size = R.prorate(spec.amount, seg.seconds, total)
                    st.pools[key] = size
                    st.pool_sizes[key] = size
        fixed = _ZERO
        spec_c = self._customer_spec(self.policies.at(start) if self._has_policy(start) else None)
        if spec_c is not None:
            for disc in spec_c.discounts:
                if disc.amount is not None and disc.active(start):
                    fixed += disc.amount
        st.fixed_left = fixed
        st.billed_total = _ZERO
        st.classes = {}
        st.period_credits = {}
        st.alerts = []

    def _has_policy(self, at: datetime) -> bool:
        try:
            self.policies.at(at)
        except LookupError:
            return False
        return True

    def _customer_spec(self, policy: Policy | None) -> Any:
        if policy is None:
            return None
        return policy.customers.get(self.customer or "")

    def start(self, first_at: datetime) -> None:
        if self.state is None:
            self.state = CustomerState(self.customer, "")
            self._open(self.first_period(first_at))

    def advance_to(self, period: str) -> None:
        """Close every open period before ``period``."""
        st = self.state
        assert st is not None
        while st.period < period:
            self.close()
            self._open(next_period(st.period))

    # -- credits

    def _draw(self, due: Decimal, at: datetime) -> tuple[tuple[str, str, Decimal], ...]:
        st = self.state
        assert st is not None
        out: list[tuple[str, str, Decimal]] = []
        for g in self.grants:
            if due <= 0:
                break
            if not g.live(at):
                continue
            drawn = st.drawn.get(g.id, _ZERO)
            take = R.credit_draw(g.amount - drawn, due)
            if take > 0:
                st.drawn[g.id] = drawn + take
                st.period_credits[g.kind] = st.period_credits.get(g.kind, _ZERO) + take
                out.append((g.id, g.kind, take))
                due -= take
        return tuple(out)

    def credit_balance(self, at: datetime) -> dict[str, Decimal]:
        """Balance of live grants at ``at`` by kind (``paid``, ``promotional``) and ``total``."""
        st = self.state
        out = {"paid": _ZERO, "promotional": _ZERO}
        for g in self.grants:
            if g.live(at):
                out[g.kind] += g.amount - (st.drawn.get(g.id, _ZERO) if st else _ZERO)
        out["total"] = out["paid"] + out["promotional"]
        return out

    # -- one event

    def _segment_at(self, at: datetime) -> Segment:
        assert self.state is not None
        for seg in self.segments(self.state.period):
            if seg.covers(at):
                return seg
        raise RatingError(f"customer {self.customer!r} has no plan at {at.isoformat()}")

    def rate(self, event: Event) -> RatedEvent:
        with R.rating_context():
            return self._rate(event)

    def _rate(self, event: Event) -> RatedEvent:
        at = event.timestamp
        self.start(at)
        st = self.state
        assert st is not None
        period = period_of(at)
        if period < st.period:
            raise RatingError(
                f"event {event.id} at {at.isoformat()} is in closed period {period} "
                f"(customer {self.customer!r} is rated through {st.period}): re-rate instead"
            )
        self.advance_to(period)
        seg = self._segment_at(at)
        pol, plan = seg.policy, seg.plan
        cost, unpriced = event_cost(event, pol)
        cls = event_class(event, pol)
        pc = plan.classes[cls]
        u = event.usage
        list_charge = event_list_charge(event, pc, cost)
        key, _, unit = allowance_pool(seg.index, cls, pc, plan)
        left = st.pools.get(key, _ZERO)
        percent = self._percent(pol, at)
        headroom = R.INF if plan.cap is None else plan.cap - st.billed_total
        state = R.UnitState.start(left, st.fixed_left, headroom)
        r = R.rate_unit(
            list_charge=list_charge, cost=cost, floor_multiplier=pc.floor_multiplier,
            allowance_unit=unit, tokens=Decimal(u.total_tokens) if unit == "tokens" else None,
            percent=percent, state=state,
        )
        if key in st.pools:
            st.pools[key] = r.state.allowance_left
        st.fixed_left = r.state.fixed_discount_left
        st.billed_total += r.billed
        credits = self._draw(r.billed, at)
        disc = r.percent_off + r.fixed_off
        t = st.classes.setdefault(cls, dict.fromkeys(_LINE_FIELDS, _ZERO))
        t["events"] += 1
        t["cost"] += cost
        t["list_charge"] += list_charge
        t["floor_uplift"] += r.floor_uplift
        t["gross"] += r.charge
        t["included"] += r.included
        t["overage"] += r.overage
        t["discount"] += disc
        t["absorbed"] += r.absorbed
        t["absorbed_cost"] += r.absorbed_cost
        t["billed"] += r.billed
        if unpriced:
            t["unpriced"] += 1
        st.last_event_at = at
        self._check_alerts(plan, at)
        return RatedEvent(
            event.id, event.idempotency_key, self.customer, at, st.period, seg.plan_name, cls,
            pc.mode, cost, unpriced, list_charge, r.floor, r.charge, r.included, r.overage, disc,
            r.net, r.billed, r.absorbed, r.absorbed_cost, credits,
        )

    def _percent(self, policy: Policy, at: datetime) -> Decimal:
        spec = self._customer_spec(policy)
        if spec is None:
            return _ZERO
        total = sum((d.percent for d in spec.discounts if d.percent is not None and d.active(at)), _ZERO)
        return min(total, Decimal(1))

    # -- alerts

    def _alert(self, key: str, message: str, at: datetime) -> None:
        st = self.state
        assert st is not None
        if key in st.alerts:
            return
        st.alerts.append(key)
        self.alerts.append(Alert(self.customer, st.period, key, message, at))

    def _check_alerts(self, plan: Plan, at: datetime) -> None:
        st = self.state
        assert st is not None
        for frac in plan.alerts:
            t = frac.normalize()
            if plan.cap is not None and plan.cap > 0 and st.billed_total >= plan.cap * t:
                self._alert(f"cap:{t}", f"usage charge ${st.billed_total} reached {t:%} of the "
                            f"${plan.cap} cap", at)
            for key, size in st.pool_sizes.items():
                if size > 0 and size - st.pools[key] >= size * t:
                    self._alert(f"allowance:{key}:{t}", f"allowance {key} {t:%} used", at)
        if plan.low_credit_usd is not None and self.grants:
            bal = self.credit_balance(at)["total"]
            if bal < plan.low_credit_usd:
                self._alert("low_credit", f"credit balance ${bal} below ${plan.low_credit_usd}", at)

    # -- closing

    def close(self) -> Invoice:
        """Close the open period: fees, true-ups, credits; return (and keep) its invoice."""
        with R.rating_context():
            inv = self._close()
        self.invoices.append(inv)
        return inv

    def _close(self) -> Invoice:
        st = self.state
        assert st is not None
        start, end = period_bounds(st.period)
        total_s = Decimal(int((end - start).total_seconds()))
        segs = self.segments(st.period)
        lines: list[InvoiceLine] = []
        rounding = segs[-1].policy.rounding if segs else "half_up"
        fees = commitment = _ZERO
        for seg in segs:
            fee = R.prorate(seg.plan.fee, seg.seconds, total_s)
            commitment += R.prorate(seg.plan.commitment, seg.seconds, total_s)
            fees += fee
            if seg.plan.fee:
                days = (seg.end - seg.start) / timedelta(days=1)
                what = f"{seg.plan_name} plan fee"
                if seg.seconds != total_s:
                    what += f" ({days:g} of {(end - start) / timedelta(days=1):g} days)"
                lines.append(InvoiceLine("fee", what, fee, _round(fee, rounding)))
        usage = cost = absorbed_cost = _ZERO
        events = unpriced = 0
        for cls in sorted(st.classes):
            t = st.classes[cls]
            usage += t["billed"]
            cost += t["cost"]
            absorbed_cost += t["absorbed_cost"]
            events += int(t["events"])
            unpriced += int(t["unpriced"])
            detail = {k: t[k] for k in ("gross", "included", "overage", "discount", "absorbed",
                                        "floor_uplift", "cost")}
            lines.append(InvoiceLine("usage", f"usage: {cls}", t["billed"],
                                     _round(t["billed"], rounding), detail, cls))
        pfm = segs[-1].plan.period_floor_multiplier if segs else _ZERO
        p = R.close_period(fees=fees, usage_billed=usage, commitment=commitment, period_cost=cost,
                           absorbed_cost=absorbed_cost, period_floor_multiplier=pfm)
        if p.commitment_true_up > 0:
            what = f"minimum commitment ${_round(commitment, rounding)}"
            lines.append(InvoiceLine("commitment_true_up", what, p.commitment_true_up,
                                     _round(p.commitment_true_up, rounding)))
        if p.floor_true_up > 0:
            lines.append(InvoiceLine("period_floor_true_up", "period margin floor", p.floor_true_up,
                                     _round(p.floor_true_up, rounding)))
        self._draw(p.due_before_credits, end - timedelta(microseconds=1))
        lines.extend(self._credit_lines(lines, rounding))
        promo = st.period_credits.get("promotional", _ZERO)
        revenue = p.revenue - promo
        margin = revenue - cost
        return Invoice(
            customer=self.customer, period=st.period, lines=tuple(lines),
            total_due=sum((line.rounded for line in lines), _ZERO),
            total_exact=sum((line.amount for line in lines), _ZERO),
            cost=cost, revenue=revenue, margin=margin,
            margin_pct=None if revenue == 0 else margin / revenue,
            absorbed_cost=absorbed_cost, events=events, unpriced_events=unpriced, rounding=rounding,
        )

    def _credit_lines(self, charges: list[InvoiceLine], rounding: str) -> list[InvoiceLine]:
        """Credit lines, rounded so that the total due is the exact total due rounded to cents
        (never below zero): the credits absorb the cents that rounding each charge line moved."""
        st = self.state
        assert st is not None
        paid = st.period_credits.get("paid", _ZERO)
        promo = st.period_credits.get("promotional", _ZERO)
        if not paid and not promo:
            return []
        charged = sum((line.rounded for line in charges), _ZERO)
        exact_due = sum((line.amount for line in charges), _ZERO) - paid - promo
        credits = charged - max(_round(exact_due, rounding), _ZERO)
        paid_r = min(_round(paid, rounding), credits) if promo else credits
        out = []
        if paid:
            out.append(InvoiceLine("credit_paid", "paid credits applied", -paid, -paid_r))
        if promo:
            out.append(InvoiceLine("credit_promotional", "promotional credits applied", -promo,
                                   -(credits - paid_r)))
        return out

    # -- running balances

    def balances(self, at: datetime | None = None) -> dict[str, Any]:
        """Allowance left per pool, cap headroom and credits, as enforcement sees them."""
        st = self.state
        when = at or (st.last_event_at if st and st.last_event_at else datetime.now(UTC))
        out: dict[str, Any] = {"credits": self.credit_balance(when)}
        if st is None:
            return out
        plan = None
        for seg in self.segments(st.period):
            if seg.covers(when) or plan is None:
                plan = seg.plan
        out["period"] = st.period
        out["allowance_left"] = dict(st.pools)
        out["billed"] = st.billed_total
        out["cap_headroom"] = None if plan is None or plan.cap is None else plan.cap - st.billed_total
        out["fixed_discount_left"] = st.fixed_left
        return out


# ------------------------------------------------------------------------------ facade


AlertHook = Callable[[Alert], Any]


class PolicyEngine:
    """Batch rating for many customers under one set of policy versions."""

    def __init__(
        self,
        policies: PolicySet | Policy,
        *,
        extra_grants: Iterable[Grant] = (),
    ) -> None:
        self.policies = policies if isinstance(policies, PolicySet) else PolicySet([policies])
        self._extra = list(extra_grants)

    def grants_for(self, customer: str | None) -> list[Grant]:
        found: dict[str, Grant] = {}
        for pol in self.policies.versions:
            spec = pol.customers.get(customer or "")
            if spec is None:
                continue
            for i, credit in enumerate(spec.credits):
                grant = Grant.from_spec(customer or "", credit, f"{pol.name}:{customer}:{i}")
                found[grant.id] = grant
        for extra in self._extra:
            if extra.customer == (customer or ""):
                found[extra.id] = extra
        return list(found.values())

    def rater(self, customer: str | None, state: CustomerState | None = None) -> CustomerRater:
        return CustomerRater(self.policies, customer, self.grants_for(customer), state)

    def rate_customer(
        self, customer: str | None, events: Iterable[Event], *, through: str | None = None
    ) -> tuple[list[RatedEvent], CustomerRater]:
        """Rate one customer's events in time order; close every period before ``through``
        (and ``through`` itself), so ``rater.invoices`` holds their invoices."""
        ordered = sorted(events, key=lambda e: (e.timestamp, e.id))
        rater = self.rater(customer)
        rated = [rater.rate(e) for e in ordered]
        if through is not None:
            if rater.state is None:
                rater.start(period_bounds(through)[0])
            assert rater.state is not None
            if rater.state.period <= through:
                rater.advance_to(through)
                rater.close()
                rater._open(next_period(through))  # later events land in a fresh period
        return rated, rater

    def rate(self, events: Iterable[Event]) -> dict[str | None, list[RatedEvent]]:
        """Every customer independently, each in time order."""
        by_customer: dict[str | None, list[Event]] = {}
        for e in events:
            by_customer.setdefault(e.customer, []).append(e)
        return {c: self.rate_customer(c, evs)[0] for c, evs in by_customer.items()}

    def invoice(self, customer: str | None, period: str, events: Iterable[Event]) -> Invoice:
        """The invoice preview of ``customer`` for ``period`` (events of earlier periods are
        rated too when given, for the credits they drew). Uses the fast batch rater, whose
        result equals rating event by event."""
        from jevons.policy.batch import rate_customer_fast

        rater = rate_customer_fast(self, customer, [e for e in events if period_of(e.timestamp) <= period],
                                   through=period)
        for inv in rater.invoices:
            if inv.period == period:
                return inv
        raise RatingError(f"customer {customer!r} has nothing in {period}")

    def history_start(self, customer: str | None, period: str) -> datetime:
        """Where to start reading events for an invoice of ``period``: the period's start, or
        the first credit grant's period when that is earlier (credits carry across periods)."""
        start = period_bounds(period)[0]
        grants = self.grants_for(customer)
        if grants:
            first = period_bounds(period_of(min(g.effective for g in grants)))[0]
            return min(first, start)
        return start

    def history_start_all(self, period: str) -> datetime:
        """:meth:`history_start` for every customer at once (re-rating a whole period): the
        earliest of the period's start and the first period of any customer's credit grant."""
        customers = {c for pol in self.policies.versions for c in pol.customers}
        customers.update(g.customer for g in self._extra)
        return min([period_bounds(period)[0], *(self.history_start(c, period) for c in customers)])

    def amount_for(self, event: Event) -> Decimal:
        """Stateless list charge of one event after its floor and percent discount (what the
        event is worth before allowance, cap and credits, which need running state: use
        :meth:`jevons.policy.runtime.PolicyRuntime.amount_for` for those)."""
        with R.rating_context():
            pol = self.policies.at(event.timestamp)
            plan = pol.plan_for(event.customer, pol.plan_at(event.customer, event.timestamp))
            cost, _ = event_cost(event, pol)
            pc = plan.classes[event_class(event, pol)]
            f = R.apply_floor(event_list_charge(event, pc, cost), cost, pc.floor_multiplier)
            rater = CustomerRater(self.policies, event.customer)
            d = R.discount(f.charge, f.floor, rater._percent(pol, event.timestamp), _ZERO)
            return d.net
