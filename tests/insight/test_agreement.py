"""The simulator's vectorised pricing and rating agree with the real price book and the real
policy engine: sampled customers' months are replayed as individual events (every call of
every task, retries included), priced by ``PriceBook.cost`` and rated by ``PolicyEngine``."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest

from jevons.events import Event
from jevons.insight.engine import class_aggregates
from jevons.insight.rating import PolicyRater, load_policy_file
from jevons.insight.scenario import ResolvedModel, Scenario, parse_scenario
from jevons.insight.taskmodel import build_unit_table, step_usages
from jevons.policy.engine import PolicyEngine
from jevons.policy.model import Policy
from jevons.prices.book import Adjustment, PriceBook
from jevons.prices.loader import default_book

EXAMPLE_POLICY = str(Path(__file__).parents[2] / "examples" / "policies" / "saas.toml")
MONTHS = 3
TREND = -0.05
TASKS = {"light": [16, 160, 800], "heavy": [800, 160, 16]}


def the_scenario() -> Scenario:
    return parse_scenario(
        {
            "name": "agreement",
            "customers": {
                "count": 2,
                "plans": [{"name": "starter", "share": 0.5}, {"name": "pro", "share": 0.5}],
            },
            "task": {
                "prompt_tokens": 2000,
                "output_tokens": 1500,
                "steps": 3,
                "context_growth": 1000,
                "cache_hit_share": 0.5,
                "cache_write_share": 0.1,
            },
            "retries": {"failure_rate": 0.2},
            "models": [
                {"name": "gpt-5-mini", "share": 0.75},
                {"name": "claude-sonnet-4.5", "share": 0.25, "reasoning_multiplier": 10},
            ],
            "time": {"months": MONTHS, "price_trend": TREND},
        }
    )


def month_start(t: int) -> datetime:
    return datetime(2026, 1 + t, 1, tzinfo=UTC)


def trend_book(models: list[ResolvedModel]) -> PriceBook:
    """The two real versions, with the scenario's price trend as the book's own adjustments."""
    adjustments = [
        Adjustment(
            Decimal(str(1 + TREND)) ** t,
            valid_from=month_start(t),
            valid_to=month_start(t + 1),
            label=f"trend-m{t}",
        )
        for t in range(MONTHS)
    ]
    return PriceBook([m.version for m in models], adjustments=adjustments)


def replay(
    customer: str, tasks: list[int], s: Scenario, models: list[ResolvedModel], policy: Policy
) -> list[Event]:
    """Every call of every task, one event each, priced by the book at the call's time. A
    failure rate of 0.2 is one failed (full-cost) attempt per four successful calls."""
    book = trend_book(models)
    classes = PolicyRater(policy).classify_models(models)
    order = {c: i for i, c in enumerate(policy.class_order)}
    events: list[Event] = []
    n = 0
    for t, count in enumerate(tasks):
        # the simulator rates class aggregates in class order: replay the month in that order
        for i in sorted(range(len(models)), key=lambda i: order[classes[i]]):
            rm = models[i]
            routed = count * rm.spec.share
            assert routed == int(routed) and int(routed) % 4 == 0
            for usage in step_usages(s.task, rm.spec.reasoning_multiplier):
                for k in range(int(routed) * 5 // 4):  # 1/(1-p) = 1.25 attempts per call
                    n += 1
                    at = month_start(t).replace(
                        day=2, second=n % 60, minute=(n // 60) % 60, hour=(n // 3600) % 24
                    )
                    events.append(
                        Event(
                            id=f"{customer}-{n}",
                            idempotency_key=f"{customer}-{n}",
                            timestamp=at,
                            provider=rm.version.provider,
                            model_requested=rm.version.model,
                            usage=usage,
                            cost=book.cost(rm.version.model, usage, provider=rm.version.provider, at=at),
                            customer=customer,
                            status="error" if k % 5 == 4 else "ok",
                        )
                    )
    return events


@pytest.mark.parametrize("policy_ref", ["builtin:flat", "builtin:cost-plus", EXAMPLE_POLICY])
@pytest.mark.parametrize("plan", ["starter", "pro"])
def test_vectorised_rating_agrees_with_the_policy_engine(policy_ref: str, plan: str) -> None:
    s = the_scenario()
    models = s.resolve_models(default_book())
    table = build_unit_table(s, models)
    base = load_policy_file(policy_ref)
    data = base.model_dump(mode="python", exclude_unset=True)
    data["customers"] = {name: {"plan": plan} for name in TASKS}
    policy = Policy.model_validate(data)
    rater = PolicyRater(policy)
    classes = rater.classify_models(models)
    engine = PolicyEngine(policy)
    for customer, tasks in TASKS.items():
        matrix = np.array([tasks], dtype=np.float64)
        rated = rater.rate(plan, class_aggregates(table, classes, matrix))
        sim_cost = matrix[0] * table.cost_per_task
        events = replay(customer, tasks, s, models, policy)
        _, exact = engine.rate_customer(customer, events, through=f"2026-{MONTHS:02d}")
        invoices = {inv.period: inv for inv in exact.invoices}
        for t in range(MONTHS):
            inv = invoices[f"2026-{t + 1:02d}"]
            assert float(inv.cost) == pytest.approx(sim_cost[t], rel=1e-9), (customer, t, "cost")
            assert float(inv.revenue) == pytest.approx(rated.revenue[0, t], rel=1e-9, abs=1e-9), (
                customer,
                t,
                "revenue",
                inv.to_dict(),
            )
            assert float(inv.absorbed_cost) == pytest.approx(rated.absorbed_cost[0, t], rel=1e-9, abs=1e-9)


def test_agreement_covers_allowance_cap_and_floor() -> None:
    """The replayed months do hit the interesting rules (else the agreement proves little)."""
    s = the_scenario()
    models = s.resolve_models(default_book())
    table = build_unit_table(s, models)
    policy = load_policy_file(EXAMPLE_POLICY)
    rater = PolicyRater(policy)
    m = np.array([TASKS["light"]], dtype=np.float64)
    starter = rater.rate("starter", class_aggregates(table, rater.classify_models(models), m))
    assert starter.absorbed_cost[0, 2] > 0  # the $200 cap absorbs the heavy month
    assert starter.revenue[0, 0] == pytest.approx(20.0)  # the first month fits the $10 allowance
    pro = rater.rate("pro", class_aggregates(table, rater.classify_models(models), m))
    assert pro.revenue[0, 0] == pytest.approx(250.0)  # the $250 commitment
