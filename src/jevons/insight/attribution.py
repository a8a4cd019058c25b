"""How much of the cost each of the four drivers adds (Shapley attribution).

The drivers interact (retries multiply the agent loop, which multiplies premium output...), so
"turn one off and see" does not add up. The Shapley value does: each driver gets its marginal
cost averaged over every order in which the drivers could be switched on. With ``base`` the cost
of a task with all four off (one call, base model, output at input rate, one attempt),
``base + sum(drivers) == total`` exactly, and a driver that changes nothing gets 0.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from math import factorial

import numpy as np
import numpy.typing as npt

from jevons.insight.taskmodel import DRIVERS, UnitTable

__all__ = ["Attribution", "attribute", "shapley_per_task"]

FloatArray = npt.NDArray[np.float64]


def shapley_per_task(table: UnitTable) -> tuple[FloatArray, dict[str, FloatArray]]:
    """Base cost per task and each driver's Shapley share, per month (USD per task)."""
    n = len(DRIVERS)
    value = {s: c.sum(axis=0) for s, c in table.cost.items()}
    out: dict[str, FloatArray] = {}
    for name in DRIVERS:
        others = [d for d in DRIVERS if d != name]
        phi = np.zeros(table.months, dtype=np.float64)
        for k in range(n):
            weight = factorial(k) * factorial(n - k - 1) / factorial(n)
            for subset in itertools.combinations(others, k):
                s = frozenset(subset)
                phi = phi + weight * (value[s | {name}] - value[s])
        out[name] = phi
    return value[frozenset()], out


@dataclass(frozen=True, slots=True)
class Attribution:
    """Cost split over the run: ``base_usd + sum(driver_usd.values()) == total_usd``."""

    total_usd: float
    base_usd: float
    driver_usd: dict[str, float]
    by_month: dict[str, list[float]]  # driver -> USD per month (and "base")

    def shares(self) -> dict[str, float]:
        if self.total_usd <= 0:
            return {k: 0.0 for k in self.driver_usd}
        return {k: v / self.total_usd for k, v in self.driver_usd.items()}

    def to_dict(self) -> dict[str, object]:
        return {
            "total_usd": self.total_usd,
            "base_usd": self.base_usd,
            "driver_usd": dict(self.driver_usd),
            "driver_share": self.shares(),
            "by_month": {k: list(v) for k, v in self.by_month.items()},
        }


def attribute(table: UnitTable, tasks_per_month: FloatArray) -> Attribution:
    """Attribute the cost of ``tasks_per_month`` (total tasks over all customers, per month)."""
    base, phi = shapley_per_task(table)
    by_month = {"base": base * tasks_per_month}
    for name in DRIVERS:
        by_month[name] = phi[name] * tasks_per_month
    total = float((table.cost_per_task * tasks_per_month).sum())
    return Attribution(
        total_usd=total,
        base_usd=float(by_month["base"].sum()),
        driver_usd={name: float(by_month[name].sum()) for name in DRIVERS},
        by_month={k: [float(x) for x in v] for k, v in by_month.items()},
    )
