"""Every billing rule of jevons, written once, for exact Decimals and for numpy arrays alike.

Real billing and the stress-test simulator must never disagree about a rule, yet the first
rates events one at a time in exact ``Decimal`` and the second rates a million customer-months
at once with numpy. So each rule below is one function generic over its number type ``Num``:

- ``Decimal`` scalars: the billing engine (``jevons.policy.engine``), per event and per period.
  Call inside ``with rating_context():`` (80 significant digits) so that every product and sum
  is exact and only the few documented divisions (pro-rata shares, day proration, margin %)
  round.
- ``numpy.float64`` arrays: the simulator (``jevons.insight``), one element per customer-month
  (or per customer-month-class). All arguments of one call are then arrays (or 0-d arrays from
  :func:`param`) that broadcast together; a ``Decimal`` policy value is turned into an array
  with :func:`param` -- never mix ``Decimal`` and arrays in one call.

A tiny ops shim (:func:`maximum`, :func:`minimum`, :func:`where`, :func:`clip`, :func:`share`,
:func:`zero`) picks the implementation from the argument type; the rules use nothing else.

Order of operations (the one documented order; ``docs/policy.md`` has a worked example)
--------------------------------------------------------------------------------------

Per event (or per aggregate "unit" in the simulator), in time order, for the plan and class
in effect at the event's time:

0. classify the call into a cost class (``Policy.classify``; not numeric, not here);
1. list charge by the class's mode (:func:`list_charge`): :func:`token_list_charge` (token
   mode: the plan's own USD per Mtok per token dimension, after :func:`plan_token_buckets`) or
   :func:`price_list_charge` (price mode: cost x markup);
2. event floor: charge = max(list, cost x :func:`floor_multiplier`) -- :func:`apply_floor`;
3. allowance: the first ``allowance_left`` of the measure (USD of charge, USD of cost, or
   tokens) is included, the rest is overage -- :func:`allowance_split`;
4. discount on the overage: percent first, then a fixed-amount pool; never below the
   overage's share of the floor -- :func:`discount`;
5. hard cap on the period's usage charge: above the headroom the charge is not billed but
   absorbed (and the matching cost reported as absorbed cost) -- :func:`apply_cap`;
6. prepaid credits: drawn from the billed amount, ``min(balance, due)`` per grant in grant
   order (priority, earliest expiry, oldest) -- :func:`credit_draw`.

Steps 2-5 are composed in ONE function, :func:`rate_unit` (given the step-1 list charge),
which returns the new running state (allowance left, fixed discount left, cap headroom) to feed
into the next unit. The engine calls it per event, the fast batch rater
(``jevons.policy.batch``) and the simulator per aggregate.

Per period, after all events (:func:`close_period`):

7. flat fee, prorated by day for each plan segment -- :func:`prorate`;
8. minimum-commitment true-up: ``max(commitment - (fees + usage billed), 0)`` --
   :func:`commitment_true_up`;
9. period-floor true-up: ``max((period cost - absorbed cost) x multiplier - revenue, 0)``
   where revenue = fees + usage billed + commitment true-up -- :func:`period_floor_true_up`
   (cost the cap chose to absorb is not billed back by the period floor);
10. credits on what remains due (fees and true-ups), same :func:`credit_draw`.

For the simulator engineer
--------------------------

Per customer-month, hold per class ``c`` (in the policy's class order, ``Policy.class_order``)
float64 arrays of: cost (USD), and for token mode the token aggregates of
:func:`plan_token_buckets`. Then::

    from jevons.policy import rules as R
    P = lambda d: R.param(d, like=cost_c)        # Decimal policy value -> 0-d float array
    state = R.UnitState.start(allowance=P(a), fixed_discount=P(fd),
                              cap=P(R.INF if plan.cap is None else plan.cap))
    for c in policy.class_order:                 # one call per class aggregate
        lst = R.token_list_charge(buckets_c, {d: P(r) for d, r in rates_c.items()})
              # or R.price_list_charge(cost_c, P(markup_c))
        u = R.rate_unit(list_charge=lst, cost=cost_c, floor_multiplier=P(pc.floor_multiplier),
                        allowance_unit=unit, tokens=tokens_c, percent=P(pct), state=state)
        state = u.state                           # carries shared allowance / discount / cap
    p = R.close_period(fees=P(fee), usage_billed=sum_of_u.billed, commitment=P(commit),
                       period_cost=sum_cost, absorbed_cost=sum_of_u.absorbed_cost,
                       period_floor_multiplier=P(plan.period_floor_multiplier))
    drawn = R.credit_draw(balance, sum_of_u.billed + p.due_before_credits)

``PlanClass.floor_multiplier`` and ``Plan.period_floor_multiplier`` are 0 when there is no
floor (a floor of 0, multiplier 1, means "never below cost"); ``PlanClass.usd_per_mtok`` has
every token dimension with its fallbacks filled in.
A per-class allowance is a fresh ``UnitState`` allowance per class; a shared one is carried
from class to class (as in the loop above). Applying rules to aggregates is exact for the
linear steps (list charge, markup, percent discount) and for allowance/cap/credits as long as
within one aggregate every event has the same ratio of charge to measure; the floor (step 2)
on an aggregate is exact when every event in it has the same list/cost ratio (aggregate per
model if the mix matters), otherwise it is a lower bound of the per-event result.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_HALF_EVEN, Context, Decimal, localcontext
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, cast

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    FloatArray = npt.NDArray[np.float64]
    Cond = bool | npt.NDArray[np.bool_]


def _numpy() -> Any:
    """numpy, called through Any, for the array branches of the rules: reached only when an
    argument is an array, so numpy is already imported. Why not imported at the top: the
    Decimal path (every ``Meter`` with a policy, i.e. every ``Meter``) never needs it, and
    importing it costs a process some 50-90 ms and OpenBLAS's worker threads."""
    return sys.modules["numpy"]

__all__ = [
    "INF",
    "MTOK",
    "RATING_PRECISION",
    "TOKEN_DIMS",
    "AllowanceSplit",
    "AllowanceUnit",
    "Capped",
    "Discounted",
    "Floored",
    "Num",
    "PeriodRating",
    "UnitRating",
    "UnitState",
    "allowance_split",
    "apply_cap",
    "apply_floor",
    "clip",
    "close_period",
    "commitment_true_up",
    "credit_draw",
    "discount",
    "floor_multiplier",
    "is_array",
    "list_charge",
    "maximum",
    "minimum",
    "param",
    "period_floor_true_up",
    "plan_token_buckets",
    "price_list_charge",
    "prorate",
    "rate_unit",
    "rating_context",
    "share",
    "token_list_charge",
    "token_list_numerators",
    "where",
    "zero",
]

Num = TypeVar("Num", Decimal, "FloatArray")
"""The number type of one rule call: exact ``Decimal`` scalars or float64 arrays."""

AllowanceUnit = Literal["usd_charge", "usd_cost", "tokens"]

MTOK = Decimal(1_000_000)
INF = Decimal("Infinity")
"""No limit (no cap): ``Decimal('Infinity')``; the array form is ``np.inf``."""

RATING_PRECISION = 80
"""Significant digits of rating arithmetic: enough that every product and sum of prices,
token counts and costs is exact, so linear rules distribute exactly over sums (batch rating of
aggregates equals event-by-event rating)."""

_RATING_CONTEXT = Context(prec=RATING_PRECISION, rounding=ROUND_HALF_EVEN)

TOKEN_DIMS: tuple[str, ...] = ("input", "cached_input", "cache_write", "output", "reasoning")
"""The token dimensions a plan prices in token mode (USD per Mtok each)."""


@contextmanager
def rating_context() -> Iterator[Context]:
    """The Decimal context every exact rating runs in (80 digits, half-even)."""
    with localcontext(_RATING_CONTEXT) as ctx:
        yield ctx


# --------------------------------------------------------------------------- ops shim


def is_array(x: object) -> bool:
    np_ = sys.modules.get("numpy")  # not imported: nothing can be an array
    return np_ is not None and isinstance(x, np_.ndarray | np_.floating)


def param(value: Decimal | float | int, *, like: Num) -> Num:
    """A policy constant in the number type of ``like``: itself for Decimals, else a 0-d float
    array (broadcasts against any array)."""
    if is_array(like):
        return cast(Num, _numpy().asarray(float(value), dtype="float64"))
    if isinstance(value, float):
        raise TypeError("param: a float is not an exact Decimal policy value")
    out: Any = value if isinstance(value, Decimal) else Decimal(value)
    return cast(Num, out)


def zero(like: Num) -> Num:
    if is_array(like):
        return cast(Num, _numpy().zeros_like(like, dtype="float64"))
    out: Any = Decimal(0)
    return cast(Num, out)


def maximum(a: Num, b: Num) -> Num:
    if is_array(a) or is_array(b):
        return cast(Num, _numpy().maximum(a, b))
    return a if a >= b else b


def minimum(a: Num, b: Num) -> Num:
    if is_array(a) or is_array(b):
        return cast(Num, _numpy().minimum(a, b))
    return a if a <= b else b


def where(cond: Cond, a: Num, b: Num) -> Num:
    if is_array(cond) or is_array(a) or is_array(b):
        return cast(Num, _numpy().where(cond, a, b))
    return a if cond else b


def clip(x: Num, lo: Num, hi: Num) -> Num:
    return minimum(maximum(x, lo), hi)


def share(total: Num, part: Num, whole: Num) -> Num:
    """``total x part / whole``: the part of ``total`` that ``part`` is of ``whole``.

    Exact when ``part`` is all or none of ``whole`` (the common case: an event wholly inside or
    wholly beyond a limit); otherwise one division (rounded at 80 digits in Decimal).
    ``whole == 0`` gives 0."""
    if is_array(total) or is_array(part) or is_array(whole):
        np_ = _numpy()
        w: Any = np_.asarray(whole, dtype="float64")
        safe = np_.where(w != 0, w, 1.0)
        out: Any = np_.where(part == whole, total, np_.where(w != 0, total * part / safe, 0.0))
        return cast(Num, out)
    if part == whole:
        return total
    if part == 0 or whole == 0:
        return zero(total)
    return total * part / whole


# --------------------------------------------------------------------------- step 1: list charge


def plan_token_buckets(
    *,
    input_tokens: Any,
    output_tokens: Any,
    cache_read_tokens: Any,
    cache_write_tokens: Any,
    reasoning_tokens: Any,
) -> dict[str, Any]:
    """Disjoint token buckets a plan prices, from canonical (OpenTelemetry) counts.

    ``input`` = input - cache reads - cache writes; ``cached_input`` = cache reads;
    ``cache_write`` = all cache writes; ``output`` = output - reasoning; ``reasoning``.
    Works on ints and on integer/float arrays of sums (the split is linear)."""
    return {
        "input": input_tokens - cache_read_tokens - cache_write_tokens,
        "cached_input": cache_read_tokens,
        "cache_write": cache_write_tokens,
        "output": output_tokens - reasoning_tokens,
        "reasoning": reasoning_tokens,
    }


def token_list_charge(buckets: Mapping[str, Any], usd_per_mtok: Mapping[str, Num]) -> Num:
    """Token mode: sum over dimensions of tokens x the plan's USD per Mtok / 1e6.

    ``usd_per_mtok`` must hold every dimension with tokens (the policy model fills
    ``cached_input``/``cache_write`` from ``input`` and ``reasoning`` from ``output``)."""
    total: Any = None
    for dim, count in buckets.items():
        rate = usd_per_mtok[dim]
        term = count * rate
        total = term if total is None else total + term
    if total is None:
        raise ValueError("token_list_charge: no token buckets")
    out: Any = total / 1_000_000.0 if is_array(total) else total / MTOK
    return cast(Num, out)


def token_list_numerators(
    buckets: Mapping[str, npt.NDArray[np.int64]], usd_per_mtok: Mapping[str, Decimal]
) -> tuple[list[int], int]:
    """:func:`token_list_charge` of many events as exact integers: event ``i``'s list charge is
    ``numerators[i] / 10**scale``. For exact vectorised comparisons (the batch rater decides
    with it whether each event's floor binds); the charge itself still comes from
    :func:`token_list_charge`."""
    digits = max(0, *(-int(r.normalize().as_tuple().exponent) for r in usd_per_mtok.values()))
    ints = {d: int(r.scaleb(digits)) for d, r in usd_per_mtok.items()}
    np = _numpy()  # (the batch rater's: numpy is loaded)
    most = sum(int(np.max(c, initial=0)) * abs(ints[d]) for d, c in buckets.items())
    kind: Any = np.int64 if most < 2**62 else object  # Python ints when int64 could overflow
    total: Any = 0
    for dim, count in buckets.items():
        total = total + count.astype(kind) * ints[dim]
    return list(np.asarray(total).tolist()), digits + 6


def price_list_charge(cost: Num, markup: Num) -> Num:
    """Price mode (cost-plus): real cost x markup."""
    return cost * markup


def list_charge(mode: str, cost: Num, *, markup: Num | None, usd_per_mtok: Mapping[str, Num],
                buckets: Callable[[], Mapping[str, Any]]) -> Num:
    """Step 1 by the class's mode: :func:`token_list_charge` of ``buckets()`` (the plan's token
    buckets, read only in token mode) or :func:`price_list_charge` of ``cost``. The same for
    one event, a batch aggregate and the simulator's arrays (numbers of ``cost``'s type)."""
    if mode == "token":
        return token_list_charge(buckets(), usd_per_mtok)
    if markup is None:
        raise ValueError("price mode needs a markup")
    return price_list_charge(cost, markup)


# --------------------------------------------------------------------------- step 2: floor


def floor_multiplier(floor: Decimal) -> Decimal:
    """``1 / (1 - floor)`` rounded UP to 28 significant digits, computed once per policy.

    Multiplying by a fixed, rounded-up multiplier (instead of dividing each cost) keeps every
    floor >= the exact ``cost / (1 - floor)`` and keeps the floor linear, so a batch of events
    and the same events one by one give the very same Decimal."""
    if not (Decimal(0) <= floor < 1):
        raise ValueError(f"margin floor must be in [0, 1), got {floor}")
    with localcontext(Context(prec=28, rounding=ROUND_CEILING)):
        return Decimal(1) / (Decimal(1) - floor)


@dataclass(frozen=True, slots=True)
class Floored(Generic[Num]):
    charge: Num  # max(list, floor)
    floor: Num  # cost x multiplier
    uplift: Num  # charge - list: what the floor added


def apply_floor(list_charge: Num, cost: Num, multiplier: Num) -> Floored[Num]:
    """Event floor: the charge is never below ``cost / (1 - floor)``. A ``multiplier`` of 0
    means the class has no floor (a floor of 0, multiplier 1, means never below cost)."""
    floor = cost * multiplier
    charge = maximum(list_charge, floor)
    return Floored(charge, floor, charge - list_charge)


# --------------------------------------------------------------------------- step 3: allowance


@dataclass(frozen=True, slots=True)
class AllowanceSplit(Generic[Num]):
    used: Num  # allowance consumed, in the allowance's own unit
    included: Num  # charge covered by the allowance (not billed as usage)
    overage: Num  # charge beyond the allowance


def allowance_split(charge: Num, measure: Num, allowance_left: Num) -> AllowanceSplit[Num]:
    """Split ``charge`` into included and overage; ``measure`` is the charge expressed in the
    allowance's unit (the charge itself, the cost, or tokens)."""
    used = minimum(measure, maximum(allowance_left, zero(measure)))
    included = share(charge, used, measure)
    return AllowanceSplit(used, included, charge - included)


# --------------------------------------------------------------------------- step 4: discount


@dataclass(frozen=True, slots=True)
class Discounted(Generic[Num]):
    net: Num
    percent_off: Num
    fixed_off: Num


def discount(amount: Num, floor_part: Num, percent: Num, fixed_left: Num) -> Discounted[Num]:
    """Percent off, then up to ``fixed_left`` off; the result never goes below ``floor_part``
    (the share of the event floor that falls on ``amount``)."""
    z = zero(amount)
    room = maximum(amount - floor_part, z)
    percent_off = minimum(amount * percent, room)
    fixed_off = minimum(maximum(fixed_left, z), room - percent_off)
    return Discounted(amount - percent_off - fixed_off, percent_off, fixed_off)


# --------------------------------------------------------------------------- step 5: cap


@dataclass(frozen=True, slots=True)
class Capped(Generic[Num]):
    billed: Num
    absorbed: Num  # charge not billed because of the cap


def apply_cap(net: Num, headroom: Num) -> Capped[Num]:
    """Hard cap: bill at most the period's remaining ``headroom`` (``INF``/``np.inf`` = no cap)."""
    billed = minimum(net, maximum(headroom, zero(net)))
    return Capped(billed, net - billed)


# --------------------------------------------------------------------------- steps 1-5 composed


@dataclass(frozen=True, slots=True)
class UnitState(Generic[Num]):
    """Running per-period state carried from one unit (event or aggregate) to the next."""

    allowance_left: Num
    fixed_discount_left: Num
    cap_headroom: Num

    @staticmethod
    def start(allowance: Num, fixed_discount: Num, cap: Num) -> UnitState[Num]:
        return UnitState(allowance, fixed_discount, cap)


@dataclass(frozen=True, slots=True)
class UnitRating(Generic[Num]):
    list_charge: Num
    floor: Num
    charge: Num  # after the floor: "gross"
    floor_uplift: Num
    allowance_used: Num
    included: Num
    overage: Num
    percent_off: Num
    fixed_off: Num
    net: Num  # overage after discounts
    billed: Num  # after the cap
    absorbed: Num  # charge absorbed by the cap
    absorbed_cost: Num  # the cost behind the absorbed charge
    state: UnitState[Num]


def rate_unit(
    *,
    list_charge: Num,
    cost: Num,
    floor_multiplier: Num,
    allowance_unit: AllowanceUnit,
    tokens: Num | None,
    percent: Num,
    state: UnitState[Num],
) -> UnitRating[Num]:
    """Steps 2-5 for one event (Decimal) or one aggregate (arrays), given its list charge."""
    f = apply_floor(list_charge, cost, floor_multiplier)
    if allowance_unit == "usd_charge":
        measure = f.charge
    elif allowance_unit == "usd_cost":
        measure = cost
    else:
        if tokens is None:
            raise ValueError("rate_unit: a token allowance needs the unit's tokens")
        measure = tokens
    a = allowance_split(f.charge, measure, state.allowance_left)
    floor_part = share(f.floor, a.overage, f.charge)
    d = discount(a.overage, minimum(floor_part, a.overage), percent, state.fixed_discount_left)
    c = apply_cap(d.net, state.cap_headroom)
    overage_cost = share(cost, a.overage, f.charge)
    # nothing absorbed -> no absorbed cost (share() would give all of it when net is 0)
    absorbed_cost = where(c.absorbed == 0, zero(cost), share(overage_cost, c.absorbed, d.net))
    new_state = UnitState(
        state.allowance_left - a.used,
        state.fixed_discount_left - d.fixed_off,
        state.cap_headroom - c.billed,
    )
    return UnitRating(
        list_charge, f.floor, f.charge, f.uplift, a.used, a.included, a.overage,
        d.percent_off, d.fixed_off, d.net, c.billed, c.absorbed, absorbed_cost, new_state,
    )


# --------------------------------------------------------------------------- period rules


def prorate(amount: Num, days: Num, period_days: Num) -> Num:
    """A per-period amount for ``days`` of a ``period_days`` period (fees, commitments,
    allowances of a plan segment). Exact when ``days == period_days``."""
    return share(amount, days, period_days)


def commitment_true_up(commitment: Num, spend: Num) -> Num:
    """Minimum commitment: the line that brings ``spend`` (fees + usage billed) up to it."""
    return maximum(commitment - spend, zero(spend))


def period_floor_true_up(revenue: Num, billable_cost: Num, multiplier: Num) -> Num:
    """Period floor: the line that brings revenue up to ``billable_cost / (1 - floor)``."""
    return maximum(billable_cost * multiplier - revenue, zero(revenue))


def credit_draw(balance: Num, due: Num) -> Num:
    """Amount drawn from one credit grant: ``min(balance, due)``, never negative."""
    z = zero(due)
    return minimum(maximum(balance, z), maximum(due, z))


@dataclass(frozen=True, slots=True)
class PeriodRating(Generic[Num]):
    fees: Num
    usage_billed: Num
    commitment_true_up: Num
    floor_true_up: Num
    due_before_credits: Num  # fees + true-ups (usage is drawn from credits per event)
    revenue: Num  # fees + usage billed + both true-ups, before credits


def close_period(
    *,
    fees: Num,
    usage_billed: Num,
    commitment: Num,
    period_cost: Num,
    absorbed_cost: Num,
    period_floor_multiplier: Num,
) -> PeriodRating[Num]:
    """Steps 7-9: ``fees`` already prorated (sum over plan segments), ``commitment`` likewise;
    ``period_floor_multiplier`` is ``floor_multiplier(period_floor)``, or 0 when the plan has
    no period floor (then the true-up is always 0)."""
    commit = commitment_true_up(commitment, fees + usage_billed)
    revenue = fees + usage_billed + commit
    floor_up = period_floor_true_up(revenue, period_cost - absorbed_cost, period_floor_multiplier)
    return PeriodRating(
        fees, usage_billed, commit, floor_up, fees + commit + floor_up, revenue + floor_up,
    )
