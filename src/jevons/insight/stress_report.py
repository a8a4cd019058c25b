"""The stress test's HTML report: margin over time, margin vs usage with the cliff marked,
tornado, driver breakdown, policy comparison. One self-contained file (see
:mod:`jevons.insight.html`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from jevons.insight.engine import StressRun
from jevons.insight.html import HtmlReport, fmt_pct, fmt_tasks, fmt_usd
from jevons.insight.taskmodel import DRIVERS

__all__ = [
    "DRIVER_LABELS",
    "cliff_header",
    "cliff_rows",
    "comparison_rows",
    "driver_rows",
    "render_stress_report",
    "write_stress_report",
]

DRIVER_LABELS = {
    "base": "base (one call, input rate)",
    "output": "output dominance",
    "routing": "model routing",
    "loop": "tool-call compounding",
    "retries": "retries",
}
COMPARISON_HEADER = (
    "policy",
    "revenue",
    "cost",
    "margin",
    "margin %",
    "absorbed",
    "past cliff",
    "< floor",
    "p10 cust. %",
    "p50 cust. %",
)


def cliff_header(months: int) -> tuple[str, ...]:
    return ("policy", "plan", "margin 0 (tasks/month, month 1)", f"margin 0 (month {months})", "floor",
            "below floor (month 1)", f"below floor (month {months})")


def cliff_rows(run: StressRun) -> list[list[str]]:
    """Per policy and plan: the tasks per month where the margin reaches 0 and the floor."""
    return [
        [p.label, c["plan"], fmt_tasks(c["zero_margin_tasks"]), fmt_tasks(c["zero_margin_tasks_last_month"]),
         fmt_pct(c["floor"]), fmt_tasks(c["floor_tasks"]), fmt_tasks(c["floor_tasks_last_month"])]
        for p in run.policies
        for c in p.cliffs
    ]


def driver_rows(run: StressRun) -> list[list[str]]:
    """The Shapley driver attribution: base, each driver, with its cost and share."""
    a = run.attribution
    base_share = a.base_usd / a.total_usd if a.total_usd else 0
    rows = [[DRIVER_LABELS["base"], fmt_usd(a.base_usd), fmt_pct(base_share)]]
    rows += [[DRIVER_LABELS[d], fmt_usd(a.driver_usd[d]), fmt_pct(a.shares()[d])] for d in DRIVERS]
    return rows


def comparison_rows(run: StressRun) -> list[list[str]]:
    rows = []
    for p in run.policies:
        rows.append(
            [
                p.label,
                fmt_usd(p.revenue),
                fmt_usd(p.cost),
                fmt_usd(p.margin),
                fmt_pct(p.margin_pct),
                fmt_usd(p.absorbed_cost),
                fmt_pct(p.past_cliff_share),
                fmt_pct(p.under_floor_share),
                fmt_pct(p.customer_margin_pct_percentiles[10]),
                fmt_pct(p.customer_margin_pct_percentiles[50]),
            ]
        )
    return rows


def _layout(title: str, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "title": {"text": title},
        "margin": {"l": 60, "r": 20, "t": 50, "b": 50},
        "template": "plotly_white",
        "legend": {"orientation": "h", "y": -0.2},
    }
    out.update(extra)
    return out


def render_stress_report(run: StressRun) -> HtmlReport:
    s = run.scenario
    months = list(range(1, s.months + 1))
    mode = "deterministic" if run.deterministic else f"Monte Carlo, seed {s.seed}"
    rep = HtmlReport(
        title=f"Margin stress test: {s.name}",
        subtitle=f"{run.customers:,} customers × {s.months} months, {mode}; "
        f"models: {', '.join(m.spec.name for m in run.models)}",
    )
    if s.description:
        rep.paragraph(s.description)

    rep.heading("Policies side by side")
    rep.table(COMPARISON_HEADER, comparison_rows(run), bad_cols=(3, 4, 8, 9))
    fig = go.Figure()
    labels = [p.label for p in run.policies]
    fig.add_bar(name="revenue", x=labels, y=[p.revenue for p in run.policies])
    fig.add_bar(name="cost", x=labels, y=[p.cost for p in run.policies])
    fig.add_bar(name="gross margin", x=labels, y=[p.margin for p in run.policies])
    fig.update_layout(**_layout("Policy comparison (USD over the run)", barmode="group"))
    rep.figure(fig)

    rep.heading("Margin over time")
    fig = go.Figure()
    for p in run.policies:
        fig.add_scatter(
            x=months, y=p.margin_pct_by_month, mode="lines+markers", name=f"{p.label}: gross margin"
        )
        fig.add_scatter(
            x=months,
            y=p.month_margin_pct_bands[10],
            mode="lines",
            line={"dash": "dot"},
            name=f"{p.label}: p10 customer",
        )
    if s.upgrade is not None:
        fig.add_vline(x=s.upgrade.month + 1, line_dash="dash", annotation_text="upgrade")
    fig.update_layout(
        **_layout("Gross margin by month", yaxis={"tickformat": ".0%"}, xaxis={"title": {"text": "month"}})
    )
    rep.figure(fig)

    rep.heading("Margin vs usage: the cliff")
    rep.table(cliff_header(s.months), cliff_rows(run))
    for p in run.policies:
        fig = go.Figure()
        sc = p.scatter
        fig.add_scattergl(
            x=sc.get("tasks_per_month", []),
            y=sc.get("margin_pct", []),
            mode="markers",
            name="customers (run average)",
            marker={"size": 4, "opacity": 0.45},
        )
        for c in p.cliffs:
            fig.add_scatter(
                x=c["curve"]["tasks"],
                y=c["curve"]["margin_pct_first_month"],
                mode="lines",
                name=f"{c['plan']} (month 1)",
            )
            if c["zero_margin_tasks"]:
                fig.add_vline(
                    x=c["zero_margin_tasks"],
                    line_dash="dash",
                    line_color="#c81e1e",
                    annotation_text=f"{c['plan']} cliff",
                )
        fig.add_hline(y=0, line_color="#888")
        fig.update_layout(
            **_layout(
                f"{p.label}: margin % vs tasks per month",
                xaxis={"type": "log", "title": {"text": "tasks per customer-month"}},
                yaxis={"tickformat": ".0%", "range": [-2, 1.05]},
            )
        )
        rep.figure(fig)

    rep.heading("Sensitivity (tornado)")
    for p in run.policies:
        bars = list(reversed(p.tornado))
        if not bars:
            continue
        base = bars[0]["base_margin_pct"]
        fig = go.Figure()
        for name, end in (("input −20%", "low_margin_pct"), ("input +20%", "high_margin_pct")):
            fig.add_bar(
                name=name,
                orientation="h",
                y=[b["label"] for b in bars],
                x=[b[end] - base for b in bars],
                base=base,
            )
        fig.update_layout(
            **_layout(
                f"{p.label}: gross margin when one input moves ±20% (base {fmt_pct(base)})",
                barmode="overlay",
                xaxis={"tickformat": ".0%"},
            )
        )
        rep.figure(fig)

    rep.heading("What drives the cost")
    a = run.attribution
    rows = driver_rows(run)
    rows.append(["total", fmt_usd(a.total_usd), "100%"])
    rep.table(("driver", "cost added", "share"), rows)
    fig = go.Figure()
    for key in ("base", *DRIVERS):
        fig.add_bar(name=DRIVER_LABELS[key], x=months, y=a.by_month[key])
    fig.update_layout(
        **_layout(
            "Cost by driver and month (Shapley attribution, USD)",
            barmode="stack",
            xaxis={"title": {"text": "month"}},
        )
    )
    rep.figure(fig)
    rep.paragraph(
        "Attribution: each driver's cost is its Shapley value (its added cost averaged over every "
        "order of switching the drivers on), so base + drivers = total. All figures are float64 "
        "what-if estimates; invoices come from jevons' exact Decimal policy engine.",
        cls="note",
    )
    return rep


def write_stress_report(run: StressRun, path: str | Path) -> Path:
    return render_stress_report(run).write(path)
