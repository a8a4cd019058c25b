"""The policy commands, end to end through the real CLI app."""

from __future__ import annotations

import json
from decimal import Decimal as D
from pathlib import Path

import pytest
from typer.testing import CliRunner

from jevons.cli.app import app

from .helpers import at, event

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "policies"
POLICY = """
default_plan = "p"
[plans.p]
fee = 10
[plans.p.classes.base]
mode = "price"
markup = 2
"""
runner = CliRunner()


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(POLICY)
    return path


def write_events(path: Path, events: list) -> Path:
    path.write_text("".join(json.dumps(e.to_dict()) + "\n" for e in events))
    return path


def test_policy_check_ok_and_error_with_line() -> None:
    ok = runner.invoke(app, ["policy", "check", str(EXAMPLES / "saas.toml")])
    assert ok.exit_code == 0, ok.output
    assert "ok: acme-saas" in ok.output


def test_policy_check_error_is_one_line_no_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(POLICY.replace("markup = 2", "markup = 0"))
    res = runner.invoke(app, ["policy", "check", str(bad)])
    assert res.exit_code == 2
    want = f"error: {bad}:7: plans.p.classes.base.markup: markup 0 must be greater than 0"
    assert res.output.strip() == want


def test_rate_what_if_json(tmp_path: Path, policy_file: Path) -> None:
    evs = write_events(tmp_path / "e.jsonl", [event("1.25", when=at(2)), event("1", customer="bob"),
                                              event("2", when=at(3, month=4))])
    res = runner.invoke(app, ["rate", "--policy", str(policy_file), "--events", str(evs), "--period",
                              "2026-03", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    totals = {i["customer"]: i["total_due"] for i in out["invoices"]}
    assert totals == {"acme": "12.50", "bob": "12.00"}
    table = runner.invoke(app, ["rate", "-p", str(policy_file), "-e", str(evs)])
    assert table.exit_code == 0
    assert "Invoice preview: acme 2026-04" in table.output


def test_rate_bad_inputs(tmp_path: Path, policy_file: Path) -> None:
    evs = tmp_path / "e.jsonl"
    evs.write_text('{"id": 1}\n')
    res = runner.invoke(app, ["rate", "-p", str(policy_file), "-e", str(evs)])
    assert res.exit_code == 2 and res.output.startswith(f"error: {evs}:1: not an event")
    res = runner.invoke(app, ["rate", "-p", str(policy_file), "-e", str(evs), "--period", "2026-13"])
    assert res.exit_code == 2 and "not YYYY-MM" in res.output
    res = runner.invoke(app, ["rate", "-e", str(evs)])
    assert res.exit_code == 2 and "no policy" in res.output


def test_credits_grant_list_balance(policy_file: Path) -> None:
    res = runner.invoke(app, ["credits", "grant", "--customer", "acme", "--amount", "25", "--kind",
                              "promotional", "--effective", "2026-01-01", "--id", "promo1"])
    assert res.exit_code == 0, res.output
    listed = runner.invoke(app, ["credits", "list", "--json"])
    assert json.loads(listed.output)[0]["id"] == "promo1"
    bal = runner.invoke(app, ["credits", "balance", "--customer", "acme", "--policy", str(policy_file),
                              "--at", "2026-03-01", "--json"])
    assert bal.exit_code == 0, bal.output
    # January's and February's $10 fees drew $20 of it at their month ends
    assert json.loads(bal.output) == {"paid": "0", "promotional": "5", "total": "5"}
    now = runner.invoke(app, ["credits", "balance", "--customer", "acme", "--policy", str(policy_file),
                              "--json"])
    assert now.exit_code == 0, now.output
    assert D(json.loads(now.output)["total"]) <= 5  # later months' fees draw the rest
    bad = runner.invoke(app, ["credits", "grant", "--customer", "acme", "--amount", "x"])
    assert bad.exit_code == 2 and "not a number" in bad.output
    bad = runner.invoke(app, ["credits", "grant", "--customer", "acme", "--amount", "5",
                              "--effective", "2026-02-01", "--expires", "2026-01-01"])
    assert bad.exit_code == 2 and "before it takes effect" in bad.output
    assert len(bad.output.strip().splitlines()) == 1


def test_invoice_and_rerate_from_the_ledger(tmp_path: Path, policy_file: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from jevons.ledger import open_store

    store = open_store()
    store.append_many([event("1.25", when=at(2)), event("2", when=at(9)), event("7", customer="bob")])
    store.close()
    monkeypatch.setenv("JEVONS_BILLING__POLICY_FILE", str(policy_file))
    res = runner.invoke(app, ["invoice", "--customer", "acme", "--period", "2026-03", "--json"])
    assert res.exit_code == 0, res.output
    inv = json.loads(res.output)
    assert inv["total_due"] == "16.50" and inv["events"] == 2
    cheaper = tmp_path / "cheaper.toml"
    cheaper.write_text(POLICY.replace("markup = 2", 'markup = "1.5"'))
    res = runner.invoke(app, ["rerate", "--period", "2026-03", "--policy", str(cheaper), "--before",
                              str(policy_file), "--json"])
    assert res.exit_code == 0, res.output
    rows = {r["customer"]: r for r in json.loads(res.output)["customers"]}
    assert rows["acme"]["before"] == "16.50" and rows["acme"]["after"] == "14.88"
    assert rows["acme"]["difference"] == "-1.62"
    assert rows["bob"]["difference"] == "-3.50"


def test_rerate_of_all_customers_reads_back_to_their_credit_grants(
        policy_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """February's usage used up acme's grant: re-rating March for every customer must rate
    February too (as ``jevons invoice`` does), or it draws that credit a second time."""
    from jevons.ledger import open_store

    res = runner.invoke(app, ["credits", "grant", "--customer", "acme", "--amount", "15", "--kind",
                              "promotional", "--effective", "2026-02-01", "--id", "promo1"])
    assert res.exit_code == 0, res.output
    store = open_store()
    store.append_many([event("5", when=at(3, month=2)), event("1.25", when=at(2)),
                       event("7", customer="bob")])
    store.close()
    monkeypatch.setenv("JEVONS_BILLING__POLICY_FILE", str(policy_file))
    res = runner.invoke(app, ["invoice", "--customer", "acme", "--period", "2026-03", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["total_due"] == "12.50"  # February's $20 drew all $15
    res = runner.invoke(app, ["rerate", "--period", "2026-03", "--json"])
    assert res.exit_code == 0, res.output
    rows = {r["customer"]: r for r in json.loads(res.output)["customers"]}
    assert sorted(rows) == ["acme", "bob"]
    assert rows["acme"]["before"] == rows["acme"]["after"] == "12.50"
