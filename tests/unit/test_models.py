"""Unit tests of mao_celery.models: name, image and git URL rules, registry models, run states."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from mao_celery.exceptions import InvalidInput, describe_validation_error
from mao_celery.models import (
    MAX_GIT_URL_LEN,
    NAME_RE,
    TERMINAL_STATUSES,
    Dataset,
    Member,
    Name,
    Notification,
    RunReport,
    RunStatus,
    StepTaker,
    Tool,
    build,
    validate_git_url,
    validate_image,
    validate_name,
)
from mao_celery.text import redact_url

NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789._-")
DIGEST = "sha256:" + "0123456789abcdef" * 4
TOOL_FIELDS: dict[str, Any] = {
    "name": "demo",
    "author": "Ada",
    "image": "mao-demo:latest",
    "data_repo": "https://github.com/o/r.git",
    "code_repo": "https://github.com/o/code.git",
    "artefact": "control.csv",
}
DATASET_FIELDS: dict[str, Any] = {"name": "demo-data", "url": "/srv/data.git"}


def refusal(call: Callable[[], object], error: type[Exception]) -> str | None:
    """The message of the `error` that `call()` raises, or None when it returns."""
    try:
        call()
    except error as e:
        return str(e)
    return None


def assert_one_line(message: str) -> None:
    assert message.splitlines() == [message], f"not one line: {message!r}"


# validate_name


@pytest.mark.parametrize("name", ["a", "demo-tool_1.x", "a" * 64, "0", "9.9"])
def test_validate_name_accepts_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "a" * 65, "../x", ".hidden", "Upper", "a/b", "a b", "-x", "é", "dé", "a\n"]
)
def test_validate_name_refuses_invalid_names(name: str) -> None:
    with pytest.raises(ValueError, match="invalid name") as raised:
        validate_name(name)
    assert repr(name) in str(raised.value)


@given(
    st.sampled_from(sorted(NAME_CHARS - set("._-"))),
    st.text(alphabet=sorted(NAME_CHARS), max_size=63),
)
def test_validate_name_accepts_up_to_64_of_the_alphabet_starting_with_a_letter_or_digit(
    first: str, rest: str
) -> None:
    # The rule of design.md §3, built from the alphabet rather than from NAME_RE.
    assert validate_name(first + rest) == first + rest


@pytest.mark.parametrize("first", [".", "_", "-"])
def test_validate_name_refuses_a_name_starting_with_punctuation(first: str) -> None:
    with pytest.raises(ValueError, match="invalid name"):
        validate_name(first + "name")


@given(
    st.text(max_size=30),
    st.characters().filter(lambda char: char not in NAME_CHARS),
    st.text(max_size=30),
)
def test_validate_name_refuses_any_char_outside_the_alphabet(
    before: str, bad: str, after: str
) -> None:
    with pytest.raises(ValueError, match="invalid name"):
        validate_name(before + bad + after)


# validate_image


@pytest.mark.parametrize(
    "image",
    [
        "mao-demo:latest",
        "busybox",
        "library/busybox:1.36",
        "localhost:5000/a/b:tag",
        "127.0.0.1:5000/x",
        f"repo@{DIGEST}",
        f"busybox:1.36@{DIGEST}",
        "a__b",
        "a---b",
        "a:" + "t" * 128,
        "a" * 255,
    ],
)
def test_validate_image_accepts_docker_references(image: str) -> None:
    assert validate_image(image) == image


@pytest.mark.parametrize(
    "image",
    [
        "",
        "UPPER:tag",
        "a:",
        ":tag",
        "a::b",
        "-a",
        "a b",
        "a" * 256,
        "a:tag with space",
        "a:" + "t" * 129,
        "a\n",
        "a___b",
        "repo@sha256:abc",
        # Docker's tag grammar `[\w][\w.-]*` is ASCII (Go regexp); these are not tags.
        "busybox:é",
        "busybox:latesté",
        "busybox:\u0661",
    ],
)
def test_validate_image_refuses_invalid_references(image: str) -> None:
    with pytest.raises(ValueError, match="invalid image reference") as raised:
        validate_image(image)
    assert repr(image) in str(raised.value)


@given(st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", fullmatch=True))
def test_validate_image_accepts_every_ascii_tag(tag: str) -> None:
    assert validate_image(f"busybox:{tag}") == f"busybox:{tag}"


# validate_git_url

VALID_GIT_URLS = [
    "https://github.com/o/r.git",
    "http://host/r",
    "ssh://git@host:22/r.git",
    "git://host/r",
    "file:///srv/r.git",
    "git@github.com:o/r.git",
    "/srv/data.git",
]


@pytest.mark.parametrize("url", VALID_GIT_URLS)
def test_validate_git_url_accepts_clonable_urls(url: str) -> None:
    assert validate_git_url(url) == url


@pytest.mark.parametrize(
    "url",
    [
        "ext::sh -c touch% /tmp/x",
        "fd::3",
        "--upload-pack=touch /tmp/x",
        "-u",
        "../x",
        "relative/path",
        "",
        "https://host/a b",
        "ftp://host/r",
        "file://relative",
        "https:///nohost",
        "ssh://-oProxyCommand=x/r",
        "git@host:-r",
        "https://host/r\nx",
        "https://host/r\n",
        "https://host/r\t",
        "https://[x/r",
        "ssh://[-oProxyCommand=x]/r",
    ],
)
def test_validate_git_url_refuses_unsafe_urls_naming_them(url: str) -> None:
    with pytest.raises(ValueError, match="invalid git URL") as raised:
        validate_git_url(url)
    assert repr(url) in str(raised.value)


@given(st.text().map(lambda rest: "-" + rest))
def test_validate_git_url_refuses_anything_starting_with_a_dash(url: str) -> None:
    with pytest.raises(ValueError, match="invalid git URL"):
        validate_git_url(url)


@given(st.text(), st.text())
def test_validate_git_url_refuses_anything_with_a_remote_helper(before: str, after: str) -> None:
    with pytest.raises(ValueError, match="invalid git URL"):
        validate_git_url(before + "::" + after)


@given(st.from_regex(r"(https?|ssh|git|file)://[\x21-\x7e]{0,40}", fullmatch=True))
def test_validate_git_url_accepts_or_refuses_naming_the_url(url: str) -> None:
    message = refusal(lambda: validate_git_url(url), ValueError)
    assert message is None or message.startswith(f"invalid git URL {redact_url(url)!r}: ")


SECRET = "S3cret-Pw"
CREDENTIAL_URLS = [
    f"http://alice:{SECRET}@host/d.git",
    f"https://alice:{SECRET}@host/d.git",
    f"https://{SECRET}@host/d.git",  # a token given as the user name
    f"https://{SECRET}:x-oauth-basic@host/d.git",
    f"ssh://git:{SECRET}@host/d.git",
    f"git://alice:{SECRET}@host/d.git",
    f"file://alice:{SECRET}@/srv/d.git",
    f"https://alice:{SECRET}@[x/d.git",  # not even parsable
    f"https://:{SECRET}@host/d.git",
    f"alice:{SECRET}@127.0.0.1:/x.git",  # scp-like with a password
    f"https:/alice:{SECRET}@127.0.0.1/x.git",  # a slash missing
]


@pytest.mark.parametrize("url", CREDENTIAL_URLS)
def test_validate_git_url_refuses_credentials_without_showing_them(url: str) -> None:
    with pytest.raises(ValueError, match="invalid git URL") as raised:
        validate_git_url(url)

    assert SECRET not in str(raised.value)
    assert "***@" in str(raised.value)


def test_a_credentials_refusal_says_where_credentials_belong() -> None:
    message = refusal(lambda: validate_git_url(f"https://alice:{SECRET}@host/d.git"), ValueError)

    assert message == (
        "invalid git URL 'https://***@host/d.git': credentials are refused in registry URLs "
        "(every member reads them); put them in the node's MAO_GIT_CREDENTIALS_FILE "
        "(a git-credential-store file) or use ssh"
    )


@pytest.mark.parametrize("url", ["ssh://git@host/x", "git@host:x", "ssh://git@host:22/o/r.git"])
def test_validate_git_url_accepts_an_ssh_user(url: str) -> None:
    assert validate_git_url(url) == url


@given(
    st.sampled_from(["http", "https", "ssh", "git", "file"]),
    st.text(st.sampled_from("abcXYZ019-._~!$&'()*+,;=%"), min_size=1, max_size=12),
    st.text(st.sampled_from("abcXYZ019-._~!$&'()*+,;=%:@"), min_size=4, max_size=24),
)
def test_no_refusal_or_validation_error_shows_a_password(
    scheme: str, user: str, password: str
) -> None:
    url = f"{scheme}://{user}:{password}@host.example/repo.git"
    assume(password not in url.replace(f":{password}@", ":@"))  # e.g. not the user name too

    message = refusal(lambda: validate_git_url(url), ValueError)
    with pytest.raises(ValidationError) as raised:
        Dataset.model_validate_json(f'{{"name": "d", "url": "{url}"}}')

    assert message is not None
    assert password not in message
    assert password not in describe_validation_error(raised.value)


# Tool and Dataset


def test_build_returns_a_valid_tool_with_defaults() -> None:
    tool = build(Tool, **TOOL_FIELDS)
    assert tool.name == "demo"
    assert tool.spike_window is None
    assert tool.spike_threshold_pct is None
    assert tool.description == ""
    assert tool.created_at.tzinfo is UTC


@pytest.mark.parametrize(
    ("model", "fields", "field", "value", "expected"),
    [
        (Tool, TOOL_FIELDS, "name", "../x", "name: invalid name '../x'"),
        (Tool, TOOL_FIELDS, "image", "UPPER:tag", "image: invalid image reference 'UPPER:tag'"),
        (Tool, TOOL_FIELDS, "data_repo", "fd::3", "data_repo: invalid git URL 'fd::3'"),
        (Tool, TOOL_FIELDS, "author", "", "author: String should have at least 1 character"),
        (Tool, TOOL_FIELDS, "description", "x" * 4097, "description: String should have at most"),
        (Dataset, DATASET_FIELDS, "name", "Upper", "name: invalid name 'Upper'"),
        (Dataset, DATASET_FIELDS, "url", "-u", "url: invalid git URL '-u'"),
    ],
)
def test_build_raises_invalid_input_naming_the_field(
    model: type[Tool | Dataset], fields: dict[str, Any], field: str, value: str, expected: str
) -> None:
    with pytest.raises(InvalidInput) as raised:
        build(model, **(fields | {field: value}))
    assert str(raised.value).startswith(expected)
    assert_one_line(str(raised.value))
    assert isinstance(raised.value.__cause__, ValidationError)


@pytest.mark.parametrize("field", ["name", "author", "image", "data_repo", "code_repo"])
@given(value=st.text(max_size=300))
def test_build_tool_errors_are_one_line_naming_the_field(field: str, value: str) -> None:
    message = refusal(lambda: build(Tool, **(TOOL_FIELDS | {field: value})), InvalidInput)
    if message is not None:
        assert message.startswith(f"{field}: ")
        assert_one_line(message)


@pytest.mark.parametrize(("model", "fields"), [(Tool, TOOL_FIELDS), (Dataset, DATASET_FIELDS)])
def test_build_refuses_extra_fields(model: type[Tool | Dataset], fields: dict[str, Any]) -> None:
    with pytest.raises(InvalidInput, match=r"^colour: Extra inputs are not permitted"):
        build(model, **fields, colour="red")


@pytest.mark.parametrize("window", [1, 2, 1000])
def test_tool_accepts_spike_window_within_bounds(window: int) -> None:
    assert build(Tool, **TOOL_FIELDS, spike_window=window).spike_window == window


@pytest.mark.parametrize("window", [0, -1, 1001])
def test_tool_refuses_spike_window_out_of_bounds(window: int) -> None:
    with pytest.raises(InvalidInput, match=r"^spike_window: "):
        build(Tool, **TOOL_FIELDS, spike_window=window)


@pytest.mark.parametrize("threshold_pct", [0.0, -1.0, math.inf, -math.inf, math.nan])
def test_tool_refuses_non_positive_or_non_finite_threshold(threshold_pct: float) -> None:
    with pytest.raises(InvalidInput, match=r"^spike_threshold_pct: "):
        build(Tool, **TOOL_FIELDS, spike_threshold_pct=threshold_pct)


@given(st.floats(min_value=0, exclude_min=True, allow_infinity=False))
def test_tool_accepts_any_positive_finite_threshold(threshold_pct: float) -> None:
    tool = build(Tool, **TOOL_FIELDS, spike_threshold_pct=threshold_pct)
    assert tool.spike_threshold_pct == threshold_pct


@given(
    name=st.from_regex(NAME_RE, fullmatch=True),
    image=st.sampled_from(["busybox", "localhost:5000/a/b:tag", f"repo@{DIGEST}"]),
    data_repo=st.sampled_from(VALID_GIT_URLS),
    description=st.text(max_size=100),
    spike_window=st.none() | st.integers(min_value=1, max_value=1000),
    spike_threshold_pct=st.none() | st.floats(min_value=0, exclude_min=True, allow_infinity=False),
    created_at=st.datetimes(timezones=st.just(UTC)),
)
def test_tool_json_round_trip_is_equal(
    name: str,
    image: str,
    data_repo: str,
    description: str,
    spike_window: int | None,
    spike_threshold_pct: float | None,
    created_at: datetime,
) -> None:
    tool = build(
        Tool,
        **TOOL_FIELDS
        | {
            "name": name,
            "image": image,
            "data_repo": data_repo,
            "description": description,
            "spike_window": spike_window,
            "spike_threshold_pct": spike_threshold_pct,
            "created_at": created_at,
        },
    )
    assert Tool.model_validate_json(tool.model_dump_json()) == tool


@given(
    name=st.from_regex(NAME_RE, fullmatch=True),
    url=st.sampled_from(VALID_GIT_URLS),
    created_at=st.datetimes(timezones=st.just(UTC)),
)
def test_dataset_json_round_trip_is_equal(name: str, url: str, created_at: datetime) -> None:
    dataset = build(Dataset, name=name, url=url, created_at=created_at)
    assert Dataset.model_validate_json(dataset.model_dump_json()) == dataset


@pytest.mark.parametrize(("model", "fields"), [(Tool, TOOL_FIELDS), (Dataset, DATASET_FIELDS)])
def test_models_are_frozen(model: type[Tool | Dataset], fields: dict[str, Any]) -> None:
    instance = build(model, **fields)
    with pytest.raises(ValidationError, match="frozen"):
        instance.name = "other"  # type: ignore[misc]
    assert instance.name == fields["name"]


# RunStatus


@pytest.mark.parametrize(
    ("status", "terminal"),
    [
        (RunStatus.QUEUED, False),
        (RunStatus.PREPARING, False),
        (RunStatus.RUNNING, False),
        (RunStatus.DETECTING, False),
        (RunStatus.PUBLISHING, False),
        (RunStatus.SUCCEEDED, True),
        (RunStatus.FAILED, True),
        (RunStatus.INTERRUPTED, True),
        (RunStatus.CANCELLED, True),
    ],
)
def test_run_status_terminal(status: RunStatus, terminal: bool) -> None:
    assert status.terminal is terminal


def test_terminal_statuses_are_succeeded_failed_interrupted_cancelled() -> None:
    assert {"succeeded", "failed", "interrupted", "cancelled"} == TERMINAL_STATUSES
    assert all(isinstance(status, RunStatus) for status in TERMINAL_STATUSES)


def test_run_status_values_are_their_lowercase_names() -> None:
    assert [status.value for status in RunStatus] == [status.name.lower() for status in RunStatus]


# Notification and Member ids

NOTIFICATION_FIELDS: dict[str, Any] = {
    "tool": "demo",
    "node": "node-a",
    "run_id": "0123abcd",
    "control_value": 2.0,
    "baseline": 1.0,
    "gain_pct": 100.0,
    "threshold_pct": 20.0,
    "detected_at": "2026-01-01T00:00:00Z",
}
FORGING = ["x\nWARNING forged", "x\r", "x\x1b[2J", "x\x1b]0;x\x07", "x\x00", "a b", "", "-x"]


@pytest.mark.parametrize("value", FORGING)
@pytest.mark.parametrize("field", ["node", "run_id"])
def test_a_notification_refuses_a_node_or_run_id_outside_its_alphabet(
    field: str, value: str
) -> None:
    with pytest.raises(InvalidInput, match=f"^{field}: "):
        build(Notification, **NOTIFICATION_FIELDS | {field: value})


def test_a_notification_accepts_run_ids_of_start_run_and_scheduled_runs() -> None:
    for run_id in ["0123456789abcdef0123456789abcdef", "node-a.run_1"]:
        assert build(Notification, **NOTIFICATION_FIELDS | {"run_id": run_id}).run_id == run_id


@pytest.mark.parametrize("node_id", FORGING)
def test_a_member_refuses_a_node_id_outside_its_alphabet(node_id: str) -> None:
    when = datetime(2026, 1, 1, tzinfo=UTC)
    with pytest.raises(InvalidInput, match=r"^node_id: "):
        build(Member, node_id=node_id, hostname="h", version="1", started_at=when, last_seen=when)


# describe_validation_error


def test_describe_validation_error_drops_the_value_error_prefix() -> None:
    with pytest.raises(ValidationError) as raised:
        Dataset(name="Upper", url="/srv/data.git")
    assert "Value error, " in str(raised.value)
    assert describe_validation_error(raised.value) == (
        "name: invalid name 'Upper': use 1-64 of a-z 0-9 . _ - , starting with a letter or digit"
    )


def test_describe_validation_error_joins_a_nested_location_with_dots() -> None:
    with pytest.raises(ValidationError) as raised:
        RunReport.model_validate(
            {"run_id": "r1", "tool": "demo", "node": "n1", "spike": {"threshold_pct": 20.0}}
        )
    assert describe_validation_error(raised.value) == "spike.window: Field required"


def test_describe_validation_error_never_repeats_a_url_password() -> None:
    url = f"https://u:{SECRET}@h/r"
    raw = json.dumps({"name": "d", "url": url, url: 1})
    with pytest.raises(ValidationError) as raised:
        Dataset.model_validate_json(raw)

    assert SECRET in str(raised.value)  # pydantic's own text quotes the input
    assert SECRET not in describe_validation_error(raised.value)


def test_describe_validation_error_names_value_when_there_is_no_field() -> None:
    with pytest.raises(ValidationError) as raised:
        TypeAdapter(Name).validate_python("-x")
    assert describe_validation_error(raised.value).startswith("value: invalid name '-x'")


@pytest.mark.parametrize("url", ["https://h/x.git?token=S3cret", "https://h/x.git#S3cret"])
def test_validate_git_url_refuses_a_query_or_fragment(url: str) -> None:
    with pytest.raises(ValueError, match="a query or fragment"):
        validate_git_url(url)


def test_a_git_url_longer_than_the_limit_is_refused_without_showing_it() -> None:
    with pytest.raises(ValueError, match=f"longer than {MAX_GIT_URL_LEN} characters$"):
        validate_git_url("https://h/" + "a:" * MAX_GIT_URL_LEN)


def taker(step: str, task_id: str) -> StepTaker:
    return StepTaker(hostname="celery@a", pid=1, task_id=task_id, step=step)


@pytest.mark.parametrize(
    ("takes", "resumed"),
    [
        ([], False),
        ([("prepare", "t0"), ("container", "t1")], False),
        ([("container", "t1"), ("container", "t1")], False),  # a Celery retry keeps its id
        ([("prepare", "t0"), ("container", "t1"), ("container", "t2")], True),
        ([("container", "t1"), ("container", "t2"), ("container", "t2")], True),
    ],
)
def test_a_step_is_resumed_when_another_task_of_the_run_took_it_before(
    takes: list[tuple[str, str]], resumed: bool
) -> None:
    takers = [taker(step, task_id) for step, task_id in takes]
    report = RunReport(
        run_id="r1",
        tool="demo",
        node="a",
        takers=takers,
        taken_by=takers[-1] if takers else None,
    )
    assert report.resumed_step is resumed
