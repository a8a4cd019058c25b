from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from jevons.ledger.database import SQLLedger

from ledger.helpers import open_test_ledger


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def dsn_for(backend: str, request: pytest.FixtureRequest) -> str | None:
    return request.getfixturevalue("pg_dsn") if backend == "postgres" else None


@pytest.fixture
def ledger(backend: str, dsn_for: str | None, tmp_path: Path) -> Iterator[SQLLedger]:
    yield from open_test_ledger(backend, str(tmp_path), dsn_for)
