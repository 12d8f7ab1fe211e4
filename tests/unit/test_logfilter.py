"""Unit tests of mao_celery.logfilter: a log record's message cannot add a line of its own."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from mao_celery import logfilter


@pytest.fixture
def logged() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger with one stream handler, filtered by `logfilter.install` (twice: idempotent)."""
    stream = io.StringIO()
    logger = logging.getLogger("tests.logfilter")
    logger.propagate = False
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger.addHandler(handler)
    logfilter.install(logger)
    logfilter.install(logger, loglevel=20, logfile=None, format="", colorize=False)
    yield logger, stream
    logger.removeHandler(handler)


def test_a_newline_in_an_argument_does_not_forge_a_line(
    logged: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = logged

    logger.warning("spike (run %s)", "r1)\nERROR forged\x1b]0;x\x07")

    assert len(logged[0].handlers[0].filters) == 1
    assert stream.getvalue() == "WARNING spike (run r1)\\nERROR forged\\x1b]0;x\\x07)\n"


def test_a_traceback_stays_on_lines_of_its_own(
    logged: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = logged
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("failed: %s", "a\nb")

    lines = stream.getvalue().splitlines()
    assert lines[0] == "ERROR failed: a\\nb"
    assert lines[1] == "Traceback (most recent call last):"
    assert lines[-1] == "ValueError: boom"
