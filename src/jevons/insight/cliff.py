"""The margin cliff: the usage (tasks per month) at which a customer's margin reaches 0, and at
which it falls below the floor, per plan and month.

Revenue as a function of usage comes from rating a grid of usages with the real policy (so a flat
fee, an allowance, an overage rate, a cap or a floor all shape the curve as they would an
invoice); cost is ``tasks x cost per task``. The first crossing on a log grid from 0.001 to 1e8
tasks is then refined by bisection. ``None`` means the margin never gets there (a cost-plus
policy with a floor has no cliff); ``0.0`` means the plan loses money from the first task.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from jevons.insight.engine import class_aggregates, class_unit_vectors
from jevons.insight.rating import PolicyRater
from jevons.insight.scenario import Scenario
from jevons.insight.taskmodel import UnitTable

__all__ = ["GRID", "cliff_points", "margin_at"]

FloatArray = npt.NDArray[np.float64]

GRID: FloatArray = np.logspace(-3, 8, 1101)
_TOL = 1e-9
_BISECT = 60


def margin_at(
    table: UnitTable,
    rater: PolicyRater,
    model_class: Sequence[str],
    plan: str,
    tasks: FloatArray,
    units: dict[str, dict[str, FloatArray]] | None = None,
) -> tuple[FloatArray, FloatArray]:
    """Revenue and cost of customer-months with ``tasks`` (shape ``(k, months)``) on ``plan``."""
    rated = rater.rate(plan, class_aggregates(table, model_class, tasks, units))
    cost: FloatArray = tasks * table.cost_per_task[None, :]
    return rated.revenue, cost


def _gap(revenue: FloatArray, cost: FloatArray, floor: float) -> FloatArray:
    """Positive while the margin % is above ``floor`` (``floor = 0``: while margin > 0)."""
    scale = np.maximum(np.abs(revenue), np.abs(cost))
    out: FloatArray = revenue * (1.0 - floor) - cost + _TOL * scale
    return out


def _crossing(
    table: UnitTable,
    rater: PolicyRater,
    model_class: Sequence[str],
    plan: str,
    floor: float,
    revenue: FloatArray,
    cost: FloatArray,
    units: dict[str, dict[str, FloatArray]],
) -> list[float | None]:
    """Per month, the first usage where the gap turns negative."""
    gap = _gap(revenue, cost, floor)  # (grid, months)
    months = gap.shape[1]
    out: list[float | None] = []
    lo = np.zeros(months)
    hi = np.zeros(months)
    active = np.zeros(months, dtype=bool)
    for t in range(months):
        neg = np.nonzero(gap[:, t] < 0)[0]
        if neg.size == 0:
            out.append(None)
        elif neg[0] == 0:
            out.append(0.0)
        else:
            out.append(float("nan"))
            lo[t], hi[t] = GRID[neg[0] - 1], GRID[neg[0]]
            active[t] = True
    if active.any():
        for _ in range(_BISECT):
            mid = np.sqrt(lo * hi)
            mid = np.where(active, mid, 1.0)
            r, c = margin_at(table, rater, model_class, plan, mid[None, :], units)
            below = _gap(r, c, floor)[0] < 0
            hi = np.where(active & below, mid, hi)
            lo = np.where(active & ~below, mid, lo)
        for t in range(months):
            if active[t]:
                out[t] = float(hi[t])
    return out


def cliff_points(
    scenario: Scenario,
    table: UnitTable,
    rater: PolicyRater,
    model_class: Sequence[str],
    default_floor: float,
) -> list[dict[str, Any]]:
    """Per plan: the zero-margin and floor cliffs per month, and the margin curve for charts."""
    months = scenario.months
    grid = np.repeat(GRID[:, None], months, axis=1)
    units = class_unit_vectors(table, model_class)
    out: list[dict[str, Any]] = []
    for plan in scenario.customers.plans:
        floor = rater.margin_floor(plan.name)
        floor = default_floor if floor is None else floor
        revenue, cost = margin_at(table, rater, model_class, plan.name, grid, units)
        zero = _crossing(table, rater, model_class, plan.name, 0.0, revenue, cost, units)
        below = _crossing(table, rater, model_class, plan.name, floor, revenue, cost, units)
        step = 10
        with np.errstate(divide="ignore", invalid="ignore"):
            pct = np.where(revenue > 0, (revenue - cost) / revenue, np.nan)
        out.append(
            {
                "plan": plan.name,
                "floor": floor,
                "zero_margin_tasks_by_month": zero,
                "floor_tasks_by_month": below,
                "zero_margin_tasks": zero[0],
                "floor_tasks": below[0],
                "zero_margin_tasks_last_month": zero[-1],
                "floor_tasks_last_month": below[-1],
                "curve": {
                    "tasks": [float(x) for x in GRID[::step]],
                    "margin_pct_first_month": [float(x) for x in pct[::step, 0]],
                    "margin_pct_last_month": [float(x) for x in pct[::step, -1]],
                },
            }
        )
    return out
