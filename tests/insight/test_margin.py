"""The margin report on real data: ledger events rated by the real policy engine."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from jevons.cli.app import app
from jevons.config import load_settings
from jevons.events import Event
from jevons.insight.alerts import WebhookAlertSink, deliver_alerts
from jevons.insight.margin import GROUPINGS, build_margin_report, driver_breakdown
from jevons.insight.presets import builtin_policy_path
from jevons.insight.rating import load_policy_file
from jevons.ledger import open_store
from jevons.policy.engine import PolicyEngine
from jevons.policy.model import Policy
from jevons.prices.loader import default_book
from jevons.usage import Usage

BASE, PREMIUM = "gpt-5-mini", "claude-sonnet-4.5"
_n = 0


def ev(
    customer: str,
    model: str,
    usage: Usage,
    *,
    when: datetime,
    run: str | None = None,
    step: int | None = None,
    status: str = "ok",
    tags: dict[str, str] | None = None,
    feature: str = "chat",
) -> Event:
    global _n
    _n += 1
    cost = default_book().cost(model, usage)
    assert cost.total_usd is not None
    return Event(
        id=f"e{_n}",
        idempotency_key=f"k{_n}",
        timestamp=when,
        provider=cost.provider or "",
        model_requested=model,
        usage=usage,
        cost=cost,
        customer=customer,
        feature=feature,
        run_id=run,
        step=step,
        status=status,
        tags=tags or {},
    )  # type: ignore[arg-type]


def policy_with(ref: str, plans: dict[str, str]) -> Policy:
    data = load_policy_file(ref).model_dump(mode="python", exclude_unset=True)
    data["customers"] = {c: {"plan": p} for c, p in plans.items()}
    return Policy.model_validate(data)


MAR = datetime(2026, 3, 10, tzinfo=UTC)
FEB = datetime(2026, 2, 10, tzinfo=UTC)


def heavy_month(customer: str, when: datetime, scale: int) -> list[Event]:
    out = []
    for r in range(scale):
        for i in range(3):  # an agent run: context 4000, 8000, 12000
            out.append(
                ev(
                    customer,
                    PREMIUM,
                    Usage(input_tokens=4000 * (i + 1), output_tokens=16000, reasoning_tokens=15000),
                    when=when,
                    run=f"{customer}-{when:%m}-{r}",
                    step=i + 1,
                    feature="agent",
                )
            )
    return out


def test_driver_breakdown_by_hand() -> None:
    chat = ev("a", BASE, Usage(input_tokens=1000, output_tokens=1000), when=MAR)
    steps = [
        ev(
            "a",
            BASE,
            Usage(input_tokens=n, output_tokens=100),
            when=MAR,
            run="r1",
            step=i + 1,
            feature="agent",
        )
        for i, n in enumerate((1000, 2000, 3000))
    ]
    premium = ev("a", PREMIUM, Usage(input_tokens=1000, output_tokens=2000), when=MAR)
    failed = ev("a", BASE, Usage(input_tokens=500, output_tokens=500), when=MAR, status="error")
    discarded = ev(
        "a", BASE, Usage(input_tokens=500, output_tokens=500), when=MAR, tags={"retry": "discarded"}
    )
    events = [chat, *steps, premium, failed, discarded]
    policy = policy_with("builtin:cost-plus", {"a": "starter"})
    rated, _ = PolicyEngine(policy).rate_customer("a", events)
    d = driver_breakdown(events, {r.event_id: r for r in rated}, policy.default_class)
    total = sum((e.cost.total_usd for e in events), Decimal(0))
    out_cost = sum(
        (line.usd for e in events for line in e.cost.lines if line.dimension == "output"), Decimal(0)
    )
    assert d.output_share == out_cost / total
    assert d.premium_share == premium.cost.total_usd / total
    assert d.retry_share == (failed.cost.total_usd + discarded.cost.total_usd) / total
    # loop growth: steps 2 and 3 carry 1000 and 2000 input tokens beyond the first step, at $0.25/M
    assert d.loop_growth_share == (Decimal(3000) * Decimal("0.00000025")) / total


@pytest.mark.parametrize("ref", ["builtin:flat", "builtin:cost-plus"])
def test_groupings_add_up_and_cliff_is_found(ref: str) -> None:
    events = [ev("light", BASE, Usage(input_tokens=2000, output_tokens=300), when=MAR) for _ in range(5)]
    events += [
        *heavy_month("heavy", MAR, 40),
        ev("heavy", BASE, Usage(input_tokens=10, output_tokens=10), when=MAR),
    ]
    policy = policy_with(ref, {"light": "starter", "heavy": "starter"})
    reports = {by: build_margin_report(events, policy, by=by) for by in GROUPINGS}
    base = reports["customer"]
    assert base.period == "2026-03"
    invoices = {
        c: PolicyEngine(policy).invoice(c, "2026-03", [e for e in events if e.customer == c])
        for c in ("light", "heavy")
    }
    assert base.revenue == sum((i.revenue for i in invoices.values()), Decimal(0))
    assert base.cost == sum((i.cost for i in invoices.values()), Decimal(0))
    for by, rep in reports.items():
        assert abs(rep.revenue - base.revenue) < Decimal("1e-20"), by
        assert rep.cost == base.cost, by
    assert {r.key for r in reports["model"].rows} == {"gpt-5-mini", "claude-sonnet-4.5"}
    assert {r.key for r in reports["class"].rows} == {"base", "premium"}
    assert {r.key for r in reports["feature"].rows} == {"chat", "agent"}
    heavy = next(c for c in base.customers if c.customer == "heavy")
    if ref == "builtin:flat":
        assert heavy.past_cliff and [c.customer for c in base.flagged] == ["heavy"]
        assert heavy.drivers.premium_share > Decimal("0.99")
        assert heavy.drivers.loop_growth_share > 0
    else:  # the floor keeps cost-plus above 25%
        assert not base.flagged and heavy.margin_pct is not None and heavy.margin_pct >= Decimal("0.25")


def test_change_since_last_period_and_alerts_on_crossing(tmp_path: Path) -> None:
    policy = policy_with("builtin:flat", {"grower": "starter", "steady": "starter"})
    feb = heavy_month("grower", FEB, 1) + heavy_month("steady", FEB, 60)
    mar = heavy_month("grower", MAR, 60) + heavy_month("steady", MAR, 60)
    report = build_margin_report(feb + mar, policy, period="2026-03")
    grower = next(c for c in report.customers if c.customer == "grower")
    assert grower.previous is not None and grower.previous.period == "2026-02"
    assert grower.previous_status() == "ok" and grower.status == "past cliff"
    # only the customer who crossed alerts: "steady" was already past the cliff in February
    assert [(a.customer, a.kind) for a in report.alerts] == [("grower", "cliff")]
    change = grower.to_dict()["change"]
    assert Decimal(change["cost_change"]) > 0 and change["previous_status"] == "ok"

    received: list[tuple[str | None, dict[str, object]]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            received.append((self.headers.get("Idempotency-Key"), body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            return None

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        sink = WebhookAlertSink(f"http://127.0.0.1:{server.server_address[1]}/hook")
        state = tmp_path / "sent.json"
        assert deliver_alerts(report.alerts, [sink], state_path=state) == 1
        assert deliver_alerts(report.alerts, [sink], state_path=state) == 0  # never twice
    finally:
        server.shutdown()
        server.server_close()
    assert len(received) == 1
    key, body = received[0]
    assert key == "jevons-margin:grower:2026-03:cliff" and body["kind"] == "cliff"


@pytest.fixture
def ledger_with_events() -> Iterator[None]:
    store = open_store(load_settings())
    try:
        for e in [ev("light", BASE, Usage(input_tokens=2000, output_tokens=300), when=MAR) for _ in range(3)]:
            store.append(e)
        for e in heavy_month("heavy", MAR, 60):
            store.append(e)
    finally:
        store.close()
    yield


def test_cli_margin_reads_the_ledger(ledger_with_events: None, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["margin", "--policy", "builtin:flat", "--period", "2026-03", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["period"] == "2026-03" and data["policy"] == "flat"
    assert [f["customer"] for f in data["flagged"]] == ["heavy"]
    assert data["flagged"][0]["status"] == "past cliff"
    html = tmp_path / "m.html"
    result = runner.invoke(app, ["margin", "--policy", "builtin:flat", "--by", "model", "--html", str(html)])
    assert result.exit_code == 0, result.output
    assert "claude-sonnet-4.5" in result.output and "past cliff" in result.output
    assert html.stat().st_size > 1_000_000  # plotly.js inlined


def test_cli_margin_bad_input_is_one_line(ledger_with_events: None) -> None:
    runner = CliRunner()
    for args, words in (
        (["margin", "--policy", "builtin:flat", "--by", "galaxy"], "--by: 'galaxy' is not one of"),
        (["margin", "--policy", "builtin:flat", "--period", "2026-13"], "is not YYYY-MM"),
        (["margin"], "no policy"),
        (["margin", "--policy", "/nonexistent/p.toml"], "p.toml"),
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert words in result.output and "Traceback" not in result.output
        assert len(result.output.strip().splitlines()) == 1, result.output


def test_report_reads_back_to_the_first_credit_grant(tmp_path: Path) -> None:
    """Credits carry across periods: usage of January draws a grant, so a March report must rate
    January too (as ``jevons invoice`` does), or it draws that credit a second time."""
    text = builtin_policy_path("cost-plus").read_text()
    policy_file = tmp_path / "policy.toml"
    policy_file.write_text(
        text + "\n[customers.walleted]\nplan = \"starter\"\n"
        "[[customers.walleted.credits]]\namount = 100\nkind = \"promotional\"\n"
        "effective = 2026-01-01T00:00:00Z\n"
    )
    jan = datetime(2026, 1, 10, tzinfo=UTC)
    events = heavy_month("walleted", jan, 60) + heavy_month("walleted", FEB, 1) + heavy_month(
        "walleted", MAR, 1)
    store = open_store(load_settings())
    try:
        for e in events:
            store.append(e)
    finally:
        store.close()
    engine = PolicyEngine(load_policy_file(str(policy_file)))
    invoice = engine.invoice("walleted", "2026-03", events)
    assert invoice.revenue != engine.invoice("walleted", "2026-03", [
        e for e in events if e.timestamp >= FEB]).revenue  # January's draw matters here
    result = CliRunner().invoke(
        app, ["margin", "--policy", str(policy_file), "--period", "2026-03", "--json"])
    assert result.exit_code == 0, result.output
    row = next(r for r in json.loads(result.output)["rows"] if r["key"] == "walleted")
    assert Decimal(row["revenue"]) == invoice.revenue
