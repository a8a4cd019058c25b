"""``Usage.of`` (the capture hot path's constructor) keeps every rule of ``Usage(...)``."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jevons.usage import USAGE_FIELDS, Usage

counts = st.integers(-3, 2_000)


@given(values=st.tuples(*(counts for _ in USAGE_FIELDS)))
def test_of_accepts_and_refuses_exactly_what_the_constructor_does(values: tuple[int, ...]) -> None:
    try:
        expected = Usage(*values)
    except ValueError as exc:
        with pytest.raises(ValueError) as caught:
            Usage.of(*values)
        assert str(caught.value) == str(exc)
        return
    got = Usage.of(*values)
    assert got == expected
    assert type(got) is Usage
    assert [type(getattr(got, name)) for name in USAGE_FIELDS] == [int] * len(USAGE_FIELDS)


@pytest.mark.parametrize("bad", [True, 1.0, "3", None])
def test_of_refuses_what_is_not_an_exact_count(bad: object) -> None:
    with pytest.raises(ValueError, match=r"Usage\.output_tokens must be a non-negative integer"):
        Usage.of(10, bad)  # type: ignore[arg-type]


def test_of_normalises_int_subclasses_like_the_constructor() -> None:
    class Count(int):
        pass

    got = Usage.of(Count(12), 3, Count(2))
    assert got == Usage(12, 3, 2)
    assert type(got.input_tokens) is int and type(got.cache_read_tokens) is int


def test_of_defaults_match_the_dataclass_defaults() -> None:
    assert Usage.of(5, 7) == Usage(input_tokens=5, output_tokens=7)
