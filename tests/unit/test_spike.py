"""Unit tests of mao_celery.spike: ordering, parsing, the spike rule and directory detection."""

from __future__ import annotations

import math
import os
import random
import re
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mao_celery.exceptions import InvalidInput, NotFound
from mao_celery.models import ControlMarker, InvalidControlFile
from mao_celery.spike import (
    INVALID_READS_MAX,
    LISTED_MAX,
    control_marker,
    detect_spike,
    evaluate,
    order_control_names,
    parse_control_value,
)

finite_floats = st.floats(allow_nan=False, allow_infinity=False)


def control(value: str) -> str:
    return f"control-{value}.csv"


def controls(*values: str) -> list[str]:
    return [control(value) for value in values]


def value_of(name: str) -> str:
    return name.removeprefix("control-").removesuffix(".csv")


# ordering


@pytest.mark.parametrize(
    ("given_values", "expected_values"),
    [
        (["10", "9", "1"], ["1", "9", "10"]),
        (["-1", "2", "-10", "0"], ["-10", "-1", "0", "2"]),
        (["1.5", "1.25", "0.75"], ["0.75", "1.25", "1.5"]),
        (["1e3", "999", "1001"], ["999", "1e3", "1001"]),
        (["1.0", "1", "01"], ["01", "1", "1.0"]),
    ],
)
def test_order_is_numeric_when_every_value_is_a_number(
    given_values: list[str], expected_values: list[str]
) -> None:
    assert order_control_names(controls(*given_values)) == controls(*expected_values)


def test_order_is_by_string_when_one_value_is_not_a_number() -> None:
    names = controls("10", "9", "abc", "1")
    assert order_control_names(names) == controls("1", "10", "9", "abc")


@pytest.mark.parametrize("odd_value", ["nan", "inf", "", "1_000", " 1"])
def test_order_treats_non_finite_or_odd_values_as_strings(odd_value: str) -> None:
    names = controls("10", "9", odd_value)
    assert order_control_names(names) == sorted(names, key=value_of)


def test_order_sorts_iso_dates_chronologically() -> None:
    names = controls("2024-02-01", "2023-12-31", "2024-01-15", "2024-01-02")
    assert order_control_names(names) == controls(
        "2023-12-31", "2024-01-02", "2024-01-15", "2024-02-01"
    )


@pytest.mark.parametrize("name", ["CONTROL-1.csv", "control-1.CSV", "data.csv", "control1.csv"])
def test_order_refuses_a_name_that_is_not_a_control_file(name: str) -> None:
    with pytest.raises(InvalidInput, match="not a control file name"):
        order_control_names([control("1"), name])


@given(st.lists(finite_floats))
def test_order_of_repr_floats_is_by_value(values: list[float]) -> None:
    names = [control(repr(value)) for value in values]
    ordered = order_control_names(names)
    assert sorted(ordered) == sorted(names)
    assert [float(value_of(name)) for name in ordered] == sorted(values)


@given(st.lists(st.one_of(finite_floats.map(repr), st.text(max_size=8))), st.randoms())
def test_order_is_a_deterministic_permutation(values: list[str], rng: random.Random) -> None:
    names = controls(*values)
    shuffled = names.copy()
    rng.shuffle(shuffled)
    ordered = order_control_names(names)
    assert sorted(ordered) == sorted(names)
    assert order_control_names(shuffled) == ordered


# parsing


@given(finite_floats)
def test_parse_round_trips_repr(value: float) -> None:
    assert parse_control_value(repr(value)) == value


@given(
    finite_floats,
    st.text(" \t", max_size=3),
    st.text(" \t", max_size=3),
    st.sampled_from(["", "\n", "\r\n"]),
)
def test_parse_accepts_surrounding_whitespace_and_one_newline(
    value: float, before: str, after: str, newline: str
) -> None:
    assert parse_control_value(f"{before}{value!r}{after}{newline}") == value


@pytest.mark.parametrize(
    ("text", "expected"),
    [("42", 42.0), ("1e3", 1000.0), ("-4.5", -4.5), (".5", 0.5), ("+7.", 7.0), ("-0", 0.0)],
)
def test_parse_reads_plain_numbers(text: str, expected: float) -> None:
    assert parse_control_value(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        (" \t\n", "empty"),
        ("abc", "not a finite number: 'abc'"),
        ("value\n5\n", "2 lines"),
        ("NaN", "not a finite number: 'NaN'"),
        ("nan", "not a finite number"),
        ("inf", "not a finite number: 'inf'"),
        ("-Infinity", "not a finite number"),
        ("1e999", "not a finite number: '1e999'"),
        ("1 2", "2 values"),
        ("1\n2", "2 lines"),
        ("1\n2\n", "2 lines"),
        ("1,2", "2 values"),
        ("1;2;3", "3 values"),
        ("1,", "not a finite number: '1,'"),
        ("5\n\n", "2 lines"),
        ("1_000", "not a finite number"),
        ("0x10", "not a finite number"),
        ("x" * 100, "not a finite number: '" + "x" * 40 + "'..."),
    ],
)
def test_parse_refuses_anything_but_one_finite_number(text: str, reason: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_control_value(text)
    assert str(caught.value).startswith(reason)
    assert "\n" not in str(caught.value)


# the spike rule


def test_evaluate_flags_the_original_demo_spike() -> None:
    baseline, difference, gain_pct, spike, reason = evaluate(
        [100, 102, 146], window=2, threshold_pct=20
    )
    assert baseline == 101
    assert difference == 45
    assert gain_pct == pytest.approx(44.554, abs=1e-3)
    assert spike is True
    assert reason == "gain +44.6% exceeds threshold 20.0%"


def test_evaluate_uses_only_the_window_before_the_latest() -> None:
    assert evaluate([1, 1000, 100, 102, 103], window=2, threshold_pct=20)[:2] == (101, 2)


@pytest.mark.parametrize(
    ("baseline", "latest", "threshold_pct"),
    [(100, 120, 20), (50, 60, 20), (100, 80, 20), (5, 6, 20), (100, 110, 10), (100, 130, 30)],
)
def test_evaluate_exactly_threshold_is_not_a_spike(
    baseline: float, latest: float, threshold_pct: float
) -> None:
    # (110 / 100 - 1) * 100 is 10.000000000000009 in floats; the gain must still be exactly 10.
    _, _, gain_pct, spike, reason = evaluate(
        [baseline, baseline, latest], window=2, threshold_pct=threshold_pct
    )
    assert gain_pct is not None
    assert abs(gain_pct) == threshold_pct
    assert spike is False
    assert f"within threshold {threshold_pct:.1f}%" in reason


def test_evaluate_drop_of_25_percent_is_a_spike() -> None:
    _, difference, gain_pct, spike, reason = evaluate([100, 100, 75], window=2, threshold_pct=20)
    assert (difference, gain_pct, spike) == (-25, -25, True)
    assert reason == "gain -25.0% exceeds threshold 20.0%"


def test_evaluate_small_change_is_within_threshold() -> None:
    _, _, gain_pct, spike, reason = evaluate([100, 100, 96.9], window=2, threshold_pct=20)
    assert gain_pct == pytest.approx(-3.1)
    assert spike is False
    assert reason == "gain -3.1% within threshold 20.0%"


def test_evaluate_zero_baseline_with_nonzero_latest_is_a_spike() -> None:
    baseline, difference, gain_pct, spike, reason = evaluate([0, 0, 5], window=2, threshold_pct=20)
    assert (baseline, difference, gain_pct, spike) == (0, 5, None, True)
    assert reason.startswith("gain undefined: baseline is zero")


def test_evaluate_zero_baseline_with_zero_latest_is_no_spike() -> None:
    baseline, difference, gain_pct, spike, reason = evaluate([-1, 1, 0], window=2, threshold_pct=20)
    assert (baseline, difference, gain_pct, spike) == (0, 0, None, False)
    assert "zero" in reason


def test_evaluate_negative_baseline_uses_the_formula_as_is() -> None:
    _, _, gain_pct, spike, _ = evaluate([-100, -100, -150], window=2, threshold_pct=20)
    assert (gain_pct, spike) == (50, True)


@pytest.mark.parametrize(
    ("values", "window", "reason"),
    [
        ([], 2, "insufficient data: 0 valid control files, need 3"),
        ([1.0], 2, "insufficient data: 1 valid control file, need 3"),
        ([1.0, 2.0], 2, "insufficient data: 2 valid control files, need 3"),
        ([1.0, 2.0, 3.0], 3, "insufficient data: 3 valid control files, need 4"),
    ],
)
def test_evaluate_reports_insufficient_data(values: list[float], window: int, reason: str) -> None:
    assert evaluate(values, window=window, threshold_pct=20) == (None, None, None, False, reason)


def test_evaluate_window_three_averages_three_values() -> None:
    baseline, _, gain_pct, spike, _ = evaluate([90, 100, 110, 130], window=3, threshold_pct=20)
    assert (baseline, spike) == (100, True)
    assert gain_pct == pytest.approx(30)


@pytest.mark.parametrize(
    ("window", "threshold_pct"), [(0, 20), (-1, 20), (2, -1), (2, math.nan), (2, math.inf)]
)
def test_evaluate_refuses_invalid_settings(window: int, threshold_pct: float) -> None:
    with pytest.raises(InvalidInput, match=r"^spike (window|threshold) "):
        evaluate([1, 2, 3], window=window, threshold_pct=threshold_pct)


@given(
    st.lists(st.floats(min_value=1e-6, max_value=1e9), min_size=1, max_size=5),
    st.floats(min_value=-1e9, max_value=1e9),
)
def test_evaluate_gain_sign_follows_latest_against_positive_baseline(
    previous: list[float], latest: float
) -> None:
    baseline, _, gain_pct, _, _ = evaluate(
        [*previous, latest], window=len(previous), threshold_pct=20
    )
    assert baseline is not None
    assert gain_pct is not None
    assert baseline > 0
    assert (gain_pct > 0) == (latest > baseline)
    assert (gain_pct < 0) == (latest < baseline)


@given(
    st.lists(finite_floats, max_size=8),
    st.integers(min_value=1, max_value=6),
    st.floats(min_value=0, allow_infinity=False),
)
def test_evaluate_never_raises_for_finite_input(
    values: list[float], window: int, threshold_pct: float
) -> None:
    baseline, difference, gain_pct, spike, reason = evaluate(
        values, window=window, threshold_pct=threshold_pct
    )
    assert reason
    assert "\n" not in reason
    if len(values) <= window:
        assert (baseline, difference, gain_pct, spike) == (None, None, None, False)
    else:
        assert baseline is not None
        assert math.isfinite(baseline)
        assert gain_pct is None or not math.isnan(gain_pct)


# detection over a directory

NOTHING_BEFORE = ControlMarker()


def write(path: Path, content: str | bytes) -> None:
    if isinstance(content, str):
        content = content.encode()
    path.write_bytes(content)


def write_controls(directory: Path, contents: dict[str, str | bytes]) -> None:
    for value, content in contents.items():
        write(directory / control(value), content)


def test_detect_spike_reads_the_newest_files_and_reports_what_it_skipped(tmp_path: Path) -> None:
    contents: dict[str, str | bytes] = {
        "1": "7",
        "2": "9",
        "3": "100\n",
        "4": "",
        "5": "abc",
        "6": "value\n5\n",
        "7": "NaN",
        "8": "102",
        "9": "inf",
        "10": "1,2",
        "11": b"\xff\xfe5",
        "12": "1" * 5000,
        "13": " 146 \n",
    }
    write_controls(tmp_path, contents)
    (tmp_path / control("14")).mkdir()
    (tmp_path / control("15")).symlink_to(tmp_path / control("13"))
    os.mkfifo(tmp_path / control("16"))
    write(tmp_path / "notes.txt", "999")
    write(tmp_path / "CONTROL-17.csv", "999")
    write(tmp_path / "control-18.csv.bak", "999")
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub" / control("19"), "999")

    result = detect_spike(tmp_path, window=2, threshold_pct=20, before=NOTHING_BEFORE)

    assert (result.window, result.threshold_pct) == (2, 20)
    assert result.files == controls("3", "8", "13")
    assert result.values == [100, 102, 146]
    assert result.invalid == [
        InvalidControlFile(name=control("12"), reason="larger than 4096 bytes"),
        InvalidControlFile(name=control("11"), reason="not UTF-8 text"),
        InvalidControlFile(name=control("10"), reason="2 values; expected exactly one number"),
        InvalidControlFile(name=control("9"), reason="not a finite number: 'inf'"),
        InvalidControlFile(name=control("7"), reason="not a finite number: 'NaN'"),
        InvalidControlFile(name=control("6"), reason="2 lines; expected one line with one number"),
        InvalidControlFile(name=control("5"), reason="not a finite number: 'abc'"),
        InvalidControlFile(name=control("4"), reason="empty"),
    ]
    assert result.ignored == controls("14", "15", "16")
    assert (result.control_files, result.new_file_count) == (16, 13)
    assert result.new_files == controls(*map(str, range(4, 14)))
    assert (result.latest, result.baseline, result.difference) == (146, 101, 45)
    assert result.gain_pct == pytest.approx(44.554, abs=1e-3)
    assert result.spike is True
    assert result.reason == "gain +44.6% exceeds threshold 20.0%"
    assert result.compliance_warning is None


def test_detect_spike_stops_reading_after_too_many_invalid_files(tmp_path: Path) -> None:
    write_controls(tmp_path, {str(value): "1" for value in range(3)})
    write_controls(tmp_path, {str(value): "x" for value in range(3, 3 + INVALID_READS_MAX + 5)})
    result = detect_spike(tmp_path, window=2, threshold_pct=20, before=NOTHING_BEFORE)
    assert len(result.invalid) == INVALID_READS_MAX
    assert (result.files, result.spike) == ([], False)
    assert result.reason == (
        "insufficient data: 0 valid control files, need 3; "
        f"stopped reading after {INVALID_READS_MAX} invalid control files"
    )


def age(path: Path, seconds: int) -> None:
    """Set the modification time of `path` `seconds` into the past (tests write within a tick)."""
    mtime_ns = path.lstat().st_mtime_ns - seconds * 10**9
    os.utime(path, ns=(mtime_ns, mtime_ns), follow_symlinks=False)


def test_control_marker_names_the_newest_file_in_detection_order(tmp_path: Path) -> None:
    assert control_marker(tmp_path) == ControlMarker()
    write_controls(tmp_path, {"9": "1", "10": "2"})
    (tmp_path / control("11")).mkdir()
    assert control_marker(tmp_path) == ControlMarker(
        files=2,
        newest=control("10"),
        newest_mtime_ns=(tmp_path / control("10")).stat().st_mtime_ns,
    )


def test_files_after_the_marker_are_new_and_older_ones_are_not(tmp_path: Path) -> None:
    write_controls(tmp_path, {"1": "10", "2": "10", "3": "10"})
    before = control_marker(tmp_path)
    write_controls(tmp_path, {"4": "11", "0": "10"})  # a newer snapshot, and a back-filled one
    result = detect_spike(tmp_path, window=2, threshold_pct=20, before=before)
    assert (result.new_files, result.new_file_count, result.control_files) == (
        [control("4")],
        1,
        5,
    )
    assert result.compliance_warning is None


@pytest.mark.parametrize("rewritten", ["3", "2"])
def test_a_rewritten_newest_file_is_new_and_an_older_one_is_not(
    tmp_path: Path, rewritten: str
) -> None:
    write_controls(tmp_path, {"1": "10", "2": "10", "3": "10"})
    age(tmp_path / control("3"), 60)
    before = control_marker(tmp_path)
    write_controls(tmp_path, {rewritten: "12"})
    result = detect_spike(tmp_path, window=2, threshold_pct=20, before=before)
    assert result.new_files == ([control("3")] if rewritten == "3" else [])


def test_a_deleted_newest_file_leaves_the_files_written_since_as_new(tmp_path: Path) -> None:
    write_controls(tmp_path, {"1": "10", "2": "10", "30": "10"})
    for value in ("1", "2", "30"):
        age(tmp_path / control(value), 60)
    before = control_marker(tmp_path)
    (tmp_path / control("30")).unlink()
    write_controls(tmp_path, {"3": "11"})  # the tool started its numbering again
    result = detect_spike(tmp_path, window=2, threshold_pct=20, before=before)
    assert (result.new_files, result.new_file_count) == ([control("3")], 1)


def test_deleting_files_is_not_writing_a_new_one(tmp_path: Path) -> None:
    write_controls(tmp_path, {"1": "10", "2": "10", "3": "10", "4": "10"})
    before = control_marker(tmp_path)
    (tmp_path / control("1")).unlink()
    result = detect_spike(tmp_path, window=2, threshold_pct=20, before=before)
    assert (result.new_files, result.new_file_count) == ([], 0)
    assert result.compliance_warning is not None


def test_only_the_newest_new_files_are_listed_and_all_are_counted(tmp_path: Path) -> None:
    write_controls(tmp_path, {str(value): "1" for value in range(50)})
    for value in range(50):
        (tmp_path / control(f"d{value}")).mkdir()
    result = detect_spike(tmp_path, window=2, threshold_pct=20, before=NOTHING_BEFORE)
    assert result.new_file_count == 50
    assert result.new_files == controls(*map(str, range(50 - LISTED_MAX, 50)))
    assert result.control_files == 100
    assert len(result.ignored) == LISTED_MAX


def test_detect_spike_warns_when_the_run_made_no_new_control_file(tmp_path: Path) -> None:
    write_controls(tmp_path, {"1": "10", "2": "10", "3": "11"})
    result = detect_spike(tmp_path, window=2, threshold_pct=20, before=control_marker(tmp_path))
    assert (result.new_files, result.new_file_count) == ([], 0)
    assert result.compliance_warning is not None
    assert "no new control file" in result.compliance_warning
    assert result.spike is False
    assert result.gain_pct == pytest.approx(10)


def test_detect_spike_orders_mixed_names_as_strings(tmp_path: Path) -> None:
    write_controls(tmp_path, {"9": "1", "10": "2", "latest": "3"})
    result = detect_spike(tmp_path, window=2, threshold_pct=20, before=NOTHING_BEFORE)
    assert result.files == controls("10", "9", "latest")
    assert result.values == [2, 1, 3]
    assert result.new_files == result.files
    assert result.compliance_warning is None


def test_detect_spike_invalid_name_does_not_change_the_numeric_order(tmp_path: Path) -> None:
    write_controls(tmp_path, {"9": "1", "10": "2", "11": "3", "": "4"})
    result = detect_spike(tmp_path, window=2, threshold_pct=20, before=NOTHING_BEFORE)
    assert result.files == controls("9", "10", "11")
    assert result.invalid == [InvalidControlFile(name="control-.csv", reason="empty value part")]


def test_detect_spike_with_too_few_files_reports_insufficient_data(tmp_path: Path) -> None:
    write(tmp_path / control("1"), "5")
    result = detect_spike(tmp_path, window=2, threshold_pct=20, before=NOTHING_BEFORE)
    assert result.files == [control("1")]
    assert result.latest == 5
    assert (result.baseline, result.difference, result.gain_pct, result.spike) == (
        None,
        None,
        None,
        False,
    )
    assert result.reason == "insufficient data: 1 valid control file, need 3"


def test_detect_spike_of_an_empty_directory_has_no_values(tmp_path: Path) -> None:
    result = detect_spike(tmp_path, window=2, threshold_pct=20, before=NOTHING_BEFORE)
    assert (result.files, result.values, result.latest, result.spike) == ([], [], None, False)
    assert (result.control_files, result.new_file_count) == (0, 0)
    assert result.compliance_warning is not None


@pytest.mark.parametrize(("window", "threshold_pct"), [(0, 20), (2, -1)])
def test_detect_spike_refuses_invalid_settings_before_reading(
    tmp_path: Path, window: int, threshold_pct: float
) -> None:
    with pytest.raises(InvalidInput, match=r"^spike (window|threshold) "):
        detect_spike(
            tmp_path / "missing", window=window, threshold_pct=threshold_pct, before=NOTHING_BEFORE
        )


@pytest.mark.parametrize("exists_as_file", [False, True])
def test_detect_spike_missing_directory_is_not_found(tmp_path: Path, exists_as_file: bool) -> None:
    missing = tmp_path / "data"
    if exists_as_file:
        write(missing, "a file, not a directory")
    with pytest.raises(NotFound, match=re.escape(str(missing))):
        detect_spike(missing, window=2, threshold_pct=20, before=NOTHING_BEFORE)
    with pytest.raises(NotFound, match=re.escape(str(missing))):
        control_marker(missing)


# the selection of the newest files gives the verdict of the full sort


def reference_verdict(
    directory: Path, window: int, threshold_pct: float
) -> tuple[list[str], tuple[float | None, float | None, float | None, bool, str]]:
    """The rule as it was before the selection: read every regular control file, sort all the
    valid ones, evaluate the last window + 1."""
    valid: dict[str, float] = {}
    for entry in os.scandir(directory):
        if not entry.name.startswith("control-") or not entry.is_file(follow_symlinks=False):
            continue
        try:
            if value_of(entry.name):
                valid[entry.name] = parse_control_value(Path(entry.path).read_text())
        except (InvalidInput, UnicodeDecodeError):
            continue
    files = order_control_names(valid)
    values = [valid[name] for name in files]
    return files[-window - 1 :], evaluate(values, window=window, threshold_pct=threshold_pct)


value_parts = st.one_of(
    st.integers(-50, 50).map(str),
    st.floats(-1e3, 1e3).map(repr),
    st.sampled_from(["1.0", "01", "1e1", "2024-01-31", "2024-02-01", "latest", "", "nan"]),
)
contents = st.one_of(
    st.floats(-1e3, 1e3).map(repr), st.sampled_from(["", "abc", "1 2", "inf", "5\n\n"])
)


def bounded_invalid(directory_contents: dict[str, str]) -> bool:
    invalid = 0
    for part, content in directory_contents.items():
        try:
            parse_control_value(content)
            invalid += part == ""
        except InvalidInput:
            invalid += 1
    return invalid < INVALID_READS_MAX


@settings(max_examples=150, deadline=None)
@given(
    st.dictionaries(value_parts, contents, max_size=30).filter(bounded_invalid),
    st.integers(1, 5),
    st.sampled_from([0.0, 10.0, 20.0]),
)
def test_the_newest_selection_gives_the_verdict_of_the_full_sort(
    directory_contents: dict[str, str], window: int, threshold_pct: float
) -> None:
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        write_controls(directory, dict[str, str | bytes](directory_contents))
        files, verdict = reference_verdict(directory, window, threshold_pct)
        result = detect_spike(
            directory, window=window, threshold_pct=threshold_pct, before=NOTHING_BEFORE
        )
    assert result.files == files
    assert (result.baseline, result.difference, result.gain_pct, result.spike, result.reason) == (
        verdict
    )
    assert result.control_files == result.new_file_count == len(directory_contents)


@given(st.lists(st.one_of(finite_floats.map(repr), st.text(max_size=8)), max_size=30))
def test_the_marker_names_the_last_of_the_detection_order(values: list[str]) -> None:
    names = {name for name in controls(*values) if "/" not in name and "\x00" not in name}
    with tempfile.TemporaryDirectory() as directory:
        for name in names:
            write(Path(directory) / name, "1")
        marker = control_marker(Path(directory))
    ordered = order_control_names(names)
    assert (marker.files, marker.newest) == (len(names), ordered[-1] if ordered else None)


def test_a_baseline_of_values_at_the_float_limit_is_finite() -> None:
    biggest = sys.float_info.max

    baseline, _, _, spike, _ = evaluate([biggest, biggest, biggest, 0.0], window=3, threshold_pct=0)

    assert baseline is not None
    assert math.isfinite(baseline)
    assert spike
