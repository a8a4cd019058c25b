"""The stress-test scenario: who the customers are, what one task costs to run, how it changes.

A scenario is a TOML file (or a built-in preset, see ``jevons.insight.presets``). Every value is
checked on load; a bad value is a :class:`ScenarioError` whose message names the field
(``models[1].share``, ``retries.failure_rate``...), so the CLI can print one clear line.

Per task the four cost drivers are modelled:

- **output dominance**: ``task.prompt_tokens`` and ``task.output_tokens`` per call, priced by the
  real models of the price book;
- **model routing**: ``models[*].share`` of calls per model, ``reasoning_multiplier`` on a model's
  output (output = visible x multiplier, reasoning = the rest), and an ``upgrade`` event that moves
  the shares at a given month;
- **tool-call compounding**: ``task.steps`` agent steps re-sending a context that grows by
  ``task.context_growth`` per step (input = N*b + d*N*(N-1)/2), with cache-hit / cache-write
  shares priced at the model's cache rates;
- **retries**: ``retries.failure_rate`` p, a failed attempt costing a full call (``scope="step"``)
  or a full task (``scope="task"``): expected attempts 1/(1-p).

Floats are fine here: a scenario is a what-if estimate, never a money path that bills anyone.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

if TYPE_CHECKING:
    from jevons.prices.book import PriceBook
    from jevons.prices.model import PriceVersion

__all__ = [
    "SHARE_TOLERANCE",
    "CustomersSpec",
    "ModelSpec",
    "PlanSpec",
    "PolicySpec",
    "ResolvedModel",
    "RetrySpec",
    "Scenario",
    "ScenarioError",
    "TaskSpec",
    "TimeSpec",
    "UpgradeSpec",
    "load_scenario",
    "parse_scenario",
]

SHARE_TOLERANCE = 1e-6
"""How far a set of shares may be from 1 (rounding in a hand-written file)."""

Z99 = 2.3263478740408408  # standard normal 99th percentile


class ScenarioError(ValueError):
    """A bad scenario value; the message names the file and the field."""


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _shares_sum_to_one(shares: dict[str, float], what: str) -> None:
    total = sum(shares.values())
    if abs(total - 1.0) > SHARE_TOLERANCE:
        raise ValueError(f"{what} must sum to 1, got {total:g}")


class PlanSpec(_Spec):
    """One plan of the mix: its name in the policy file, its share of customers and (optionally)
    its own median usage (tasks per customer-month; default ``customers.median_tasks``)."""

    name: str = Field(min_length=1)
    share: float = Field(ge=0, le=1)
    median_tasks: float | None = Field(default=None, gt=0)


class CustomersSpec(_Spec):
    count: int = Field(default=1000, ge=1)
    distribution: Literal["lognormal", "pareto"] = "lognormal"
    median_tasks: float = Field(default=100.0, gt=0)
    p99_over_median: float = Field(default=100.0, gt=1)
    monthly_noise: float = Field(default=0.2, ge=0)
    plans: list[PlanSpec] = Field(default_factory=lambda: [PlanSpec(name="default", share=1.0)])

    @field_validator("plans")
    @classmethod
    def _plans(cls, plans: list[PlanSpec]) -> list[PlanSpec]:
        if not plans:
            raise ValueError("at least one plan is needed")
        names = [p.name for p in plans]
        if len(set(names)) != len(names):
            raise ValueError(f"plan names repeat: {names}")
        _shares_sum_to_one({p.name: p.share for p in plans}, "plan shares")
        return plans

    def tail_parameter(self) -> float:
        """Lognormal sigma, or Pareto alpha, that gives the stated p99 / median ratio."""
        if self.distribution == "lognormal":
            return math.log(self.p99_over_median) / Z99
        # Pareto type I: quantile q = x_m (1-q)^(-1/alpha) -> p99/median = 50^(1/alpha)
        return math.log(50.0) / math.log(self.p99_over_median)


class TaskSpec(_Spec):
    prompt_tokens: int = Field(default=1000, ge=0)
    output_tokens: int = Field(default=300, ge=0)
    steps: int = Field(default=1, ge=1)
    context_growth: int = Field(default=0, ge=0)
    cache_hit_share: float = Field(default=0.0, ge=0, le=1)
    cache_write_share: float = Field(default=0.0, ge=0, le=1)

    @model_validator(mode="after")
    def _cache(self) -> TaskSpec:
        if self.cache_hit_share + self.cache_write_share > 1 + SHARE_TOLERANCE:
            raise ValueError("cache_hit_share + cache_write_share must not exceed 1")
        return self


class RetrySpec(_Spec):
    failure_rate: float = Field(default=0.0, ge=0)
    scope: Literal["step", "task"] = "step"

    @field_validator("failure_rate")
    @classmethod
    def _p(cls, p: float) -> float:
        if p >= 1:
            raise ValueError(f"must be below 1 (expected attempts 1/(1-p) is infinite at p >= 1), got {p:g}")
        return p

    @property
    def attempts(self) -> float:
        """Expected attempts per unit (call or task): 1/(1-p)."""
        return 1.0 / (1.0 - self.failure_rate)


class ModelSpec(_Spec):
    """One model calls are routed to. ``price_trend`` and ``usage_growth`` default to ``[time]``'s."""

    name: str = Field(min_length=1)
    provider: str | None = None
    share: float = Field(ge=0, le=1)
    reasoning_multiplier: float = Field(default=1.0, ge=1)
    price_trend: float | None = Field(default=None, gt=-1)
    usage_growth: float | None = Field(default=None, gt=-1)


class UpgradeSpec(_Spec):
    """At ``month`` (0-based), the route shares become ``shares`` (model name -> share)."""

    month: int = Field(ge=0)
    shares: dict[str, float]

    @field_validator("shares")
    @classmethod
    def _shares(cls, shares: dict[str, float]) -> dict[str, float]:
        for name, share in shares.items():
            if not 0 <= share <= 1:
                raise ValueError(f"share of {name!r} must be between 0 and 1, got {share:g}")
        _shares_sum_to_one(shares, "upgrade shares")
        return shares


class TimeSpec(_Spec):
    months: int = Field(default=12, ge=1, le=120)
    usage_growth: float = Field(default=0.0, gt=-1)
    price_trend: float = Field(default=0.0, gt=-1)


class PolicySpec(_Spec):
    """Policy files to rate with (paths relative to the scenario file, or ``builtin:NAME``), and
    the margin floor used for the cliff when a policy states none."""

    files: list[str] = Field(default_factory=lambda: ["builtin:flat", "builtin:cost-plus"])
    margin_floor: float = Field(default=0.2, ge=-1, lt=1)


class Scenario(_Spec):
    name: str = "scenario"
    description: str = ""
    seed: int = 7
    customers: CustomersSpec = Field(default_factory=CustomersSpec)
    task: TaskSpec = Field(default_factory=TaskSpec)
    retries: RetrySpec = Field(default_factory=RetrySpec)
    models: list[ModelSpec]
    upgrade: UpgradeSpec | None = None
    time: TimeSpec = Field(default_factory=TimeSpec)
    policy: PolicySpec = Field(default_factory=PolicySpec)
    source: str | None = Field(default=None, exclude=True)

    @field_validator("models")
    @classmethod
    def _models(cls, models: list[ModelSpec]) -> list[ModelSpec]:
        if not models:
            raise ValueError("at least one model is needed")
        names = [m.name for m in models]
        if len(set(names)) != len(names):
            raise ValueError(f"model names repeat: {names}")
        _shares_sum_to_one({m.name: m.share for m in models}, "model shares")
        return models

    @model_validator(mode="after")
    def _cross(self) -> Scenario:
        if self.upgrade is not None:
            known = {m.name for m in self.models}
            unknown = sorted(set(self.upgrade.shares) - known)
            if unknown:
                raise ValueError(f"upgrade.shares names model(s) not in models: {unknown}")
            if self.upgrade.month >= self.time.months:
                raise ValueError(
                    f"upgrade.month {self.upgrade.month} is past the last month ({self.time.months - 1})"
                )
        return self

    # ------------------------------------------------------------------ derived
    @property
    def months(self) -> int:
        return self.time.months

    @property
    def base_model(self) -> ModelSpec:
        """The model calls fall back to when routing is switched off: the first one listed."""
        return self.models[0]

    def shares_at(self, month: int) -> list[float]:
        """Route share of each model (in ``models`` order) in ``month``."""
        if self.upgrade is not None and month >= self.upgrade.month:
            return [self.upgrade.shares.get(m.name, 0.0) for m in self.models]
        return [m.share for m in self.models]

    def price_trend(self, model: ModelSpec) -> float:
        return self.time.price_trend if model.price_trend is None else model.price_trend

    def model_growth(self, model: ModelSpec) -> float:
        return self.time.usage_growth if model.usage_growth is None else model.usage_growth

    def resolve_models(self, book: PriceBook) -> list[ResolvedModel]:
        """Each model's price version in the book; an unknown model is a ScenarioError naming it."""
        out: list[ResolvedModel] = []
        for i, m in enumerate(self.models):
            res, version, notes = book.lookup(m.name, provider=m.provider)
            if version is None:
                why = res.explain() if not res.found else "; ".join(notes)
                raise ScenarioError(f"{self._where()}models[{i}].name: unknown model {m.name!r} ({why})")
            out.append(ResolvedModel(m, version))
        return out

    def _where(self) -> str:
        return f"{self.source}: " if self.source else ""

    def with_changes(self, **changes: Any) -> Scenario:
        """A copy with dotted-path changes (``{"task.steps": 4}``), validated again."""
        data = self.model_dump(mode="python")
        for path, value in changes.items():
            node = data
            parts = path.split(".")
            for part in parts[:-1]:
                node = node[int(part)] if isinstance(node, list) else node[part]
            if isinstance(node, list):
                node[int(parts[-1])] = value
            else:
                node[parts[-1]] = value
        return parse_scenario(data, source=self.source)


@dataclass(frozen=True, slots=True)
class ResolvedModel:
    spec: ModelSpec
    version: PriceVersion


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out or "scenario"


def parse_scenario(data: dict[str, Any], *, source: str | None = None) -> Scenario:
    """Validate a scenario mapping. Errors name the field: ``models[1].share: ...``."""
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = tuple(p for p in first["loc"] if p not in ("function-after",))
        msg = str(first["msg"]).removeprefix("Value error, ")
        where = f"{source}: " if source else ""
        extra = len(exc.errors()) - 1
        more = f" (and {extra} more problem{'s' if extra > 1 else ''})" if extra else ""
        raise ScenarioError(f"{where}{_loc(loc)}: {msg}{more}") from exc
    return scenario.model_copy(update={"source": source})


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario TOML file."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ScenarioError(f"{p}: scenario file not found") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{p}: not valid TOML: {exc}") from exc
    return parse_scenario(data, source=str(p))
