"""Policy files: TOML -> validated :class:`~jevons.policy.model.Policy`, with errors that name
the file, the line and the field.

TOML floats are read as exact Decimals (``parse_float=Decimal``). A pydantic error location
(``plans.pro.classes.base.floor``) is mapped back to a line by locating the table header and
then the key in the source text; when the key is absent (a missing field) the line of its
table is given.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from jevons.policy.model import LocatedError, Policy

__all__ = ["PolicyError", "PolicySet", "load_policies", "load_policy", "locate", "parse_policy"]


class PolicyError(ValueError):
    """A policy that cannot be used: ``file:line: field: message``."""

    def __init__(self, file: str, line: int | None, field: str, message: str) -> None:
        where = f"{file}:{line}" if line else file
        super().__init__(f"{where}: {field}: {message}" if field else f"{where}: {message}")
        self.file = file
        self.line = line
        self.field = field
        self.message = message


_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")


def _split_key(raw: str) -> list[str]:
    """Dotted TOML key -> parts (quotes removed)."""
    parts = re.findall(r'"([^"]*)"|\'([^\']*)\'|([^.\s]+)', raw)
    return [a or b or c for a, b, c in parts]


@dataclass(frozen=True, slots=True)
class _Header:
    line: int  # 1-based
    path: tuple[str | int, ...]


def _headers(lines: Sequence[str]) -> list[_Header]:
    out: list[_Header] = []
    counts: dict[tuple[str, ...], int] = {}
    for i, text in enumerate(lines, 1):
        m = _HEADER.match(text)
        if not m:
            continue
        keys = tuple(_split_key(m.group(2)))
        path: list[str | int] = []
        # an earlier array-of-tables prefix inserts its current index into the path
        for n in range(1, len(keys) + 1):
            path.append(keys[n - 1])
            prefix = keys[:n]
            if n < len(keys) and prefix in counts:
                path.append(counts[prefix] - 1)
        if m.group(1) == "[[":
            counts[keys] = counts.get(keys, 0) + 1
            path.append(counts[keys] - 1)
        out.append(_Header(i, tuple(path)))
    return out


def locate(text: str, loc: Sequence[str | int]) -> int | None:
    """The 1-based line of the value at ``loc`` in TOML ``text`` (best effort)."""
    lines = text.splitlines()
    headers = _headers(lines)
    best: _Header | None = None
    best_len = -1
    for h in headers:
        n = len(h.path)
        if n <= len(loc) and tuple(loc[:n]) == h.path and n > best_len:
            best, best_len = h, n
    start = best.line if best else 0
    rest = [str(p) for p in loc[max(best_len, 0):] if not isinstance(p, int)]
    if not rest:
        return best.line if best else None
    end = len(lines)
    for h in headers:
        if h.line > start:
            end = h.line - 1
            break
    # the last key first (most precise), then the enclosing ones
    for key in reversed(rest):
        pat = re.compile(
            r'(^|[\s{,.])("' + re.escape(key) + r'"|' + re.escape(key) + r')\s*(=|\.)'
        )
        for i in range(start, end):
            if pat.search(lines[i].split("#", 1)[0]):
                return i + 1
    return best.line if best else None


def _field(loc: Sequence[str | int]) -> str:
    out = ""
    for p in loc:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def parse_policy(text: str, *, file: str = "<policy>") -> Policy:
    """Validate a policy from TOML text; errors name ``file``, line and field."""
    try:
        data = tomllib.loads(text, parse_float=Decimal)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"line (\d+)", str(exc))
        raise PolicyError(file, int(m.group(1)) if m else None, "", f"invalid TOML: {exc}") from exc
    return policy_from_dict(data, file=file, text=text)


def policy_from_dict(data: dict[str, Any], *, file: str = "<policy>", text: str = "") -> Policy:
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = [p for p in first["loc"] if isinstance(p, str | int)]
        msg = str(first["msg"]).removeprefix("Value error, ")
        cause = (first.get("ctx") or {}).get("error")
        if isinstance(cause, LocatedError):
            loc = [*loc, *cause.loc]
            msg = str(cause)
        raise PolicyError(file, locate(text, loc) if text else None, _field(loc), msg) from exc


def load_policy(path: str | Path) -> Policy:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(str(p), None, "", f"cannot read policy file: {exc.strerror}") from exc
    return parse_policy(text, file=str(p))


class PolicySet:
    """Effective-dated policy versions: an event is rated under the latest version whose
    ``effective_from`` is at or before it (a version without one is effective since always)."""

    def __init__(self, policies: Iterable[Policy]) -> None:
        self.versions = sorted(policies, key=lambda p: (p.effective_from is not None, p.effective_from))
        if not self.versions:
            raise ValueError("a policy set needs at least one policy")
        starts = [p.effective_from for p in self.versions]
        if len(set(starts)) != len(starts):
            raise ValueError("two policy versions take effect at the same time")

    def at(self, when: datetime) -> Policy:
        chosen = self.versions[0]
        for p in self.versions:
            if p.effective_from is None or p.effective_from <= when:
                chosen = p
        if chosen.effective_from is not None and chosen.effective_from > when:
            raise LookupError(f"no policy version is effective at {when.isoformat()}")
        return chosen

    def boundaries(self, since: datetime, until: datetime) -> list[datetime]:
        return [p.effective_from for p in self.versions
                if p.effective_from is not None and since < p.effective_from < until]


def load_policies(paths: Sequence[str | Path]) -> PolicySet:
    return PolicySet(load_policy(p) for p in paths)
