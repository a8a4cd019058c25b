"""The bundled snapshot is reproducible from the shared data; the overrides file format."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from importlib import resources
from pathlib import Path

import pytest

from jevons.prices import snapshot
from jevons.prices.model import Dim, Layer, ServiceTier
from jevons.prices.overrides import OverridesError, parse_overrides

from .conftest import SHARED

M = Decimal("0.000001")


def test_bundled_snapshot_is_rebuilt_byte_for_byte_from_the_sources(
    tmp_path: Path, shared_data_server: str
) -> None:
    bundled = resources.files("jevons.prices").joinpath("data", snapshot.SNAPSHOT_NAME).read_bytes()
    from_files = tmp_path / "files.json.gz"
    snapshot.main(
        [
            "--openrouter-file",
            str(SHARED / "openrouter" / "models-2026-08-19.json"),
            "--bedrock-dir",
            str(SHARED / "bedrock"),
            "--as-of",
            "2026-08-19",
            "--out",
            str(from_files),
        ]
    )
    assert from_files.read_bytes() == bundled
    over_http = tmp_path / "http.json.gz"
    snapshot.main(
        [
            "--openrouter-url",
            shared_data_server,
            "--bedrock-url",
            shared_data_server,
            "--as-of",
            "2026-08-19",
            "--out",
            str(over_http),
        ]
    )
    assert over_http.read_bytes() == bundled


def test_bundled_snapshot_is_compact_and_complete() -> None:
    versions, meta = snapshot.read_bundled()
    assert meta["as_of"] == "2026-08-19"
    assert {v.source for v in versions} == {"openrouter", "bedrock", "history"}
    assert all(v.layer is Layer.BUNDLED for v in versions)
    assert (
        len(resources.files("jevons.prices").joinpath("data", snapshot.SNAPSHOT_NAME).read_bytes()) < 100_000
    )
    history = [v for v in versions if v.source == "history"]
    assert history and all(v.valid_to is not None for v in history)


def resolver(name: str, provider: str | None) -> tuple[str, str] | None:
    return ("anthropic", "claude-sonnet-4.5") if name.startswith("claude-sonnet-4-5") else None


def test_overrides_file_prices_tiers_and_adjustments() -> None:
    parsed = parse_overrides(
        """
[[prices]]
provider = "anthropic"
model = "claude-sonnet-4-5-20250929"
input = 2.7
output = 13.5
valid_from = 2026-01-01
  [[prices.tiers]]
  above_input_tokens = 200000
  input = 5.4

[[prices]]
model = "ft:gpt-4o-mini:acme::x1"
unit = "per_token"
input = "0.0000003"
output = "0.0000012"
request = "0.001"
service_tier = "batch"
aliases = ["acme-bot"]

[[adjustments]]
provider = "Bedrock"
percent = -12

[[adjustments]]
model = "gpt-4o*"
factor = "0.9"
label = "EA"
""",
        resolver=resolver,
    )
    negotiated, custom = parsed.versions
    assert (negotiated.provider, negotiated.model) == ("anthropic", "claude-sonnet-4.5")
    assert negotiated.aliases == ("claude-sonnet-4-5-20250929",)
    assert negotiated.rates == {Dim.INPUT: Decimal("2.7") * M, Dim.OUTPUT: Decimal("13.5") * M}
    assert negotiated.tiers[0].rates == {Dim.INPUT: Decimal("5.4") * M}
    assert negotiated.valid_from == datetime(2026, 1, 1, tzinfo=UTC)
    assert negotiated.layer is Layer.OVERRIDE and negotiated.source == "override"
    assert (custom.provider, custom.model, custom.service_tier) == (
        "custom",
        "ft:gpt-4o-mini:acme::x1",
        ServiceTier.BATCH,
    )
    assert custom.rates[Dim.REQUEST] == Decimal("0.001")
    bedrock, ea = parsed.adjustments
    assert (bedrock.provider, bedrock.factor, bedrock.label) == ("bedrock", Decimal("0.88"), "Bedrock -12%")
    assert (ea.provider, ea.model_glob, ea.factor, ea.label) == (None, "gpt-4o*", Decimal("0.9"), "EA")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[prices]]\nmodel = "x"\ninput = -1', "negative price"),
        ('[[prices]]\nmodel = "x"\ninput = "cheap"', "not a number"),
        ('[[prices]]\nmodel = "x"\nprompt = 1', "unknown key 'prompt'"),
        ("[[prices]]\ninput = 1", "needs a model name"),
        ('[[prices]]\nmodel = "x"', "no price given"),
        ('[[prices]]\nmodel = "x"\ninput = 1\nservice_tier = "gold"', "is not a service tier"),
        ('[[prices]]\nmodel = "x"\ninput = 1\nvalid_from = "someday"', "is not an ISO date"),
        ('[[adjustments]]\nprovider = "bedrock"', "needs percent"),
        ("[[adjustments]]\npercent = -150", "cannot exceed 100%"),
        ("[discounts]\nx = 1", "unknown section"),
        ("[[prices]\n", "overrides"),
    ],
)
def test_bad_overrides_name_the_entry(text: str, message: str) -> None:
    with pytest.raises(OverridesError, match=message):
        parse_overrides(text)
