"""Deterministic mode against hand-computed closed forms: agent-loop input, cache, retries,
long-context tier crossing, reasoning, price trend, routing, allowance and floor, the cliff."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest

from jevons.insight.attribution import attribute, shapley_per_task
from jevons.insight.cliff import cliff_points
from jevons.insight.engine import class_aggregates, sample_customers, simulate
from jevons.insight.rating import PolicyRater
from jevons.insight.scenario import TaskSpec
from jevons.insight.taskmodel import DRIVERS, agent_loop_input, build_unit_table, step_usages
from jevons.policy.loader import load_policy
from jevons.prices.book import Adjustment, PriceBook
from jevons.usage import Usage

from .conftest import scenario

LOOP = {"prompt_tokens": 1000, "context_growth": 500, "steps": 4, "output_tokens": 100}


def unit_cost(book: PriceBook, **overrides: object) -> np.ndarray:
    s = scenario(**overrides)
    return build_unit_table(s, s.resolve_models(book)).cost_per_task


@pytest.mark.parametrize(("b", "d", "n"), [(1000, 500, 4), (3000, 1200, 6), (50, 0, 1), (0, 7, 30)])
def test_agent_loop_input_closed_form(b: int, d: int, n: int) -> None:
    usages = step_usages(TaskSpec(prompt_tokens=b, context_growth=d, steps=n))
    assert sum(u.input_tokens for u in usages) == agent_loop_input(b, d, n) == n * b + d * n * (n - 1) // 2
    assert [u.input_tokens for u in usages] == [b + d * i for i in range(n)]


def test_loop_cost_by_hand(book: PriceBook) -> None:
    # input 4*1000 + 500*6 = 7000 tokens at $1/M, output 4*100 at $4/M
    assert unit_cost(book, task=LOOP)[0] == pytest.approx(7000e-6 + 400 * 4e-6, rel=1e-12)


def test_cache_shares_by_hand(book: PriceBook) -> None:
    # steps 1000/1500/2000/2500: reads 50% = 3500, writes 10% = 700, uncached 2800
    cost = unit_cost(book, task={**LOOP, "cache_hit_share": 0.5, "cache_write_share": 0.1})[0]
    assert cost == pytest.approx(2800e-6 + 3500 * 0.1e-6 + 700 * 1.25e-6 + 400 * 4e-6, rel=1e-12)


@pytest.mark.parametrize("scope", ["step", "task"])
def test_retries_multiply_by_expected_attempts(book: PriceBook, scope: str) -> None:
    plain = unit_cost(book, task=LOOP)[0]
    retried = unit_cost(book, task=LOOP, retries={"failure_rate": 0.2, "scope": scope})[0]
    assert retried == pytest.approx(plain / (1 - 0.2), rel=1e-12)  # 1/(1-p) attempts


def test_long_context_tier_crossing(book: PriceBook) -> None:
    # premium-1: tier above 3000 input tokens; steps 2000 / 3000 / 4000: only the third crosses
    cost = unit_cost(
        book,
        models=[{"name": "premium-1", "share": 1.0}],
        task={"prompt_tokens": 2000, "context_growth": 1000, "steps": 3, "output_tokens": 100},
    )[0]
    by_hand = (2000 + 3000) * 3e-6 + 2 * 100 * 15e-6 + 4000 * 6e-6 + 100 * 22.5e-6
    assert cost == pytest.approx(by_hand, rel=1e-12)


def test_reasoning_multiplier_on_output(book: PriceBook) -> None:
    usage = step_usages(TaskSpec(prompt_tokens=10, output_tokens=100), 10)[0]
    assert (usage.output_tokens, usage.reasoning_tokens) == (1000, 900)
    cost = unit_cost(
        book,
        models=[{"name": "premium-1", "share": 1.0, "reasoning_multiplier": 10}],
        task={"prompt_tokens": 10, "output_tokens": 100},
    )[0]
    assert cost == pytest.approx(10 * 3e-6 + 1000 * 15e-6, rel=1e-12)


def test_price_trend_equals_the_book_adjustment(book: PriceBook) -> None:
    s = scenario(task=LOOP, time={"months": 3, "price_trend": -0.1})
    table = build_unit_table(s, s.resolve_models(book))
    assert table.cost_per_task[2] == pytest.approx(table.cost_per_task[0] * 0.81, rel=1e-12)
    adjusted = PriceBook(book.all_versions(), adjustments=[Adjustment(Decimal("0.81"))])
    exact = sum((adjusted.cost("base-1", u).total_usd for u in step_usages(s.task)), Decimal(0))
    assert table.cost_per_task[2] == pytest.approx(float(exact), rel=1e-12)


def test_routing_shares_and_upgrade(book: PriceBook) -> None:
    task = {"prompt_tokens": 1000, "output_tokens": 100}
    base = 1000e-6 + 100 * 4e-6
    premium = 1000 * 3e-6 + 100 * 15e-6
    cost = unit_cost(
        book,
        task=task,
        models=[{"name": "base-1", "share": 0.75}, {"name": "premium-1", "share": 0.25}],
        upgrade={"month": 1, "shares": {"base-1": 0.5, "premium-1": 0.5}},
    )
    assert cost[0] == pytest.approx(0.75 * base + 0.25 * premium, rel=1e-12)
    assert cost[1] == cost[2] == pytest.approx(0.5 * base + 0.5 * premium, rel=1e-12)


def test_allowance_and_floor_by_hand(book: PriceBook, tmp_path: Path) -> None:
    """fee $10, $5 of cost included, price mode x1.5 under a 50% floor (x2 binds):
    revenue = 10 + 2 * max(cost - 5, 0)."""
    path = tmp_path / "p.toml"
    path.write_text(
        'name = "hand"\ndefault_plan = "starter"\n[classes.base]\n'
        '[plans.starter]\nfee = 10\nallowance = { amount = 5, unit = "usd_cost" }\n'
        '[plans.starter.classes.base]\nmode = "price"\nmarkup = 1.5\nfloor = 0.5\n'
    )
    rater = PolicyRater(load_policy(path))
    s = scenario(task=LOOP)
    models = s.resolve_models(book)
    table = build_unit_table(s, models)
    c = table.cost_per_task[0]  # 0.0086
    tasks = np.array([[0.0, 0.0, 0.0], [100, 100, 100], [1000, 1000, 1000], [5000, 5000, 5000]])
    rated = rater.rate("starter", class_aggregates(table, rater.classify_models(models), tasks))
    cost = tasks[:, 0] * c
    assert rated.revenue[:, 0] == pytest.approx(10 + 2 * np.maximum(cost - 5, 0), rel=1e-12)
    assert rated.revenue[1, 0] == pytest.approx(10.0)  # 0.86 of cost: all inside the allowance
    assert rated.revenue[3, 0] == pytest.approx(10 + 2 * (43 - 5), rel=1e-12)
    # margin is 10 - cost inside the allowance, then cost > 0: the floor leaves no cliff
    cliffs = cliff_points(s, table, rater, rater.classify_models(models), 0.2)
    assert cliffs[0]["zero_margin_tasks"] is None


def test_flat_plan_cliff_by_hand(book: PriceBook) -> None:
    """Flat $29: margin 0 at 29 / cost-per-task tasks; the 20% floor at 0.8 * 29 / cost."""
    from jevons.insight.stress import load_raters

    s = scenario(task=LOOP, time={"months": 2, "price_trend": -0.5})
    models = s.resolve_models(book)
    table = build_unit_table(s, models)
    flat = load_raters(s, ["builtin:flat"])[0]
    c = cliff_points(s, table, flat, flat.classify_models(models), 0.2)[0]
    assert c["zero_margin_tasks"] == pytest.approx(29 / 0.0086, rel=1e-8)
    assert c["floor_tasks"] == pytest.approx(0.8 * 29 / 0.0086, rel=1e-8)
    assert c["zero_margin_tasks_last_month"] == pytest.approx(29 / (0.0086 * 0.5), rel=1e-8)


def test_shapley_attribution_adds_up_and_isolates_drivers(book: PriceBook) -> None:
    s = scenario(
        task=LOOP,
        retries={"failure_rate": 0.1},
        models=[
            {"name": "base-1", "share": 0.8},
            {"name": "premium-1", "share": 0.2, "reasoning_multiplier": 5},
        ],
    )
    table = build_unit_table(s, s.resolve_models(book))
    base, phi = shapley_per_task(table)
    assert base + sum(phi[d] for d in DRIVERS) == pytest.approx(table.cost_per_task, rel=1e-12)
    # base: one call of 1000 input + 100 output, all at the base model's input rate
    assert base[0] == pytest.approx(1100e-6, rel=1e-12)
    assert all(phi[d][0] > 0 for d in DRIVERS)
    # retries alone: with everything else on, p=0.1 adds cost*(1-(1-p)) -- Shapley averages
    # over orders, so check only the simplest case below
    simple = scenario(task={"prompt_tokens": 1000, "output_tokens": 100}, retries={"failure_rate": 0.5})
    t2 = build_unit_table(simple, simple.resolve_models(book))
    _, p2 = shapley_per_task(t2)
    assert p2["loop"][0] == p2["routing"][0] == 0
    # v(S) = (1000e-6 + 100*rate) * (2 if retries in S else 1): exact Shapley split by hand
    v_in, v_out = 1100e-6, 1000e-6 + 400e-6
    assert p2["output"][0] == pytest.approx(0.5 * (v_out - v_in) + 0.5 * 2 * (v_out - v_in), rel=1e-12)
    assert p2["retries"][0] == pytest.approx(0.5 * v_in + 0.5 * v_out, rel=1e-12)
    att = attribute(t2, np.array([10.0, 10.0, 10.0]))
    assert att.base_usd + sum(att.driver_usd.values()) == pytest.approx(att.total_usd, rel=1e-12)


def test_deterministic_mode_is_a_quantile_grid(book: PriceBook) -> None:
    s = scenario(
        customers={
            "count": 41,
            "median_tasks": 100,
            "monthly_noise": 0.5,
            "plans": [{"name": "starter", "share": 1.0}],
        },
        task=LOOP,
    )
    sample = sample_customers(s, deterministic=True)
    assert np.median(sample.intensity) == pytest.approx(100.0, rel=1e-12)  # q = 0.5 -> the median
    assert np.all(np.diff(sample.intensity) > 0)
    from jevons.insight.stress import load_raters

    run = simulate(s, s.resolve_models(book), load_raters(s, ["builtin:flat"]), deterministic=True)
    total_tasks = float(sample.intensity.sum())  # no noise, no growth: every month the same
    assert run.tasks_by_month == pytest.approx([total_tasks] * 3, rel=1e-12)
    p = run.policies[0]
    assert p.cost_by_month[0] == pytest.approx(total_tasks * 0.0086, rel=1e-12)
    assert p.revenue_by_month[0] == pytest.approx(41 * 29.0, rel=1e-12)
    again = simulate(s, s.resolve_models(book), load_raters(s, ["builtin:flat"]), deterministic=True)
    assert again.to_dict()["policies"][0]["by_month"] == run.to_dict()["policies"][0]["by_month"]


def test_monte_carlo_is_reproducible_and_heavy_tailed(book: PriceBook) -> None:
    s = scenario(
        customers={
            "count": 20000,
            "median_tasks": 50,
            "p99_over_median": 100,
            "monthly_noise": 0.0,
            "plans": [{"name": "starter", "share": 1.0}],
        }
    )
    def p99_over_median(intensity: np.ndarray) -> float:
        return float(np.percentile(intensity, 99) / np.percentile(intensity, 50))

    a, b = sample_customers(s), sample_customers(s)
    assert np.array_equal(a.intensity, b.intensity)
    assert 80 < p99_over_median(a.intensity) < 125
    pareto = sample_customers(s.with_changes(**{"customers.distribution": "pareto"}))
    assert 80 < p99_over_median(pareto.intensity) < 125


def test_usage_growth_and_noise_keep_the_mean(book: PriceBook) -> None:
    s = scenario(
        customers={
            "count": 4000,
            "median_tasks": 10,
            "p99_over_median": 2,
            "monthly_noise": 0.3,
            "plans": [{"name": "starter", "share": 1.0}],
        },
        time={"months": 3, "usage_growth": 0.5},
    )
    from jevons.insight.stress import load_raters

    run = simulate(s, s.resolve_models(book), load_raters(s, ["builtin:flat"]))
    t = run.tasks_by_month
    assert t[1] / t[0] == pytest.approx(1.5, rel=0.03)
    assert t[2] / t[0] == pytest.approx(2.25, rel=0.03)


def test_exact_usage_round_trips_through_the_real_cost_function(book: PriceBook) -> None:
    """The per-call usages the simulator prices are valid canonical Usage objects."""
    for u in step_usages(
        TaskSpec(
            prompt_tokens=999,
            context_growth=333,
            steps=5,
            output_tokens=7,
            cache_hit_share=0.33,
            cache_write_share=0.66,
        ),
        3.3,
    ):
        assert isinstance(u, Usage) and u.cache_read_tokens + u.cache_write_tokens <= u.input_tokens
        assert book.cost("premium-1", u).status == "priced"
