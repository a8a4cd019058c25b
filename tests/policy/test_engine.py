"""Hand-computed invoices: each rule alone, then the combinations that interact."""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from jevons.policy.engine import PolicyEngine, RatingError
from jevons.policy.model import Policy
from jevons.policy.rules import rating_context

from .helpers import at, event, policy


def plan(body: str, *, head: str = "", customer: str = "") -> Policy:
    return policy(f'default_plan = "p"\n{head}\n[plans.p]\n{body}\n{customer}')


PRICE2 = '[plans.p.classes.base]\nmode = "price"\nmarkup = 2\n'


def invoice(pol: Policy, events: list, period: str = "2026-03", customer: str = "acme"):
    return PolicyEngine(pol).invoice(customer, period, events)


def lines(inv) -> dict[str, D]:
    return {line.description: line.rounded for line in inv.lines}


def test_token_mode_prices_each_dimension_at_the_plans_own_rate() -> None:
    pol = plan('[plans.p.classes.base]\nmode = "token"\ninput = 2\noutput = 8\ncached_input = "0.5"\n'
               "reasoning = 10\n")
    # 1M input of which 200k cache reads; 500k output of which 100k reasoning
    e = event("1.00", input_tokens=1_000_000, cache_read_tokens=200_000, output_tokens=500_000,
              reasoning_tokens=100_000)
    inv = invoice(pol, [e])
    # 0.8M x 2 + 0.2M x 0.5 + 0.4M x 8 + 0.1M x 10 = 1.6 + 0.1 + 3.2 + 1.0
    assert inv.lines[0].amount == D("5.9")
    assert inv.total_due == D("5.90")
    assert inv.cost == D("1.00")
    assert inv.margin == D("4.90")
    assert inv.margin_pct is not None and round(inv.margin_pct, 4) == D("0.8305")


def test_token_mode_fallback_rates_cache_at_input_and_reasoning_at_output() -> None:
    pol = plan('[plans.p.classes.base]\nmode = "token"\ninput = 2\noutput = 8\n')
    e = event("1", input_tokens=1_000_000, cache_read_tokens=500_000, output_tokens=1_000_000,
              reasoning_tokens=400_000)
    assert invoice(pol, [e]).total_exact == D(10)


def test_price_mode_is_cost_times_markup() -> None:
    pol = plan('[plans.p.classes.base]\nmode = "price"\nmarkup = "1.5"\n')
    assert invoice(pol, [event("2.00")]).total_due == D("3.00")


def test_event_floor_lifts_a_charge_below_cost_over_one_minus_floor() -> None:
    pol = plan('[plans.p.classes.base]\nmode = "price"\nmarkup = "1.1"\nfloor = "0.5"\n')
    inv = invoice(pol, [event("2")])
    assert inv.lines[0].amount == D(4)
    assert inv.lines[0].detail["floor_uplift"] == D("1.8")


def test_allowance_in_usd_of_charge_splits_the_crossing_event() -> None:
    pol = plan("allowance = { amount = 5 }\n" + PRICE2)
    inv = invoice(pol, [event("1.5", when=at(1)), event("1.5", when=at(2))])
    usage = inv.lines[0]
    assert usage.detail["gross"] == D(6)
    assert usage.detail["included"] == D(5)
    assert usage.amount == D(1)


def test_allowance_in_usd_of_cost_covers_the_charge_pro_rata() -> None:
    pol = plan('[plans.p.classes.base]\nmode = "price"\nmarkup = 2\n'
               'allowance = { amount = 1, unit = "usd_cost" }\n')
    inv = invoice(pol, [event("0.75", when=at(1)), event("0.75", when=at(2))])
    assert inv.lines[0].detail["included"] == D(2)  # 1.5 + 1.5 x 0.25/0.75
    assert inv.lines[0].amount == D(1)


def test_allowance_in_tokens() -> None:
    pol = plan('[plans.p.classes.base]\nmode = "price"\nmarkup = 2\n'
               'allowance = { amount = 2000, unit = "tokens" }\n')
    evs = [event("1", when=at(1)), event("1", when=at(2))]  # 1500 tokens each
    inv = invoice(pol, evs)
    with rating_context():  # the one division, at rating precision
        expected = D(2) + D(2) * 500 / 1500
    assert inv.lines[0].detail["included"] == expected
    with rating_context():
        assert inv.total_exact == D(4) - inv.lines[0].detail["included"]
    assert inv.total_due == D("1.33")


def test_percent_discount() -> None:
    pol = plan(PRICE2, customer='[[customers.acme.discounts]]\npercent = "0.25"\n')
    assert invoice(pol, [event("4")]).total_due == D(6)


def test_percent_discount_respects_its_dates() -> None:
    pol = plan(PRICE2, customer='[[customers.acme.discounts]]\npercent = "0.5"\nstarts = 2026-03-10\n'
                                "ends = 2026-03-20\n")
    inv = invoice(pol, [event("1", when=at(5)), event("1", when=at(15)), event("1", when=at(25))])
    assert inv.total_due == D(5)


def test_fixed_discount_is_a_per_period_pool() -> None:
    pol = plan(PRICE2, customer='[[customers.acme.discounts]]\namount = 5\n')
    inv = invoice(pol, [event("1.5", when=at(1)), event("2", when=at(2))])
    assert inv.lines[0].detail["discount"] == D(5)
    assert inv.total_due == D(2)


def test_discount_never_takes_a_charge_below_its_floor() -> None:
    pol = plan('[plans.p.classes.base]\nmode = "price"\nmarkup = "1.5"\nfloor = "0.2"\n',
               customer='[[customers.acme.discounts]]\npercent = "0.2"\n')
    inv = invoice(pol, [event("8")])  # list 12, floor 10, 20% off would be 9.6
    assert inv.total_due == D(10)
    assert inv.lines[0].detail["discount"] == D(2)


def test_cap_bills_up_to_the_cap_and_reports_the_absorbed_cost() -> None:
    pol = plan("cap = 10\n" + PRICE2)
    inv = invoice(pol, [event("3", when=at(1)), event("3", when=at(2)), event("3", when=at(3))])
    assert inv.total_due == D(10)
    assert inv.lines[0].detail["absorbed"] == D(8)
    assert inv.absorbed_cost == D(4)  # 1 of the second event, all 3 of the third
    assert inv.cost == D(9)


def test_credits_draw_by_priority_then_earliest_expiry_then_oldest() -> None:
    grants = (
        '[[customers.acme.credits]]\nid = "promo"\namount = 5\nkind = "promotional"\n'
        "effective = 2026-03-01\nexpires = 2026-04-01\n"
        '[[customers.acme.credits]]\nid = "paid"\namount = 10\neffective = 2026-03-01\n'
        '[[customers.acme.credits]]\nid = "soon"\namount = 3\neffective = 2026-03-01\n'
        "expires = 2026-03-20\n"
        '[[customers.acme.credits]]\nid = "last"\namount = 100\npriority = 1\neffective = 2026-02-01\n'
    )
    pol = plan(PRICE2, customer=grants)
    rated, rater = PolicyEngine(pol).rate_customer(
        "acme", [event("2", when=at(10)), event("3", when=at(12)), event("5", when=at(25))],
        through="2026-03")
    assert [[(g, a) for g, _, a in r.credits] for r in rated] == [
        [("soon", D(3)), ("promo", D(1))],
        [("promo", D(4)), ("paid", D(2))],
        [("paid", D(8)), ("last", D(2))],  # "soon" expired on the 20th
    ]
    inv = rater.invoices[-1]
    assert lines(inv)["paid credits applied"] == D(-15)
    assert lines(inv)["promotional credits applied"] == D(-5)
    assert inv.total_due == D(0)
    assert inv.revenue == D(20 - 5)  # promotional credits are not revenue; paid ones are
    assert rater.credit_balance(at(31))["total"] == D(98)


def test_flat_fee_and_minimum_commitment_true_up() -> None:
    pol = plan("fee = 10\ncommitment = 50\n" + PRICE2)
    inv = invoice(pol, [event("7.5")])
    assert lines(inv) == {"p plan fee": D(10), "usage: base": D(15), "minimum commitment $50.00": D(25)}
    assert inv.total_due == D(50)


def test_period_floor_true_up() -> None:
    pol = plan('period_floor = "0.5"\n[plans.p.classes.base]\nmode = "price"\nmarkup = "1.2"\n')
    inv = invoice(pol, [event("10")])
    assert lines(inv)["period margin floor"] == D(8)
    assert inv.total_due == D(20)


def test_unpriced_event_is_rated_at_the_fallback_and_flagged_never_zero() -> None:
    pol = plan(PRICE2)
    rated, rater = PolicyEngine(pol).rate_customer("acme", [event(None)], through="2026-03")
    assert rated[0].unpriced
    assert rated[0].cost == D("0.0525")  # 1000 x $15/M + 500 x $75/M
    assert rated[0].billed == D("0.105")
    assert rater.invoices[-1].unpriced_events == 1


def test_plan_change_mid_period_prorates_fees_by_day_and_rates_by_effective_date() -> None:
    pol = policy(
        'default_plan = "a"\n[plans.a]\nfee = 31\n[plans.a.classes.base]\nmode = "price"\nmarkup = 1\n'
        '[plans.b]\nfee = 62\n[plans.b.classes.base]\nmode = "price"\nmarkup = 2\n'
        '[[customers.acme.plans]]\nplan = "b"\nstarts = 2026-03-11\n')
    inv = invoice(pol, [event("1", when=at(5)), event("1", when=at(20))])
    assert lines(inv) == {"a plan fee (10 of 31 days)": D(10), "b plan fee (21 of 31 days)": D(42),
                          "usage: base": D(3)}


def test_plan_change_prorates_the_allowance() -> None:
    pol = policy(
        'default_plan = "a"\n[plans.a]\nallowance = { amount = 31 }\n'
        '[plans.a.classes.base]\nmode = "price"\nmarkup = 1\n'
        '[plans.b]\n[plans.b.classes.base]\nmode = "price"\nmarkup = 1\n'
        '[[customers.acme.plans]]\nplan = "b"\nstarts = 2026-03-11\n')
    inv = invoice(pol, [event("15", when=at(5)), event("4", when=at(20))])
    assert inv.lines[0].detail["included"] == D(10)
    assert inv.total_due == D(9)


def test_customer_overrides_any_plan_value() -> None:
    pol = plan("cap = 5\n" + PRICE2, customer='[customers.acme.overrides]\ncap = 8\n'
                                                '[customers.acme.overrides.classes.base]\nmarkup = 3\n')
    assert invoice(pol, [event("1")]).total_due == D(3)
    assert invoice(pol, [event("2"), event("2")]).total_due == D(8)
    assert invoice(pol, [event("2", customer="bob")], customer="bob").total_due == D(4)


def test_policy_versions_are_effective_dated() -> None:
    from jevons.policy.loader import PolicySet

    v1 = plan(PRICE2)
    v2 = policy('effective_from = 2026-03-16\ndefault_plan = "p"\n[plans.p.classes.base]\n'
                'mode = "price"\nmarkup = 3\n')
    inv = PolicyEngine(PolicySet([v2, v1])).invoice("acme", "2026-03",
                                                    [event("1", when=at(10)), event("1", when=at(20))])
    assert inv.total_due == D(5)


# ------------------------------------------------------------------ combinations


def test_floor_with_discount_and_allowance() -> None:
    pol = plan('allowance = { amount = 6 }\n[plans.p.classes.base]\nmode = "price"\nmarkup = "1.5"\n'
               'floor = "0.2"\n', customer='[[customers.acme.discounts]]\npercent = "0.5"\n')
    # list 12, floor 10; 6 included; overage 6 whose floor share is 5; 50% off 6 = 3 < 5 -> 5
    inv = invoice(pol, [event("8")])
    assert inv.lines[0].detail["included"] == D(6)
    assert inv.total_exact == D(5)


def test_allowance_with_credits_draws_only_the_overage() -> None:
    pol = plan("allowance = { amount = 5 }\n" + PRICE2,
               customer='[[customers.acme.credits]]\namount = 10\neffective = 2026-03-01\n')
    rated, rater = PolicyEngine(pol).rate_customer("acme", [event("4")], through="2026-03")
    assert rated[0].billed == D(3)
    assert rated[0].credits_applied == D(3)
    assert rater.invoices[-1].total_due == D(0)
    assert rater.credit_balance(at(31))["total"] == D(7)


def test_cap_with_credits_draws_nothing_for_the_absorbed_part() -> None:
    pol = plan("cap = 5\n" + PRICE2,
               customer='[[customers.acme.credits]]\namount = 10\neffective = 2026-03-01\n')
    rated, rater = PolicyEngine(pol).rate_customer("acme", [event("2"), event("2")], through="2026-03")
    assert [r.billed for r in rated] == [D(4), D(1)]
    assert sum(r.credits_applied for r in rated) == D(5)
    assert rater.credit_balance(at(31))["total"] == D(5)


def test_fees_draw_credits_at_period_end() -> None:
    pol = plan("fee = 20\n" + PRICE2,
               customer='[[customers.acme.credits]]\namount = 30\neffective = 2026-03-01\n')
    inv = invoice(pol, [event("5")])
    assert lines(inv) == {"p plan fee": D(20), "usage: base": D(10), "paid credits applied": D(-30)}
    assert inv.total_due == D(0)


def test_earlier_periods_are_closed_and_their_fees_draw_credits() -> None:
    pol = plan("fee = 20\n" + PRICE2,
               customer='[[customers.acme.credits]]\namount = 30\neffective = 2026-02-01\n')
    inv = invoice(pol, [event("5", when=at(10, month=2)), event("5", when=at(10))])
    assert "paid credits applied" not in lines(inv)  # February's fee and usage drew all 30
    assert inv.total_due == D(30)


def test_invoice_lines_round_half_up_and_sum_exactly() -> None:
    pol = plan('fee = "0.005"\n[plans.p.classes.base]\nmode = "price"\nmarkup = 1\n')
    inv = invoice(pol, [event("0.125")])
    assert [line.rounded for line in inv.lines] == [D("0.01"), D("0.13")]
    assert inv.total_due == D("0.14")
    assert inv.total_exact == D("0.130")


def test_credits_absorb_the_cent_that_rounding_each_line_moves() -> None:
    pol = policy('default_plan = "p"\n[classes.base]\n[classes.premium]\npriority = 1\nmodels = ["gpt-5"]\n'
                 '[plans.p.classes.base]\nmode = "price"\nmarkup = 1\n'
                 '[plans.p.classes.premium]\nmode = "price"\nmarkup = 1\n'
                 '[[customers.acme.credits]]\namount = 5\neffective = 2026-03-01\n')
    inv = invoice(pol, [event("0.004"), event("0.004", model="gpt-5")])
    assert [line.rounded for line in inv.lines] == [D("0.00"), D("0.00"), D("0.00")]
    assert inv.total_due == 0 and inv.total_exact == 0
    inv = invoice(pol, [event("0.006"), event("0.006", model="gpt-5")])
    assert [line.rounded for line in inv.lines] == [D("0.01"), D("0.01"), D("-0.02")]
    assert inv.total_due == 0


def test_no_plan_is_a_clear_error() -> None:
    pol = policy('[plans.p.classes.base]\nmode = "price"\nmarkup = 1\n')
    with pytest.raises(RatingError, match="no plan"):
        invoice(pol, [event("1")])


def test_classification_by_pattern_provider_feature_threshold_and_reasoning() -> None:
    pol = policy(
        'default_plan = "p"\n'
        '[classes.base]\n'
        '[classes.premium]\npriority = 1\nmodels = ["claude-opus-*"]\n'
        '[classes.pricey]\npriority = 2\nmin_input_usd_per_mtok = 10\n'
        '[classes.search]\npriority = 3\nfeatures = ["search"]\n'
        '[classes.think]\npriority = 4\nreasoning = true\n'
        '[classes.gemini]\npriority = 5\nproviders = ["google"]\n'
        + "".join(f'[plans.p.classes.{c}]\nmode = "price"\nmarkup = {i + 1}\n'
                  for i, c in enumerate(["base", "premium", "pricey", "search", "think", "gemini"])))
    eng = PolicyEngine(pol)
    cases = {
        "base": event("1"),
        "premium": event("1", model="claude-opus-4-1", provider="anthropic"),
        "pricey": event("1", model="gpt-4.5", input_usd_per_mtok="75"),
        "search": event("1", feature="search"),
        "think": event("1", reasoning_tokens=10, feature="search"),
        "gemini": event("1", provider="google", model="gemini-2.5-pro", reasoning_tokens=5),
    }
    for expected, e in cases.items():
        rated, _ = eng.rate_customer("acme", [e])
        assert rated[0].cost_class == expected


def test_the_worked_example_of_the_docs() -> None:
    import json
    from pathlib import Path

    from jevons.events import Event
    from jevons.policy.loader import load_policy

    root = Path(__file__).resolve().parents[2] / "examples" / "policies"
    pol = load_policy(root / "worked_example.toml")
    text = (root / "worked_example.jsonl").read_text()
    events = [Event.from_dict(json.loads(line)) for line in text.splitlines()]
    rated, rater = PolicyEngine(pol).rate_customer("acme", events, through="2026-03")
    assert [(r.charge, r.included, r.discount, r.billed, r.absorbed) for r in rated] == [
        (D(4), D(4), 0, 0, 0), (D(8), D(6), 0, D(2), 0), (D(18), 0, D("1.8"), D("16.2"), 0),
        (D(96), 0, 0, D("81.8"), D("14.2")),
    ]
    inv = rater.invoices[-1]
    assert lines(inv) == {"team plan fee": D(30), "usage: base": D("16.20"), "usage: premium": D("83.80"),
                          "period margin floor": D("18.56"), "promotional credits applied": D(-20)}
    assert (inv.total_due, inv.total_exact, inv.cost, inv.revenue, inv.margin, inv.absorbed_cost) == (
        D("128.56"), D("128.5625"), D("68.30"), D("128.5625"), D("60.2625"), D("8.875"))
