"""Usage: OpenTelemetry GenAI semantics and clear errors naming the field."""

from __future__ import annotations

import pytest

from jevons.usage import USAGE_FIELDS, Usage


def test_defaults_are_one_request_and_no_tokens() -> None:
    u = Usage()
    assert u.requests == 1
    assert u.total_tokens == 0
    assert u.uncached_input_tokens == 0


def test_breakdowns_are_subsets_of_totals() -> None:
    u = Usage(
        input_tokens=1000,
        cache_read_tokens=600,
        cache_write_5m_tokens=100,
        cache_write_1h_tokens=50,
        output_tokens=400,
        reasoning_tokens=300,
    )
    assert u.uncached_input_tokens == 250
    assert u.cache_write_tokens == 150
    assert u.total_tokens == 1400


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"input_tokens": 10, "cache_read_tokens": 11}, "cache_read_tokens"),
        ({"input_tokens": 10, "cache_read_tokens": 5, "cache_write_1h_tokens": 6}, "cache_write_1h_tokens"),
        ({"input_tokens": 10, "audio_input_tokens": 8, "image_input_tokens": 3}, "image_input_tokens"),
        ({"output_tokens": 10, "reasoning_tokens": 11}, "reasoning_tokens"),
        ({"output_tokens": 10, "audio_output_tokens": 6, "image_output_tokens": 6}, "image_output_tokens"),
    ],
)
def test_a_subset_larger_than_its_total_is_refused(kwargs: dict[str, int], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        Usage(**kwargs)


@pytest.mark.parametrize("field", USAGE_FIELDS)
@pytest.mark.parametrize("bad", [-1, 1.5, "3", None, True])
def test_negative_or_non_integer_counts_name_the_field(field: str, bad: object) -> None:
    with pytest.raises(ValueError, match=rf"Usage\.{field} must be a non-negative integer"):
        Usage(**{field: bad})  # type: ignore[arg-type]


def test_int_subclasses_become_plain_ints() -> None:
    class Count(int):
        pass

    u = Usage(input_tokens=Count(5))
    assert type(u.input_tokens) is int


def test_sum_of_usages_adds_every_field() -> None:
    a = Usage(
        input_tokens=10, cache_read_tokens=4, output_tokens=3, reasoning_tokens=1, web_search_requests=1
    )
    b = Usage(input_tokens=5, cache_write_1h_tokens=5, output_tokens=2, tool_calls=2)
    s = a + b
    assert s.to_dict() == {n: getattr(a, n) + getattr(b, n) for n in USAGE_FIELDS}
    assert s.requests == 2


def test_dict_round_trip_and_unknown_fields() -> None:
    u = Usage(input_tokens=7, output_tokens=2, cache_read_tokens=3)
    assert Usage.from_dict(u.to_dict()) == u
    assert Usage.from_dict(u.to_dict(compact=True)) == u
    assert u.to_dict(compact=True) == {
        "input_tokens": 7,
        "output_tokens": 2,
        "cache_read_tokens": 3,
        "requests": 1,
    }
    with pytest.raises(ValueError, match="prompt_tokens"):
        Usage.from_dict({"prompt_tokens": 3})
