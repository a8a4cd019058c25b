"""Canonical token usage of one LLM call, in OpenTelemetry GenAI semantics.

``input_tokens`` is the whole prompt, cache reads and cache writes included; ``output_tokens``
is the whole completion, reasoning included. Every breakdown field is a *subset* of its total.
Adapters convert each provider's own accounting into this shape, so that pricing, policy and
billing never need to know which provider a call went to.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

__all__ = ["USAGE_FIELDS", "Usage"]


@dataclass(frozen=True, slots=True)
class Usage:
    """Token and request counts of one call (or a sum of calls).

    Subset rules (checked on construction; a violation is a ``ValueError`` naming the field):

    - ``cache_read_tokens + cache_write_5m_tokens + cache_write_1h_tokens <= input_tokens``
    - ``audio_input_tokens + image_input_tokens <= input_tokens`` (modality is orthogonal to caching)
    - ``reasoning_tokens + audio_output_tokens + image_output_tokens <= output_tokens``

    A cache write whose TTL the provider does not report is counted as a 5-minute write.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_5m_tokens: int = 0
    cache_write_1h_tokens: int = 0
    reasoning_tokens: int = 0
    audio_input_tokens: int = 0
    audio_output_tokens: int = 0
    image_input_tokens: int = 0
    image_output_tokens: int = 0
    requests: int = 1
    web_search_requests: int = 0
    tool_calls: int = 0

    def __post_init__(self) -> None:
        for name in USAGE_FIELDS:
            value = getattr(self, name)
            # bool is an int subclass but never a count
            if type(value) is not int:
                if isinstance(value, int) and not isinstance(value, bool):
                    object.__setattr__(self, name, int(value))
                    continue
                raise ValueError(f"Usage.{name} must be a non-negative integer, got {value!r}")
            if value < 0:
                raise ValueError(f"Usage.{name} must be a non-negative integer, got {value!r}")
        cached = self.cache_read_tokens + self.cache_write_5m_tokens + self.cache_write_1h_tokens
        if cached > self.input_tokens:
            raise ValueError(
                "Usage.cache_read_tokens + cache_write_5m_tokens + cache_write_1h_tokens "
                f"({cached}) exceeds input_tokens ({self.input_tokens})"
            )
        modal_in = self.audio_input_tokens + self.image_input_tokens
        if modal_in > self.input_tokens:
            raise ValueError(
                f"Usage.audio_input_tokens + image_input_tokens ({modal_in}) "
                f"exceeds input_tokens ({self.input_tokens})"
            )
        out_parts = self.reasoning_tokens + self.audio_output_tokens + self.image_output_tokens
        if out_parts > self.output_tokens:
            raise ValueError(
                "Usage.reasoning_tokens + audio_output_tokens + image_output_tokens "
                f"({out_parts}) exceeds output_tokens ({self.output_tokens})"
            )

    @property
    def cache_write_tokens(self) -> int:
        """All cache writes, whatever their TTL."""
        return self.cache_write_5m_tokens + self.cache_write_1h_tokens

    @property
    def uncached_input_tokens(self) -> int:
        """Input tokens that were neither read from nor written to a cache."""
        return (
            self.input_tokens
            - self.cache_read_tokens
            - self.cache_write_5m_tokens
            - self.cache_write_1h_tokens
        )

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def __add__(self, other: Usage) -> Usage:
        if not isinstance(other, Usage):
            return NotImplemented
        return Usage(**{n: getattr(self, n) + getattr(other, n) for n in USAGE_FIELDS})

    def to_dict(self, *, compact: bool = False) -> dict[str, int]:
        """Plain dict; ``compact`` drops zero counts (``requests`` is always kept)."""
        out = {n: getattr(self, n) for n in USAGE_FIELDS}
        if compact:
            out = {k: v for k, v in out.items() if v or k == "requests"}
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Usage:
        unknown = set(data) - set(USAGE_FIELDS)
        if unknown:
            raise ValueError(f"Usage has no field(s) {sorted(unknown)}")
        return cls(**data)


USAGE_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Usage))
