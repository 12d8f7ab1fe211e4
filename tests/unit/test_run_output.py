"""`render.show_output`: a run's output printed line by line from the pieces `run logs` reads."""

from __future__ import annotations

import pytest

from mao_celery import render
from mao_celery.tools import RunOutput


def shown(capsys: pytest.CaptureFixture[str], *pieces: RunOutput, tail: int | None = None) -> str:
    render.show_output(pieces, tail)
    return capsys.readouterr().out


def test_a_line_cut_between_two_pieces_is_printed_once_whole(
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = shown(capsys, RunOutput(b"one\ntw"), RunOutput(b"o\nthree"))
    assert out == "one\ntwo\nthree\n"


@pytest.mark.parametrize(
    ("tail", "expected"),
    [(0, ""), (1, "c\n"), (2, "b\nc\n"), (9, "a\nb\nc\n")],
)
def test_tail_keeps_the_last_lines_a_last_one_without_newline_counted(
    capsys: pytest.CaptureFixture[str], tail: int, expected: str
) -> None:
    assert shown(capsys, RunOutput(b"a\nb\nc"), tail=tail) == expected


def test_tail_applies_to_what_was_kept_then_following_pieces_are_printed_whole(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert shown(capsys, RunOutput(b"a\nb\n"), RunOutput(b"c\nd\n"), tail=1) == "b\nc\nd\n"


def test_control_characters_of_a_tool_cannot_drive_the_terminal(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert shown(capsys, RunOutput(b"\x1b[2Jred\r\n")) == "\\x1b[2Jred\\r\n"


def test_bytes_no_longer_kept_are_said_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    render.show_output([RunOutput(b"last\n", skipped=10)], None)
    captured = capsys.readouterr()
    assert captured.out == "last\n"
    assert "10 bytes of output not kept" in captured.err
