"""The backend-parametrised ledger fixtures, shared by the ledger and the sink tests: both
conftests import them from here (one definition, no copies)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from jevons.ledger.database import SQLLedger
from ledger.helpers import drop_schema, open_test_ledger, unique_schema

__all__ = ["backend", "dsn_for", "ledger", "pg_run_schema"]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
def pg_run_schema(pg_dsn: str) -> Iterator[str]:
    """One PostgreSQL schema per test run (parallel runs never collide), dropped at the end."""
    schema = unique_schema()
    yield schema
    drop_schema(pg_dsn, schema)


@pytest.fixture
def dsn_for(backend: str, request: pytest.FixtureRequest) -> str | None:
    return request.getfixturevalue("pg_dsn") if backend == "postgres" else None


@pytest.fixture
def ledger(backend: str, dsn_for: str | None, tmp_path: Path,
           request: pytest.FixtureRequest) -> Iterator[SQLLedger]:
    schema = request.getfixturevalue("pg_run_schema") if backend == "postgres" else None
    yield from open_test_ledger(backend, str(tmp_path), dsn_for, schema)
