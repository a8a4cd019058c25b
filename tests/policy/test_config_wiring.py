"""Configuration alone turns the policy on: ``[billing] policy_file`` makes ``Meter()`` enforce
caps and keep running balances, and makes the outbox bill Lago the policy's charge."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
from typer.testing import CliRunner

import jevons
from jevons.capture.attribution import Attribution
from jevons.capture.errors import CapReached
from jevons.cli.app import app
from jevons.prices.book import PriceBook
from sinks.fakes import FakeBilling

from .helpers import CAPPED_MARKUP_POLICY as POLICY


def _configure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, extra: str = "") -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    config = tmp_path / "jevons.toml"
    config.write_text(f'[billing]\npolicy_file = "{policy}"\n{extra}')
    monkeypatch.setenv("JEVONS_CONFIG", str(config))


def test_meter_enforces_the_configured_policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _configure(tmp_path, monkeypatch)
    meter = jevons.Meter(ledger="memory")
    assert meter.policy is not None
    acme = Attribution(customer="acme")
    meter.begin("openai", "chat", "gpt-4o", acme)  # nothing charged yet: allowed
    event = meter.record(model="gpt-4o", usage=jevons.Usage(input_tokens=10_000, output_tokens=2_000),
                         provider="openai", customer="acme")
    assert event.cost.total_usd == Decimal("0.045")  # 10k x 2.5e-6 + 2k x 1e-5
    assert meter.policy.balances("acme")["billed"] == Decimal("0.05")  # 0.135 capped at 0.05
    with pytest.raises(CapReached):
        meter.begin("openai", "chat", "gpt-4o", acme)
    meter.begin("openai", "chat", "gpt-4o", Attribution(customer="other"))  # others unaffected
    assert meter.stats()["errors"] == 0
    meter.close()


def test_policy_false_and_no_config_mean_no_policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert jevons.Meter(book=PriceBook(), ledger="memory").policy is None
    _configure(tmp_path, monkeypatch)
    assert jevons.Meter(book=PriceBook(), ledger="memory", policy=False).policy is None


def test_outbox_bills_lago_the_policy_charge(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeBilling() as fake:
        sink = f'[sinks.lago]\ntype = "lago"\nurl = "{fake.url}"\nmode = "price"\n'
        _configure(tmp_path, monkeypatch, sink)
        meter = jevons.Meter()  # default durable ledger in JEVONS_HOME
        event = meter.record(model="gpt-4o", usage=jevons.Usage(input_tokens=1_000, output_tokens=100),
                             provider="openai", customer="acme")
        meter.close()
        result = CliRunner().invoke(app, ["outbox", "drain"])
        assert result.exit_code == 0, result.output
        sent = fake.state.received[event.idempotency_key]
    assert event.cost.total_usd == Decimal("0.0035")
    # the policy's charge (cost x 3, under the cap), not the config's bare markup (1.0)
    assert Decimal(sent["precise_total_amount_cents"]) == Decimal("1.05")  # $0.0105 in cents
