"""The usage buckets token-mode sinks bill (Lago token mode, Stripe meter events, OpenMeter's
``*_billable`` fields): disjoint, so every token is billed once, and split where prices differ.

- ``input``: uncached input (``input_tokens`` minus cache reads and cache writes);
- ``cached_input``: cache reads;
- ``cache_write``: 5-minute cache writes; ``cache_write_1h``: 1-hour cache writes (priced
  higher: 2x input against 1.25x for Anthropic models, so a single bucket could not be billed
  right);
- ``output``: all output, reasoning included;
- ``web_search``: searches (billed per search);
- ``requests``: one per call, for a price with a per-request part. Opt in (give it a code):
  by default it is not sent, since it would add one billing record to every call.

Token classes that models price at their own rates can be billed as their own buckets, opt in
(give one a code): ``reasoning``, ``audio_output`` and ``image_output`` are then taken out of
``output``, and ``audio_input`` and ``image_input`` out of ``input`` (the uncached input,
split by ``Usage.uncached_input_split``, the cost core's rule), so the buckets stay disjoint.
Without a code they stay inside ``output`` / ``input``, as before.

``metric_codes(sink, overrides)`` is the bucket -> code/event-name mapping a sink sends: the
defaults merged with the config's ``metric_codes``. Two buckets under one code are refused: their
records would share an idempotency key (``<key>:<code>``), and the billing system would keep
only the first, silently dropping the other's tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from jevons.usage import Usage

__all__ = ["BUCKETS", "CARVED_FROM", "DEFAULT_METRIC_CODES", "bucket_counts", "metric_codes"]

BUCKETS: dict[str, Callable[[Usage], int]] = {
    "input": lambda u: u.uncached_input_tokens,
    "cached_input": lambda u: u.cache_read_tokens,
    "cache_write": lambda u: u.cache_write_5m_tokens,
    "cache_write_1h": lambda u: u.cache_write_1h_tokens,
    "output": lambda u: u.output_tokens,
    "web_search": lambda u: u.web_search_requests,
    "requests": lambda u: u.requests,
}

#: opt-in buckets carved out of a default one: given a code, their tokens leave the parent
CARVED_FROM: dict[str, str] = {
    "audio_input": "input",
    "image_input": "input",
    "reasoning": "output",
    "audio_output": "output",
    "image_output": "output",
}


def _carved(u: Usage) -> dict[str, int]:
    """The count of each opt-in bucket (the input split made once)."""
    _, audio_input, image_input = u.uncached_input_split()
    return {"audio_input": audio_input, "image_input": image_input, "reasoning": u.reasoning_tokens,
            "audio_output": u.audio_output_tokens, "image_output": u.image_output_tokens}


#: every bucket a sink can send, in the order its records go out (parts after their parent)
_ORDER = ("input", "audio_input", "image_input", "cached_input", "cache_write", "cache_write_1h",
          "output", "reasoning", "audio_output", "image_output", "web_search", "requests")
assert set(_ORDER) == set(BUCKETS) | set(CARVED_FROM)

#: the buckets sent unless configured otherwise (``requests`` is opt-in), and their codes
DEFAULT_METRIC_CODES: dict[str, str] = {
    "input": "llm_input_tokens",
    "cached_input": "llm_cached_input_tokens",
    "cache_write": "llm_cache_write_tokens",
    "cache_write_1h": "llm_cache_write_1h_tokens",
    "output": "llm_output_tokens",
    "web_search": "llm_web_searches",
}


def metric_codes(sink: str, overrides: Mapping[str, str] | None,
                 defaults: Mapping[str, str] = DEFAULT_METRIC_CODES) -> dict[str, str]:
    """Bucket -> code for ``sink``: ``defaults``, then ``overrides``. ``ValueError`` for an
    unknown bucket or a code given to two buckets."""
    unknown = set(overrides or {}) - set(_ORDER)
    if unknown:
        raise ValueError(f"sink {sink}: unknown usage bucket(s) {sorted(unknown)}; known: {sorted(_ORDER)}")
    codes = {**defaults, **(overrides or {})}
    seen: dict[str, str] = {}
    for bucket, code in codes.items():
        if code in seen:
            raise ValueError(f"sink {sink}: usage buckets {seen[code]!r} and {bucket!r} both use the code "
                             f"{code!r}; each bucket needs its own (their records would share an id)")
        seen[code] = bucket
    return codes


def bucket_counts(usage: Usage, codes: Mapping[str, str], *, zeros: bool = False) -> list[tuple[str, int]]:
    """``(code, count)`` of each bucket in ``codes`` with a non-zero count (every one with
    ``zeros``), in bucket order; a carved-out bucket in ``codes`` (``CARVED_FROM``) leaves
    its parent's count."""
    counts: dict[str, int] = {}
    for bucket, count_of in BUCKETS.items():
        if bucket in codes:
            counts[bucket] = count_of(usage)
    if not codes.keys().isdisjoint(CARVED_FROM):
        parts = _carved(usage)
        for bucket, parent in CARVED_FROM.items():
            if bucket in codes:
                counts[bucket] = parts[bucket]
                if parent in counts:
                    counts[parent] -= parts[bucket]
    return [(codes[b], counts[b]) for b in _ORDER if b in counts and (zeros or counts[b])]
