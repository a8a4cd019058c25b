"""The fast batch rater equals event-by-event rating: same state, invoices and alerts."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal as D
from decimal import InvalidOperation
from pathlib import Path

from hypothesis import HealthCheck, given, settings

from jevons.policy.batch import rate_customer_fast
from jevons.policy.engine import CustomerState, PolicyEngine
from jevons.policy.loader import load_policy
from jevons.policy.model import Policy

from .helpers import at, event
from .test_properties import CUSTOMERS, policies, streams

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "policies"


def numeric(state: CustomerState) -> dict:
    d = state.to_dict()

    def norm(x: object) -> object:
        if isinstance(x, dict):
            return {k: norm(v) for k, v in x.items() if not (isinstance(v, str) and _is_zero(v))}
        if isinstance(x, str):
            try:
                return D(x).normalize()
            except InvalidOperation:  # a non-numeric string: compare as is
                return x
        return x

    return norm(d)  # type: ignore[return-value]


def _is_zero(v: str) -> bool:
    try:
        return D(v) == 0
    except InvalidOperation:
        return False


def same(pol: Policy, events: list, customer: str) -> None:
    eng = PolicyEngine(pol)
    mine = [e for e in events if e.customer == customer]
    _, slow = eng.rate_customer(customer, mine, through="2026-03")
    fast = rate_customer_fast(eng, customer, mine, through="2026-03")
    assert fast.invoices == slow.invoices
    assert [(a.key, a.at) for a in fast.alerts] == [(a.key, a.at) for a in slow.alerts]
    assert fast.state is not None and slow.state is not None
    assert numeric(fast.state) == numeric(slow.state)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pol=policies(), events=streams())
def test_fast_batch_equals_event_by_event(pol: Policy, events: list) -> None:
    for customer in CUSTOMERS:
        same(pol, events, customer)


def test_fast_batch_on_the_example_policy_with_many_crossings() -> None:
    pol = load_policy(EXAMPLES / "saas.toml")
    evs = []
    for i in range(3000):
        evs.append(event(["0.0012", "0.034", "0.21", None][i % 4], when=at(1) + timedelta(minutes=13 * i),
                         model=["gpt-4o-mini", "gpt-5", "claude-opus-4-1", "o3"][i % 3],
                         reasoning_tokens=50 if i % 7 == 0 else 0, input_tokens=1000 + i,
                         output_tokens=200 + i % 300, customer="acme"))
    same(pol, evs, "acme")
    for e in evs:
        e.customer = "bob"
    same(pol, evs, "bob")


def test_fast_batch_classifies_like_the_engine() -> None:
    from .helpers import policy

    pol = policy(
        'default_plan = "p"\n[classes.base]\n'
        '[classes.premium]\npriority = 1\nmodels = ["claude-opus-*"]\n'
        '[classes.pricey]\npriority = 2\nmin_input_usd_per_mtok = 10\n'
        '[classes.search]\npriority = 3\nfeatures = ["search"]\n'
        '[classes.think]\npriority = 4\nreasoning = true\n'
        '[classes.gemini]\npriority = 5\nproviders = ["google"]\n'
        '[plans.p]\nallowance = { amount = 2000000, unit = "tokens" }\ncap = 40\n'
        + "".join(f'[plans.p.classes.{c}]\nmode = "price"\nmarkup = {i + 1}\n'
                  for i, c in enumerate(["base", "premium", "pricey", "search", "think", "gemini"])))
    kinds = [
        {},
        {"model": "claude-opus-4-1", "provider": "anthropic"},
        {"model": "gpt-4.5", "input_usd_per_mtok": "75"},
        {"feature": "search"},
        {"reasoning_tokens": 10, "feature": "search"},
        {"provider": "google", "model": "gemini-2.5-pro", "reasoning_tokens": 5},
    ]
    evs = [event("0.07", when=at(1) + timedelta(hours=i), **kinds[(i * 7) % 6]) for i in range(600)]
    same(pol, evs, "acme")
    rater = rate_customer_fast(PolicyEngine(pol), "acme", evs, through="2026-03")
    assert {line.cost_class for line in rater.invoices[-1].lines} == {
        "base", "premium", "pricey", "search", "think", "gemini"}
