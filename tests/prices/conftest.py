"""Fixtures of the price tests: a small HTTP server whose OpenRouter body a test can change."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from jevons.prices.loader import reset_default_book

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
OPENROUTER_FILE = SHARED / "openrouter" / "models-2026-08-19.json"


@pytest.fixture(autouse=True)
def _fresh_default_book() -> Iterator[None]:
    reset_default_book()
    yield
    reset_default_book()


@pytest.fixture(scope="session")
def openrouter_payload() -> dict[str, Any]:
    return json.loads(OPENROUTER_FILE.read_text())


@dataclass
class MutableServer:
    """Serves ``/api/v1/models`` from ``payload`` with an ETag; counts requests and 304s."""

    url: str = ""
    payload: Any = None
    status: int = 200
    requests: list[dict[str, str]] = field(default_factory=list)
    not_modified: int = 0

    def set_price(self, model_id: str, **prices: str) -> None:
        for entry in self.payload["data"]:
            if entry["id"] == model_id:
                entry["pricing"].update(prices)
                return
        raise KeyError(model_id)


@pytest.fixture
def openrouter_server(openrouter_payload: dict[str, Any]) -> Iterator[MutableServer]:
    state = MutableServer(payload=json.loads(json.dumps(openrouter_payload)))

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.requests.append({k.lower(): v for k, v in self.headers.items()})
            if self.path.rstrip("/") != "/api/v1/models":
                self.send_error(404)
                return
            if state.status != 200:
                self.send_error(state.status)
                return
            body = json.dumps(state.payload).encode()
            etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
            if self.headers.get("If-None-Match") == etag:
                state.not_modified += 1
                self.send_response(304)
                self.send_header("ETag", etag)
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("ETag", etag)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return None

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
