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
        # fast path (every count an exact non-negative int): one pass of cheap tests; anything
        # else goes through the field-by-field check below, which names the offending field
        a, b, c, d, e, f, g, h, i, j, k, m, n = (
            self.input_tokens, self.output_tokens, self.cache_read_tokens, self.cache_write_5m_tokens,
            self.cache_write_1h_tokens, self.reasoning_tokens, self.audio_input_tokens,
            self.audio_output_tokens, self.image_input_tokens, self.image_output_tokens,
            self.requests, self.web_search_requests, self.tool_calls,
        )
        if not (
            type(a) is int and type(b) is int and type(c) is int and type(d) is int
            and type(e) is int and type(f) is int and type(g) is int and type(h) is int
            and type(i) is int and type(j) is int and type(k) is int and type(m) is int
            and type(n) is int and (a | b | c | d | e | f | g | h | i | j | k | m | n) >= 0
            and c + d + e <= a and g + i <= a and f + h + j <= b
        ):
            self._check()

    def _check(self) -> None:
        """Normalise int subclasses and raise the ``ValueError`` that names the broken rule."""
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

    @classmethod
    def of(
        cls,
        input_tokens: int,
        output_tokens: int,
        cache_read_tokens: int = 0,
        cache_write_5m_tokens: int = 0,
        cache_write_1h_tokens: int = 0,
        reasoning_tokens: int = 0,
        audio_input_tokens: int = 0,
        audio_output_tokens: int = 0,
        image_input_tokens: int = 0,
        image_output_tokens: int = 0,
        requests: int = 1,
        web_search_requests: int = 0,
        tool_calls: int = 0,
    ) -> Usage:
        """``Usage(...)`` for the capture hot path: positional counts in field order, the same
        rules and the same ``ValueError``s, about three times cheaper (the slots are filled
        directly instead of through the frozen dataclass' ``object.__setattr__``)."""
        # (no tuple packing here: every allocation on the hot path counts towards a GC pass)
        a = input_tokens
        b = output_tokens
        c = cache_read_tokens
        d = cache_write_5m_tokens
        e = cache_write_1h_tokens
        f = reasoning_tokens
        g = audio_input_tokens
        h = audio_output_tokens
        i = image_input_tokens
        j = image_output_tokens
        k = requests
        m = web_search_requests
        n = tool_calls
        if not (
            cls is Usage
            and type(a) is int and type(b) is int and type(c) is int and type(d) is int
            and type(e) is int and type(f) is int and type(g) is int and type(h) is int
            and type(i) is int and type(j) is int and type(k) is int and type(m) is int
            and type(n) is int and (a | b | c | d | e | f | g | h | i | j | k | m | n) >= 0
            and c + d + e <= a and g + i <= a and f + h + j <= b
        ):
            return cls(a, b, c, d, e, f, g, h, i, j, k, m, n)  # coerces, or raises the named error
        obj: Usage = _new(Usage)
        s_a, s_b, s_c, s_d, s_e, s_f, s_g, s_h, s_i, s_j, s_k, s_m, s_n = _SETTERS
        s_a(obj, a)
        s_b(obj, b)
        s_c(obj, c)
        s_d(obj, d)
        s_e(obj, e)
        s_f(obj, f)
        s_g(obj, g)
        s_h(obj, h)
        s_i(obj, i)
        s_j(obj, j)
        s_k(obj, k)
        s_m(obj, m)
        s_n(obj, n)
        return obj

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

    def uncached_input_split(self) -> tuple[int, int, int]:
        """``(text, audio, image)`` tokens of the uncached input, which they add up to.

        Modality is orthogonal to caching and no provider says which cached tokens were audio
        or image, so audio is taken from the uncached input first (capped by it), then image
        from what is left. One rule for everything that splits input by modality: the cost
        core prices these parts, and token-mode sinks bill them (``jevons.sinks.buckets``)."""
        uncached = self.uncached_input_tokens
        audio = min(self.audio_input_tokens, uncached)
        image = min(self.image_input_tokens, uncached - audio)
        return uncached - audio - image, audio, image

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

# ``Usage.of``: the slot descriptors' setters, in field order (bypassing the frozen __setattr__)
_new = object.__new__
_SETTERS: tuple[Any, ...] = tuple(getattr(Usage, name).__set__ for name in USAGE_FIELDS)
assert Usage.__slots__ == USAGE_FIELDS
