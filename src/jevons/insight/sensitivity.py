"""Sensitivity of the gross margin to each input (the tornado chart).

Each input is moved down and up by :data:`SWING` (20%) with everything else held, on a fixed
subsample of the customers (the same customers and the same noise for every move: common random
numbers, so a bar shows the input's effect and not sampling noise). Each move re-prices a task
through the price book and re-rates through the policy; bars are sorted by swing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from jevons.insight.engine import (
    CustomerSample,
    class_aggregates,
    class_unit_vectors,
    sample_customers,
    tasks_for,
)
from jevons.insight.rating import PolicyRater
from jevons.insight.scenario import Scenario, ScenarioError
from jevons.insight.taskmodel import build_unit_table

if TYPE_CHECKING:
    from jevons.insight.engine import StressRun

__all__ = ["SUBSAMPLE", "SWING", "inputs", "tornado"]

SWING = 0.2
SUBSAMPLE = 4_000

Move = Callable[[Scenario, float], Scenario]


def _scale(path: str, *, integer: bool = False, lo: float = 0.0, hi: float | None = None) -> Move:
    def move(s: Scenario, factor: float) -> Scenario:
        node: Any = s
        for part in path.split("."):
            node = getattr(node, part)
        value = float(node) * factor
        value = max(value, lo)
        if hi is not None:
            value = min(value, hi)
        return s.with_changes(**{path: round(value) if integer else value})

    return move


def _premium_share(s: Scenario, factor: float) -> Scenario:
    """Scale every non-base model's share (before and after the upgrade); base takes the rest."""

    def rescale(shares: list[float]) -> list[float]:
        rest = [min(x * factor, 1.0) for x in shares[1:]]
        total = sum(rest)
        if total > 1:
            rest = [x / total for x in rest]
        return [1.0 - sum(rest), *rest]

    new = rescale([m.share for m in s.models])
    changes: dict[str, Any] = {f"models.{i}.share": v for i, v in enumerate(new)}
    if s.upgrade is not None:
        names = [m.name for m in s.models]
        up = rescale([s.upgrade.shares.get(n, 0.0) for n in names])
        changes["upgrade.shares"] = dict(zip(names, up, strict=True))
    return s.with_changes(**changes)


def _reasoning(s: Scenario, factor: float) -> Scenario:
    return s.with_changes(
        **{
            f"models.{i}.reasoning_multiplier": max(1.0, m.reasoning_multiplier * factor)
            for i, m in enumerate(s.models)
            if m.reasoning_multiplier > 1
        }
    )


def inputs(scenario: Scenario) -> list[tuple[str, str, Move | None]]:
    """(key, label, move) for every input that is not zero in this scenario. A ``None`` move
    means "scale usage" (median tasks), applied to the sample instead of the scenario."""
    s = scenario
    out: list[tuple[str, str, Move | None]] = [("customers.median_tasks", "tasks per customer", None)]
    candidates: list[tuple[str, str, float, Move]] = [
        (
            "task.prompt_tokens",
            "prompt tokens per call",
            s.task.prompt_tokens,
            _scale("task.prompt_tokens", integer=True),
        ),
        (
            "task.output_tokens",
            "output tokens per call",
            s.task.output_tokens,
            _scale("task.output_tokens", integer=True),
        ),
        ("task.steps", "agent steps per task", s.task.steps - 1, _scale("task.steps", integer=True, lo=1)),
        (
            "task.context_growth",
            "context growth per step",
            s.task.context_growth,
            _scale("task.context_growth", integer=True),
        ),
        (
            "task.cache_hit_share",
            "cache-hit share",
            s.task.cache_hit_share,
            _scale("task.cache_hit_share", hi=1.0 - s.task.cache_write_share),
        ),
        (
            "retries.failure_rate",
            "failure rate",
            s.retries.failure_rate,
            _scale("retries.failure_rate", hi=0.99),
        ),
        (
            "models.premium_share",
            "premium routing share",
            1.0 - s.models[0].share if len(s.models) > 1 else 0,
            _premium_share,
        ),
        (
            "models.reasoning_multiplier",
            "reasoning multiplier",
            max((m.reasoning_multiplier - 1 for m in s.models), default=0.0),
            _reasoning,
        ),
        (
            "time.usage_growth",
            "monthly usage growth",
            s.time.usage_growth,
            _scale("time.usage_growth", lo=-0.99),
        ),
        ("time.price_trend", "monthly price trend", s.time.price_trend, _scale("time.price_trend", lo=-0.99)),
    ]
    out.extend((key, label, move) for key, label, value, move in candidates if value)
    return out


def _margin(
    scenario: Scenario, run: StressRun, rater: PolicyRater, sample: CustomerSample, usage: float
) -> float:
    models = [replace(m, spec=scenario.models[i]) for i, m in enumerate(run.models)]
    table = build_unit_table(scenario, models, all_combinations=False)
    classes = rater.classify_models(models)
    units = class_unit_vectors(table, classes)
    revenue = cost = 0.0
    for p, (lo, hi) in enumerate(sample.plan_slices):
        if hi <= lo:
            continue
        tasks = tasks_for(scenario, sample, lo, hi, deterministic=run.deterministic) * usage
        rated = rater.rate(sample.plan_names[p], class_aggregates(table, classes, tasks, units))
        revenue += float(rated.revenue.sum())
        cost += float((tasks * table.cost_per_task[None, :]).sum())
    return (revenue - cost) / revenue if revenue > 0 else float("-inf")


def tornado(run: StressRun, raters: Sequence[PolicyRater], full_sample: CustomerSample) -> None:
    """Fill ``tornado`` of every policy result of ``run`` (sorted by swing, widest first)."""
    scenario = run.scenario
    if full_sample.count > SUBSAMPLE:
        sub = scenario.with_changes(**{"customers.count": SUBSAMPLE})
        sample = sample_customers(sub, deterministic=run.deterministic)
    else:
        sample = full_sample
    for rater, result in zip(raters, run.policies, strict=True):
        base = _margin(scenario, run, rater, sample, 1.0)
        bars: list[dict[str, Any]] = []
        for key, label, move in inputs(scenario):
            try:
                if move is None:
                    low = _margin(scenario, run, rater, sample, 1 - SWING)
                    high = _margin(scenario, run, rater, sample, 1 + SWING)
                else:
                    low = _margin(move(scenario, 1 - SWING), run, rater, sample, 1.0)
                    high = _margin(move(scenario, 1 + SWING), run, rater, sample, 1.0)
            except ScenarioError:
                continue  # a move that makes the scenario invalid has no bar
            bars.append(
                {
                    "input": key,
                    "label": label,
                    "base_margin_pct": base,
                    "low_margin_pct": low,
                    "high_margin_pct": high,
                    "swing": float(np.abs(high - low)) if np.isfinite(high - low) else float("inf"),
                }
            )
        bars.sort(key=lambda b: b["swing"], reverse=True)
        result.tornado = bars
