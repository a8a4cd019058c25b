"""``jevons demo``: a fresh install, nothing configured, the whole story in under 30 s."""

from __future__ import annotations

import importlib.util
import io
import time
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from jevons.cli.app import app


def test_demo_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "reports"
    started = time.perf_counter()
    result = CliRunner().invoke(app, ["demo", "--out", str(out)])
    elapsed = time.perf_counter() - started
    assert result.exit_code == 0, result.output
    assert elapsed < 30, f"demo took {elapsed:.1f} s"
    text = result.output
    assert "events in a temporary SQLite ledger" in text and "0 unpriced" in text
    assert "past cliff" in text  # the power users on the flat plan
    assert "The margin cliff" in text and "What drives the cost" in text
    for name in ("margin-flat.html", "margin-cost-plus.html", "stress.html"):
        assert (out / name).stat().st_size > 1_000_000
    assert not any(Path.home().glob(".jevons-demo*"))


def test_demo_runs_through_the_real_meter_and_ledger(tmp_path: Path) -> None:
    from jevons.insight.demo import run_demo

    result = run_demo(
        out_dir=tmp_path,
        customers=12,
        seed=3,
        stress_customers=2000,
        console=Console(file=io.StringIO()),
    )
    flat, cost_plus = result.reports["flat"], result.reports["cost-plus"]
    assert result.events > 100
    assert flat.cost == cost_plus.cost > 0  # the same traffic, rated twice
    assert {c.customer for c in flat.flagged} >= {
        c.name for c in result.customers if c.power_user and c.plan == "starter"
    }
    assert not any(c.past_cliff for c in cost_plus.customers)  # the floor holds
    power = next(
        c for c in flat.customers if c.customer in {p.name for p in result.customers if p.power_user}
    )
    assert (
        power.drivers.premium_share > 0
        and power.drivers.loop_growth_share > 0
        and power.drivers.retry_share > 0
    )


def test_demo_without_provider_sdks_says_so_in_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "anthropic" else real(name, *a)
    )
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path)])
    assert result.exit_code == 1
    assert result.output.strip() == (
        "jevons demo needs the provider SDKs (anthropic missing): pip install 'jevons[providers]'"
    )
