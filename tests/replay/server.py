"""A real local HTTP server that plays back recorded provider responses.

The provider SDKs (openai, anthropic, boto3, google-genai, mistralai, litellm) are pointed at it
through their ``base_url`` / ``endpoint_url`` and talk real HTTP to it: no network, no mocks of
the SDKs. Each test scripts what the server answers:

- ``server.on(path, reply, ...)`` adds a route; ``reply`` is a ``Reply`` or a list of them that is
  served in order (the last one repeats unless ``repeat_last=False``). ``path`` is the exact URL
  path, or a regular expression when it starts with ``^``. ``match`` is an optional predicate on
  the ``RecordedRequest`` (e.g. on its JSON body), ``method`` defaults to ``POST``.
  Routes added later are tried first, so a test can override a broader route.
- ``Reply.json(obj)``, ``Reply.sse(events)``, ``Reply.error(500, retry_after=0)``,
  ``Reply.framed(frames, framing="aws-eventstream")`` and ``load_fixture("openai/chat_basic")``
  build replies. A streamed reply is sent with chunked transfer encoding, one chunk per event,
  flushed one by one; ``break_after=N`` closes the connection after N chunks without ending the
  body (a stream broken off by the network).
- ``server.requests`` records every request received (method, path, query, headers, body,
  ``.json``), so a test can assert what the SDK actually sent.

Fixture files live in ``tests/replay/fixtures/<provider>/<name>.json``, one JSON object:

``{"status": 200, "headers": {...}, "json": {...}}``                  a JSON body
``{"status": 200, "sse": [{"event": "x", "data": {...}}, {"data": "[DONE]"}]}``  Server-Sent Events
``{"status": 200, "body": "raw text"}``                                 raw text
``{"status": 200, "framing": "NAME", "frames": [...]}``                 custom framing (see below)

``"event"`` is optional in an SSE item; ``"data"`` is a JSON value (sent as compact JSON) or a
string (sent verbatim). ``"break_after"`` and ``"headers"`` are allowed in every form.

Custom framing: ``register_framing(name, encode, content_type)`` registers a function turning
one frame (any JSON value from the fixture) into the bytes of one streamed chunk; Bedrock's AWS
event-stream encoder registers itself this way.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = [
    "FIXTURES",
    "RecordedRequest",
    "ReplayServer",
    "Reply",
    "Route",
    "load_fixture",
    "register_framing",
    "sse_bytes",
]

FIXTURES = Path(__file__).resolve().parent / "fixtures"

Framing = Callable[[Any], bytes]
_FRAMINGS: dict[str, tuple[Framing, str]] = {}


def register_framing(name: str, encode: Framing, content_type: str) -> None:
    """Make ``Reply.framed(..., framing=name)`` and ``{"framing": name}`` fixtures available."""
    _FRAMINGS[name] = (encode, content_type)


def _dumps(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def sse_bytes(data: Any, event: str | None = None) -> bytes:
    """One Server-Sent Event: optional ``event:`` line, one ``data:`` line, blank line."""
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {_dumps(data)}\n\n".encode()


@dataclass
class Reply:
    """What the server answers to one request."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    chunks: list[bytes] | None = None  # streamed, chunked transfer encoding
    break_after: int | None = None  # close the connection after this many chunks
    delay: float = 0.0  # seconds before the status line is sent
    chunk_delay: float = 0.0  # seconds between streamed chunks

    @classmethod
    def json(cls, obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Reply:
        return cls(status, {"content-type": "application/json", **(headers or {})}, json.dumps(obj).encode())

    @classmethod
    def sse(
        cls,
        events: Iterable[Any],
        *,
        status: int = 200,
        headers: dict[str, str] | None = None,
        break_after: int | None = None,
    ) -> Reply:
        """``events``: dicts ``{"data": ..., "event": ...}`` (``event`` optional) or raw bytes."""
        chunks = [
            e if isinstance(e, bytes) else sse_bytes(e["data"], e.get("event")) for e in events
        ]
        return cls(
            status, {"content-type": "text/event-stream", **(headers or {})}, None, chunks, break_after
        )

    @classmethod
    def error(
        cls,
        status: int,
        body: Any = None,
        *,
        retry_after: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        hdrs = dict(headers or {})
        if retry_after is not None:
            hdrs["retry-after"] = str(retry_after)
            hdrs["retry-after-ms"] = str(int(retry_after * 1000))
        payload = body if body is not None else {
            "error": {"message": f"replayed HTTP {status}", "type": "server_error", "code": status}
        }
        return cls.json(payload, status, hdrs)

    @classmethod
    def framed(
        cls,
        frames: Iterable[Any],
        *,
        framing: str,
        status: int = 200,
        headers: dict[str, str] | None = None,
        break_after: int | None = None,
    ) -> Reply:
        try:
            encode, content_type = _FRAMINGS[framing]
        except KeyError:
            raise KeyError(f"no framing {framing!r} registered (known: {sorted(_FRAMINGS)})") from None
        chunks = [encode(f) for f in frames]
        return cls(status, {"content-type": content_type, **(headers or {})}, None, chunks, break_after)

    def broken_after(self, n: int) -> Reply:
        """The same streamed reply, cut off after ``n`` chunks."""
        if self.chunks is None:
            raise ValueError("only a streamed reply can be broken off")
        return Reply(self.status, dict(self.headers), None, list(self.chunks), n, self.delay,
                     self.chunk_delay)


def load_fixture(name: str, **overrides: Any) -> Reply:
    """A reply from ``fixtures/<name>.json`` (``name`` like ``openai/chat_basic``)."""
    path = FIXTURES / (name if name.endswith(".json") else f"{name}.json")
    spec: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    spec.update(overrides)
    status = int(spec.get("status", 200))
    headers = dict(spec.get("headers", {}))
    brk = spec.get("break_after")
    if "json" in spec:
        reply = Reply.json(spec["json"], status, headers)
    elif "sse" in spec:
        reply = Reply.sse(spec["sse"], status=status, headers=headers, break_after=brk)
    elif "frames" in spec:
        reply = Reply.framed(spec["frames"], framing=spec["framing"], status=status, headers=headers,
                             break_after=brk)
    elif "body" in spec:
        reply = Reply(status, headers, str(spec["body"]).encode())
    else:
        raise ValueError(f"{path}: fixture needs one of json, sse, frames, body")
    return reply


def fixture_json(name: str) -> Any:
    """The ``json`` body of a fixture (for direct ``usage_from_response`` tests)."""
    path = FIXTURES / (name if name.endswith(".json") else f"{name}.json")
    return json.loads(path.read_text(encoding="utf-8"))["json"]


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


@dataclass
class Route:
    method: str
    path: str
    replies: list[Reply]
    match: Callable[[RecordedRequest], bool] | None = None
    repeat_last: bool = True
    served: int = 0
    _pattern: re.Pattern[str] | None = None

    def __post_init__(self) -> None:
        if self.path.startswith("^"):
            self._pattern = re.compile(self.path)

    def accepts(self, req: RecordedRequest) -> bool:
        if self.method != "*" and req.method != self.method:
            return False
        if self._pattern is not None:
            if not self._pattern.search(req.path):
                return False
        elif req.path != self.path:
            return False
        if not self.repeat_last and self.served >= len(self.replies):
            return False
        return self.match is None or bool(self.match(req))

    def next_reply(self) -> Reply:
        reply = self.replies[min(self.served, len(self.replies) - 1)]
        self.served += 1
        return reply


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # TCP_NODELAY: no 40 ms delayed-ACK stall per small write
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        return None

    def _read_body(self) -> bytes:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    break
                out += self.rfile.read(size)
                self.rfile.readline()
            return bytes(out)
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        parts = urlsplit(self.path)
        req = RecordedRequest(
            self.command, parts.path, parse_qs(parts.query),
            {k.lower(): v for k, v in self.headers.items()}, self._read_body(),
        )
        replay = self.server.replay
        reply = replay._dispatch(req)
        if reply.delay:
            time.sleep(reply.delay)
        self.send_response(reply.status)
        for k, v in reply.headers.items():
            self.send_header(k, v)
        if reply.chunks is None:
            body = reply.body or b""
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
            return
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        for i, chunk in enumerate(reply.chunks):
            if reply.break_after is not None and i >= reply.break_after:
                self._break()
                return
            if reply.chunk_delay and i:
                time.sleep(reply.chunk_delay)
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.flush()
        if reply.break_after is not None and reply.break_after == len(reply.chunks):
            self._break()  # every chunk sent, but the body never ends
            return
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _break(self) -> None:
        self.wfile.flush()
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    replay: ReplayServer

    def handle_error(self, request: object, client_address: object) -> None:
        return None  # a client hanging up mid-stream is part of the tests


class ReplayServer:
    """A thread serving scripted replies on ``127.0.0.1`` at an ephemeral port."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._routes: list[Route] = []
        self.requests: list[RecordedRequest] = []
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    # -------------------------------------------------------------- lifecycle
    def start(self) -> ReplayServer:
        httpd = _Server(("127.0.0.1", 0), _Handler)
        httpd.replay = self
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, name="replay-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> ReplayServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (no trailing slash)."""
        return f"http://127.0.0.1:{self.port}"

    def reset(self) -> None:
        """Forget all routes and recorded requests (between tests)."""
        with self._lock:
            self._routes.clear()
            self.requests.clear()

    # -------------------------------------------------------------- scripting
    def on(
        self,
        path: str,
        reply: Reply | str | list[Reply | str],
        *,
        method: str = "POST",
        match: Callable[[RecordedRequest], bool] | None = None,
        repeat_last: bool = True,
    ) -> Route:
        """Serve ``reply`` (a ``Reply``, a fixture name, or a list served in order) on ``path``."""
        items = reply if isinstance(reply, list) else [reply]
        replies = [load_fixture(r) if isinstance(r, str) else r for r in items]
        route = Route(method.upper(), path, replies, match, repeat_last)
        with self._lock:
            self._routes.insert(0, route)
        return route

    def _dispatch(self, req: RecordedRequest) -> Reply:
        with self._lock:
            self.requests.append(req)
            for route in self._routes:
                if route.accepts(req):
                    return route.next_reply()
            known = [f"{r.method} {r.path}" for r in self._routes]
        return Reply.json(
            {"error": {"message": f"replay: no route for {req.method} {req.path}; routes: {known}",
                       "type": "replay_no_route"}},
            status=418,
        )

    # -------------------------------------------------------------- inspection
    def bodies(self, path: str | None = None) -> list[Any]:
        """JSON bodies of the requests received (optionally only those to ``path``)."""
        return [r.json for r in list(self.requests) if path is None or r.path == path]

    def last(self, path: str | None = None) -> RecordedRequest:
        for r in reversed(list(self.requests)):
            if path is None or r.path == path:
                return r
        raise AssertionError(f"no request received{f' on {path}' if path else ''}")

    def count(self, path: str | None = None) -> int:
        return sum(1 for r in list(self.requests) if path is None or r.path == path)


def iter_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Split streamed chunks back into lines (helper for framing tests)."""
    buf = b""
    for c in chunks:
        buf += c
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            yield line
    if buf:
        yield buf
