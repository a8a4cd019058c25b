"""Built-in scenarios and policies, shipped as package data (``scenario.NAME.toml``,
``policy.NAME.toml``) so that ``jevons stress --preset NAME`` and ``jevons demo`` work on a fresh
install with nothing configured. The policies are ordinary policy files the policy engine loads.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["builtin_policy_path", "builtin_scenario_path", "policy_names", "scenario_names"]


def _dir() -> Path:
    return Path(str(resources.files(__name__)))


def _names(kind: str) -> list[str]:
    return sorted(p.name[len(kind) + 1 : -len(".toml")] for p in _dir().glob(f"{kind}.*.toml"))


def scenario_names() -> list[str]:
    return _names("scenario")


def policy_names() -> list[str]:
    return _names("policy")


def _path(kind: str, name: str) -> Path:
    path = _dir() / f"{kind}.{name}.toml"
    if not path.is_file():
        known = ", ".join(_names(kind)) or "none"
        raise LookupError(f"no built-in {kind} {name!r} (built-in: {known})")
    return path


def builtin_scenario_path(name: str) -> Path:
    return _path("scenario", name)


def builtin_policy_path(name: str) -> Path:
    return _path("policy", name)
