"""jevons.sinks: billing destinations fed by the ledger's outbox.

``build_sinks(settings)`` makes one sink per enabled ``[sinks.<name>]`` table;
``open_outbox(settings)`` pairs them with the ledger. Secrets come only from the environment
variables the config names (``api_key_env``, ``secret_env``), and only building a sink reads
them: what only reads the ledger (``sink_kinds`` + ``outbox.sink_statuses``, the parked
events) needs the config alone.

``open_outbox`` is the one place that turns settings into an outbox, so every drainer built
from the same settings (``jevons outbox drain``, an ``OutboxWorker`` in a service) bills the
same amount in Lago price mode: the policy engine's (``[billing] policy_file``) when one is
configured, else ``cost x [billing] markup``.
"""

from __future__ import annotations

import os
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING

from jevons.sinks.base import Hold, RejectedError, Sink, SinkUnavailable, TransientError

if TYPE_CHECKING:
    from collections.abc import Callable

    from jevons.config import Settings, SinkConfig
    from jevons.sinks.lago import AmountFor
    from jevons.sinks.outbox import Outbox

__all__ = [
    "Hold",
    "RejectedError",
    "Sink",
    "SinkUnavailable",
    "TransientError",
    "build_sink",
    "build_sinks",
    "open_outbox",
    "sink_kinds",
]

_DEFAULT_URLS = {
    "lago": "https://api.getlago.com",
    "stripe": "https://meter-events.stripe.com",
    "openmeter": "https://openmeter.cloud",
}


def _secret(name: str, cfg: SinkConfig, field: str, env_name: str | None, *, required: bool) -> str | None:
    from jevons.config import ConfigError

    if env_name is None:
        if required:
            raise ConfigError(f"sinks.{name}.{field}: a {cfg.type} sink needs {field} "
                              "(the name of an environment variable holding the secret)")
        return None
    value = os.environ.get(env_name)
    if not value:
        raise ConfigError(f"sinks.{name}.{field}: environment variable {env_name} is not set")
    return value


def build_sink(name: str, cfg: SinkConfig, settings: Settings, *,
               amount_for: AmountFor | None = None) -> Sink:
    """One sink from its config table."""
    from jevons.config import ConfigError
    from jevons.sinks.files import JsonlSink, WebhookSink
    from jevons.sinks.lago import LagoSink, default_amount_for
    from jevons.sinks.openmeter import OpenMeterSink
    from jevons.sinks.stripe import StripeMeterSink

    url = cfg.url or _DEFAULT_URLS.get(cfg.type)
    try:
        if cfg.type == "lago":
            assert url is not None
            return LagoSink(
                name, url, _secret(name, cfg, "api_key_env", cfg.api_key_env, required=False),
                mode=cfg.mode, metric_codes=cfg.metric_codes, cost_metric_code=cfg.cost_metric_code,
                amount_for=amount_for or default_amount_for(Decimal(settings.billing.markup)),
                timeout=cfg.timeout_seconds, batch_size=cfg.batch_size,
            )
        if cfg.type == "stripe":
            assert url is not None
            return StripeMeterSink(
                name, url, _secret(name, cfg, "api_key_env", cfg.api_key_env, required=True),
                api_url=cfg.api_url or ("https://api.stripe.com" if not cfg.url else None),
                event_names=cfg.metric_codes, timeout=cfg.timeout_seconds, batch_size=cfg.batch_size,
            )
        if cfg.type == "openmeter":
            assert url is not None
            return OpenMeterSink(
                name, url, _secret(name, cfg, "api_key_env", cfg.api_key_env, required=False),
                source=cfg.source, event_type=cfg.event_type, timeout=cfg.timeout_seconds,
                batch_size=cfg.batch_size, billable_fields=cfg.metric_codes,
            )
        if cfg.type == "jsonl":
            path = Path(cfg.path).expanduser() if cfg.path else settings.home_dir / "sinks" / f"{name}.jsonl"
            return JsonlSink(name, path, batch_size=cfg.batch_size)
        if not cfg.url:
            raise ConfigError(f"sinks.{name}.url: a webhook sink needs a url")
        return WebhookSink(
            name, cfg.url, _secret(name, cfg, "secret_env", cfg.secret_env, required=True),
            timeout=cfg.timeout_seconds, batch_size=cfg.batch_size,
        )
    except ValueError as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"sinks.{name}: {exc}") from exc


def _selected(settings: Settings, only: str | None) -> dict[str, SinkConfig]:
    """The enabled sink tables of ``settings``, or just ``only`` (enabled or not)."""
    from jevons.config import ConfigError

    if only is not None and only not in settings.sinks:
        known = ", ".join(settings.sinks) or "none"
        raise ConfigError(f"no sink named {only!r} in the config (configured: {known})")
    return {
        name: cfg for name, cfg in settings.sinks.items()
        if (only is None and cfg.enabled) or name == only
    }


def build_sinks(settings: Settings, *, amount_for: AmountFor | None = None,
                only: str | None = None) -> dict[str, Sink]:
    """The enabled sinks of ``settings`` (or just ``only``)."""
    return {
        name: build_sink(name, cfg, settings, amount_for=amount_for)
        for name, cfg in _selected(settings, only).items()
    }


def sink_kinds(settings: Settings, *, only: str | None = None) -> dict[str, str]:
    """Name -> type of the sinks ``build_sinks`` would build, from the config alone (no secret
    read): what ``jevons outbox status`` and ``dead-letters`` show."""
    return {name: cfg.type for name, cfg in _selected(settings, only).items()}


def _bills_amounts(settings: Settings, only: str | None) -> bool:
    """Whether a selected sink sends an amount (Lago price mode) rather than token counts."""
    return any(cfg.type == "lago" and cfg.mode == "price" for cfg in _selected(settings, only).values())


def open_outbox(settings: Settings | None = None, *, amount_for: AmountFor | None = None,
                only: str | None = None) -> Outbox:
    """The ledger (crashed processes' logs recovered first, see ``open_recovered_ledger``) and
    the configured sinks, each with the retry policy of its config table.

    ``amount_for`` (USD charge of one event) feeds Lago price mode. By default it is the policy
    engine's (``runtime_from_settings(settings).amount_for``) when ``[billing] policy_file`` is
    set, else ``cost x [billing] markup``: the same rule for every caller, the CLI included.
    ``Outbox.close`` closes the policy store opened for it."""
    from jevons.config import load_settings
    from jevons.ledger import open_recovered_ledger
    from jevons.sinks.outbox import Outbox, RetryPolicy

    settings = settings or load_settings()
    on_close: list[Callable[[], None]] = []
    if amount_for is None and _bills_amounts(settings, only):
        from jevons.policy.runtime import runtime_from_settings

        runtime = runtime_from_settings(settings)
        if runtime is not None:
            amount_for = runtime.amount_for
            on_close.append(runtime.store.close)
    sinks: dict[str, Sink] = {}
    try:
        sinks = build_sinks(settings, amount_for=amount_for, only=only)
        retries = {
            name: RetryPolicy(base_s=cfg.backoff_base_seconds, max_s=cfg.backoff_max_seconds,
                              max_attempts=cfg.max_attempts)
            for name, cfg in settings.sinks.items() if name in sinks
        }
        ledger = open_recovered_ledger(settings)
    except BaseException:
        for sink in sinks.values():
            sink.close()
        for fn in on_close:
            fn()
        raise
    return Outbox(ledger, sinks, retries=retries, on_close=on_close)
