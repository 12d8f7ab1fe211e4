"""Fixtures are grouped by what they stand up; each group lives in its own module."""

pytest_plugins = [
    "tests.fixtures.services",
    "tests.fixtures.node",
]
