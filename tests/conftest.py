"""Fixtures are grouped by what they stand up; each group lives in its own module."""

import pytest

pytest_plugins = [
    "tests.fixtures.services",
    "tests.fixtures.node",
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the tests marked `slow` first, each group in its collection order: xdist
    (`--dist loadgroup`) hands out the tests, and whole `xdist_group`s, in that order as its
    workers free up, so the longest start at once and overlap the rest instead of one of them
    starting last and running alone."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
