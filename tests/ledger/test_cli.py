"""``jevons events``, ``jevons reprice`` and ``jevons outbox ...`` end to end."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from jevons.cli.app import app
from jevons.cli.ledger import parse_time
from jevons.config import load_settings
from jevons.ledger import open_ledger

from .helpers import T0, make_event

runner = CliRunner()


def _seed(n: int = 5) -> None:
    led = open_ledger(load_settings())
    led.append_many([make_event(i, customer="acme" if i % 2 else "globex") for i in range(n)])
    led.append(make_event(99, customer="acme", priced=False, model="mystery-model-x"))
    led.close()


def test_events_table_and_json() -> None:
    _seed()
    result = runner.invoke(app, ["events", "--customer", "acme", "--json"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 3 and {r["customer"] for r in rows} == {"acme"}
    since = (T0.replace(second=3)).isoformat()
    result = runner.invoke(app, ["events", "--since", since, "--json"])
    assert len(result.stdout.splitlines()) == 3  # i = 3, 4 and the unpriced one at i=99
    table = runner.invoke(app, ["events"])
    assert table.exit_code == 0 and "globex" in table.stdout and "unpriced" in table.stdout


@pytest.mark.parametrize("args", [["events", "--since", "yesterday-ish"], ["outbox", "drain", "--sink", "x"],
                                  ["outbox", "replay"]])
def test_bad_input_is_one_line_and_nonzero(args: list[str]) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert "Traceback" not in result.output and result.output.count("\n") <= 2
    assert "error:" in result.output


def test_parse_time_forms() -> None:
    assert parse_time("2026-11-01").isoformat() == "2026-11-01T00:00:00+00:00"
    assert parse_time("2d", now=T0).isoformat() == "2026-10-30T00:00:00+00:00"


def test_reprice_reports_what_it_could_not_price() -> None:
    _seed(2)
    result = runner.invoke(app, ["reprice", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "would reprice 0 of 1 unpriced events; 1 still without a price" in result.stdout


def test_reprice_prices_an_event_whose_price_appeared() -> None:
    """Recorded unpriced (say, before the price book knew gpt-4o); the bundled book knows it now."""
    led = open_ledger(load_settings())
    led.append(make_event(1, key="late", priced=False, model="gpt-4o"))
    led.close()
    result = runner.invoke(app, ["reprice"])
    assert result.exit_code == 0, result.output
    assert "repriced 1 of 1 unpriced events" in result.stdout
    led = open_ledger(load_settings())
    ((seq, event),) = led.query_with_seq()
    # bundled gpt-4o: 601 input x 2.50/M + 400 cached x 1.25/M + 200 output x 10/M
    assert event.cost.status == "priced" and event.cost.total_usd == Decimal("0.0040025")
    assert event.cost.price_version and led.unpriced() == []
    assert [c.status for c in led.cost_history(seq)] == ["unpriced"]
    led.close()


def test_outbox_status_drain_replay(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sinks.fakes import FakeBilling

    _seed(30)
    with FakeBilling() as fake:
        cfg = tmp_path / "jevons.toml"
        cfg.write_text(f'[sinks.lago]\ntype = "lago"\nurl = "{fake.url}"\nmode = "price"\n'
                       f'[sinks.file]\ntype = "jsonl"\npath = "{tmp_path / "out.jsonl"}"\n')
        monkeypatch.setenv("JEVONS_CONFIG", str(cfg))
        status = runner.invoke(app, ["outbox", "status", "--json"])
        assert status.exit_code == 0, status.output
        before = {r["sink"]: r for r in json.loads(status.stdout)}
        assert before["lago"]["pending"] == 31 and before["file"]["pending"] == 31
        fake.state.poison.add("k-7-")  # the event seeded with i=7
        drained = runner.invoke(app, ["outbox", "drain"])
        assert drained.exit_code == 0, drained.output
        assert "lago: delivered 29, dead-lettered 1, held 1" in drained.stdout
        assert "file: delivered 31" in drained.stdout
        monkeypatch.setenv("COLUMNS", "200")
        table = runner.invoke(app, ["outbox", "status"])
        assert "lago (lago)" in table.stdout and "file (jsonl)" in table.stdout
        assert "dead-lettered" in table.stdout
        after = {r["sink"]: r for r in json.loads(runner.invoke(app, ["outbox", "status", "--json"]).stdout)}
        assert after["lago"]["dead_lettered"] == 1 and after["lago"]["waiting_for_price"] == 1
        assert after["lago"]["pending"] == 0
        fake.state.poison.clear()
        replay = runner.invoke(app, ["outbox", "replay", "--dead-letter", "--sink", "lago"])
        assert replay.exit_code == 0 and "lago: replayed 1" in replay.stdout
        assert len(fake.keys) == 30


def test_outbox_dead_letters_lists_each_refused_event_with_its_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sinks.fakes import FakeBilling

    led = open_ledger(load_settings())
    led.append_many([make_event(i, key=f"key-{i}", customer=f"sub_{i}") for i in range(6)])
    led.close()
    with FakeBilling() as fake:
        fake.state.poison.update({"key-2:", "key-4:"})
        cfg = tmp_path / "jevons.toml"
        cfg.write_text(f'[sinks.lago]\ntype = "lago"\nurl = "{fake.url}"\n'
                       f'[sinks.file]\ntype = "jsonl"\npath = "{tmp_path / "out.jsonl"}"\n')
        monkeypatch.setenv("JEVONS_CONFIG", str(cfg))
        drained = runner.invoke(app, ["outbox", "drain"])
        assert drained.exit_code == 0, drained.output
        assert "lago: delivered 4, dead-lettered 2" in drained.stdout
    listed = runner.invoke(app, ["outbox", "dead-letters", "--json"])
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.stdout)
    assert [(r["sink"], r["idempotency_key"], r["customer"]) for r in rows] == [
        ("lago", "key-2", "sub_2"), ("lago", "key-4", "sub_4")]
    assert all("HTTP 422" in r["error"] and r["seq"] > 0 and r["parked_at"] for r in rows)
    # the reason also stays in the status (before, the drain cleared last_error)
    status = {r["sink"]: r for r in json.loads(runner.invoke(app, ["outbox", "status", "--json"]).stdout)}
    assert "HTTP 422" in (status["lago"]["last_error"] or "")
    monkeypatch.setenv("COLUMNS", "250")
    table = runner.invoke(app, ["outbox", "dead-letters", "--sink", "lago"])
    assert table.exit_code == 0, table.output
    assert "key-4" in table.stdout and "sub_2" in table.stdout and "HTTP 422" in table.stdout
    none = runner.invoke(app, ["outbox", "dead-letters", "--sink", "file"])
    assert none.exit_code == 0 and "no dead-lettered events" in none.stdout
    unknown = runner.invoke(app, ["outbox", "dead-letters", "--sink", "nope"])
    assert unknown.exit_code == 1 and "no sink named 'nope'" in unknown.output


def test_status_and_dead_letters_need_no_secrets_drain_and_replay_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading counters is reading the ledger; only sending needs the sinks' secrets."""
    _seed(3)
    cfg = tmp_path / "jevons.toml"
    cfg.write_text('[sinks.lago]\ntype = "lago"\nurl = "http://127.0.0.1:9"\napi_key_env = "UNSET_LAGO_KEY"\n'
                   '[sinks.hook]\ntype = "webhook"\nurl = "http://127.0.0.1:9/h"\n'
                   'secret_env = "UNSET_HOOK_SECRET"\n'
                   '[sinks.stripe]\ntype = "stripe"\napi_key_env = "UNSET_STRIPE_KEY"\n')
    monkeypatch.setenv("JEVONS_CONFIG", str(cfg))
    for name in ("UNSET_LAGO_KEY", "UNSET_HOOK_SECRET", "UNSET_STRIPE_KEY"):
        monkeypatch.delenv(name, raising=False)
    status = runner.invoke(app, ["outbox", "status", "--json"])
    assert status.exit_code == 0, status.output
    rows = {r["sink"]: r for r in json.loads(status.stdout)}
    assert {n: (r["kind"], r["pending"]) for n, r in rows.items()} == {
        "lago": ("lago", 4), "hook": ("webhook", 4), "stripe": ("stripe", 4)}
    monkeypatch.setenv("COLUMNS", "200")
    table = runner.invoke(app, ["outbox", "status"])
    assert table.exit_code == 0 and "hook (webhook)" in table.stdout
    dead = runner.invoke(app, ["outbox", "dead-letters", "--json"])
    assert dead.exit_code == 0 and json.loads(dead.stdout) == []
    for args in (["outbox", "drain"], ["outbox", "replay", "--dead-letter"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 1
        assert "UNSET_LAGO_KEY is not set" in result.output and "Traceback" not in result.output
