"""``jevons stress``: presets, files, policy overrides, JSON and HTML output."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from jevons.cli.app import app

REPO = Path(__file__).parents[2]


def strict_json(text: str) -> dict:  # type: ignore[type-arg]
    def reject(name: str) -> None:
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=reject)  # type: ignore[no-any-return]


def test_preset_json_has_every_result() -> None:
    result = CliRunner().invoke(app, ["stress", "--preset", "agentic-saas", "--customers", "2000", "--json"])
    assert result.exit_code == 0, result.output
    data = strict_json(result.output)
    assert data["customers"] == 2000 and data["months"] == 12
    assert [p["policy"] for p in data["policies"]] == ["flat", "cost-plus"]
    flat, cost_plus = data["policies"]
    assert len(flat["by_month"]) == 12
    assert {c["plan"] for c in flat["cliffs"]} == {"starter", "pro", "team"}
    assert all(c["zero_margin_tasks"] > 0 for c in flat["cliffs"])
    assert all(c["zero_margin_tasks"] is None for c in cost_plus["cliffs"])  # the floor holds
    assert flat["past_cliff_share"] > 0 and cost_plus["past_cliff_share"] == 0
    assert {b["input"] for b in flat["tornado"]} >= {
        "customers.median_tasks",
        "task.steps",
        "retries.failure_rate",
    }
    shares = data["attribution"]["driver_share"]
    assert set(shares) == {"output", "routing", "loop", "retries"} and all(v > 0 for v in shares.values())
    assert data["cost_per_task_usd_by_month"][6] > data["cost_per_task_usd_by_month"][5]  # the upgrade


def test_scenario_file_with_relative_policy_and_html(tmp_path: Path) -> None:
    html = tmp_path / "r.html"
    path = REPO / "examples" / "scenarios" / "support-bot.toml"
    result = CliRunner().invoke(app, ["stress", str(path), "--customers", "1500", "--html", str(html)])
    assert result.exit_code == 0, result.output
    assert "acme-saas" in result.output and "cost-plus" in result.output
    assert "The margin cliff" in result.output and html.stat().st_size > 1_000_000


def test_policy_override_and_deterministic_mode() -> None:
    args = [
        "stress",
        "--preset",
        "chat-assistant",
        "--customers",
        "500",
        "--policy",
        "builtin:flat",
        "--deterministic",
        "--json",
    ]
    a = strict_json(CliRunner().invoke(app, args).output)
    b = strict_json(CliRunner().invoke(app, args).output)
    assert [p["policy"] for p in a["policies"]] == ["flat"] and a["deterministic"] is True
    assert a["policies"] == b["policies"]
    bad = CliRunner().invoke(app, ["stress", "--preset", "chat-assistant", "--policy", "/nope/x.toml"])
    assert bad.exit_code == 2 and "--policy" in bad.output and "Traceback" not in bad.output
