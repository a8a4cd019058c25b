"""jevons.insight: where the margin breaks.

- :func:`run_stress` -- the margin-cliff stress test (vectorised Monte Carlo over customers x
  months; prices from the price book, rating through ``jevons.policy.rules``);
- :func:`build_margin_report` -- the margin report on real data (ledger events rated by the
  policy engine), with the customers past the cliff or under their floor and their cost drivers;
- :func:`run_demo` -- ``jevons demo``.

Names load on first use, so ``import jevons.insight`` stays light (numpy and plotly load with
the functions that need them). See ``docs/insight.md``.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jevons.insight.demo import run_demo
    from jevons.insight.engine import PolicyResult, StressRun, simulate
    from jevons.insight.margin import MarginReport, build_margin_report
    from jevons.insight.rating import PolicyRater, load_policy_file
    from jevons.insight.scenario import Scenario, ScenarioError, load_scenario, parse_scenario
    from jevons.insight.standin import StandIn
    from jevons.insight.stress import resolve_scenario, run_stress
    from jevons.insight.stress_report import write_stress_report

__all__ = [
    "MarginReport",
    "PolicyRater",
    "PolicyResult",
    "Scenario",
    "ScenarioError",
    "StandIn",
    "StressRun",
    "build_margin_report",
    "load_policy_file",
    "load_scenario",
    "parse_scenario",
    "resolve_scenario",
    "run_demo",
    "run_stress",
    "simulate",
    "write_stress_report",
]

_LAZY = {
    "run_demo": "jevons.insight.demo",
    "PolicyResult": "jevons.insight.engine",
    "StressRun": "jevons.insight.engine",
    "simulate": "jevons.insight.engine",
    "MarginReport": "jevons.insight.margin",
    "build_margin_report": "jevons.insight.margin",
    "PolicyRater": "jevons.insight.rating",
    "load_policy_file": "jevons.insight.rating",
    "Scenario": "jevons.insight.scenario",
    "ScenarioError": "jevons.insight.scenario",
    "load_scenario": "jevons.insight.scenario",
    "parse_scenario": "jevons.insight.scenario",
    "StandIn": "jevons.insight.standin",
    "resolve_scenario": "jevons.insight.stress",
    "run_stress": "jevons.insight.stress",
    "write_stress_report": "jevons.insight.stress_report",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'jevons.insight' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value
