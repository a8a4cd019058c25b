"""The outbox built from settings: one billing rule for every drainer (the CLI and a service's
``OutboxWorker`` both go through ``open_outbox``)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from jevons.cli.app import app
from jevons.config import load_settings
from jevons.ledger import open_ledger
from jevons.sinks import open_outbox
from jevons.sinks.lago import lago_cents
from ledger.helpers import make_event
from policy.helpers import CAPPED_MARKUP_POLICY as POLICY

from .fakes import FakeBilling


def _bill_through_both(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, billing: str) -> tuple[
        Decimal, Decimal, Decimal]:
    """One event, billed by ``jevons outbox drain`` to one Lago and through ``open_outbox()`` (an
    ``OutboxWorker``'s outbox) to another; returns (event cost, CLI cents, worker cents)."""
    with FakeBilling() as via_cli, FakeBilling() as via_worker:
        config = tmp_path / "jevons.toml"
        config.write_text(
            f"[billing]\n{billing}\n"
            f'[sinks.cli]\ntype = "lago"\nurl = "{via_cli.url}"\nmode = "price"\n'
            f'[sinks.worker]\ntype = "lago"\nurl = "{via_worker.url}"\nmode = "price"\n'
        )
        monkeypatch.setenv("JEVONS_CONFIG", str(config))
        event = make_event(1, customer="acme")
        ledger = open_ledger(load_settings())
        ledger.append(event)
        ledger.close()
        result = CliRunner().invoke(app, ["outbox", "drain", "--sink", "cli"])
        assert result.exit_code == 0, result.output
        box = open_outbox(only="worker")  # what the docs hand to OutboxWorker in a service
        try:
            report = box.drain("worker")
        finally:
            box.close()
            box.ledger.close()
        assert report.delivered == 1, report
        key = event.idempotency_key
        assert event.cost.total_usd is not None
        return (event.cost.total_usd,
                Decimal(via_cli.state.received[key]["precise_total_amount_cents"]),
                Decimal(via_worker.state.received[key]["precise_total_amount_cents"]))


def test_open_outbox_bills_the_policy_amount_like_the_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, ``open_outbox()`` ignored ``[billing] policy_file`` and billed cost x markup."""
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    cost, cli, worker = _bill_through_both(
        tmp_path, monkeypatch, f'markup = "2"\npolicy_file = "{policy}"')
    # the policy's charge (cost x 3, under the cap), not the config's bare markup (2)
    assert cli == worker == lago_cents(cost * 3)


def test_without_a_policy_every_drainer_bills_cost_times_markup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cost, cli, worker = _bill_through_both(tmp_path, monkeypatch, 'markup = "2"')
    assert cli == worker == lago_cents(cost * 2)
