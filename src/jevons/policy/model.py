"""The billing policy: cost classes, plans, customers, credits, discounts, caps (pydantic).

A policy is written in TOML (see ``examples/policies/*.toml`` and ``docs/policy.md``) or built
in Python; both validate through these models. Every money amount is an exact ``Decimal``
(TOML floats are read as Decimals, never as binary floats). Times are timezone-aware UTC; a
bare TOML date means midnight UTC.

The engine never reads raw dicts: it asks :meth:`Policy.plan_for` for the effective plan of a
customer (plan values with the customer's overrides merged in) and :meth:`Policy.classify` for
the cost class of a call.
"""

from __future__ import annotations

import fnmatch
from datetime import UTC, date, datetime, time
from decimal import Decimal
from functools import cached_property
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from jevons.policy import rules

__all__ = [
    "AllowanceSpec",
    "CostClass",
    "CreditGrantSpec",
    "CustomerSpec",
    "DiscountSpec",
    "LocatedError",
    "Plan",
    "PlanAssignment",
    "PlanClass",
    "Policy",
    "UnpricedFallback",
    "to_utc",
]


def to_utc(value: Any) -> Any:
    """TOML date -> midnight UTC; naive datetime -> UTC; other values unchanged."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime.combine(value, time(0), tzinfo=UTC)
    return value


class LocatedError(ValueError):
    """A validation error that knows which field (below the model raising it) is at fault, so
    the loader can name the file line of that field."""

    def __init__(self, message: str, *loc: str | int) -> None:
        super().__init__(message)
        self.loc = loc


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Money = Decimal


class AllowanceSpec(_Model):
    """An included allowance per period: ``amount`` of ``unit`` (USD of charge, USD of cost,
    or tokens). Prorated by day when a plan covers only part of a period."""

    amount: Decimal = Field(ge=0)
    unit: rules.AllowanceUnit = "usd_charge"


class CostClass(_Model):
    """Which calls belong to a class. Every criterion given must hold (AND); a class with no
    criterion matches nothing and is only reachable as ``default_class``. When two classes can
    match the same call, the higher ``priority`` wins; equal or missing priorities on classes
    that can overlap are rejected."""

    priority: int | None = None
    models: list[str] = []  # fnmatch globs on the resolved model (or the requested one)
    providers: list[str] = []
    features: list[str] = []  # the event's feature tag
    min_input_usd_per_mtok: Decimal | None = None  # the model's input price at or above this
    reasoning: bool | None = None  # True: calls with reasoning tokens; False: without

    @property
    def has_criteria(self) -> bool:
        return bool(
            self.models or self.providers or self.features
            or self.min_input_usd_per_mtok is not None or self.reasoning is not None
        )


class PlanClass(_Model):
    """How one plan prices one class: token mode (own USD per Mtok) or price mode (markup)."""

    mode: Literal["token", "price"]
    markup: Decimal | None = None
    input: Decimal | None = Field(default=None, ge=0)
    output: Decimal | None = Field(default=None, ge=0)
    cached_input: Decimal | None = Field(default=None, ge=0)
    cache_write: Decimal | None = Field(default=None, ge=0)
    reasoning: Decimal | None = Field(default=None, ge=0)
    floor: Decimal | None = Field(default=None, ge=0)  # None: no floor; 0: never below cost
    allowance: AllowanceSpec | None = None

    @field_validator("floor")
    @classmethod
    def _floor_below_one(cls, v: Decimal | None) -> Decimal | None:
        if v is not None and v >= 1:
            raise ValueError(
                f"margin floor {v} must be below 1 (a floor of 1 or more needs an infinite price)"
            )
        return v

    @field_validator("markup")
    @classmethod
    def _markup_positive(cls, v: Decimal | None) -> Decimal | None:
        if v is not None and v <= 0:
            raise ValueError(f"markup {v} must be greater than 0")
        return v

    @model_validator(mode="after")
    def _mode_fields(self) -> PlanClass:
        if self.mode == "price" and self.markup is None:
            raise LocatedError("price mode needs a markup", "mode")
        if self.mode == "token" and (self.input is None or self.output is None):
            raise LocatedError("token mode needs input and output (USD per Mtok)", "mode")
        return self

    @cached_property
    def usd_per_mtok(self) -> dict[str, Decimal]:
        """Every token dimension's rate, with the documented fallbacks filled in: cached input
        and cache writes at the input rate, reasoning at the output rate."""
        inp = self.input or Decimal(0)
        out = self.output or Decimal(0)
        return {
            "input": inp,
            "cached_input": inp if self.cached_input is None else self.cached_input,
            "cache_write": inp if self.cache_write is None else self.cache_write,
            "output": out,
            "reasoning": out if self.reasoning is None else self.reasoning,
        }

    @cached_property
    def floor_multiplier(self) -> Decimal:
        """``1/(1-floor)`` (see :func:`rules.floor_multiplier`); 0 when there is no floor."""
        return Decimal(0) if self.floor is None else rules.floor_multiplier(self.floor)


class Plan(_Model):
    fee: Decimal = Field(default=Decimal(0), ge=0)  # flat fee per period
    commitment: Decimal = Field(default=Decimal(0), ge=0)  # minimum spend per period
    period_floor: Decimal | None = Field(default=None, ge=0)
    allowance: AllowanceSpec | None = None  # shared by the classes without their own
    cap: Decimal | None = Field(default=None, ge=0)  # hard cap on the period's usage charge
    cap_enforcement: Literal["absorb", "block"] = "absorb"
    alerts: list[Decimal] = Field(default_factory=lambda: [Decimal("0.5"), Decimal("0.8"), Decimal(1)])
    low_credit_usd: Decimal | None = Field(default=None, ge=0)
    classes: dict[str, PlanClass]

    @field_validator("period_floor")
    @classmethod
    def _period_floor_below_one(cls, v: Decimal | None) -> Decimal | None:
        if v is not None and v >= 1:
            raise ValueError(f"period floor {v} must be below 1")
        return v

    @cached_property
    def period_floor_multiplier(self) -> Decimal:
        return Decimal(0) if self.period_floor is None else rules.floor_multiplier(self.period_floor)

    @property
    def margin_floor(self) -> Decimal | None:
        """The margin this plan promises, for margin reports: the highest of its period floor
        and its classes' event floors; ``None`` when it has none."""
        floors = [c.floor for c in self.classes.values() if c.floor is not None]
        if self.period_floor is not None:
            floors.append(self.period_floor)
        return max(floors) if floors else None


class PlanAssignment(_Model):
    """From ``starts`` on, the customer is on ``plan`` (mid-period changes rated by day)."""

    plan: str
    starts: datetime

    _utc = field_validator("starts", mode="before")(to_utc)


class DiscountSpec(_Model):
    """A percent (0 < p <= 1) or a fixed USD amount per period, over [starts, ends)."""

    percent: Decimal | None = Field(default=None, gt=0, le=1)
    amount: Decimal | None = Field(default=None, gt=0)
    starts: datetime | None = None
    ends: datetime | None = None

    _utc = field_validator("starts", "ends", mode="before")(to_utc)

    @model_validator(mode="after")
    def _one_kind(self) -> DiscountSpec:
        if (self.percent is None) == (self.amount is None):
            raise ValueError("a discount has exactly one of percent or amount")
        if self.starts and self.ends and self.ends <= self.starts:
            raise LocatedError("discount ends before it starts", "ends")
        return self

    def active(self, at: datetime) -> bool:
        return (self.starts is None or at >= self.starts) and (self.ends is None or at < self.ends)


class CreditGrantSpec(_Model):
    """A prepaid credit grant (drawn by priority, then earliest expiry, then oldest)."""

    id: str | None = None
    amount: Decimal = Field(gt=0)
    kind: Literal["paid", "promotional"] = "paid"
    priority: int = 0  # lower is drawn first
    effective: datetime
    expires: datetime | None = None

    _utc = field_validator("effective", "expires", mode="before")(to_utc)

    @model_validator(mode="after")
    def _expiry_after_effect(self) -> CreditGrantSpec:
        if self.expires is not None and self.expires <= self.effective:
            raise LocatedError(
                f"credit expires ({self.expires.isoformat()}) before it takes effect "
                f"({self.effective.isoformat()})",
                "expires",
            )
        return self


class CustomerSpec(_Model):
    plan: str | None = None
    plans: list[PlanAssignment] = []
    overrides: dict[str, Any] = {}  # any plan value, same shape as a plan (partial)
    discounts: list[DiscountSpec] = []
    credits: list[CreditGrantSpec] = []


class UnpricedFallback(_Model):
    """What an unpriced call is rated at (and flagged): never $0."""

    input_usd_per_mtok: Decimal = Field(default=Decimal(15), gt=0)
    output_usd_per_mtok: Decimal = Field(default=Decimal(75), gt=0)


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _globs_overlap(a: list[str], b: list[str]) -> bool:
    for x in a:
        for y in b:
            xl, yl = x.lower(), y.lower()
            if fnmatch.fnmatchcase(xl, yl) or fnmatch.fnmatchcase(yl, xl):
                return True
            px, py = xl.split("*")[0].split("?")[0], yl.split("*")[0].split("?")[0]
            if ("*" in xl or "?" in xl) and ("*" in yl or "?" in yl) and (
                px.startswith(py) or py.startswith(px)
            ):
                return True
    return False


def classes_may_overlap(a: CostClass, b: CostClass) -> bool:
    """Conservative: False only when some criterion both classes use cannot match one call."""
    if not a.has_criteria or not b.has_criteria:
        return False
    if a.models and b.models and not _globs_overlap(a.models, b.models):
        return False
    if a.providers and b.providers and not {p.lower() for p in a.providers} & {
        p.lower() for p in b.providers
    }:
        return False
    if a.features and b.features and not set(a.features) & set(b.features):
        return False
    return not (a.reasoning is not None and b.reasoning is not None and a.reasoning != b.reasoning)


class Policy(_Model):
    """One effective-dated version of a company's pricing."""

    name: str = "policy"
    effective_from: datetime | None = None
    default_plan: str | None = None
    default_class: str = "base"
    classes: dict[str, CostClass] = Field(default_factory=lambda: {"base": CostClass()})
    plans: dict[str, Plan]
    customers: dict[str, CustomerSpec] = {}
    unpriced: UnpricedFallback = UnpricedFallback()
    rounding: Literal["half_up", "half_even"] = "half_up"

    _utc = field_validator("effective_from", mode="before")(to_utc)

    @model_validator(mode="after")
    def _consistent(self) -> Policy:
        if self.default_class not in self.classes:
            raise LocatedError(
                f"default_class {self.default_class!r} is not a defined class", "default_class"
            )
        names = list(self.classes)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                ca, cb = self.classes[a], self.classes[b]
                if (ca.priority is None or ca.priority == cb.priority) and classes_may_overlap(ca, cb):
                    raise LocatedError(
                        f"classes {a!r} and {b!r} can match the same call and have no tie rule: "
                        "give them different priorities",
                        "classes", b,
                    )
        for pname, plan in self.plans.items():
            missing = [c for c in self.classes if c not in plan.classes]
            unknown = [c for c in plan.classes if c not in self.classes]
            if unknown:
                raise LocatedError(
                    f"plan {pname!r} prices unknown class(es) {unknown}",
                    "plans", pname, "classes", unknown[0],
                )
            if missing:
                raise LocatedError(
                    f"plan {pname!r} does not price class(es) {missing}", "plans", pname, "classes"
                )
        known = set(self.plans)
        if self.default_plan is not None and self.default_plan not in known:
            raise LocatedError(
                f"default_plan {self.default_plan!r} is not a defined plan", "default_plan"
            )
        for cname, cust in self.customers.items():
            if cust.plan is not None and cust.plan not in known:
                raise LocatedError(f"unknown plan {cust.plan!r}", "customers", cname, "plan")
            for i, assigned in enumerate(cust.plans):
                if assigned.plan not in known:
                    raise LocatedError(
                        f"unknown plan {assigned.plan!r}", "customers", cname, "plans", i, "plan"
                    )
            if cust.overrides:
                assigned_names = {cust.plan or self.default_plan, *(a.plan for a in cust.plans)}
                for merged_name in sorted(n for n in assigned_names if n is not None):
                    try:
                        self._merged_plan(merged_name, cust.overrides)
                    except ValidationError as exc:
                        first = exc.errors()[0]
                        where = [p for p in first["loc"] if isinstance(p, str | int)]
                        raise LocatedError(
                            f"override on plan {merged_name!r}: {first['msg']}",
                            "customers", cname, "overrides", *where,
                        ) from exc
        return self

    # -------------------------------------------------------------- lookups the engine uses

    @cached_property
    def class_order(self) -> list[str]:
        """Classes in matching order: highest priority first, then as written."""
        names = list(self.classes)
        return sorted(names, key=lambda n: (-(self.classes[n].priority or 0), names.index(n)))

    def _merged_plan(self, plan_name: str, overrides: dict[str, Any]) -> Plan:
        base = self.plans[plan_name].model_dump(mode="python", exclude_unset=False)
        return Plan.model_validate(_deep_merge(base, overrides))

    def plan_for(self, customer: str | None, plan_name: str) -> Plan:
        """The plan with the customer's overrides merged in (cached per customer and plan)."""
        cache: dict[tuple[str | None, str], Plan] = self.__dict__.setdefault("_plan_cache", {})
        key = (customer, plan_name)
        hit = cache.get(key)
        if hit is None:
            spec = self.customers.get(customer or "")
            hit = self._merged_plan(plan_name, spec.overrides) if spec and spec.overrides else (
                self.plans[plan_name]
            )
            cache[key] = hit
        return hit

    def plan_segments(self, customer: str | None) -> list[tuple[datetime | None, str]]:
        """``(starts, plan)`` in time order; ``None`` means since the beginning of time (empty
        when the customer has no plan and the policy no ``default_plan``)."""
        spec = self.customers.get(customer or "")
        out: list[tuple[datetime | None, str]] = []
        first = (spec.plan if spec else None) or self.default_plan
        if first is not None:
            out.append((None, first))
        if spec:
            out.extend((a.starts, a.plan) for a in sorted(spec.plans, key=lambda a: a.starts))
        return out

    def plan_at(self, customer: str | None, at: datetime) -> str:
        chosen: str | None = None
        for starts, name in self.plan_segments(customer):
            if starts is None or starts <= at:
                chosen = name
        if chosen is None:
            raise LookupError(f"customer {customer!r} has no plan at {at.isoformat()}")
        return chosen

    def classify(
        self,
        *,
        model: str | None,
        provider: str | None,
        feature: str | None = None,
        reasoning_tokens: int = 0,
        input_usd_per_mtok: Decimal | None = None,
    ) -> str:
        """The cost class of a call: the first class in :attr:`class_order` whose criteria all
        hold, else ``default_class``."""
        m = (model or "").lower()
        p = (provider or "").lower()
        for name in self.class_order:
            c = self.classes[name]
            if not c.has_criteria:
                continue
            if c.models and not any(fnmatch.fnmatchcase(m, g.lower()) for g in c.models):
                continue
            if c.providers and p not in {x.lower() for x in c.providers}:
                continue
            if c.features and feature not in c.features:
                continue
            if c.reasoning is not None and c.reasoning != (reasoning_tokens > 0):
                continue
            if c.min_input_usd_per_mtok is not None and (
                input_usd_per_mtok is None or input_usd_per_mtok < c.min_input_usd_per_mtok
            ):
                continue
            return name
        return self.default_class
