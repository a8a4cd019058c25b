"""Benchmark of the margin-cliff stress test: 1,000,000 customers x 12 months.

Goal: <= 5 s wall time on a 2-core machine (both built-in policies rated on the same sampled
usage, cliff points, Shapley attribution and the tornado included), memory stated.

Peer measured in the same run: the same rules of ``jevons.policy.rules`` applied in exact
``Decimal`` to one customer-month at a time (what a loop over customers would cost), on a
subsample, extrapolated to the full run. The simulator uses float64 on purpose -- it is a
what-if estimate; invoices come from the exact Decimal engine.

    .venv/bin/python bench/bench_stress.py [--customers N] [--months M] [--repeats R]
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from decimal import Decimal

import numpy as np

from jevons.insight.engine import class_aggregates, sample_customers, tasks_for
from jevons.insight.stress import load_raters, resolve_scenario, run_stress
from jevons.insight.taskmodel import build_unit_table
from jevons.policy import rules as R
from jevons.prices.loader import default_book


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def decimal_peer(scenario, book, customers: int) -> float:  # type: ignore[no-untyped-def]
    """Seconds per customer-month rating one customer-month at a time with Decimal rules
    (cost-plus policy: price list charge, floor, allowance, discount, cap, period close)."""
    models = scenario.resolve_models(book)
    table = build_unit_table(scenario, models)
    rater = load_raters(scenario, ["builtin:cost-plus"])[0]
    classes = rater.classify_models(models)
    sub = scenario.with_changes(**{"customers.count": customers})
    sample = sample_customers(sub)
    lo, hi = sample.plan_slices[0]
    tasks = tasks_for(sub, sample, lo, hi, deterministic=False)
    aggs = class_aggregates(table, classes, tasks)
    plan = rater.plan(sample.plan_names[0])
    started = time.perf_counter()
    n = 0
    with R.rating_context():
        for c in range(tasks.shape[0]):
            for t in range(tasks.shape[1]):
                state = R.UnitState.start(
                    plan.allowance.amount if plan.allowance else Decimal(0), Decimal(0), R.INF
                )
                billed = absorbed = total_cost = Decimal(0)
                for cname in rater.policy.class_order:
                    pc = plan.classes[cname]
                    cost = Decimal(repr(float(aggs[cname].cost[c, t])))
                    lst = R.price_list_charge(cost, pc.markup or Decimal(1))
                    u = R.rate_unit(
                        list_charge=lst,
                        cost=cost,
                        floor_multiplier=pc.floor_multiplier,
                        allowance_unit="usd_cost",
                        tokens=None,
                        percent=Decimal(0),
                        state=state,
                    )
                    state = u.state
                    billed += u.billed
                    absorbed += u.absorbed_cost
                    total_cost += cost
                R.close_period(
                    fees=plan.fee,
                    usage_billed=billed,
                    commitment=plan.commitment,
                    period_cost=total_cost,
                    absorbed_cost=absorbed,
                    period_floor_multiplier=plan.period_floor_multiplier,
                )
                n += 1
    return (time.perf_counter() - started) / n


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--months", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--preset", default="agentic-saas")
    args = parser.parse_args()

    book = default_book()
    scenario = resolve_scenario(preset=args.preset).with_changes(
        **{"customers.count": args.customers, "time.months": args.months}
    )
    cells = args.customers * args.months
    base_rss = rss_mb()
    walls: list[float] = []
    cpus: list[float] = []
    run = None
    for _ in range(args.repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        run = run_stress(scenario, book=book)
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    assert run is not None
    best = min(walls)
    print(
        f"stress test, preset {args.preset}: {args.customers:,} customers x {args.months} months "
        f"= {cells:,} customer-months, {len(run.policies)} policies "
        f"({', '.join(p.label for p in run.policies)}), {os.cpu_count()} cores"
    )
    print(
        f"  wall  best {best:.2f} s, median {sorted(walls)[len(walls) // 2]:.2f} s "
        f"(goal <= 5 s: {'met' if best <= 5 else 'NOT met'}); CPU {min(cpus):.2f} s"
    )
    print(
        f"  throughput {cells / best / 1e6:.1f} M customer-months/s "
        f"({cells * len(run.policies) / best / 1e6:.1f} M ratings/s)"
    )
    print(
        f"  memory: peak RSS {peak_rss_mb():.0f} MB (before the run {base_rss:.0f} MB; "
        f"arrays are processed in chunks, so the peak does not grow with the customer count "
        f"beyond ~{8 * 6 * args.customers / 2**20:.0f} MB of per-customer results)"
    )
    for p in run.policies:
        print(
            f"  {p.label:>10}: margin {p.margin_pct * 100:6.1f}%, "
            f"past the cliff {p.past_cliff_share * 100:5.1f}%"
        )

    per_cell = decimal_peer(scenario, book, 2_000)
    extrapolated = per_cell * cells * len(run.policies)
    print(
        f"peer: the same rules in exact Decimal, one customer-month at a time: {per_cell * 1e6:.1f} us "
        f"each -> {extrapolated:,.0f} s for this run; the vectorised simulator is "
        f"{extrapolated / best:,.0f}x faster"
    )
    sample = np.array(walls)
    print(f"runs: {', '.join(f'{x:.2f}' for x in sample)} s")


if __name__ == "__main__":
    main()
