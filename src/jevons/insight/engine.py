"""The stress-test engine: vectorised Monte Carlo over customers x months.

1. Each customer gets a plan (plan mix, allocated by largest remainder so the counts are exact)
   and a usage intensity: tasks per month drawn from the plan's heavy-tailed distribution
   (lognormal or Pareto with the stated median and p99/median ratio).
2. Its tasks in month ``t`` are ``intensity x (1+growth)^t x noise``, the noise a mean-one
   lognormal (``customers.monthly_noise``).
3. One task's cost, per model and month, comes from :mod:`jevons.insight.taskmodel` (every call
   priced by the real price book); per customer-month cost and tokens are ``tasks x per-task``.
4. Revenue: each policy rates every customer-month through :mod:`jevons.insight.rating`, i.e.
   the rules of ``jevons.policy.rules``, on the same sampled usage.

Deterministic mode samples nothing: customers sit on an even quantile grid of the distribution
(``q = (i + 0.5) / n``) and the noise is 1, so results can be checked against closed forms.

Customers are processed in fixed-size chunks (bounded memory, a progress callback per chunk);
the noise of each chunk comes from its own seeded stream, so a result does not depend on
anything but the scenario and its seed. Arithmetic is float64: this is a what-if estimate, not a
money path -- invoices come from the exact Decimal engine.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np
import numpy.typing as npt

from jevons.insight.attribution import Attribution, attribute
from jevons.insight.rating import ClassAggregate, PolicyRater
from jevons.insight.scenario import ResolvedModel, Scenario
from jevons.insight.taskmodel import UnitTable, build_unit_table

__all__ = [
    "CHUNK",
    "PERCENTILES",
    "CustomerSample",
    "PolicyResult",
    "StressRun",
    "class_aggregates",
    "month_growth",
    "sample_customers",
    "simulate",
    "tasks_for",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
Progress = Callable[[int, int], None]

CHUNK = 1 << 11
"""Customers per chunk: small enough that a chunk's arrays stay in cache."""
THREADS = min(2, os.cpu_count() or 1)
"""Chunks rated in parallel (numpy releases the GIL inside each array operation)."""
BAND_ROWS = 100_000
"""Customers (at most, evenly strided) whose monthly margins give the p10/p50/p90 bands."""
PERCENTILES: tuple[int, ...] = (1, 5, 10, 25, 50, 75, 90, 95, 99)
MARGIN_CLIP = -10.0  # a customer-month margin % below -1000% is shown as -1000%
SCATTER_POINTS = 3000


def _allocate(total: int, shares: Sequence[float]) -> list[int]:
    """Integer counts summing to ``total`` in proportion to ``shares`` (largest remainder)."""
    raw = [total * s for s in shares]
    counts = [math.floor(x) for x in raw]
    order = sorted(range(len(shares)), key=lambda i: (raw[i] - counts[i], -i), reverse=True)
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts


@dataclass(frozen=True, slots=True)
class CustomerSample:
    """Customers in plan order: ``plan_index[c]`` into ``plan_names``; ``intensity[c]`` is the
    month-0 tasks per month (before noise)."""

    plan_names: tuple[str, ...]
    plan_index: IntArray
    intensity: FloatArray
    plan_slices: tuple[tuple[int, int], ...]

    @property
    def count(self) -> int:
        return int(self.intensity.shape[0])


def _normal_quantiles(q: FloatArray) -> FloatArray:
    inv = NormalDist().inv_cdf
    return np.fromiter((inv(float(x)) for x in q), dtype=np.float64, count=q.shape[0])


def sample_customers(scenario: Scenario, *, deterministic: bool = False) -> CustomerSample:
    spec = scenario.customers
    counts = _allocate(spec.count, [p.share for p in spec.plans])
    rng = np.random.default_rng(np.random.SeedSequence([scenario.seed, 1]))
    tail = spec.tail_parameter()
    parts: list[FloatArray] = []
    slices: list[tuple[int, int]] = []
    start = 0
    for plan, n in zip(spec.plans, counts, strict=True):
        median = plan.median_tasks or spec.median_tasks
        grid = (np.arange(n, dtype=np.float64) + 0.5) / max(n, 1)
        q: FloatArray = grid if deterministic else rng.random(n)
        if spec.distribution == "lognormal":
            z = _normal_quantiles(q) if deterministic else rng.standard_normal(n)
            parts.append(median * np.exp(tail * z))
        else:
            # Pareto type I with median m: x_m = m / 2^(1/alpha); x = x_m (1-q)^(-1/alpha)
            x_m = median / 2.0 ** (1.0 / tail)
            u = 1.0 - q
            u = np.where(u <= 0.0, np.finfo(np.float64).tiny, u)
            parts.append(x_m * u ** (-1.0 / tail))
        slices.append((start, start + n))
        start += n
    intensity = np.concatenate(parts) if parts else np.zeros(0)
    plan_index = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    return CustomerSample(tuple(p.name for p in spec.plans), plan_index, intensity, tuple(slices))


def month_growth(scenario: Scenario) -> FloatArray:
    t = np.arange(scenario.months, dtype=np.float64)
    out: FloatArray = (1.0 + scenario.time.usage_growth) ** t
    return out


def tasks_for(
    scenario: Scenario, sample: CustomerSample, lo: int, hi: int, *, deterministic: bool
) -> FloatArray:
    """Tasks per customer-month for customers ``[lo, hi)``: ``(hi-lo, months)``."""
    base = sample.intensity[lo:hi, None] * month_growth(scenario)[None, :]
    sigma = scenario.customers.monthly_noise
    if deterministic or sigma == 0:
        return np.ascontiguousarray(base)
    rng = np.random.default_rng(np.random.SeedSequence([scenario.seed, 2, lo]))
    noise = rng.standard_normal(base.shape)
    noise *= sigma
    noise -= sigma * sigma / 2.0
    np.exp(noise, out=noise)
    noise *= base
    return noise


_TOKEN_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
)


def class_unit_vectors(table: UnitTable, model_class: Sequence[str]) -> dict[str, dict[str, FloatArray]]:
    """Per class, the per-task cost and token vectors over months (shape ``(1, months)``), and
    under ``steps:<field>`` the same per step of each of its models (``(steps, months)``)."""
    per_token = {f: table.tokens_per_task(f) for f in _TOKEN_FIELDS}
    cost = table.model_cost
    out: dict[str, dict[str, FloatArray]] = {}
    for cname in dict.fromkeys(model_class):
        rows = [i for i, c in enumerate(model_class) if c == cname]
        units = {f: per_token[f][rows].sum(axis=0)[None, :] for f in _TOKEN_FIELDS}
        units["cost"] = cost[rows].sum(axis=0)[None, :]
        units["tokens"] = units["input_tokens"] + units["output_tokens"]
        if table.step_cost:
            steps = [table.steps_per_task(i) for i in rows]
            for f in ("cost", *_TOKEN_FIELDS):
                units[f"steps:{f}"] = np.concatenate([st[f] for st in steps], axis=0)
        out[cname] = units
    return out


def class_aggregates(
    table: UnitTable,
    model_class: Sequence[str],
    tasks: FloatArray,
    units: dict[str, dict[str, FloatArray]] | None = None,
) -> dict[str, ClassAggregate]:
    """Per class, cost and token totals of every customer-month: ``tasks x per-task``."""
    units = units if units is not None else class_unit_vectors(table, model_class)
    return {cname: ClassAggregate(tasks, u) for cname, u in units.items()}


@dataclass
class PolicyResult:
    """What one policy does to the sampled customers."""

    label: str
    revenue_by_month: list[float]
    cost_by_month: list[float]
    margin_pct_by_month: list[float]
    customer_margin_pct_percentiles: dict[int, float]  # per-customer, whole run
    customer_margin_usd_percentiles: dict[int, float]
    month_margin_pct_bands: dict[int, list[float]]  # percentile -> per month (customer-months)
    past_cliff_share: float  # customers whose margin over the run is below 0
    under_floor_share: float  # customers whose margin % over the run is below their floor
    past_cliff_share_by_month: list[float]
    under_floor_share_by_month: list[float]
    by_plan: dict[str, dict[str, float]]
    absorbed_cost: float
    scatter: dict[str, list[float]] = field(default_factory=dict)
    cliffs: list[dict[str, Any]] = field(default_factory=list)
    tornado: list[dict[str, Any]] = field(default_factory=list)

    @property
    def revenue(self) -> float:
        return float(sum(self.revenue_by_month))

    @property
    def cost(self) -> float:
        return float(sum(self.cost_by_month))

    @property
    def margin(self) -> float:
        return self.revenue - self.cost

    @property
    def margin_pct(self) -> float:
        return self.margin / self.revenue if self.revenue > 0 else float("-inf") if self.cost else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "policy": self.label,
            "revenue_usd": self.revenue,
            "cost_usd": self.cost,
            "margin_usd": self.margin,
            "margin_pct": self.margin_pct,
            "absorbed_cost_usd": self.absorbed_cost,
            "past_cliff_share": self.past_cliff_share,
            "under_floor_share": self.under_floor_share,
            "by_month": [
                {
                    "month": t,
                    "revenue_usd": r,
                    "cost_usd": c,
                    "margin_pct": m,
                    "past_cliff_share": pc,
                    "under_floor_share": uf,
                }
                for t, (r, c, m, pc, uf) in enumerate(
                    zip(
                        self.revenue_by_month,
                        self.cost_by_month,
                        self.margin_pct_by_month,
                        self.past_cliff_share_by_month,
                        self.under_floor_share_by_month,
                        strict=True,
                    )
                )
            ],
            "customer_margin_pct_percentiles": {
                f"p{k}": v for k, v in self.customer_margin_pct_percentiles.items()
            },
            "customer_margin_usd_percentiles": {
                f"p{k}": v for k, v in self.customer_margin_usd_percentiles.items()
            },
            "by_plan": self.by_plan,
            "cliffs": self.cliffs,
            "tornado": self.tornado,
        }


@dataclass
class StressRun:
    scenario: Scenario
    deterministic: bool
    models: list[ResolvedModel]
    table: UnitTable
    tasks_by_month: list[float]
    customers: int
    attribution: Attribution
    policies: list[PolicyResult]
    tasks_percentiles: dict[int, float]
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario.name,
            "deterministic": self.deterministic,
            "customers": self.customers,
            "months": self.scenario.months,
            "seed": self.scenario.seed,
            "models": [{"name": m.spec.name, "price_version": m.version.version_id} for m in self.models],
            "cost_per_task_usd_by_month": [float(x) for x in self.table.cost_per_task],
            "tasks_by_month": self.tasks_by_month,
            "tasks_per_customer_month_percentiles": {f"p{k}": v for k, v in self.tasks_percentiles.items()},
            "attribution": self.attribution.to_dict(),
            "policies": [p.to_dict() for p in self.policies],
            "seconds": self.seconds,
            "note": "float64 what-if estimate; invoices come from the exact Decimal policy engine",
        }


@dataclass(frozen=True, slots=True)
class _ChunkSums:
    revenue_m: FloatArray
    cost_m: FloatArray
    absorbed: float
    past_m: npt.NDArray[np.int64]
    under_m: npt.NDArray[np.int64]


class _Acc:
    """Running sums of one policy over chunks; per-customer arrays (and a strided subsample of
    customer-month margins, for the monthly percentile bands)."""

    def __init__(self, n: int, months: int, plans: int, band_stride: int) -> None:
        self.revenue_m = np.zeros(months)
        self.cost_m = np.zeros(months)
        self.absorbed = 0.0
        self.cust_revenue = np.zeros(n)
        self.cust_cost = np.zeros(n)
        self.cust_floor = np.zeros(n)
        self.month_margin = np.empty((-(-n // band_stride), months), dtype=np.float32)
        self.past_m = np.zeros(months)
        self.under_m = np.zeros(months)
        self.plan_rev = np.zeros(plans)
        self.plan_cost = np.zeros(plans)


def _margin_pct(revenue: FloatArray, cost: FloatArray) -> FloatArray:
    safe = np.where(revenue > 0, revenue, 1.0)
    pct = np.where(revenue > 0, (revenue - cost) / safe, np.where(cost > 0, MARGIN_CLIP, 0.0))
    out: FloatArray = np.maximum(pct, MARGIN_CLIP)
    return out


def simulate(
    scenario: Scenario,
    models: list[ResolvedModel],
    raters: Sequence[PolicyRater],
    *,
    deterministic: bool = False,
    progress: Progress | None = None,
    sample: CustomerSample | None = None,
) -> StressRun:
    """Run the scenario under every policy on the same sampled usage."""
    from time import perf_counter

    from jevons.insight.cliff import cliff_points
    from jevons.insight.sensitivity import tornado

    started = perf_counter()
    table = build_unit_table(scenario, models)
    for r in raters:
        r.check_plans([p.name for p in scenario.customers.plans])
    if sample is None:
        sample = sample_customers(scenario, deterministic=deterministic)
    n, months = sample.count, scenario.months
    classes = [r.classify_models(models) for r in raters]
    unit_vectors = [class_unit_vectors(table, c) for c in classes]
    band_stride = max(1, n // BAND_ROWS)
    accs = [_Acc(n, months, len(sample.plan_names), band_stride) for _ in raters]
    tasks_m = np.zeros(months)
    cost_per_task = table.cost_per_task[None, :]
    floor_default = scenario.policy.margin_floor
    floors = [
        [floor_default if (f := r.margin_floor(name)) is None else f for name in sample.plan_names]
        for r in raters
    ]
    units: list[tuple[int, int, int]] = []  # (plan, lo, hi) in chunks
    for p, (lo, hi) in enumerate(sample.plan_slices):
        for a in range(lo, hi, CHUNK):
            units.append((p, a, min(a + CHUNK, hi)))
    cust_tasks = np.zeros(n)
    quantile_stride = max(1, n // 20_000)

    def work(unit: tuple[int, int, int]) -> tuple[FloatArray, FloatArray, list[_ChunkSums]]:
        """One chunk: sample its tasks, rate it under every policy. Writes only rows [lo, hi)
        of the per-customer arrays; returns the chunk's sums."""
        p, lo, hi = unit
        plan = sample.plan_names[p]
        tasks = tasks_for(scenario, sample, lo, hi, deterministic=deterministic)
        cust_tasks[lo:hi] = tasks.mean(axis=1)
        q_rows = tasks[(-lo) % quantile_stride :: quantile_stride].ravel()
        cost = tasks * cost_per_task
        cost_m = cost.sum(axis=0)
        cust_cost = cost.sum(axis=1)
        first_band = -(-lo // band_stride) * band_stride
        sums: list[_ChunkSums] = []
        for k, rater in enumerate(raters):
            acc = accs[k]
            rated = rater.rate(plan, class_aggregates(table, classes[k], tasks, unit_vectors[k]))
            rev = rated.revenue
            floor = floors[k][p]
            acc.cust_revenue[lo:hi] = rev.sum(axis=1)
            acc.cust_cost[lo:hi] = cust_cost
            acc.cust_floor[lo:hi] = floor
            if first_band < hi:
                rows = slice(first_band - lo, None, band_stride)
                acc.month_margin[first_band // band_stride : -(-hi // band_stride)] = _margin_pct(
                    rev[rows], cost[rows]
                )
            # margin % below the floor, without dividing: rev*(1-floor) < cost (or nothing billed)
            under = rev * (1.0 - floor) < cost
            if floor > 0:
                under |= rev <= 0
            sums.append(
                _ChunkSums(
                    revenue_m=rev.sum(axis=0),
                    cost_m=cost_m,
                    absorbed=float(rated.absorbed_cost.sum()),
                    past_m=(rev < cost).sum(axis=0),
                    under_m=under.sum(axis=0),
                )
            )
        return tasks.sum(axis=0), q_rows, sums

    task_q_parts: list[FloatArray] = []
    workers = max(1, min(THREADS, len(units)))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        outcomes = pool.map(work, units) if workers > 1 else map(work, units)
        for done, (unit, (t_m, q_rows, sums)) in enumerate(zip(units, outcomes, strict=True), start=1):
            tasks_m += t_m
            task_q_parts.append(q_rows)
            for acc, part in zip(accs, sums, strict=True):
                acc.revenue_m += part.revenue_m
                acc.cost_m += part.cost_m
                acc.absorbed += part.absorbed
                acc.past_m += part.past_m
                acc.under_m += part.under_m
                acc.plan_rev[unit[0]] += float(part.revenue_m.sum())
                acc.plan_cost[unit[0]] += float(part.cost_m.sum())
            if progress is not None:
                progress(done, len(units))

    attribution = attribute(table, tasks_m)
    all_tasks = np.concatenate(task_q_parts) if task_q_parts else np.zeros(1)
    tasks_percentiles = dict(
        zip(PERCENTILES, (float(x) for x in np.percentile(all_tasks, PERCENTILES)), strict=True)
    )
    rng = np.random.default_rng(np.random.SeedSequence([scenario.seed, 3]))
    pick = np.sort(rng.choice(n, size=min(n, SCATTER_POINTS), replace=False)) if n else np.zeros(0, int)
    results: list[PolicyResult] = []
    for k, rater in enumerate(raters):
        acc = accs[k]
        cust_margin = acc.cust_revenue - acc.cust_cost
        cust_pct = _margin_pct(acc.cust_revenue, acc.cust_cost)
        bands = np.percentile(acc.month_margin, (10, 50, 90), axis=0)
        by_plan: dict[str, dict[str, float]] = {}
        for p, name in enumerate(sample.plan_names):
            lo, hi = sample.plan_slices[p]
            rev_p, cost_p = acc.plan_rev[p], acc.plan_cost[p]
            by_plan[name] = {
                "customers": float(hi - lo),
                "revenue_usd": float(rev_p),
                "cost_usd": float(cost_p),
                "margin_pct": float((rev_p - cost_p) / rev_p) if rev_p > 0 else float("nan"),
                "past_cliff_share": float((cust_margin[lo:hi] < 0).mean()) if hi > lo else 0.0,
                "under_floor_share": float((cust_pct[lo:hi] < acc.cust_floor[lo:hi]).mean())
                if hi > lo
                else 0.0,
            }
        with np.errstate(divide="ignore", invalid="ignore"):
            month_pct = np.where(acc.revenue_m > 0, (acc.revenue_m - acc.cost_m) / acc.revenue_m, np.nan)
        res = PolicyResult(
            label=rater.label,
            revenue_by_month=[float(x) for x in acc.revenue_m],
            cost_by_month=[float(x) for x in acc.cost_m],
            margin_pct_by_month=[float(x) for x in month_pct],
            customer_margin_pct_percentiles=dict(
                zip(PERCENTILES, (float(x) for x in np.percentile(cust_pct, PERCENTILES)), strict=True)
            ),
            customer_margin_usd_percentiles=dict(
                zip(PERCENTILES, (float(x) for x in np.percentile(cust_margin, PERCENTILES)), strict=True)
            ),
            month_margin_pct_bands={q: [float(x) for x in bands[i]] for i, q in enumerate((10, 50, 90))},
            past_cliff_share=float((cust_margin < 0).mean()) if n else 0.0,
            under_floor_share=float((cust_pct < acc.cust_floor).mean()) if n else 0.0,
            past_cliff_share_by_month=[float(x) / n for x in acc.past_m],
            under_floor_share_by_month=[float(x) / n for x in acc.under_m],
            by_plan=by_plan,
            absorbed_cost=acc.absorbed,
            scatter={
                "tasks_per_month": [float(x) for x in cust_tasks[pick]],
                "margin_pct": [float(x) for x in cust_pct[pick]],
                "plan": [float(x) for x in sample.plan_index[pick]],
                "cost_usd": [float(x) for x in acc.cust_cost[pick]],
            },
        )
        res.cliffs = cliff_points(scenario, table, rater, classes[k], floor_default)
        results.append(res)
    run = StressRun(
        scenario=scenario,
        deterministic=deterministic,
        models=models,
        table=table,
        tasks_by_month=[float(x) for x in tasks_m],
        customers=n,
        attribution=attribution,
        policies=results,
        tasks_percentiles=tasks_percentiles,
    )
    tornado(run, raters, sample)
    run.seconds = perf_counter() - started
    return run
