"""What one task costs, per model and month, priced by the real price book.

A task is ``steps`` calls. Step ``i`` (0-based) re-sends the base prompt plus everything the loop
added so far: ``input_i = b + d*i``, so a task's input is ``N*b + d*N*(N-1)/2``. Of each call's
input, ``round(cache_hit_share * input_i)`` tokens are cache reads and
``round(cache_write_share * input_i)`` cache writes (5-minute TTL). Each call outputs
``round(o * r)`` tokens, ``r`` the model's reasoning multiplier, of which ``round(o*r) - o`` are
reasoning. A failed attempt costs a full call (or task): expected attempts ``1/(1-p)``.

Every call's :class:`~jevons.usage.Usage` is priced with :func:`jevons.prices.cost.price_usage`
against the model's :class:`~jevons.prices.model.PriceVersion` -- the same function real billing
uses, long-context tiers included (a step whose input crosses a tier is priced at the tier's
rates). Nothing here knows a price.

The per-task cost is then a float (the simulator is a what-if estimate). The price trend scales
every rate of a model by ``(1 + trend)^month``; because a cost is linear in its rates, that is
the same as pricing with the book's percentage :class:`~jevons.prices.book.Adjustment`
(tested against it).

Drivers can be switched off, to attribute cost to them (:mod:`jevons.insight.attribution`):

- ``output`` off: output and reasoning tokens priced at the model's input rate;
- ``routing`` off: every call on the base (first) model, reasoning multiplier 1;
- ``loop`` off: one call per task (step 0 only);
- ``retries`` off: one attempt.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from decimal import Decimal

import numpy as np
import numpy.typing as npt

from jevons.insight.scenario import ResolvedModel, Scenario, ScenarioError, TaskSpec
from jevons.prices.cost import price_usage
from jevons.prices.model import Dim, PriceVersion, Tier
from jevons.usage import Usage

__all__ = [
    "DRIVERS",
    "Drivers",
    "TaskTotals",
    "UnitTable",
    "agent_loop_input",
    "build_unit_table",
    "input_rate_version",
    "step_usages",
    "task_cost_usd",
]

FloatArray = npt.NDArray[np.float64]

DRIVERS: tuple[str, ...] = ("output", "routing", "loop", "retries")
"""The four cost drivers, in the order reports list them."""


@dataclass(frozen=True, slots=True)
class Drivers:
    """Which drivers are on (all by default)."""

    output: bool = True
    routing: bool = True
    loop: bool = True
    retries: bool = True

    @classmethod
    def only(cls, on: frozenset[str]) -> Drivers:
        return cls(*(name in on for name in DRIVERS))

    @property
    def on(self) -> frozenset[str]:
        return frozenset(name for name in DRIVERS if getattr(self, name))


def agent_loop_input(prompt: int, growth: int, steps: int) -> int:
    """Closed form of a task's input tokens: ``N*b + d*N*(N-1)/2``."""
    return steps * prompt + growth * steps * (steps - 1) // 2


def step_usages(task: TaskSpec, reasoning_multiplier: float = 1.0, *, loop: bool = True) -> list[Usage]:
    """The usage of each call of one task (one attempt)."""
    steps = task.steps if loop else 1
    output = round(task.output_tokens * reasoning_multiplier)
    reasoning = max(output - task.output_tokens, 0)
    out: list[Usage] = []
    for i in range(steps):
        inp = task.prompt_tokens + task.context_growth * i
        read = round(task.cache_hit_share * inp)
        write = min(round(task.cache_write_share * inp), inp - read)
        out.append(
            Usage(
                input_tokens=inp,
                output_tokens=output,
                cache_read_tokens=read,
                cache_write_5m_tokens=write,
                reasoning_tokens=reasoning,
                requests=1,
            )
        )
    return out


def input_rate_version(version: PriceVersion) -> PriceVersion:
    """The same price with output (and reasoning) at the input rate: "output dominance" off."""

    def flatten(rates: dict[Dim, Decimal], base_input: Decimal | None) -> dict[Dim, Decimal]:
        out = dict(rates)
        inp = rates.get(Dim.INPUT, base_input)
        if inp is not None:
            for dim in (Dim.OUTPUT, Dim.REASONING):
                if dim in out or dim is Dim.OUTPUT:
                    out[dim] = inp
        return out

    base_in = version.rates.get(Dim.INPUT)
    return replace(
        version,
        rates=flatten(version.rates, None),
        tiers=tuple(
            Tier(t.above_input_tokens, flatten(t.rates, t.rates.get(Dim.INPUT, base_in)))
            for t in version.tiers
        ),
        version_id="",
    )


def task_cost_usd(version: PriceVersion, usages: list[Usage], *, what: str) -> Decimal:
    """Exact cost of one attempt of a task: every call priced by ``price_usage``."""
    total = Decimal(0)
    for u in usages:
        cost = price_usage(version, u, model_requested=version.model, as_of=None)
        if cost.total_usd is None:
            raise ScenarioError(
                f"{what}: {version.provider}/{version.model} has no price for {', '.join(cost.missing)}"
            )
        total += cost.total_usd
    return total


@dataclass(frozen=True, slots=True)
class TaskTotals:
    """Per-task token totals of one attempt on one model (what a token-mode plan rates)."""

    input_tokens: float
    output_tokens: float
    cache_read_tokens: float
    cache_write_tokens: float
    reasoning_tokens: float
    requests: float

    @classmethod
    def of(cls, usages: list[Usage]) -> TaskTotals:
        s = sum(usages[1:], usages[0])
        return cls(
            float(s.input_tokens),
            float(s.output_tokens),
            float(s.cache_read_tokens),
            float(s.cache_write_tokens),
            float(s.reasoning_tokens),
            float(s.requests),
        )


@dataclass(frozen=True, slots=True)
class UnitTable:
    """Per-task quantities of a scenario, by model and month, for every driver combination.

    ``cost[S]`` is an array ``(models, months)``: USD per task carried by each model in each month
    with the drivers in ``S`` on (route weight, retries and price trend included). ``totals[m]``
    holds one attempt's token totals on model ``m`` (all drivers on); ``weight`` the calls per
    task routed to each model, per month; ``attempts`` the retry multiplier.
    """

    models: tuple[ResolvedModel, ...]
    months: int
    cost: dict[frozenset[str], FloatArray]
    totals: tuple[TaskTotals, ...]
    weight: FloatArray  # (models, months)
    attempts: float
    trend: FloatArray  # (models, months): (1+trend)^t
    step_cost: tuple[FloatArray, ...] = ()  # per model: one attempt's cost of each step (month 0)
    step_tokens: tuple[dict[str, FloatArray], ...] = ()  # per model: token field -> per step

    def steps_per_task(self, model: int) -> dict[str, FloatArray]:
        """Per-task cost and tokens of each step of ``model``, per month: ``(steps, months)``
        arrays (route weight, retries and price trend included). Calls of one step are
        identical, so a per-call rule (the event floor) applied to a step's total is exact."""
        scale = self.weight[model] * self.attempts
        out = {f: v[:, None] * scale[None, :] for f, v in self.step_tokens[model].items()}
        out["cost"] = self.step_cost[model][:, None] * (scale * self.trend[model])[None, :]
        return out

    @property
    def cost_per_task(self) -> FloatArray:
        """USD per task per month, all drivers on: shape ``(months,)``."""
        total: FloatArray = self.cost[frozenset(DRIVERS)].sum(axis=0)
        return total

    @property
    def model_cost(self) -> FloatArray:
        """USD per task per model per month, all drivers on: ``(models, months)``."""
        return self.cost[frozenset(DRIVERS)]

    def tokens_per_task(self, field: str) -> FloatArray:
        """Tokens (or requests) per task per model per month, retries included: ``(models, months)``."""
        per_attempt = np.array([getattr(t, field) for t in self.totals], dtype=np.float64)
        out: FloatArray = per_attempt[:, None] * self.weight * self.attempts
        return out


def build_unit_table(
    scenario: Scenario, models: list[ResolvedModel], *, all_combinations: bool = True
) -> UnitTable:
    """Price one task of ``scenario`` on every model, for all 16 driver combinations (or only
    with every driver on, ``all_combinations=False``, when no attribution is wanted)."""
    months = scenario.months
    t = np.arange(months, dtype=np.float64)
    n = len(models)
    shares = np.array([scenario.shares_at(m) for m in range(months)], dtype=np.float64).T  # (n, months)
    g_all = scenario.time.usage_growth
    growth = np.array(
        [((1 + scenario.model_growth(m.spec)) / (1 + g_all)) ** t for m in models], dtype=np.float64
    )
    weight = shares * growth
    trend = np.array([(1 + scenario.price_trend(m.spec)) ** t for m in models], dtype=np.float64)
    attempts = scenario.retries.attempts

    # exact per-attempt task cost per (model, output on, loop on, reasoning on)
    attempt_cost: dict[tuple[int, bool, bool, bool], float] = {}
    for i, rm in enumerate(models):
        for output_on, loop_on, reasoning_on in itertools.product((True, False), repeat=3):
            if not all_combinations and not (output_on and loop_on and reasoning_on):
                continue
            if i and not reasoning_on:
                continue  # routing off puts every call on the base model
            version = rm.version if output_on else input_rate_version(rm.version)
            mult = rm.spec.reasoning_multiplier if reasoning_on else 1.0
            usages = step_usages(scenario.task, mult, loop=loop_on)
            attempt_cost[(i, output_on, loop_on, reasoning_on)] = float(
                task_cost_usd(version, usages, what=f"models[{i}].name")
            )

    cost: dict[frozenset[str], FloatArray] = {}
    for flags in itertools.product((True, False), repeat=len(DRIVERS)):
        d = Drivers(*flags)
        if not all_combinations and d.on != frozenset(DRIVERS):
            continue
        mult = attempts if d.retries else 1.0
        table = np.zeros((n, months), dtype=np.float64)
        if d.routing:
            for i in range(n):
                table[i] = weight[i] * trend[i] * attempt_cost[(i, d.output, d.loop, True)] * mult
        else:
            # every call on the base model, at the base model's price trend
            table[0] = weight.sum(axis=0) * trend[0] * attempt_cost[(0, d.output, d.loop, False)] * mult
        cost[d.on] = table
    all_on = [step_usages(scenario.task, rm.spec.reasoning_multiplier) for rm in models]
    totals = tuple(TaskTotals.of(u) for u in all_on)
    step_cost = tuple(
        np.array([float(task_cost_usd(rm.version, [u], what=f"models[{i}].name")) for u in usages])
        for i, (rm, usages) in enumerate(zip(models, all_on, strict=True))
    )
    step_tokens = tuple(
        {
            "input_tokens": np.array([u.input_tokens for u in usages], dtype=np.float64),
            "output_tokens": np.array([u.output_tokens for u in usages], dtype=np.float64),
            "cache_read_tokens": np.array([u.cache_read_tokens for u in usages], dtype=np.float64),
            "cache_write_tokens": np.array([u.cache_write_tokens for u in usages], dtype=np.float64),
            "reasoning_tokens": np.array([u.reasoning_tokens for u in usages], dtype=np.float64),
        }
        for usages in all_on
    )
    return UnitTable(tuple(models), months, cost, totals, weight, attempts, trend, step_cost, step_tokens)
