"""Rating throughput, exact: events per second for one customer-period.

Rates N events of one customer in one month under ``examples/policies/saas.toml`` (token-mode
base class with a margin floor, price-mode premium and reasoning classes, a shared allowance, a
hard cap, a percent discount and credits) three ways, all in this run:

- ``batch``: :func:`jevons.policy.batch.rate_customer_fast` from ``Event`` objects (exact);
- ``per-event``: :class:`jevons.policy.engine.CustomerRater` one event at a time (exact; the
  reference the batch rater must equal, and what the real-time sink does per event);
- ``numpy float``: the same rules on float64 arrays, the way the simulator runs them (inexact;
  the ceiling for comparison).

Goal: batch >= 500,000 events/s on the 2-core machine. Prints events/s and ratios.
Usage: ``python bench/bench_policy.py [--events N] [--repeat R]``.
"""

from __future__ import annotations

import argparse
import random
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import numpy as np

from jevons.events import Event
from jevons.policy import rules as R
from jevons.policy.batch import rate_customer_fast
from jevons.policy.engine import PolicyEngine
from jevons.policy.loader import load_policy
from jevons.prices.cost import Cost
from jevons.usage import Usage

ROOT = Path(__file__).resolve().parents[1]
GOAL = 500_000

MODELS = [  # (model, input $/token, output $/token)
    ("gpt-4o-mini", Decimal("0.00000015"), Decimal("0.0000006")),
    ("gpt-5", Decimal("0.00000125"), Decimal("0.00001")),
    ("claude-opus-4-1", Decimal("0.000015"), Decimal("0.000075")),
    ("o3", Decimal("0.000002"), Decimal("0.000008")),
]


def make_events(n: int, seed: int = 7) -> list[Event]:
    rnd = random.Random(seed)
    start = datetime(2026, 3, 1, tzinfo=UTC)
    step = timedelta(days=30) / n
    out = []
    for i in range(n):
        model, pin, pout = MODELS[rnd.randrange(4) if rnd.random() < 0.2 else 0]
        inp, outp = rnd.randint(200, 6000), rnd.randint(20, 1500)
        reasoning = min(outp, rnd.randint(0, 800)) if model == "o3" else 0
        cost = inp * pin + outp * pout
        out.append(Event(
            id=f"b{i:08d}", idempotency_key=f"b{i:08d}", timestamp=start + step * i, provider="openai",
            model_requested=model,
            usage=Usage(input_tokens=inp, output_tokens=outp, reasoning_tokens=reasoning),
            cost=Cost(model, model, "openai", "priced", cost, price_version="bench"),
            customer="acme",
        ))
    return out


def best(fn, repeat: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    pol = load_policy(ROOT / "examples" / "policies" / "saas.toml")
    engine = PolicyEngine(pol)
    events = make_events(args.events)

    t_batch = best(lambda: rate_customer_fast(engine, "acme", events, through="2026-03"), args.repeat)
    sample = events[: min(len(events), 20_000)]
    t_sample = best(lambda: engine.rate_customer("acme", sample, through="2026-03"), 1)
    t_slow = t_sample * len(events) / len(sample)
    fast = rate_customer_fast(engine, "acme", events, through="2026-03").invoices[-1]

    # the simulator's way: the same rules on float arrays (one element per customer-month)
    n_cust = len(events)
    cost = np.full(n_cust, 1.0)
    P = lambda d: R.param(d, like=cost)  # noqa: E731
    t_np = best(lambda: R.rate_unit(list_charge=R.price_list_charge(cost, P(Decimal("1.4"))), cost=cost,
                                    floor_multiplier=P(R.floor_multiplier(Decimal("0.25"))),
                                    allowance_unit="usd_charge", tokens=None, percent=P(Decimal("0.1")),
                                    state=R.UnitState.start(P(Decimal(10)), P(Decimal(0)), P(Decimal(200)))),
                args.repeat)

    rate_batch = len(events) / t_batch
    print(f"events: {len(events):,} (one customer, one month); invoice total {fast.total_due}")
    print(f"batch (exact, from Event objects) : {rate_batch:12,.0f} events/s")
    print(f"per-event (exact, reference)      : {len(events) / t_slow:12,.0f} events/s"
          f"   batch is {t_slow / t_batch:5.1f}x faster")
    print(f"numpy float rules (simulator way) : {n_cust / t_np:12,.0f} units/s"
          f"   batch is {t_np / t_batch:7.3f}x of it")
    print(f"goal {GOAL:,} events/s: {'met' if rate_batch >= GOAL else 'NOT met'} "
          f"({rate_batch / GOAL:.2f}x of goal)")


if __name__ == "__main__":
    main()
