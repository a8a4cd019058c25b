"""A local HTTP server playing Lago, Stripe's meter event stream, OpenMeter and a webhook
receiver, with the faults a billing API shows: 500s, 429 + Retry-After, timeouts, connection
resets, a 422 for poisoned events, a slow server, any status (with headers) for every request.
It deduplicates on each API's idempotency field, as the real services do, and counts every
record it was sent.

Run as a script (``python fakes.py PORT STATE_FILE [--die-after-records N]``) it persists what
it accepted to ``STATE_FILE`` and can kill itself with SIGKILL in the middle of a batch: the
"sink killed mid-batch" of the crash test.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

STRIPE_KEY = "sk_test_jevons"
WEBHOOK_SECRET = "whsec_jevons"


@dataclass
class Fault:
    kind: str  # "500" | "429" | "timeout" | "reset" | "reset_after_store" | "503"
    retry_after: str | None = None
    seconds: float = 0.0


@dataclass
class FakeState:
    received: dict[str, dict[str, Any]] = field(default_factory=dict)
    records_sent: int = 0
    duplicates: int = 0
    requests: int = 0
    bodies: list[Any] = field(default_factory=list)
    faults: deque[Fault] = field(default_factory=deque)
    poison: set[str] = field(default_factory=set)
    delay_s: float = 0.0
    outage: int | None = None  # answer every request with this status while set
    outage_headers: dict[str, str] = field(default_factory=dict)  # e.g. Retry-After, Location
    session_status: int | None = None  # Stripe: answer meter_event_session with this status
    duplicate_422: bool = False
    request_times: list[float] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)  # of every request, in order
    keep_bodies: bool = True
    die_after_records: int | None = None
    state_file: Path | None = None
    signatures_ok: int = 0
    signatures_bad: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def _key(path: str, rec: dict[str, Any]) -> str:
    if path.endswith("/events/batch"):
        return str(rec["transaction_id"])
    if "meter_event_stream" in path:
        return str(rec["identifier"])
    if path.endswith("/api/v1/events"):
        return f"{rec['source']}|{rec['id']}"
    return str(rec["idempotency_key"])


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        # headers and body go out in two writes: without this, Nagle + delayed ACK add 40 ms
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    state: FakeState

    def log_message(self, format: str, *args: object) -> None:
        return None

    def _reply(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _reset(self) -> None:
        with contextlib.suppress(OSError):  # linger 0: close sends a TCP reset
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.close_connection = True

    def do_POST(self) -> None:
        st = self.state
        raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with st.lock:
            st.requests += 1
            st.request_times.append(time.monotonic())
            st.paths.append(self.path.split("?", 1)[0])
            fault = st.faults.popleft() if st.faults else None
        if st.delay_s:
            time.sleep(st.delay_s)
        path = self.path.split("?", 1)[0]
        if path.endswith("/meter_event_session"):
            if st.session_status is not None:
                self._reply(st.session_status, {"error": {"type": "invalid_request_error"}})
                return
            if self.headers.get("Authorization") != f"Bearer {STRIPE_KEY}":
                self._reply(401, {"error": {"message": "bad key"}})
                return
            self._reply(200, {"object": "v2.billing.meter_event_session",
                              "authentication_token": "mes_tok_1", "expires_at": "2099-01-01T00:00:00Z"})
            return
        if st.outage is not None:
            self._reply(st.outage, {"error": "down for maintenance"}, st.outage_headers)
            return
        if fault is not None:
            if fault.kind in ("500", "503"):
                self._reply(int(fault.kind), {"error": "boom"})
                return
            if fault.kind == "429":
                self._reply(429, {"error": "slow down"},
                            {"Retry-After": fault.retry_after} if fault.retry_after else None)
                return
            if fault.kind == "reset":
                self._reset()
                return
            if fault.kind == "timeout":
                time.sleep(fault.seconds)
        body = json.loads(raw)
        if "meter_event_stream" in path and self.headers.get("Authorization") != "Bearer mes_tok_1":
            self._reply(401, {"error": {"message": "session expired"}})
            return
        if path == "/hook":
            from jevons.sinks.files import verify

            if not verify(WEBHOOK_SECRET.encode(), raw, self.headers.get("X-Jevons-Signature", "")):
                with st.lock:
                    st.signatures_bad += 1
                self._reply(401, {"error": "bad signature"})
                return
            with st.lock:
                st.signatures_ok += 1
        records: list[dict[str, Any]] = body if isinstance(body, list) else body["events"]
        keys = [_key(path, r) for r in records]
        poisoned = {i: k for i, k in enumerate(keys) if any(p in k for p in st.poison)}
        if poisoned:
            if path.endswith("/events/batch"):
                self._reply(422, {"status": 422, "error": "Unprocessable Entity", "code": "validation_errors",
                                  "error_details": {str(i): {"code": ["invalid"]} for i in poisoned}})
            else:
                self._reply(400, {"error": {"message": f"invalid event {next(iter(poisoned.values()))}"}})
            return
        with st.lock:
            if st.keep_bodies:
                st.bodies.append(body)
            st.records_sent += len(records)
            if st.duplicate_422 and path.endswith("/events/batch"):
                dup = {i for i, k in enumerate(keys) if k in st.received}
                if dup:
                    self._reply(422, {"status": 422, "error": "Unprocessable Entity",
                                      "code": "validation_errors",
                                      "error_details": {str(i): {"transaction_id": ["value_already_exist"]}
                                                        for i in dup}})
                    return
            new_lines = []
            for k, r in zip(keys, records, strict=True):
                if k in st.received:
                    st.duplicates += 1
                    continue
                st.received[k] = r
                new_lines.append(json.dumps({"key": k, "record": r}))
                if st.die_after_records is not None and len(st.received) >= st.die_after_records:
                    # killed mid-batch: what was stored so far is on disk, the rest is not
                    self._persist(new_lines)
                    os.kill(os.getpid(), signal.SIGKILL)
            self._persist(new_lines)
        if fault is not None and fault.kind == "reset_after_store":
            self._reset()
            return
        self._reply(200, {"events": records} if not path.endswith("/api/v1/events") else {})

    def _persist(self, lines: list[str]) -> None:
        st = self.state
        if st.state_file is None or not lines:
            return
        with open(st.state_file, "a") as fh:
            fh.write("".join(line + "\n" for line in lines))
            fh.flush()
            os.fsync(fh.fileno())


class FakeBilling:
    """The fake service in a thread of the test process."""

    def __init__(self, port: int = 0, state: FakeState | None = None) -> None:
        self.state = state or FakeState()
        handler = type("BoundHandler", (Handler,), {"state": self.state})
        self.server = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeBilling:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    @property
    def keys(self) -> set[str]:
        return set(self.state.received)


def load_state(path: Path) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                try:
                    item = json.loads(line)
                except ValueError:
                    continue  # a line torn by the kill
                out[item["key"]] = item["record"]
    return out


def main() -> None:
    port = int(sys.argv[1])
    state_file = Path(sys.argv[2])
    state = FakeState(state_file=state_file, keep_bodies=False)
    state.received = load_state(state_file)
    if "--die-after-records" in sys.argv:
        state.die_after_records = int(sys.argv[sys.argv.index("--die-after-records") + 1])
    fake = FakeBilling(port, state)
    print("ready", flush=True)
    fake.server.serve_forever()


if __name__ == "__main__":
    main()
