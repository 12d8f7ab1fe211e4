"""Unit tests of the pure parts of mao_celery.dataplane (and models.same_remote): remote URLs
compared by meaning, run commit messages and trailers, the history parser, the push branch."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mao_celery import dataplane
from mao_celery.exceptions import InvalidInput
from mao_celery.models import RunReport, SpikeResult, Tool, same_remote
from mao_celery.settings import load_settings

TOOL: dict[str, Any] = {
    "name": "demo",
    "author": "Ada",
    "image": "mao-demo:latest",
    "data_repo": "https://h/r.git",
    "code_repo": "https://h/c.git",
    "artefact": "csv",
}

# ---- same_remote -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("file:///x/r.git", "file:///x/r.git/"),
        ("file:///x/r.git", "/x/r.git"),
        ("https://h/r", "https://h/r.git"),
        ("https://h/r", "https://H/r/"),
        ("https://h:443/r", "HTTPS://h/r.git/"),
        ("ssh://git@h:22/r.git", "ssh://git@h/r"),
        ("git://h:9418/r", "git://h/r.git"),
        ("git@h:o/r.git", "git@H:o/r/"),
    ],
)
def test_the_same_remote_spelled_otherwise(a: str, b: str) -> None:
    assert same_remote(a, b)
    assert same_remote(b, a)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("file:///x/r.git", "file:///x/s.git"),
        ("file:///x/r", "file:///x/r.git"),  # two directories on disk
        ("https://h/r", "http://h/r"),
        ("https://h:8443/r", "https://h/r"),
        ("ssh://git@h/r", "ssh://other@h/r"),
        ("ssh://git@h/r", "git@h:r"),  # absolute vs home-relative
        ("https://h/o/r", "https://h/r"),
    ],
)
def test_different_remotes(a: str, b: str) -> None:
    assert not same_remote(a, b)


SEGMENT = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=8)


@given(
    host=SEGMENT,
    path=st.lists(SEGMENT, min_size=1, max_size=3),
    slashes=st.integers(0, 2),
    upper=st.booleans(),
)
def test_https_urls_ignore_case_slashes_and_dot_git(
    host: str, path: list[str], slashes: int, upper: bool
) -> None:
    url = f"https://{host}/{'/'.join(path)}"
    other = f"https://{host.upper() if upper else host}:443/{'/'.join(path)}.git" + "/" * slashes

    assert same_remote(url, other)
    assert not same_remote(url, url + "x")


# ---- commit messages and trailers --------------------------------------------------------------


def report(**changes: Any) -> RunReport:
    spike = SpikeResult(window=2, threshold_pct=20.0, latest=146.0, gain_pct=44.5, spike=True)
    fields: dict[str, Any] = {
        "run_id": "0123456789abcdef",
        "tool": "demo",
        "node": "node-a",
        "image": "mao-demo:latest",
        "image_digest": "sha256:" + "ab" * 32,
        "exit_code": 0,
        "spike": spike,
    }
    return RunReport(**(fields | changes))


def test_a_run_message_has_a_subject_and_every_trailer() -> None:
    message = dataplane.run_message(dataplane.run_trailers(report()))

    subject, blank, *trailers = message.splitlines()
    assert subject == "mao run 01234567 of demo: control 146.0"
    assert blank == ""
    assert trailers == [
        "MAO-Run-Id: 0123456789abcdef",
        "MAO-Tool: demo",
        "MAO-Node: node-a",
        "MAO-Image: mao-demo:latest",
        "MAO-Image-Digest: sha256:" + "ab" * 32,
        "MAO-Exit-Code: 0",
        "MAO-Control-Value: 146.0",
        "MAO-Spike: yes",
        "MAO-Gain-Pct: 44.5",
    ]


def test_a_run_without_verdict_says_none_and_unknown() -> None:
    trailers = dataplane.run_trailers(report(spike=None, image_digest=None, exit_code=None))

    assert trailers["MAO-Control-Value"] == "none"
    assert trailers["MAO-Spike"] == "unknown"
    assert trailers["MAO-Image-Digest"] == "none"
    assert trailers["MAO-Exit-Code"] == "none"


@given(st.dictionaries(st.sampled_from(dataplane.TRAILER_KEYS), st.text(max_size=40)))
def test_a_message_is_one_subject_and_one_line_per_trailer(trailers: dict[str, str]) -> None:
    message = dataplane.run_message(trailers)

    lines = message.splitlines()  # every line break Python knows (git's is one of them)
    assert lines[1] == ""
    assert len(lines) == 2 + len(trailers)
    assert [line.split(": ", 1)[0] for line in lines[2:]] == list(trailers)


# ---- the history parser ------------------------------------------------------------------------

FINITE = st.floats(allow_nan=False, allow_infinity=False, width=64)
POINTS = st.builds(
    dataplane.HistoryPoint,
    commit=st.text(alphabet="0123456789abcdef", min_size=40, max_size=40),
    committed_at=st.datetimes(
        min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
    ).map(lambda d: d.replace(microsecond=0)),
    run_id=st.from_regex(r"[a-f0-9]{32}", fullmatch=True),
    node=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True),
    control_value=FINITE,
    spike=st.sampled_from([True, False, None]),
    gain_pct=st.none() | FINITE,
)


def log_record(point: dataplane.HistoryPoint, offset_h: int = 0) -> str:
    """What `git log --format=_LOG_FORMAT` prints for the run commit `point`."""
    spike = {True: "yes", False: "no", None: "unknown"}[point.spike]
    trailers = {
        "MAO-Run-Id": point.run_id,
        "MAO-Tool": "demo",
        "MAO-Node": point.node,
        "MAO-Control-Value": repr(point.control_value),
        "MAO-Spike": spike,
        "MAO-Gain-Pct": "none" if point.gain_pct is None else repr(point.gain_pct),
    }
    date = point.committed_at.astimezone(timezone(timedelta(hours=offset_h))).isoformat()
    joined = "\x1d".join(f"{key}: {value}" for key, value in trailers.items())
    return f"{point.commit}\x1f{date}\x1f{joined}\x1e\n"


@given(st.lists(POINTS, max_size=5), st.integers(-12, 12))
def test_the_history_parser_reads_back_what_was_written(
    points: list[dataplane.HistoryPoint], offset_h: int
) -> None:
    text = "".join(log_record(point, offset_h) for point in points)

    assert dataplane.parse_history(text) == points


@pytest.mark.parametrize(
    "damage",
    [
        lambda r: r.replace("MAO-Control-Value: ", "MAO-Control-Value: x"),
        lambda r: r.replace("MAO-Control-Value: 1.5", "MAO-Control-Value: nan"),
        lambda r: r.replace("MAO-Spike: yes", "MAO-Spike: maybe"),
        lambda r: r.replace("MAO-Node: node-a", "MAO-Node: node a"),
        lambda r: r.replace("\x1dMAO-Node: node-a", ""),
        lambda r: r.replace("MAO-Node: node-a", "MAO-Node: node-a\x1dMAO-Node: node-b"),
        lambda r: r.replace("\x1f", "", 1),
    ],
)
def test_a_damaged_record_gives_no_point(damage: Any) -> None:
    good = dataplane.HistoryPoint(
        commit="a" * 40,
        committed_at=datetime(2026, 1, 1, tzinfo=UTC),
        run_id="r1",
        node="node-a",
        control_value=1.5,
        spike=True,
        gain_pct=None,
    )
    record = log_record(good)

    assert dataplane.parse_history(record) == [good]
    assert dataplane.parse_history(damage(record) + record) == [good]


@given(st.text())
def test_the_history_parser_never_raises(text: str) -> None:
    dataplane.parse_history(text)


# ---- the push branch -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tool", "node_push", "expected"),
    [
        ({}, False, None),
        ({}, True, "mao/node-a"),
        ({"push": True}, False, "mao/node-a"),
        ({"push": True, "push_branch": "main"}, False, "main"),
        ({"push_branch": "main"}, True, "main"),
    ],
)
def test_the_push_branch(tool: dict[str, Any], node_push: bool, expected: str | None) -> None:
    settings = load_settings(node_id="node-a", git_push=node_push)

    assert dataplane.push_branch(Tool(**TOOL, **tool), settings) == expected


def test_a_node_id_that_makes_no_branch_is_refused() -> None:
    settings = load_settings(node_id="node.lock", git_push=True)

    with pytest.raises(InvalidInput, match=r"invalid branch name 'mao/node\.lock'"):
        dataplane.push_branch(Tool(**TOOL), settings)


def test_a_tool_push_branch_follows_the_branch_rules() -> None:
    with pytest.raises(ValueError, match="invalid branch name"):
        Tool(**TOOL, push_branch="../main")
