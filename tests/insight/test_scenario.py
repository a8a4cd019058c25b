"""Scenario validation: every bad value gets a clear message naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from jevons.cli.app import app
from jevons.insight.presets import builtin_scenario_path, scenario_names
from jevons.insight.scenario import ScenarioError, load_scenario, parse_scenario
from jevons.prices.book import PriceBook

from .conftest import scenario


@pytest.mark.parametrize(
    ("overrides", "field", "words"),
    [
        ({"task": {"prompt_tokens": -5}}, "task.prompt_tokens", "greater than or equal to 0"),
        ({"retries": {"failure_rate": -0.1}}, "retries.failure_rate", "greater than or equal to 0"),
        ({"retries": {"failure_rate": 1.0}}, "retries.failure_rate", "must be below 1"),
        ({"retries": {"failure_rate": 1.5}}, "retries.failure_rate", "must be below 1"),
        ({"time": {"usage_growth": -1.5}}, "time.usage_growth", "greater than -1"),
        (
            {"models": [{"name": "base-1", "share": 0.7}, {"name": "premium-1", "share": 0.2}]},
            "models",
            "model shares must sum to 1, got 0.9",
        ),
        (
            {"models": [{"name": "base-1", "share": 1.0, "reasoning_multiplier": 0.5}]},
            "models[0].reasoning_multiplier",
            "greater than or equal to 1",
        ),
        (
            {"customers": {"plans": [{"name": "a", "share": 0.5}, {"name": "b", "share": 0.6}]}},
            "customers.plans",
            "plan shares must sum to 1",
        ),
        (
            {"upgrade": {"month": 1, "shares": {"base-1": 0.4}}},
            "upgrade.shares",
            "upgrade shares must sum to 1",
        ),
        ({"upgrade": {"month": 1, "shares": {"nope": 1.0}}}, "scenario", "not in models: ['nope']"),
        ({"task": {"cache_hit_share": 0.8, "cache_write_share": 0.4}}, "task", "must not exceed 1"),
        ({"customers": {"distribution": "normal"}}, "customers.distribution", "'lognormal' or 'pareto'"),
        ({"task": {"stepz": 3}}, "task.stepz", "Extra inputs are not permitted"),
    ],
)
def test_bad_values_name_the_field(overrides: dict, field: str, words: str) -> None:
    with pytest.raises(ScenarioError) as info:
        scenario(**overrides)
    message = str(info.value)
    assert message.startswith(f"{field}: "), message
    assert words in message


def test_unknown_model_names_the_field(book: PriceBook) -> None:
    s = scenario(models=[{"name": "base-1", "share": 0.5}, {"name": "gpt-nonexistent-9", "share": 0.5}])
    with pytest.raises(ScenarioError, match=r"models\[1\]\.name: unknown model 'gpt-nonexistent-9'"):
        s.resolve_models(book)


def test_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text('[[models]]\nname = "gpt-5-mini"\nshare = 1.0\n[retries]\nfailure_rate = 1\n')
    with pytest.raises(ScenarioError, match=rf"^{path}: retries\.failure_rate: must be below 1"):
        load_scenario(path)


def test_presets_load_and_resolve_in_the_bundled_book() -> None:
    from jevons.prices.loader import default_book

    assert set(scenario_names()) >= {"agentic-saas", "chat-assistant", "coding-agent"}
    for name in scenario_names():
        s = load_scenario(builtin_scenario_path(name))
        assert len(s.resolve_models(default_book())) == len(s.models)


def test_example_scenarios_are_valid() -> None:
    from jevons.prices.loader import default_book

    examples = sorted((Path(__file__).parents[2] / "examples" / "scenarios").glob("*.toml"))
    assert examples, "examples/scenarios/*.toml missing"
    for path in examples:
        s = load_scenario(path)
        assert len(s.resolve_models(default_book())) == len(s.models), path.name


def test_cli_bad_scenario_is_one_line_and_nonzero(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        '[[models]]\nname = "gpt-5-mini"\nshare = 0.5\n[[models]]\nname = "gpt-4.1"\nshare = 0.4\n'
    )
    result = CliRunner().invoke(app, ["stress", str(path)])
    assert result.exit_code == 2
    out = result.output.strip()
    assert "Traceback" not in out
    assert len(out.splitlines()) == 1, out
    assert "models: model shares must sum to 1, got 0.9" in out


def test_cli_unknown_model_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[[models]]\nname = "no-such-model-xyz"\nshare = 1.0\n')
    result = CliRunner().invoke(app, ["stress", str(path)])
    assert result.exit_code == 2 and "models[0].name: unknown model 'no-such-model-xyz'" in result.output
    result = CliRunner().invoke(app, ["stress", str(tmp_path / "missing.toml")])
    assert result.exit_code == 2 and "scenario file not found" in result.output
    result = CliRunner().invoke(app, ["stress", "--preset", "nope"])
    assert result.exit_code == 2 and "no built-in scenario 'nope'" in result.output


def test_with_changes_revalidates() -> None:
    s = scenario()
    assert s.with_changes(**{"task.steps": 4}).task.steps == 4
    with pytest.raises(ScenarioError, match=r"task\.steps"):
        s.with_changes(**{"task.steps": 0})
    assert parse_scenario(s.model_dump()).task == s.task
