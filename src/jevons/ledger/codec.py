"""The ledger's stored form of an ``Event``: one compact, layout-tagged JSON array per event.

Why this form (issue 4): the row is the write cost. The dataclass as a JSON object
(``msgspec`` encoding ``Event`` directly, the stored form of schema version 1) is ~1.3 KB, most
of it field names and default values; a database insert costs about 7 us plus 7 us per KB on
SQLite, and PostgreSQL is bound the same way. The positional form is the same values without
the names: ``["<layout>", id, idempotency_key, timestamp, ..., [usage...], [cost..., [[line...],
...]], ...]``, ~0.5 KB. It is still plain JSON text (readable in the database, one line in
the append log: no newline can occur in it), Decimals as strings, times as RFC 3339.
Encoding reads the fields with one expression generated from the dataclass fields at import
time and lets msgspec write the tuples (~3 us an event), which costs less than msgspec encoding
the dataclass by name. The same bytes are the
append-log line and the database body: nothing is encoded twice.

Layouts: the field order comes from the dataclasses (``Event``, ``Usage``, ``Cost``,
``CostLine``) at import time, so the form follows any change to them by itself. Its
fingerprint (``LAYOUT``) is the first element of every array, and its spec (the field names,
nested) is recorded in the ledger (``{p}body_layouts``) by every process that opens it, before
anything is written with it. A body written by another version of the dataclasses is decoded
by name through its recorded spec (fields that no longer exist are dropped, new ones take their
defaults), exactly like a JSON object would be. JSON objects (the version 1 rows and logs, and
``Event.to_dict()`` lines) are read as before.

``index_row`` builds the database row (the body plus the columns the ledger queries on) on the
hot path from the event object and the bytes already encoded, so the background drain parses
nothing. ``decode_index`` reads those columns back out of a log line without building the
``Event``: it is needed only when recovering the log of a process that died.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
import typing
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from jevons.events import Event

__all__ = [
    "LAYOUT",
    "LAYOUT_SPEC",
    "ROW_COLUMNS",
    "IndexRow",
    "UnknownLayoutError",
    "decode_event",
    "decode_index",
    "encode_event",
    "from_micros",
    "index_row",
    "known_layout",
    "register_layout",
    "ts_micros",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)

_encoder = msgspec.json.Encoder(decimal_format="string")
_object_decoder = msgspec.json.Decoder(Event)  # the JSON-object forms (v1 rows, to_dict lines)
_any_decoder = msgspec.json.Decoder()


class UnknownLayoutError(ValueError):
    """A positional body whose layout this process has not loaded (see ``register_layout``)."""


# -- layouts: derived from the dataclasses --------------------------------------------------
# A spec is a list of fields; a field is a name (a plain value), or [name, spec] (a nested
# dataclass), or [name, [spec]] (a tuple of nested dataclasses).
_Spec = list[Any]


def _tuple_of(types: Sequence[Any]) -> Any:
    """``tuple[t0, t1, ...]`` made at run time: a msgspec decode type for a positional array."""
    return tuple.__class_getitem__(tuple(types))


def _nested(hint: Any) -> tuple[str, type] | None:
    """("one", cls) for a dataclass-typed field, ("many", cls) for ``tuple[cls, ...]``."""
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return "one", hint
    args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple and len(args) == 2 and args[1] is Ellipsis:
        inner = args[0]
        if dataclasses.is_dataclass(inner) and isinstance(inner, type):
            return "many", inner
    return None


def _plan(cls: type) -> tuple[_Spec, list[Any], Callable[[Any], Any]]:
    """(spec, msgspec decode types of the values, object-from-values function); the values of
    an object are read by ``_values_source``'s generated expression."""
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    if not all(f.init for f in fields):  # the values are passed to the constructor in order
        raise TypeError(f"{cls.__name__}: the stored form needs every field in __init__")
    names = tuple(f.name for f in fields)
    spec: _Spec = []
    types: list[Any] = []
    subs: list[tuple[int, str, Callable[[Any], Any]]] = []
    for i, name in enumerate(names):
        nested = _nested(hints[name])
        if nested is None:
            spec.append(name)
            types.append(hints[name])
            continue
        kind, inner = nested
        sub_spec, sub_type, sub_make = _plan(inner)
        spec.append([name, sub_spec if kind == "one" else [sub_spec]])
        one = _tuple_of(sub_type)
        types.append(one if kind == "one" else _tuple_of((one, ...)))
        subs.append((i, kind, sub_make))

    def make(vals: Any) -> Any:
        if subs:
            vals = list(vals)
            for i, kind, sub_make in subs:
                v = vals[i]
                vals[i] = sub_make(v) if kind == "one" else tuple(sub_make(x) for x in v)
        return cls(*vals)

    return spec, types, make


def _values_source(cls: type, var: str, depth: int = 0) -> list[str]:
    """Python expressions of the positional values of a ``cls`` held in ``var`` (nested
    dataclasses as tuples, tuples of them as lists), in ``_plan``'s order, read by one
    generated expression instead of a call per nested object (~1.5 us of the ~4.5 us an
    event's encoding took; the append is on the caller's hot path)."""
    hints = typing.get_type_hints(cls)
    out: list[str] = []
    for f in dataclasses.fields(cls):
        if not f.name.isidentifier():  # dataclass fields always are; checked before eval
            raise TypeError(f"{cls.__name__}: field {f.name!r} is not an identifier")
        access = f"{var}.{f.name}"
        nested = _nested(hints[f.name])
        if nested is None:
            out.append(access)
        elif nested[0] == "one":
            out.append("(" + ", ".join(_values_source(nested[1], access, depth + 1)) + ",)")
        else:
            item = f"_x{depth}"
            inner = ", ".join(_values_source(nested[1], item, depth + 1))
            out.append(f"[({inner},) for {item} in {access}]")
    return out


_EVENT_SPEC, _EVENT_TYPES, _make_event = _plan(Event)
#: (layout, *values of the event): what ``encode_event`` writes
_event_row: Callable[[Event, str], tuple[Any, ...]] = eval(  # field names only (checked above)
    "lambda o, layout: (layout, " + ", ".join(_values_source(Event, "o")) + ")"
)
#: the field names of the positional form (nested), recorded in the ledger per fingerprint
LAYOUT_SPEC: str = json.dumps(_EVENT_SPEC, separators=(",", ":"))
#: the fingerprint of this process's positional form: the first element of every body
LAYOUT: str = "L" + hashlib.sha256(LAYOUT_SPEC.encode()).hexdigest()[:10]
_layout_decoder = msgspec.json.Decoder(_tuple_of((str, *_EVENT_TYPES)))
_other_layouts: dict[str, _Spec] = {}
_layouts_lock = threading.Lock()


def register_layout(layout: str, spec: str) -> None:
    """Make bodies of ``layout`` (written by another version of the dataclasses) readable."""
    if layout != LAYOUT:
        parsed = json.loads(spec)
        with _layouts_lock:
            _other_layouts[layout] = parsed


def known_layout(layout: str) -> bool:
    return layout == LAYOUT or layout in _other_layouts


def _named(spec: _Spec, values: list[Any]) -> dict[str, Any]:
    """A positional value list of ``spec`` as the dict the JSON-object form would have been."""
    out: dict[str, Any] = {}
    for field, value in zip(spec, values, strict=False):
        if isinstance(field, str):
            out[field] = value
        elif isinstance(field[1][0], list):  # [name, [spec]]: a tuple of dataclasses
            out[field[0]] = None if value is None else [_named(field[1][0], v) for v in value]
        else:
            out[field[0]] = None if value is None else _named(field[1], value)
    return out


def _layout_of(data: bytes | str) -> str:
    """The layout tag of a positional body (its first element, a short plain string)."""
    text = data if isinstance(data, str) else data[:40].decode("ascii", "replace")
    start = text.find('"') + 1
    return text[start : text.find('"', start)]


# -- events -----------------------------------------------------------------------------------
def encode_event(event: Event) -> bytes:
    """The event in its stored form: compact positional JSON (no newline in it, none after)."""
    return _encoder.encode(_event_row(event, LAYOUT))


def decode_event(data: bytes | str) -> Event:
    """An ``Event`` from its stored form of any layout this process knows, or from a JSON
    object (a version 1 body, ``Event.to_dict()``); raises ``UnknownLayoutError``."""
    head = data.lstrip()[:1]
    if head in (b"{", "{"):
        return _object_decoder.decode(data)
    layout = _layout_of(data)
    if layout == LAYOUT:
        event: Event = _make_event(_layout_decoder.decode(data)[1:])
        return event
    spec = _other_layouts.get(layout)
    if spec is None:
        raise UnknownLayoutError(f"stored event layout {layout!r} is not registered")
    raw = _any_decoder.decode(data)
    return msgspec.convert(_named(spec, raw[1:]), Event, strict=False)


def ts_micros(ts: datetime) -> int:
    """Microseconds since the Unix epoch, exactly (naive times are taken as UTC)."""
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return (ts - _EPOCH) // _ONE_US


def from_micros(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


# -- database rows ----------------------------------------------------------------------------
# (idempotency_key, ts_us, customer, run_id, model, model_requested, status, cost_status, body)
IndexRow = tuple[str, int, str | None, str | None, str, str, str, str, str]

#: the ``{p}events`` columns an ``IndexRow`` fills, in order
ROW_COLUMNS = (
    "idempotency_key", "ts_us", "customer", "run_id", "model", "model_requested", "status",
    "cost_status", "body",
)


def index_row(event: Event, body: bytes | None = None) -> IndexRow:
    """The database row of an ``Event`` object (``body``: its ``encode_event`` bytes, when
    already encoded)."""
    c = event.cost
    raw = body if body is not None else encode_event(event)
    ts = event.timestamp
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return (
        event.idempotency_key, (ts - _EPOCH) // _ONE_US, event.customer, event.run_id,
        c.model or event.model_requested, event.model_requested, event.status, c.status,
        raw.decode(),
    )


class _CostIndex(msgspec.Struct):
    status: str
    model: str | None = None


class _EventIndex(msgspec.Struct):
    idempotency_key: str
    timestamp: datetime
    model_requested: str
    cost: _CostIndex
    customer: str | None = None
    run_id: str | None = None
    status: str = "ok"


_index_decoder = msgspec.json.Decoder(_EventIndex)


def _index_type() -> tuple[Any, dict[str, int], dict[str, int]]:
    """A decode type of this layout that parses only the indexed fields (the rest is skipped
    as ``msgspec.Raw``), and the positions of those fields in the event and in its cost."""
    wanted = {"idempotency_key", "timestamp", "model_requested", "customer", "run_id", "status"}
    hints = typing.get_type_hints(Event)
    ev_pos: dict[str, int] = {}
    cost_pos: dict[str, int] = {}
    types: list[Any] = [str]
    for i, field in enumerate(_EVENT_SPEC, start=1):
        name = field if isinstance(field, str) else field[0]
        if name in wanted:
            ev_pos[name] = i
            types.append(hints[name])
        elif name == "cost":
            parts: list[Any] = []
            for j, sub in enumerate(field[1]):
                sub_name = sub if isinstance(sub, str) else sub[0]
                if sub_name in ("status", "model"):
                    cost_pos[sub_name] = j
                    parts.append(str | None)
                else:
                    parts.append(msgspec.Raw)
            ev_pos["cost"] = i
            types.append(_tuple_of(parts))
        else:
            types.append(msgspec.Raw)
    return _tuple_of(types), ev_pos, cost_pos


_INDEX_TYPE, _IX, _IXC = _index_type()
_layout_index_decoder = msgspec.json.Decoder(_INDEX_TYPE)


def decode_index(data: bytes) -> IndexRow:
    """The database row of one stored-form line (any known layout, or a JSON object)."""
    if data.lstrip()[:1] == b"{":
        ix = _index_decoder.decode(data)
        c = ix.cost
        return (
            ix.idempotency_key, ts_micros(ix.timestamp), ix.customer, ix.run_id,
            c.model or ix.model_requested, ix.model_requested, ix.status, c.status,
            data.decode(),
        )
    if _layout_of(data) != LAYOUT:
        return index_row(decode_event(data), data)
    v = _layout_index_decoder.decode(data)
    cost = v[_IX["cost"]]
    requested = v[_IX["model_requested"]]
    return (
        v[_IX["idempotency_key"]], ts_micros(v[_IX["timestamp"]]), v[_IX["customer"]],
        v[_IX["run_id"]], cost[_IXC["model"]] or requested, requested, v[_IX["status"]],
        cost[_IXC["status"]], data.decode(),
    )
