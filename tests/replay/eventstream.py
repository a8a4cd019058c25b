"""AWS event-stream (``application/vnd.amazon.eventstream``) encoder for the replay server.

The framing, as AWS documents it (Transcribe / Lex "event stream encoding"):

    total length   u32 BE   whole message, these 4 bytes and both CRCs included
    headers length u32 BE
    prelude CRC    u32 BE   CRC32 of the 8 bytes above
    headers        headers-length bytes: name-length u8, name, value-type u8, value
    payload        total - headers - 16 bytes
    message CRC    u32 BE   CRC32 of everything before it

Header value types: 0 true, 1 false, 2 byte, 3 short, 4 int, 5 long, 6 bytes (u16 BE length),
7 string (u16 BE length), 8 timestamp (ms, i64), 9 uuid (16 bytes). The CRC is the ordinary
CRC-32 of zlib / gzip.

Bedrock Runtime streams send ``:message-type`` ``event`` messages whose ``:event-type`` names
the member of the stream union (``chunk``, ``messageStart``, ``metadata``, ...) with a JSON
payload of that member, and ``:message-type`` ``exception`` messages whose ``:exception-type``
names a modelled error (``modelStreamErrorException``, ``throttlingException``, ...).
"""

from __future__ import annotations

import base64
import json
import struct
import uuid
import zlib
from collections.abc import Iterable, Mapping
from typing import Any

from replay.server import register_framing

__all__ = [
    "CONTENT_TYPE",
    "FRAMING",
    "converse_events",
    "encode_frame",
    "encode_frames",
    "encode_message",
    "error_message",
    "event_message",
    "exception_message",
    "invoke_chunk",
    "invoke_chunks",
]

CONTENT_TYPE = "application/vnd.amazon.eventstream"
FRAMING = "aws-eventstream"

HeaderValue = str | bytes | bool | int | uuid.UUID


def _crc(data: bytes) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


def _header(name: str, value: HeaderValue) -> bytes:
    raw_name = name.encode("utf-8")
    if len(raw_name) > 255:
        raise ValueError(f"header name too long: {name!r}")
    out = struct.pack(">B", len(raw_name)) + raw_name
    if isinstance(value, bool):
        return out + struct.pack(">B", 0 if value else 1)
    if isinstance(value, uuid.UUID):
        return out + struct.pack(">B", 9) + value.bytes
    if isinstance(value, int):
        return out + struct.pack(">Bi", 4, value)
    if isinstance(value, bytes):
        return out + struct.pack(">BH", 6, len(value)) + value
    encoded = value.encode("utf-8")
    return out + struct.pack(">BH", 7, len(encoded)) + encoded


def encode_message(headers: Mapping[str, HeaderValue], payload: bytes) -> bytes:
    """One framed event-stream message."""
    header_bytes = b"".join(_header(name, value) for name, value in headers.items())
    total = 16 + len(header_bytes) + len(payload)
    prelude = struct.pack(">II", total, len(header_bytes))
    head = prelude + struct.pack(">I", _crc(prelude)) + header_bytes + payload
    return head + struct.pack(">I", _crc(head))


def event_message(event_type: str, body: Mapping[str, Any] | bytes) -> bytes:
    """An ``event`` message; a mapping is sent as its JSON."""
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    return encode_message(
        {":event-type": event_type, ":content-type": "application/json", ":message-type": "event"},
        payload,
    )


def exception_message(exception_type: str, message: str, **fields: Any) -> bytes:
    """A modelled exception in the stream (botocore raises ``EventStreamError`` on it)."""
    payload = json.dumps({"message": message, **fields}).encode()
    return encode_message(
        {
            ":exception-type": exception_type,
            ":content-type": "application/json",
            ":message-type": "exception",
        },
        payload,
    )


def error_message(code: str, message: str) -> bytes:
    """An unmodelled ``error`` message (``:error-code`` / ``:error-message`` headers)."""
    return encode_message(
        {":error-code": code, ":error-message": message, ":message-type": "error"}, b""
    )


def invoke_chunk(event: Mapping[str, Any]) -> bytes:
    """One ``invoke_model_with_response_stream`` chunk: the family event, base64 in ``bytes``."""
    data = base64.b64encode(json.dumps(event).encode()).decode()
    return event_message("chunk", {"bytes": data})


def invoke_chunks(events: Iterable[Mapping[str, Any]]) -> list[bytes]:
    return [invoke_chunk(e) for e in events]


def converse_events(events: Iterable[Mapping[str, Any]]) -> list[bytes]:
    """``converse_stream`` events given as boto3 yields them: ``{"metadata": {...}}``."""
    out: list[bytes] = []
    for event in events:
        ((name, body),) = event.items()
        out.append(event_message(name, body))
    return out


def encode_frame(frame: Mapping[str, Any]) -> bytes:
    """One frame of a fixture file's ``frames`` list, framed.

    A frame is one of ``{"event": NAME, "body": {...}}`` (a raw union member, e.g. a
    ``converse_stream`` ``metadata`` event), ``{"chunk": {...}}`` (an invoke-stream chunk: the
    family's event, sent base64 in ``bytes``), ``{"exception": TYPE, "message": TEXT}`` or
    ``{"error": CODE, "message": TEXT}``.
    """
    if "chunk" in frame:
        return invoke_chunk(frame["chunk"])
    if "event" in frame:
        return event_message(frame["event"], frame.get("body", {}))
    if "exception" in frame:
        return exception_message(frame["exception"], frame.get("message", ""))
    if "error" in frame:
        return error_message(frame["error"], frame.get("message", ""))
    raise ValueError(f"unknown event-stream frame {frame!r}")


def encode_frames(frames: Iterable[Mapping[str, Any]]) -> list[bytes]:
    return [encode_frame(f) for f in frames]


# ``Reply.framed(frames, framing="aws-eventstream")`` and ``{"framing": "aws-eventstream"}`` fixtures
register_framing(FRAMING, encode_frame, CONTENT_TYPE)
