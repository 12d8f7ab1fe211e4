"""Unit tests of the pure helpers of the registry's paged range reads (mao_celery.registry):
where the next page starts, and how a page refused as too large shrinks."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mao_celery.registry import PAGE_KEYS, continue_after, smaller_page


@given(st.binary(max_size=40), st.binary(max_size=40))
def test_the_next_page_starts_after_the_last_key_and_skips_none(last: bytes, other: bytes) -> None:
    start = continue_after(last)

    assert start > last
    if other > last:  # every key after the last one read is still in the next page's range
        assert start <= other


def test_a_page_shrinks_by_halves_down_to_one_key_then_gives_up() -> None:
    sizes = [PAGE_KEYS]
    while (smaller := smaller_page(sizes[-1])) is not None:
        sizes.append(smaller)

    assert sizes == [500, 250, 125, 62, 31, 15, 7, 3, 1]


@given(st.integers(min_value=2, max_value=10**6))
def test_a_page_of_several_keys_always_shrinks_to_at_least_one(keys: int) -> None:
    smaller = smaller_page(keys)

    assert smaller is not None
    assert 1 <= smaller < keys
