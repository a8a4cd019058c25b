"""The prices CLI through typer's CliRunner: output, exit codes, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from jevons.cli.app import app

from .conftest import MutableServer

runner = CliRunner()


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), env={"COLUMNS": "200"})
    assert "Traceback" not in result.output and "Traceback" not in result.stderr
    return result.exit_code, result.stdout, result.stderr


def test_cost_json_has_the_documented_shape() -> None:
    code, out, _ = run(
        "cost",
        "claude-sonnet-4-5-20250929",
        "--provider",
        "anthropic",
        "--input",
        "10000",
        "--cache-read",
        "6000",
        "--cache-write-5m",
        "1000",
        "--cache-write-1h",
        "1000",
        "--output",
        "500",
        "--json",
    )
    assert code == 0
    data = json.loads(out)
    assert list(data)[:9] == [
        "model_requested",
        "model",
        "provider",
        "status",
        "total_usd",
        "lines",
        "price_version",
        "source",
        "as_of",
    ]
    assert data["total_usd"] == "0.02505000"
    assert data["status"] == "priced"
    assert data["model"] == "claude-sonnet-4.5" and data["provider"] == "anthropic"
    assert data["lines"][1] == {
        "dimension": "cache_read",
        "tokens": 6000,
        "usd_per_token": "0.0000003",
        "usd": "0.0018000",
    }


def test_cost_at_a_past_date_tier_and_region() -> None:
    code, out, _ = run("cost", "o3", "--input", "1000000", "--at", "2025-05-01", "--json")
    assert code == 0 and Decimal(json.loads(out)["total_usd"]) == 10
    code, out, _ = run("cost", "claude-sonnet-4.5", "--input", "1000000", "--tier", "batch", "--json")
    assert Decimal(json.loads(out)["total_usd"]) == 3  # > 200K: batch long-context rate $3/M
    code, out, _ = run(
        "cost",
        "amazon.nova-pro-v1:0",
        "--provider",
        "bedrock",
        "--region",
        "eu-west-1",
        "--input",
        "1000",
        "--json",
    )
    assert code == 0 and json.loads(out)["region"] == "eu-west-1"


def test_cost_table_output() -> None:
    code, out, _ = run("cost", "gpt-4o", "--input", "1000", "--output", "100")
    assert code == 0
    assert "total USD 0.0035" in out and "priced" in out


def test_unpriced_cost_exits_non_zero_with_one_clear_line() -> None:
    code, out, err = run("cost", "no-such-model", "--input", "10", "--json")
    assert code == 3
    assert json.loads(out)["status"] == "unpriced"
    assert err.strip().startswith("error: no-such-model: unpriced")
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["cost", "gpt-4o", "--at", "last tuesday"], "--at 'last tuesday' is not an ISO date"),
        (["cost", "gpt-4o", "--tier", "gold"], "--tier 'gold' is not one of"),
        (["cost", "gpt-4o", "--input", "5", "--cache-read", "9"], "exceeds input_tokens"),
        (["prices", "update", "--source", "litellm"], "--source 'litellm' is not one of"),
        (["prices", "show", "no-such-model"], "no-such-model: no price known"),
    ],
)
def test_bad_input_is_one_line_and_non_zero(args: list[str], message: str) -> None:
    code, _, err = run(*args)
    assert code != 0
    assert message in err


def test_bad_config_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JEVONS_PRICES__OVERRIDES_FILE", str(tmp_path / "missing.toml"))
    code, _, err = run("cost", "gpt-4o", "--input", "1")
    assert code == 2
    assert "overrides file not found" in err


def test_show_explain_and_json() -> None:
    code, out, _ = run("prices", "show", "global.anthropic.claude-sonnet-4-5-20250929-v1:0", "--explain")
    assert code == 0
    assert "by Bedrock id; Bedrock geography global" in out
    assert "input (input > 200000)" in out
    code, out, _ = run("prices", "show", "mistral-large-latest", "--json")
    data = json.loads(out)
    assert data["resolution"]["step"].startswith("alias table")
    assert data["model"] == "mistral-large-2512"


def test_list_filters_by_provider() -> None:
    code, out, _ = run("prices", "list", "--provider", "mistral")
    assert code == 0
    assert "mistral-large-2512" in out and "gpt-4o" not in out
    code, _, err = run("prices", "list", "--provider", "nobody")
    assert code != 0 and "no models" in err


def test_update_diff_accept_flow(openrouter_server: MutableServer) -> None:
    code, _, err = run("prices", "diff")
    assert code == 1 and "no refresh recorded yet" in err
    openrouter_server.set_price("openai/gpt-4o", prompt="0.00005")  # 20x: quarantined
    openrouter_server.set_price("openai/o3", prompt="0.0000018")
    code, out, _ = run(
        "prices", "update", "--source", "openrouter", "--openrouter-url", openrouter_server.url
    )
    assert code == 0
    assert "openrouter: updated, 533 prices" in out
    assert "1 changed" in out and "1 quarantined" in out
    code, out, _ = run("prices", "diff")
    assert "changed     openai/o3  input 2 -> 1.8 /1M" in out
    assert "quarantined openai/gpt-4o" in out
    ident = next(line.split("[")[1].split("]")[0] for line in out.splitlines() if "quarantined" in line)
    code, out, err = run("prices", "accept")
    assert code == 1 and ident in out and "name the ids" in err
    code, out, _ = run("prices", "accept", ident)
    assert code == 0 and "accepted" in out
    code, out, _ = run("cost", "gpt-4o", "--input", "1000000", "--json")
    assert Decimal(json.loads(out)["total_usd"]) == 50
    code, out, err = run("prices", "accept", "nope")
    assert code == 1


def test_update_failure_reports_and_exits_non_zero() -> None:
    code, _, err = run("prices", "update", "--source", "openrouter", "--openrouter-url", "http://127.0.0.1:9")
    assert code == 1
    assert "openrouter: FAILED" in err and "never fetched successfully" in err


def test_update_from_both_real_sources(shared_data_server: str) -> None:
    code, out, _ = run(
        "prices", "update", "--openrouter-url", shared_data_server, "--bedrock-url", shared_data_server
    )
    assert code == 0
    assert "bedrock: updated, 173 prices" in out
    assert "no price changed" in out


def test_the_installed_command_runs_in_a_subprocess() -> None:
    command = Path(sys.executable).with_name("jevons")
    proc = subprocess.run(
        [str(command), "cost", "gpt-4o", "--input", "100", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert Decimal(json.loads(proc.stdout)["total_usd"]) == Decimal("0.00025")
    bad = subprocess.run(
        [str(command), "cost", "gpt-4o", "--at", "soon"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "error: --at 'soon' is not an ISO date or datetime (e.g. 2025-06-01 or 2025-06-01T12:00:00Z)"
    ]
