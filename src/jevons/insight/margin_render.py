"""The margin report as rich tables and as a self-contained HTML page."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import plotly.graph_objects as go
from rich.console import Console
from rich.table import Table

from jevons.insight.html import HtmlReport
from jevons.insight.margin import CustomerMargin, MarginReport

__all__ = ["flagged_rows", "group_rows", "print_margin_report", "render_margin_html", "write_margin_html"]


def _usd(x: Decimal) -> str:
    q = x.quantize(Decimal("0.01"))
    return f"-${-q:,}" if q < 0 else f"${q:,}"


def _pct(x: Decimal | None) -> str:
    return "—" if x is None else f"{x * 100:.1f}%"


def group_rows(report: MarginReport) -> list[list[str]]:
    return [
        [
            r.key,
            _usd(r.revenue),
            _usd(r.cost),
            _usd(r.margin),
            _pct(r.margin_pct),
            str(r.events),
            str(r.customers),
        ]
        for r in report.rows
    ]


def _change(c: CustomerMargin) -> str:
    prev = c.previous
    if prev is None:
        return "new"
    pct, before = c.margin_pct, prev.margin_pct
    if pct is None or before is None:
        return "—"
    points = (pct - before) * 100
    return f"{points:+.1f} pts"


def flagged_rows(report: MarginReport) -> list[list[str]]:
    out = []
    for c in report.flagged:
        d = c.drivers
        out.append(
            [
                c.customer,
                c.plan,
                c.status,
                _usd(c.revenue),
                _usd(c.cost),
                _pct(c.margin_pct),
                _pct(c.floor),
                _pct(d.output_share),
                _pct(d.premium_share),
                _pct(d.loop_growth_share),
                _pct(d.retry_share),
                _change(c),
            ]
        )
    return out


GROUP_HEADER = ("group", "revenue", "cost", "margin", "margin %", "events", "customers")
FLAGGED_HEADER = (
    "customer",
    "plan",
    "status",
    "revenue",
    "cost",
    "margin %",
    "floor",
    "output",
    "premium",
    "loop growth",
    "retries",
    "vs last period",
)


def print_margin_report(report: MarginReport, console: Console, *, limit: int | None = None) -> None:
    """Rich tables; ``limit`` shows only the worst-margin groups (the total covers all)."""
    t = Table(title=f"Margin {report.period} by {report.by} — policy {report.policy}")
    for h in GROUP_HEADER:
        t.add_column(h, justify="left" if h == "group" else "right")
    rows = group_rows(report)
    for row in rows[:limit] if limit is not None else rows:
        style = "red" if row[3].startswith("-") else None
        t.add_row(*row, style=style)
    if limit is not None and len(rows) > limit:
        t.add_row(f"… {len(rows) - limit} more", *[""] * (len(GROUP_HEADER) - 1), style="dim")
    total_pct = None if report.revenue == 0 else report.margin / report.revenue
    t.add_section()
    t.add_row(
        "total",
        _usd(report.revenue),
        _usd(report.cost),
        _usd(report.margin),
        _pct(total_pct),
        str(sum(r.events for r in report.rows)),
        str(len(report.customers)),
        style="bold",
    )
    console.print(t)
    flagged = flagged_rows(report)
    if not flagged:
        console.print("No customer past the cliff or under its floor.")
        return
    t = Table(
        title=f"{len(flagged)} customer(s) past the cliff or under their floor "
        "(driver columns: share of the customer's cost)"
    )
    for h in FLAGGED_HEADER:
        left = h in ("customer", "plan", "status")
        t.add_column(h, justify="left" if left else "right", no_wrap=left)
    for row in flagged:
        t.add_row(*row, style="red" if row[2] == "past cliff" else "yellow")
    console.print(t)
    if report.unpriced_events:
        console.print(
            f"[yellow]{report.unpriced_events} unpriced event(s) rated at the policy's fallback cost[/]"
        )


def render_margin_html(report: MarginReport) -> HtmlReport:
    rep = HtmlReport(
        title=f"Margin report {report.period}",
        subtitle=f"by {report.by}, policy {report.policy}, from the ledger (exact Decimal rating)",
    )
    rep.heading(f"Revenue, cost and margin by {report.by}")
    rep.table(GROUP_HEADER, group_rows(report), bad_cols=(3, 4))
    fig = go.Figure()
    keys = [r.key for r in report.rows]
    fig.add_bar(name="revenue", x=keys, y=[float(r.revenue) for r in report.rows])
    fig.add_bar(name="cost", x=keys, y=[float(r.cost) for r in report.rows])
    fig.add_bar(name="margin", x=keys, y=[float(r.margin) for r in report.rows])
    fig.update_layout(
        title={"text": f"Revenue, cost and margin by {report.by} (USD)"},
        barmode="group",
        template="plotly_white",
        legend={"orientation": "h", "y": -0.25},
    )
    rep.figure(fig)
    rep.heading("Customers past the cliff or under their floor")
    flagged = report.flagged
    if flagged:
        rep.table(FLAGGED_HEADER, flagged_rows(report), bad_cols=(5,))
        fig = go.Figure()
        names = [c.customer for c in flagged]
        for label, attr in (
            ("output share", "output_share"),
            ("premium routing", "premium_share"),
            ("loop growth", "loop_growth_share"),
            ("retries", "retry_share"),
        ):
            fig.add_bar(name=label, x=names, y=[float(getattr(c.drivers, attr)) for c in flagged])
        fig.update_layout(
            title={"text": "What drives their cost (share of each customer's cost)"},
            barmode="group",
            template="plotly_white",
            yaxis={"tickformat": ".0%"},
            legend={"orientation": "h", "y": -0.25},
        )
        rep.figure(fig)
    else:
        rep.paragraph("No customer past the cliff or under its floor.")
    fig = go.Figure()
    fig.add_scatter(
        x=[float(c.cost) for c in report.customers],
        y=[float(c.margin_pct) if c.margin_pct is not None else None for c in report.customers],
        mode="markers",
        text=[c.customer for c in report.customers],
        name="customers",
    )
    fig.add_hline(y=0, line_color="#c81e1e", annotation_text="cliff")
    fig.update_layout(
        title={"text": "Customer margin % vs cost"},
        template="plotly_white",
        xaxis={"type": "log", "title": {"text": "cost (USD)"}},
        yaxis={"tickformat": ".0%"},
    )
    rep.figure(fig)
    if report.alerts:
        rep.heading("Alerts raised")
        rep.table(("customer", "kind", "message"), [[a.customer, a.kind, a.message] for a in report.alerts])
    return rep


def write_margin_html(report: MarginReport, path: str | Path) -> Path:
    return render_margin_html(report).write(path)
