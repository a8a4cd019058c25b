"""Rate simulated customer-months with a real policy, through ``jevons.policy.rules``.

This module holds no rule of its own: it composes the rules of :mod:`jevons.policy.rules` on
float64 arrays exactly in the order that module's docstring documents (list charge, event
floor, allowance, discount, cap per class aggregate; then flat fee, commitment and period floor
per period), one array element per customer-month. The rules are the very functions the
billing engine runs on Decimals, so the simulator and real billing cannot disagree on a rule.

What the simulator leaves out, because a scenario has no such thing: customer-specific
overrides, discounts and credits (a scenario's customers are anonymous), and mid-month plan
changes (every customer-month is on one plan for the whole month).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from functools import cached_property, partial
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from jevons.insight.scenario import ResolvedModel, ScenarioError
from jevons.policy import rules as R
from jevons.policy.model import Plan, PlanClass, Policy
from jevons.prices.model import Dim

__all__ = ["ClassAggregate", "PolicyRater", "RatedMonths", "load_policy_file"]

FloatArray = npt.NDArray[np.float64]
_MTOK = Decimal(1_000_000)


class ClassAggregate:
    """One cost class's totals per customer-month: ``tasks x per-task`` for cost and each token
    count, computed when first read (a price-mode class never reads its tokens)."""

    def __init__(self, tasks: FloatArray, per_task: Mapping[str, FloatArray]) -> None:
        self._tasks = tasks
        self._per_task = per_task  # field -> per-task vector over months, broadcast on axis 1

    @property
    def tasks(self) -> FloatArray:
        return self._tasks

    @property
    def per_task(self) -> Mapping[str, FloatArray]:
        """Per-task vectors; ``steps:<field>`` ones are per step of each model (identical calls)."""
        return self._per_task

    def _get(self, name: str) -> FloatArray:
        out: FloatArray = self._tasks * self._per_task[name]
        return out

    @cached_property
    def cost(self) -> FloatArray:
        return self._get("cost")

    @cached_property
    def input_tokens(self) -> FloatArray:
        return self._get("input_tokens")

    @cached_property
    def output_tokens(self) -> FloatArray:
        return self._get("output_tokens")

    @cached_property
    def cache_read_tokens(self) -> FloatArray:
        return self._get("cache_read_tokens")

    @cached_property
    def cache_write_tokens(self) -> FloatArray:
        return self._get("cache_write_tokens")

    @cached_property
    def reasoning_tokens(self) -> FloatArray:
        return self._get("reasoning_tokens")

    @cached_property
    def tokens(self) -> FloatArray:
        return self._get("tokens")


@dataclass(frozen=True, slots=True)
class RatedMonths:
    revenue: FloatArray  # fees + usage billed + true-ups, before credits
    usage_billed: FloatArray
    fees: FloatArray
    absorbed_cost: FloatArray


_TOKEN_FIELDS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
                 "reasoning_tokens")


def _list_charge(pc: PlanClass, cost: FloatArray, tokens: Callable[[str], FloatArray]) -> FloatArray:
    """Step 1 on arrays: the class's list charge, token mode reading each canonical token count
    through ``tokens(field)`` only when it needs them (a price-mode class never does)."""
    return R.list_charge(
        pc.mode, cost, markup=R.param(pc.markup or Decimal(0), like=cost),
        usd_per_mtok={d: R.param(r, like=cost) for d, r in pc.usd_per_mtok.items()},
        buckets=lambda: R.plan_token_buckets(**{name: tokens(name) for name in _TOKEN_FIELDS}),
    )


def load_policy_file(ref: str, *, base_dir: Path | None = None) -> Policy:
    """A policy by path, or ``builtin:NAME`` for a preset of :mod:`jevons.insight.presets`."""
    from jevons.insight.presets import builtin_policy_path

    if ref.startswith("builtin:"):
        path = builtin_policy_path(ref.removeprefix("builtin:"))
    else:
        path = Path(ref)
        if not path.is_absolute() and base_dir is not None and not path.exists():
            path = base_dir / path
    from jevons.policy.loader import load_policy

    policy: Policy = load_policy(path)
    return policy


class PolicyRater:
    """One policy, ready to rate arrays of customer-months for any of its plans."""

    def __init__(self, policy: Policy, *, label: str | None = None) -> None:
        self.policy = policy
        self.label = label or policy.name
        self._charge_cache: dict[tuple[str, str, int], tuple[Mapping[str, FloatArray], FloatArray]] = {}

    def _floored_charge_per_task(
        self, plan_name: str, cname: str, pc: PlanClass, per_task: Mapping[str, FloatArray]
    ) -> FloatArray | None:
        """Steps 1-2 per call: each step's list charge and event floor on one task's calls of
        that step (identical calls: exact), summed over the steps -> charge per task per month.
        ``None`` when the aggregate carries no per-step detail."""
        if "steps:cost" not in per_task:
            return None
        key = (plan_name, cname, id(per_task))
        hit = self._charge_cache.get(key)
        if hit is not None and hit[0] is per_task:
            return hit[1]
        cost = per_task["steps:cost"]
        lst = _list_charge(pc, cost, lambda name: per_task[f"steps:{name}"])
        floored = R.apply_floor(lst, cost, R.param(pc.floor_multiplier, like=cost))
        charge: FloatArray = floored.charge.sum(axis=0)[None, :]
        self._charge_cache[key] = (per_task, charge)
        return charge

    # ------------------------------------------------------------------ classes
    def classify_models(self, models: Sequence[ResolvedModel]) -> list[str]:
        """The cost class of each model's calls (as the engine classifies a real call)."""
        out = []
        for rm in models:
            inp = rm.version.rates.get(Dim.INPUT)
            out.append(
                self.policy.classify(
                    model=rm.version.model,
                    provider=rm.version.provider,
                    reasoning_tokens=1 if rm.spec.reasoning_multiplier > 1 else 0,
                    input_usd_per_mtok=None if inp is None else inp * _MTOK,
                )
            )
        return out

    def plan(self, name: str) -> Plan:
        return self.policy.plan_for(None, name)

    def check_plans(self, names: Sequence[str]) -> None:
        for i, name in enumerate(names):
            if name not in self.policy.plans:
                raise ScenarioError(
                    f"customers.plans[{i}].name: plan {name!r} is not in policy {self.label!r} "
                    f"(its plans: {', '.join(sorted(self.policy.plans))})"
                )

    def margin_floor(self, plan_name: str) -> float | None:
        """The plan's margin floor (:attr:`Plan.margin_floor`) as a float, if any."""
        floor = self.plan(plan_name).margin_floor
        return None if floor is None else float(floor)

    # ------------------------------------------------------------------ rating
    def rate(self, plan_name: str, aggregates: Mapping[str, ClassAggregate]) -> RatedMonths:
        """Rate every customer-month of ``aggregates`` (class -> totals) on one plan."""
        plan = self.plan(plan_name)
        like = next(iter(aggregates.values())).cost

        def P(value: Decimal | int | None) -> FloatArray:
            return R.param(Decimal(0) if value is None else value, like=like)

        shared_allowance = P(plan.allowance.amount if plan.allowance else 0)
        shared_unit: R.AllowanceUnit = plan.allowance.unit if plan.allowance else "usd_charge"
        state = R.UnitState.start(
            allowance=shared_allowance,
            fixed_discount=P(0),
            cap=R.param(R.INF if plan.cap is None else plan.cap, like=like),
        )
        billed: Any = R.zero(like)
        absorbed_cost: Any = R.zero(like)
        period_cost: Any = R.zero(like)
        for cname in self.policy.class_order:
            agg = aggregates.get(cname)
            if agg is None:
                continue
            pc = plan.classes[cname]
            per_task = self._floored_charge_per_task(plan_name, cname, pc, agg.per_task)
            if per_task is not None:
                # list charge of the aggregate = sum of its calls' floored charges (the floor
                # is a per-call rule); rate_unit's own floor then never lifts it further
                lst = agg.tasks * per_task
            else:
                lst = _list_charge(pc, agg.cost, partial(getattr, agg))
            own = pc.allowance  # a class's own allowance: fresh, not carried to the next class
            unit = own.unit if own is not None else shared_unit
            u = R.rate_unit(
                list_charge=lst,
                cost=agg.cost,
                floor_multiplier=P(pc.floor_multiplier),
                allowance_unit=unit,
                tokens=agg.tokens if unit == "tokens" else None,
                percent=P(0),
                state=state if own is None else R.UnitState(
                    P(own.amount), state.fixed_discount_left, state.cap_headroom),
            )
            state = u.state if own is None else R.UnitState(
                state.allowance_left, u.state.fixed_discount_left, u.state.cap_headroom)
            billed = billed + u.billed
            absorbed_cost = absorbed_cost + u.absorbed_cost
            period_cost = period_cost + agg.cost
        period = R.close_period(
            fees=P(plan.fee),
            usage_billed=billed,
            commitment=P(plan.commitment),
            period_cost=period_cost,
            absorbed_cost=absorbed_cost,
            period_floor_multiplier=P(plan.period_floor_multiplier),
        )
        shape = like.shape
        return RatedMonths(
            revenue=np.broadcast_to(period.revenue, shape).astype(np.float64),
            usage_billed=np.broadcast_to(period.usage_billed, shape).astype(np.float64),
            fees=np.broadcast_to(period.fees, shape).astype(np.float64),
            absorbed_cost=np.broadcast_to(absorbed_cost, shape).astype(np.float64),
        )
