"""Invariants over random event streams and policies (hypothesis)."""

from __future__ import annotations

import random
import tempfile
from datetime import timedelta
from decimal import Decimal as D
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jevons.policy.engine import PolicyEngine
from jevons.policy.loader import parse_policy
from jevons.policy.model import Policy
from jevons.policy.rules import rating_context
from jevons.policy.runtime import PolicyRuntime
from jevons.policy.store import SqlitePolicyStore

from .helpers import at, event

CUSTOMERS = ("acme", "bob", "cy")


@st.composite
def policies(draw: st.DrawFn) -> Policy:
    floor = draw(st.sampled_from(["", 'floor = "0.2"', 'floor = "0.35"', 'floor = "0"']))
    pfloor = draw(st.sampled_from(["", 'period_floor = "0.3"']))
    allowance = draw(st.sampled_from(["", "allowance = { amount = 3 }",
                                      'allowance = { amount = 2, unit = "usd_cost" }',
                                      'allowance = { amount = 5000, unit = "tokens" }']))
    cap = draw(st.sampled_from(["", "cap = 6", 'cap = "12.5"']))
    fee = draw(st.sampled_from(["", 'fee = "9.99"']))
    commit = draw(st.sampled_from(["", "commitment = 20"]))
    disc = draw(st.sampled_from(["", '[[customers.acme.discounts]]\npercent = "0.3"\n',
                                 '[[customers.acme.discounts]]\namount = 2\n']))
    credits = draw(st.sampled_from(["", '[[customers.acme.credits]]\namount = 7\neffective = 2026-03-01\n'
                                        '[[customers.bob.credits]]\namount = 3\nkind = "promotional"\n'
                                        'effective = 2026-03-05\nexpires = 2026-03-20\n']))
    change = draw(st.sampled_from(["", '[[customers.cy.plans]]\nplan = "q"\nstarts = 2026-03-16\n']))
    text = f"""
default_plan = "p"
[classes.base]
[classes.premium]
priority = 1
models = ["gpt-5*"]
[plans.p]
{fee}
{commit}
{pfloor}
{allowance}
{cap}
[plans.p.classes.base]
mode = "token"
input = 2
output = 8
{floor}
[plans.p.classes.premium]
mode = "price"
markup = "1.3"
{floor}
[plans.q]
fee = 31
[plans.q.classes.base]
mode = "price"
markup = 2
[plans.q.classes.premium]
mode = "price"
markup = 3
{disc}
{credits}
{change}
"""
    return parse_policy(text)


@st.composite
def streams(draw: st.DrawFn) -> list:
    n = draw(st.integers(1, 14))
    out = []
    for i in range(n):
        cost = draw(st.sampled_from([None, "0.001", "0.37", "1.2", "2.5", "4"]))
        out.append(event(
            cost,
            when=at(1) + timedelta(hours=draw(st.integers(0, 24 * 29)), seconds=i),
            customer=draw(st.sampled_from(CUSTOMERS)),
            model=draw(st.sampled_from(["gpt-4o-mini", "gpt-5"])),
            input_tokens=draw(st.integers(0, 400_000)),
            output_tokens=draw(st.integers(0, 100_000)),
        ))
    return sorted(out, key=lambda e: e.timestamp)


common = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@common
@given(pol=policies(), events=streams())
def test_invariants_of_batch_rating(pol: Policy, events: list) -> None:
    eng = PolicyEngine(pol)
    for customer in CUSTOMERS:
        mine = [e for e in events if e.customer == customer]
        rated, rater = eng.rate_customer(customer, mine, through="2026-03")
        inv = rater.invoices[-1]
        with rating_context():
            for r in rated:
                pc = pol.plans["p" if r.plan == "p" else "q"].classes[r.cost_class]
                # every charge >= its floor
                if pc.floor is not None:
                    assert r.charge * (1 - pc.floor) >= r.cost
                    assert r.net >= r.overage * 0 and r.net + r.discount == r.overage
                assert r.billed + r.absorbed == r.net
                assert r.included + r.overage == r.charge
                assert r.billed >= 0 and r.absorbed >= 0 and r.included >= 0
                assert all(a > 0 for _, _, a in r.credits)
                assert r.credits_applied <= r.billed
            # credits never negative, never more than granted
            for g in rater.grants:
                assert D(0) <= rater.state.drawn.get(g.id, D(0)) <= g.amount  # type: ignore[union-attr]
            # total = sum of lines (rounded and exact)
            assert inv.total_due == sum(line.rounded for line in inv.lines)
            assert inv.total_exact == sum(line.amount for line in inv.lines)
            assert inv.total_due >= 0
            if any(line.kind.startswith("credit") for line in inv.lines):
                assert inv.total_due == max(inv.total_exact.quantize(D("0.01"), rounding="ROUND_HALF_UP"), 0)
            assert inv.margin == inv.revenue - inv.cost
            assert inv.events == len(mine)


@common
@given(pol=policies(), events=streams(), seed=st.integers(0, 1000))
def test_customers_are_independent_of_each_others_order(pol: Policy, events: list, seed: int) -> None:
    eng = PolicyEngine(pol)
    shuffled = list(events)
    random.Random(seed).shuffle(shuffled)
    interleaved = sorted(shuffled, key=lambda e: (e.customer != "bob", e.timestamp))
    assert eng.rate(events) == eng.rate(shuffled) == eng.rate(interleaved)
    alone = eng.rate([e for e in events if e.customer == "acme"])
    assert alone.get("acme") == eng.rate(events).get("acme")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pol=policies(), events=streams())
def test_incremental_running_balances_equal_batch_rerating(pol: Policy, events: list) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = SqlitePolicyStore(Path(tmp) / "p.db")
        try:
            eng = PolicyEngine(pol)
            rt = PolicyRuntime(eng, store)
            for e in events:
                rt(e)
            for customer in CUSTOMERS:
                mine = [e for e in events if e.customer == customer]
                if not mine:
                    continue
                _, rater = eng.rate_customer(customer, mine)
                live = store.read(lambda tx: tx.load_state(), customer)
                assert live is not None and rater.state is not None
                assert live.to_dict() == rater.state.to_dict()
                when = mine[-1].timestamp
                assert rt.balances(customer, when) == rater.balances(when)
        finally:
            store.close()
