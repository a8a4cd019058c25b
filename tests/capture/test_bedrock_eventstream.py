"""The AWS event-stream encoder of the replay server, checked against botocore's own decoder
(which validates both CRCs) and a published test vector."""

from __future__ import annotations

import base64
import json
import uuid

import pytest
from botocore.eventstream import ChecksumMismatch, EventStreamBuffer

from replay import Reply
from replay.eventstream import (
    CONTENT_TYPE,
    FRAMING,
    encode_frame,
    encode_message,
    error_message,
    event_message,
    exception_message,
    invoke_chunk,
)


def _decode(*messages: bytes) -> list[tuple[dict[str, object], bytes]]:
    buffer = EventStreamBuffer()
    for message in messages:
        buffer.add_data(message)
    return [(m.headers, m.payload) for m in buffer]


def test_published_vector_without_headers() -> None:
    # total 30 = 16 bytes of overhead + 14 payload bytes; CRCs as AWS computes them
    frame = encode_message({}, b'{"foo": "bar"}')
    assert frame[:12] == bytes([0, 0, 0, 30, 0, 0, 0, 0, 186, 242, 246, 138])
    assert frame[-4:] == bytes([174, 114, 88, 228])


def test_published_vector_with_a_string_header() -> None:
    frame = encode_message({"content-type": "application/json"}, b'{"foo": "bar"}')
    assert frame[:12] == bytes([0, 0, 0, 62, 0, 0, 0, 32, 64, 93, 249, 70])
    assert frame[-4:] == bytes([111, 162, 191, 59])


def test_bedrock_messages_round_trip_through_botocore() -> None:
    decoded = _decode(
        event_message("metadata", {"usage": {"inputTokens": 3}}),
        invoke_chunk({"type": "message_stop"}),
        exception_message("throttlingException", "slow down"),
        error_message("InternalFailure", "boom"),
    )
    assert decoded[0] == (
        {":event-type": "metadata", ":content-type": "application/json", ":message-type": "event"},
        b'{"usage": {"inputTokens": 3}}',
    )
    chunk_headers, chunk_payload = decoded[1]
    assert chunk_headers[":event-type"] == "chunk"
    assert json.loads(base64.b64decode(json.loads(chunk_payload)["bytes"])) == {"type": "message_stop"}
    assert decoded[2][0][":message-type"] == "exception"
    assert decoded[2][0][":exception-type"] == "throttlingException"
    assert json.loads(decoded[2][1]) == {"message": "slow down"}
    assert decoded[3] == ({":error-code": "InternalFailure", ":error-message": "boom",
                           ":message-type": "error"}, b"")


def test_every_header_value_type_round_trips() -> None:
    ident = uuid.UUID("12345678-1234-5678-1234-567812345678")
    headers = {"t": True, "f": False, "i": -7, "u": ident, "b": b"\x00\x01", "s": "é"}
    ((decoded, payload),) = _decode(encode_message(headers, b"xyz"))
    assert decoded == {"t": True, "f": False, "i": -7, "u": ident.bytes, "b": b"\x00\x01", "s": "é"}
    assert payload == b"xyz"


def test_a_corrupted_message_fails_botocore_crc_check() -> None:
    frame = bytearray(event_message("messageStart", {"role": "assistant"}))
    frame[20] ^= 0xFF
    with pytest.raises(ChecksumMismatch):
        _decode(bytes(frame))


def test_registered_as_replay_framing() -> None:
    reply = Reply.framed([{"event": "messageStop", "body": {"stopReason": "end_turn"}},
                          {"chunk": {"a": 1}}, {"exception": "validationException", "message": "no"}],
                         framing=FRAMING)
    assert reply.headers["content-type"] == CONTENT_TYPE
    assert reply.chunks is not None and len(reply.chunks) == 3
    assert reply.chunks[0] == encode_frame({"event": "messageStop", "body": {"stopReason": "end_turn"}})
    with pytest.raises(ValueError):
        encode_frame({"nonsense": 1})
