from __future__ import annotations

from ledger.fixtures import backend, dsn_for, ledger, pg_run_schema

__all__ = ["backend", "dsn_for", "ledger", "pg_run_schema"]
