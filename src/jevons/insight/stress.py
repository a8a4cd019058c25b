"""One call that runs a stress test: scenario (file or preset) + policies -> :class:`StressRun`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from jevons.insight.engine import Progress, StressRun, simulate
from jevons.insight.presets import builtin_scenario_path
from jevons.insight.rating import PolicyRater, load_policy_file
from jevons.insight.scenario import Scenario, ScenarioError, load_scenario
from jevons.prices.book import PriceBook

__all__ = ["load_raters", "resolve_scenario", "run_stress"]


def resolve_scenario(path: str | Path | None = None, *, preset: str | None = None) -> Scenario:
    """A scenario file, or a built-in preset by name (exactly one of the two)."""
    if (path is None) == (preset is None):
        raise ScenarioError("give a scenario file or --preset NAME (one of the two)")
    if preset is not None:
        try:
            return load_scenario(builtin_scenario_path(preset))
        except LookupError as exc:
            raise ScenarioError(str(exc)) from exc
    assert path is not None
    return load_scenario(path)


def load_raters(scenario: Scenario, policy_refs: Sequence[str] = ()) -> list[PolicyRater]:
    """The policies to compare: ``policy_refs`` if given, else the scenario's ``policy.files``
    (relative to the scenario file). A bad policy is a ScenarioError naming it."""
    refs = list(policy_refs) or list(scenario.policy.files)
    base_dir = Path(scenario.source).parent if scenario.source and not policy_refs else None
    raters = []
    labels: set[str] = set()
    for i, ref in enumerate(refs):
        try:
            policy = load_policy_file(ref, base_dir=base_dir)
        except (LookupError, ValueError, OSError) as exc:
            where = "--policy" if policy_refs else f"policy.files[{i}]"
            raise ScenarioError(f"{where}: {exc}") from exc
        label = policy.name
        if label in labels:
            label = f"{label} ({Path(ref).name})"
        labels.add(label)
        raters.append(PolicyRater(policy, label=label))
    return raters


def run_stress(
    scenario: Scenario,
    *,
    book: PriceBook | None = None,
    policies: Sequence[str] = (),
    deterministic: bool = False,
    progress: Progress | None = None,
) -> StressRun:
    if book is None:
        from jevons.prices.loader import default_book

        book = default_book()
    models = scenario.resolve_models(book)
    raters = load_raters(scenario, policies)
    return simulate(scenario, models, raters, deterministic=deterministic, progress=progress)
