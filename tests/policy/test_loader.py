"""Policy files: valid examples load; every rejection names the file, line and field."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from jevons.policy.loader import PolicyError, load_policies, load_policy, parse_policy

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "policies"
SAAS = (EXAMPLES / "saas.toml").read_text()


def line_of(text: str, needle: str, nth: int = 1) -> int:
    seen = 0
    for i, line in enumerate(text.splitlines(), 1):
        if needle in line:
            seen += 1
            if seen == nth:
                return i
    raise AssertionError(needle)


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.toml")), ids=lambda p: p.name)
def test_every_example_policy_validates(path: Path) -> None:
    pol = load_policy(path)
    assert pol.plans


def test_toml_floats_are_read_as_exact_decimals() -> None:
    pol = parse_policy(SAAS)
    assert pol.plans["starter"].classes["base"].floor == Decimal("0.30")
    assert pol.plans["starter"].classes["premium"].markup == Decimal("1.6")
    assert isinstance(pol.plans["starter"].classes["base"].input, Decimal)


@pytest.mark.parametrize(
    ("old", "new", "field", "words"),
    [
        ("floor = 0.35", "floor = 1.0", "plans.starter.classes.premium.floor", "below 1"),
        ("markup = 1.5", "markup = 0", "plans.pro.classes.premium.markup", "greater than 0"),
        ("markup = 1.5", "markup = -2", "plans.pro.classes.premium.markup", "greater than 0"),
        ("priority = 20", "priority = 10", "classes.reasoning", "no tie rule"),
        ("expires = 2026-06-30", "expires = 2025-12-31", "customers.acme.credits[0].expires",
         "before it takes effect"),
        ('plan = "pro"', 'plan = "gold"', "customers.acme.plans[0].plan", "unknown plan 'gold'"),
        ('mode = "token"', 'mode = "tokens"', "plans.starter.classes.base.mode", "'token' or 'price'"),
        ("overrides = { cap = 400 }", "overrides = { cap = -1 }", "customers.acme.overrides.cap",
         "greater than or equal to 0"),
        ("cap = 5000", "cap = 5000\nbogus = 1", "plans.pro.bogus", "Extra inputs"),
    ],
)
def test_rejections_name_file_line_and_field(old: str, new: str, field: str, words: str) -> None:
    assert old in SAAS
    text = SAAS.replace(old, new, 1)
    with pytest.raises(PolicyError) as info:
        parse_policy(text, file="saas.toml")
    err = info.value
    assert err.file == "saas.toml"
    assert err.field == field
    assert words in err.message
    key = new.split("\n")[-1].split("=")[0].strip()
    wanted = line_of(text, new.split("\n")[-1]) if key not in ("priority",) else line_of(
        text, "[classes.reasoning]")
    assert err.line == wanted, str(err)
    assert str(err).startswith(f"saas.toml:{wanted}: {field}: ")


def test_unknown_default_plan_and_missing_class_prices() -> None:
    with pytest.raises(PolicyError, match=r"p.toml:1: default_plan: default_plan 'x' is not a defined plan"):
        parse_policy('default_plan = "x"\n[plans.p.classes.base]\nmode = "price"\nmarkup = 1\n',
                     file="p.toml")
    with pytest.raises(PolicyError, match="does not price class"):
        parse_policy('[classes.base]\n[classes.gold]\nmodels = ["x*"]\n'
                     '[plans.p.classes.base]\nmode = "price"\nmarkup = 1\n')
    with pytest.raises(PolicyError, match=r":4: plans.p.classes.base.mode: price mode needs a markup"):
        parse_policy('default_plan = "p"\n[plans.p]\n[plans.p.classes.base]\nmode = "price"\n')


def test_disjoint_classes_need_no_tie_rule() -> None:
    pol = parse_policy(
        '[classes.base]\n[classes.a]\nmodels = ["gpt-*"]\n[classes.b]\nmodels = ["claude-*"]\n'
        '[classes.c]\nproviders = ["google"]\nmodels = ["gemini-*"]\n'
        + "".join(f'[plans.p.classes.{c}]\nmode = "price"\nmarkup = 1\n' for c in "abc")
        + '[plans.p.classes.base]\nmode = "price"\nmarkup = 1\n')
    assert set(pol.classes) == {"base", "a", "b", "c"}
    pol = parse_policy(
        '[classes.base]\n[classes.d]\nreasoning = true\nfeatures = ["x"]\n'
        '[classes.e]\nreasoning = false\nfeatures = ["x"]\n[classes.f]\nfeatures = ["y"]\n'
        + "".join(f'[plans.p.classes.{c}]\nmode = "price"\nmarkup = 1\n' for c in ("d", "e", "f", "base")))
    assert set(pol.classes) == {"base", "d", "e", "f"}
    with pytest.raises(PolicyError, match="'a' and 'c' can match the same call"):
        parse_policy('[classes.base]\n[classes.a]\nmodels = ["gpt-*"]\n[classes.c]\nproviders = ["openai"]\n'
                     + "".join(f'[plans.p.classes.{c}]\nmode = "price"\nmarkup = 1\n'
                               for c in ("a", "c", "base")))


def test_bad_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match=r"bad.toml:2: invalid TOML"):
        parse_policy("a = 1\nb = = 2\n", file="bad.toml")
    with pytest.raises(PolicyError, match="cannot read policy file"):
        load_policy(tmp_path / "nope.toml")


def test_effective_dated_versions(tmp_path: Path) -> None:
    base = '[plans.p.classes.base]\nmode = "price"\nmarkup = 1\n'
    (tmp_path / "v1.toml").write_text('name = "v1"\n' + base)
    (tmp_path / "v2.toml").write_text('name = "v2"\neffective_from = 2026-04-01\n' + base)
    pset = load_policies([tmp_path / "v2.toml", tmp_path / "v1.toml"])
    from datetime import UTC, datetime

    assert pset.at(datetime(2026, 3, 31, tzinfo=UTC)).name == "v1"
    assert pset.at(datetime(2026, 4, 1, tzinfo=UTC)).name == "v2"
