"""CLI commands of the insight layer: ``jevons stress``, ``jevons margin``, ``jevons demo``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

err = Console(stderr=True)


def _console() -> Console:
    """stdout; 120 columns when it is not a terminal (logs, pipes), so tables are not squeezed."""
    probe = Console()
    return probe if probe.is_terminal else Console(width=120)


def _fail(message: str) -> NoReturn:
    err.print(f"[red]error:[/red] {message}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(2)


def _json_safe(value: Any) -> Any:
    """Strict JSON: NaN and infinities (a margin % without revenue) become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def _stress_tables(run: Any, console: Console | None = None) -> None:
    from jevons.insight.html import fmt_pct
    from jevons.insight.stress_report import (
        COMPARISON_HEADER,
        cliff_header,
        cliff_rows,
        comparison_rows,
        driver_rows,
    )

    console = console or _console()
    s = run.scenario
    mode = "deterministic" if run.deterministic else f"seed {s.seed}"
    t = Table(
        title=f"{s.name}: {run.customers:,} customers × {s.months} months ({mode}, {run.seconds:.2f} s)"
    )
    for h in COMPARISON_HEADER:
        t.add_column(h, justify="left" if h == "policy" else "right")
    for row in comparison_rows(run):
        t.add_row(*row)
    console.print(t)

    t = Table(title="The margin cliff: tasks per customer-month where the margin reaches 0 / the floor")
    for h in cliff_header(s.months):
        t.add_column(h, justify="left" if h in ("policy", "plan") else "right")
    for row in cliff_rows(run):
        t.add_row(*row)
    console.print(t)

    t = Table(title="What drives the cost (Shapley attribution)")
    t.add_column("driver")
    t.add_column("cost added", justify="right")
    t.add_column("share", justify="right")
    for row in driver_rows(run):
        t.add_row(*row)
    console.print(t)

    for p in run.policies[:1]:
        t = Table(title=f"Sensitivity of gross margin to each input ±20% ({p.label})")
        t.add_column("input")
        t.add_column("−20%", justify="right")
        t.add_column("+20%", justify="right")
        for b in p.tornado[:6]:
            t.add_row(b["label"], fmt_pct(b["low_margin_pct"]), fmt_pct(b["high_margin_pct"]))
        console.print(t)


def stress(
    scenario: Annotated[Path | None, typer.Argument(help="Scenario TOML file.", show_default=False)] = None,
    preset: Annotated[
        str | None, typer.Option("--preset", help="A built-in scenario instead of a file.")
    ] = None,
    policy: Annotated[
        list[str] | None,
        typer.Option("--policy", help="Policy file (repeat to compare); builtin:flat, builtin:cost-plus."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
    html_out: Annotated[
        Path | None, typer.Option("--html", help="Write a self-contained HTML report.")
    ] = None,
    customers: Annotated[int | None, typer.Option("--customers", help="Override customers.count.")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Override the scenario's seed.")] = None,
    deterministic: Annotated[
        bool, typer.Option("--deterministic", help="No sampling: quantile grid, no noise.")
    ] = False,
) -> None:
    """Stress-test pricing: simulate customers x months and find where the margin breaks."""
    from jevons.insight.scenario import ScenarioError
    from jevons.insight.stress import resolve_scenario, run_stress
    from jevons.insight.stress_report import write_stress_report

    try:
        sc = resolve_scenario(scenario, preset=preset)
        changes: dict[str, Any] = {}
        if customers is not None:
            changes["customers.count"] = customers
        if seed is not None:
            changes["seed"] = seed
        if changes:
            sc = sc.with_changes(**changes)
        with Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            TimeElapsedColumn(),
            console=err,
            transient=True,
            disable=as_json or sc.customers.count < 200_000,
        ) as bar:
            task = bar.add_task("simulating", total=None)

            def progress(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            run = run_stress(sc, policies=policy or (), deterministic=deterministic, progress=progress)
    except ScenarioError as exc:
        _fail(str(exc))
        return
    if html_out is not None:
        write_stress_report(run, html_out)
    if as_json:
        typer.echo(json.dumps(_json_safe(run.to_dict()), indent=2, default=str, allow_nan=False))
    else:
        console = _console()
        _stress_tables(run, console)
        if html_out is not None:
            console.print(f"HTML report: {html_out}")


def margin(
    period: Annotated[
        str | None, typer.Option("--period", help="YYYY-MM (default: the latest with events).")
    ] = None,
    by: Annotated[str, typer.Option("--by", help="customer, plan, model, feature or class.")] = "customer",
    policy: Annotated[
        Path | None, typer.Option("--policy", help="Policy file (default: [billing] policy_file).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    html_out: Annotated[
        Path | None, typer.Option("--html", help="Write a self-contained HTML report.")
    ] = None,
    floor: Annotated[
        float, typer.Option("--floor", help="Margin floor for customers whose plan has none.")
    ] = 0.2,
    webhook: Annotated[str | None, typer.Option("--webhook", help="POST alerts (JSON) to this URL.")] = None,
) -> None:
    """Revenue, cost and margin from the ledger, rated by the policy engine; the customers past
    the cliff or under their floor, with what drives their cost."""
    from jevons.insight.margin import GROUPINGS, MarginError, margin_report_from_settings
    from jevons.insight.margin_render import print_margin_report, write_margin_html

    if by not in GROUPINGS:
        _fail(f"--by: {by!r} is not one of {', '.join(GROUPINGS)}")
    try:
        report = margin_report_from_settings(
            period=period,
            by=by,
            policy_file=str(policy) if policy else None,
            default_floor=floor,
            webhook=webhook,
        )
    except (MarginError, ValueError, OSError) as exc:
        _fail(str(exc))
        return
    if html_out is not None:
        write_margin_html(report, html_out)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        console = _console()
        print_margin_report(report, console)
        if html_out is not None:
            console.print(f"HTML report: {html_out}")


def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="Where to write the HTML reports.")] = Path(
        "jevons-demo"
    ),
    customers: Annotated[int, typer.Option("--customers", help="Customers in the generated month.")] = 36,
    seed: Annotated[int, typer.Option("--seed")] = 42,
) -> None:
    """Generate a month of realistic traffic through the real Meter, rate it under two built-in
    policies, show the margin table and the customers past the cliff, stress-test the same
    policies and write the HTML reports. Offline, nothing configured, under 30 s."""
    from jevons.insight.demo import DemoUnavailable, run_demo

    try:
        run_demo(out_dir=out_dir, customers=customers, seed=seed, console=_console())
    except DemoUnavailable as exc:
        err.print(str(exc), highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(1) from None


def register(app: typer.Typer) -> None:
    """Add this layer's commands to the top-level app."""
    app.command("stress")(stress)
    app.command("margin")(margin)
    app.command("demo")(demo)
