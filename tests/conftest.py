"""Fixtures every layer's tests share: isolated JEVONS_HOME, the shared data served over real
HTTP, and the PostgreSQL DSN."""

from __future__ import annotations

import functools
import http.server
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
PG_DSN_ENV = "JEVONS_TEST_PG_DSN"


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own JEVONS_HOME and no stray config or JEVONS_* variables."""
    home = tmp_path_factory.mktemp("jevons-home")
    for name in list(os.environ):
        if name.startswith("JEVONS_") and name != PG_DSN_ENV:
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("JEVONS_HOME", str(home))
    return home


class _SharedDataHandler(http.server.SimpleHTTPRequestHandler):
    """Serves ../shared/data with the real services' paths mapped onto it.

    - ``/api/v1/models`` -> ``openrouter/models-2026-08-19.json`` (OpenRouter)
    - ``/offers/v1.0/aws/<Offer>/current/region_index.json`` -> ``bedrock/region_index.<Offer>.json``
    - ``/offers/v1.0/aws/...`` -> ``bedrock/offers/v1.0/aws/...``
    Sends ETag / Last-Modified (SimpleHTTPRequestHandler does If-Modified-Since itself).
    """

    def translate_path(self, path: str) -> str:
        clean = path.split("?", 1)[0]
        if clean.rstrip("/") == "/api/v1/models":
            return str(SHARED_DATA / "openrouter" / "models-2026-08-19.json")
        parts = clean.strip("/").split("/")
        if parts[:3] == ["offers", "v1.0", "aws"] and parts[-2:] == ["current", "region_index.json"]:
            return str(SHARED_DATA / "bedrock" / f"region_index.{parts[3]}.json")
        if parts[:1] == ["offers"]:
            return str(SHARED_DATA / "bedrock" / clean.strip("/"))
        return super().translate_path(path)

    def log_message(self, format: str, *args: object) -> None:
        return None


@pytest.fixture(scope="session")
def shared_data_server() -> Iterator[str]:
    """Base URL of a local HTTP server standing in for OpenRouter and the AWS price list."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"shared data not found at {SHARED_DATA}")
    handler = functools.partial(_SharedDataHandler, directory=str(SHARED_DATA))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="session")
def pg_dsn() -> str:
    """DSN of the real PostgreSQL server. In CI (CI=true) a missing DSN fails, never skips."""
    dsn = os.environ.get(PG_DSN_ENV)
    if not dsn:
        if os.environ.get("CI"):
            pytest.fail(f"{PG_DSN_ENV} is not set in CI: the PostgreSQL tests must run")
        pytest.skip(f"{PG_DSN_ENV} not set")
    return dsn
