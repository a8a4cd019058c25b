"""``jevons demo``: a month of realistic traffic through the real Meter, then margin and stress.

On a fresh install with nothing configured:

1. a few dozen customers (a heavy-tailed mix, two power users) run chats and agent tasks
   through real ``openai.OpenAI`` and ``anthropic.Anthropic`` clients wrapped by
   :class:`jevons.Meter`, answered by the in-process :class:`~jevons.insight.standin.StandIn`
   (no network); agent runs re-send a growing context with prompt caching, a share of calls is
   routed to a premium reasoning model, and some outputs are thrown away and retried (tagged
   ``retry=discarded``);
2. the events go to a temporary SQLite ledger, priced from the bundled price book;
3. the month is rated under two built-in policies (flat plan; cost-plus with a margin floor)
   by the real policy engine, and the margin table with the customers past the cliff printed;
4. the ``agentic-saas`` stress test runs on the same two policies;
5. HTML reports are written.

All events carry the current time (the Meter stamps calls when they happen), so the month is
the current calendar month.
"""

from __future__ import annotations

import importlib.util
import math
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

__all__ = ["DemoResult", "DemoUnavailable", "generate_traffic", "run_demo"]

BASE_MODEL = "gpt-5-mini"  # OpenAI
PREMIUM_MODEL = "claude-sonnet-4-5"  # Anthropic, extended thinking
PLANS = (("starter", 0.6), ("pro", 0.3), ("team", 0.1))
DEMO_POLICIES = ("flat", "cost-plus")


class DemoUnavailable(RuntimeError):
    """The demo cannot run here (the provider SDKs are not installed)."""


@dataclass
class DemoCustomer:
    name: str
    plan: str
    tasks: int
    premium_share: float
    agent_share: float
    max_steps: int
    retry_rate: float
    context_scale: float = 1.0  # how big this customer's documents are (agent contexts)
    power_user: bool = False


@dataclass
class DemoResult:
    events: int
    customers: list[DemoCustomer]
    reports: dict[str, Any]
    stress: Any
    files: list[Path]
    seconds: float


def _check_sdks() -> None:
    missing = [m for m in ("openai", "anthropic") if importlib.util.find_spec(m) is None]
    if missing:
        raise DemoUnavailable(
            f"jevons demo needs the provider SDKs ({', '.join(missing)} missing): "
            "pip install 'jevons[providers]'"
        )


def make_customers(count: int, rng: random.Random) -> list[DemoCustomer]:
    """A heavy-tailed mix: lognormal tasks per month, two power users at the top and one heavy
    user on its way there."""
    out: list[DemoCustomer] = []
    counts = [round(count * share) for _, share in PLANS]
    counts[0] += count - sum(counts)
    plans = [name for (name, _), n in zip(PLANS, counts, strict=True) for _ in range(n)]
    rng.shuffle(plans)
    for i, plan in enumerate(plans):
        median = {"starter": 8, "pro": 16, "team": 30}[plan]
        tasks = max(1, min(120, round(median * math.exp(rng.gauss(0, 0.9)))))
        out.append(
            DemoCustomer(
                name=f"cust-{i + 1:02d}",
                plan=plan,
                tasks=tasks,
                premium_share=rng.uniform(0.05, 0.4),
                agent_share=rng.uniform(0.3, 0.7),
                max_steps=rng.randint(4, 8),
                retry_rate=rng.uniform(0.02, 0.08),
                context_scale=min(4.0, math.exp(rng.gauss(0, 0.6))),
            )
        )
    # two power users: a starter customer running long premium agents, and a pro one
    for c, tasks in zip(
        (next(c for c in out if c.plan == "starter"), next(c for c in out if c.plan == "pro")),
        (70, 110),
        strict=True,
    ):
        c.tasks, c.premium_share, c.agent_share, c.max_steps, c.retry_rate = tasks, 0.7, 0.9, 14, 0.12
        c.context_scale = 1.5
        c.power_user = True
    # and a heavy (not yet power) user: the next starter customer by usage, drifting to premium
    heavy = max((c for c in out if c.plan == "starter" and not c.power_user), key=lambda c: c.tasks)
    heavy.tasks, heavy.premium_share, heavy.agent_share, heavy.max_steps = 48, 0.45, 0.8, 10
    heavy.context_scale = 2.0
    return out


def generate_traffic(
    meter: Any,
    customers: list[DemoCustomer],
    rng: random.Random,
    *,
    standin: Any,
    tick: Callable[[int], None] | None = None,
) -> int:
    """Run every customer's month through wrapped SDK clients; returns the calls made."""
    from anthropic import Anthropic
    from openai import OpenAI

    from jevons.insight.standin import usage_header

    oa_raw = OpenAI(
        api_key="sk-demo",
        base_url="http://standin.invalid/v1",
        http_client=standin.http_client("openai"),
        max_retries=0,
    )
    an_raw = Anthropic(
        api_key="sk-ant-demo",
        base_url="http://standin.invalid",
        http_client=standin.http_client("anthropic"),
        max_retries=0,
    )
    calls = 0
    for c in customers:
        openai_client = meter.wrap(oa_raw, customer=c.name)
        anthropic_client = meter.wrap(an_raw, customer=c.name)

        def call(
            premium: bool,
            feature: str,
            inp: int,
            cached: int,
            out: int,
            retry: bool,
            client_oa: Any = openai_client,
            client_an: Any = anthropic_client,
        ) -> None:
            nonlocal calls
            tags = {"retry": "discarded"} if retry else None
            if premium:
                thinking = out * rng.randint(8, 20)
                write = min(inp - cached, 1500)
                client_an.messages.create(
                    model=PREMIUM_MODEL,
                    max_tokens=thinking + out + 1024,
                    messages=[{"role": "user", "content": f"{feature} step"}],
                    extra_headers=usage_header(
                        input=inp, output=out + thinking, reasoning=thinking, cached=cached, cache_write=write
                    ),
                    jevons_feature=feature,
                    jevons_tags=tags,
                )
            else:
                client_oa.chat.completions.create(
                    model=BASE_MODEL,
                    messages=[{"role": "user", "content": f"{feature} step"}],
                    extra_headers=usage_header(input=inp, output=out, cached=cached),
                    jevons_feature=feature,
                    jevons_tags=tags,
                )
            calls += 1

        for _ in range(c.tasks):
            premium = rng.random() < c.premium_share
            if rng.random() < c.agent_share:
                steps = rng.randint(2, c.max_steps)
                base = round(rng.randint(6000, 12000) * c.context_scale)
                growth = round(rng.randint(4000, 9000) * c.context_scale)
                with meter.run(customer=c.name, feature="agent"):
                    for i in range(steps):
                        inp = base + growth * i
                        cached = int(inp * 0.6) if i else 0
                        out = rng.randint(300, 900)
                        while rng.random() < c.retry_rate:  # the output is thrown away: retried
                            call(premium, "agent", inp, cached, out, True)
                        call(premium, "agent", inp, cached, out, False)
            else:
                inp, out = rng.randint(800, 3000), rng.randint(200, 700)
                if rng.random() < c.retry_rate:
                    call(premium, "chat", inp, 0, out, True)
                call(premium, "chat", inp, 0, out, False)
        if tick is not None:
            tick(1)
    return calls


def demo_policy(name: str, customers: list[DemoCustomer]) -> Any:
    """A built-in policy with the demo customers' plans added (validated by the policy model)."""
    from jevons.insight.rating import load_policy_file
    from jevons.policy.model import Policy

    base = load_policy_file(f"builtin:{name}")
    data = base.model_dump(mode="python", exclude_unset=True)
    data["customers"] = {c.name: {"plan": c.plan} for c in customers}
    return Policy.model_validate(data)


def _summary_table(reports: dict[str, Any], console: Console) -> None:
    from jevons.insight.margin_render import _pct, _usd

    t = Table(title="This month under the two built-in policies (rated by the policy engine)")
    for h in ("policy", "revenue", "cost", "margin", "margin %", "past cliff", "under floor"):
        t.add_column(h, justify="left" if h == "policy" else "right")
    for name, rep in reports.items():
        pct = None if rep.revenue == 0 else rep.margin / rep.revenue
        cliff = sum(1 for c in rep.customers if c.past_cliff)
        floor = sum(1 for c in rep.customers if c.status == "under floor")
        t.add_row(
            name,
            _usd(rep.revenue),
            _usd(rep.cost),
            _usd(rep.margin),
            _pct(pct),
            str(cliff),
            str(floor),
            style="red" if rep.margin < 0 else None,
        )
    console.print(t)


def run_demo(
    *,
    out_dir: Path,
    customers: int = 36,
    seed: int = 42,
    console: Console | None = None,
    stress_customers: int = 20_000,
) -> DemoResult:
    _check_sdks()
    from jevons.capture.meter import Meter
    from jevons.config import LedgerConfig, Settings
    from jevons.insight.margin import build_margin_report
    from jevons.insight.margin_render import print_margin_report, write_margin_html
    from jevons.insight.standin import StandIn
    from jevons.insight.stress import resolve_scenario, run_stress
    from jevons.insight.stress_report import write_stress_report
    from jevons.ledger import open_store
    from jevons.ledger.base import EventQuery
    from jevons.prices.loader import default_book

    con = console or Console()
    started = time.perf_counter()
    rng = random.Random(seed)
    people = make_customers(customers, rng)
    book = default_book()
    files: list[Path] = []
    with tempfile.TemporaryDirectory(prefix="jevons-demo-") as tmp:
        settings = Settings(
            home=tmp,
            ledger=LedgerConfig(
                backend="sqlite",
                path=str(Path(tmp) / "ledger.db"),
                durability="fast",
                journal_dir=str(Path(tmp) / "journal"),
            ),
        )
        store = open_store(settings)
        meter = Meter(ledger=store, book=book)
        standin = StandIn()
        con.print(
            f"[bold]jevons demo[/]: {len(people)} customers, one month of traffic through the real "
            "Meter (OpenAI + Anthropic SDKs against an in-process stand-in server)…"
        )
        try:
            with con.status("generating traffic…"):
                calls = generate_traffic(meter, people, rng, standin=standin)
            flush = getattr(store, "flush", None)
            if callable(flush):
                flush()
            events = store.query(EventQuery())
        finally:
            meter.close()
        stats = meter.stats()
        con.print(
            f"{calls:,} calls → {len(events):,} events in a temporary SQLite ledger "
            f"({stats['unpriced']} unpriced, {stats['errors']} instrumentation errors)"
        )
        reports = {}
        for name in DEMO_POLICIES:
            reports[name] = build_margin_report(events, demo_policy(name, people), by="customer")
    out_dir.mkdir(parents=True, exist_ok=True)
    _summary_table(reports, con)
    print_margin_report(reports["flat"], con, limit=8)
    for name, rep in reports.items():
        files.append(write_margin_html(rep, out_dir / f"margin-{name}.html"))

    con.print("\nStress test [bold]agentic-saas[/] on the same two policies…")
    scenario = resolve_scenario(preset="agentic-saas").with_changes(**{"customers.count": stress_customers})
    run = run_stress(scenario, book=book, policies=[f"builtin:{n}" for n in DEMO_POLICIES])
    from jevons.cli.insight import _stress_tables

    _stress_tables(run, con)
    files.append(write_stress_report(run, out_dir / "stress.html"))
    seconds = time.perf_counter() - started
    con.print("\nReports: " + ", ".join(str(f) for f in files))
    con.print(f"Done in {seconds:.1f} s.")
    return DemoResult(len(events), people, reports, run, files, seconds)
