"""Configuration: one TOML file, every key overridable by a ``JEVONS_*`` environment variable.

The file is ``$JEVONS_CONFIG`` if set, else ``./jevons.toml`` if present; no file means all
defaults (the embedded, offline setup). An environment variable names a key by its path with
``__`` between levels: ``JEVONS_PRICES__TTL_SECONDS=600``, ``JEVONS_LEDGER__BACKEND=postgres``,
``JEVONS_SINKS__LAGO__URL=...``. Values from the environment are parsed as TOML values when
they parse (numbers, booleans, arrays), else taken as strings.

State (price cache, ledger) lives in ``JEVONS_HOME``, default the platform's user data dir.
Secrets are never config values: a sink names the environment variable that holds its key.
"""

from __future__ import annotations

import os
import re
import tomllib
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import platformdirs
from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = [
    "BillingConfig",
    "ConfigError",
    "LedgerConfig",
    "PricesConfig",
    "Settings",
    "SinkConfig",
    "jevons_home",
    "load_settings",
]

ENV_PREFIX = "JEVONS_"


class ConfigError(ValueError):
    """A configuration problem, with the file (or variable) and key that caused it."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PricesConfig(_Section):
    openrouter_url: str = "https://openrouter.ai"
    bedrock_url: str = "https://pricing.us-east-1.amazonaws.com"
    sources: list[Literal["openrouter", "bedrock"]] = ["openrouter", "bedrock"]
    auto_refresh: bool = False
    ttl_seconds: float = 3600.0
    http_timeout_seconds: float = 30.0
    max_move_factor: Decimal = Decimal(5)
    overrides_file: str | None = None
    fallback_model: str | None = None


class LedgerConfig(_Section):
    """``[ledger]``: where events are stored and how durably (see docs/ledger.md)."""

    backend: Literal["sqlite", "postgres", "memory"] = "sqlite"
    path: str | None = None  # SQLite file; default $JEVONS_HOME/ledger/ledger.db
    dsn: str | None = None  # PostgreSQL DSN without a password (use dsn_env for one with)
    dsn_env: str | None = None  # name of the environment variable holding the DSN
    durability: Literal["strict", "sync", "fast"] = "strict"
    pg_schema: str = "public"
    table_prefix: str = "jevons_"
    flush_interval_ms: float = Field(default=5.0, gt=0)
    recent_keys: int = Field(default=100_000, ge=0)
    journal_dir: str | None = None  # default $JEVONS_HOME/ledger/journal


class SinkConfig(BaseModel):
    """``[sinks.<name>]``: one billing destination (see docs/ledger.md). Secrets are never
    values here: ``api_key_env`` / ``secret_env`` name the environment variables holding them."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["lago", "stripe", "openmeter", "jsonl", "webhook"]
    url: str | None = None
    path: str | None = None
    api_key_env: str | None = None
    secret_env: str | None = None
    mode: Literal["token", "price"] = "token"
    batch_size: int = Field(default=100, ge=1)
    enabled: bool = True
    timeout_seconds: float = Field(default=10.0, gt=0)
    max_attempts: int = Field(default=8, ge=1)
    backoff_base_seconds: float = Field(default=0.5, ge=0)
    backoff_max_seconds: float = Field(default=60.0, ge=0)
    # usage bucket -> Lago metric code / Stripe event name / OpenMeter data field
    metric_codes: dict[str, str] = Field(default_factory=dict)
    cost_metric_code: str = "llm_cost"
    api_url: str | None = None  # Stripe: where meter event sessions are made (default: url)
    source: str = "jevons"  # OpenMeter CloudEvents source
    event_type: str = "llm.call"  # OpenMeter CloudEvents type


class BillingConfig(_Section):
    markup: Decimal = Decimal("1.0")
    policy_file: str | None = None


class Settings(_Section):
    home: str | None = None
    prices: PricesConfig = Field(default_factory=PricesConfig)
    ledger: LedgerConfig = Field(default_factory=LedgerConfig)
    sinks: dict[str, SinkConfig] = Field(default_factory=dict)
    billing: BillingConfig = Field(default_factory=BillingConfig)
    source_file: str | None = None

    @property
    def home_dir(self) -> Path:
        return jevons_home(self.home)


def jevons_home(explicit: str | None = None) -> Path:
    """Where state lives: ``JEVONS_HOME``, the config's ``home``, or the user data dir."""
    raw = os.environ.get("JEVONS_HOME") or explicit
    path = Path(raw).expanduser() if raw else Path(platformdirs.user_data_dir("jevons"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _overlay_env(data: dict[str, Any], environ: dict[str, str]) -> None:
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name in ("JEVONS_CONFIG",):
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX):].split("__") if p]
        if not path:
            continue
        if path == ["home"]:
            data["home"] = raw
            continue
        if len(path) == 1:
            continue  # single-level JEVONS_* variables belong to tools, not config keys
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{name}: {'.'.join(path[:-1])} is not a table")
            node = child
        node[path[-1]] = _env_value(raw)


#: keys that would hold a secret's value in a ``[sinks.<name>]`` table
_SECRET_KEYS = frozenset({"api_key", "secret", "token", "password", "authorization", "key"})


def dsn_password(dsn: str) -> str | None:
    """The password written in ``dsn`` (URL or ``key=value`` form), even in a DSN too malformed
    for libpq to parse; ``None`` when there is none."""
    found = re.search(r"password\s*=\s*('(?:[^'\\]|\\.)*'|\S+)", dsn)
    if found:
        return found.group(1).strip("'")
    found = re.search(r"://[^:/@\s]*:(.*)@", dsn)
    return found.group(1) if found else None


def _refuse_secrets(data: dict[str, Any], path: Path) -> None:
    """Secrets come only from environment variables the config names, never from the file
    (it is committed, copied and printed): a password in ``[ledger] dsn`` or a secret-like key
    in a sink table is an error saying where to put it instead."""
    ledger = data.get("ledger")
    dsn = ledger.get("dsn") if isinstance(ledger, dict) else None
    if isinstance(dsn, str) and dsn_password(dsn):
        raise ConfigError(f"{path}: ledger.dsn holds a password; put the DSN in an environment variable "
                          "and name it with ledger.dsn_env")
    sinks = data.get("sinks")
    for name, table in (sinks.items() if isinstance(sinks, dict) else ()):
        found = sorted(_SECRET_KEYS & set(table)) if isinstance(table, dict) else []
        if found:
            raise ConfigError(f"{path}: sinks.{name}.{found[0]}: secrets are never written in the config; "
                              "put it in an environment variable and name it with api_key_env / secret_env")


def load_settings(
    path: str | Path | None = None, *, environ: dict[str, str] | None = None
) -> Settings:
    """Read the config file (if any) and the environment into validated ``Settings``."""
    env = dict(os.environ if environ is None else environ)
    chosen = Path(path) if path else Path(env["JEVONS_CONFIG"]) if env.get("JEVONS_CONFIG") else None
    if chosen is None and Path("jevons.toml").is_file():
        chosen = Path("jevons.toml")
    data: dict[str, Any] = {}
    if chosen is not None:
        try:
            data = tomllib.loads(chosen.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"{chosen}: config file not found") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{chosen}: {exc}") from exc
    if chosen is not None:
        _refuse_secrets(data, chosen)
    _overlay_env(data, env)
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        where = str(chosen) if chosen else "environment"
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"{where}: {loc}: {first['msg']}") from exc
    settings.source_file = str(chosen) if chosen else None
    return settings
