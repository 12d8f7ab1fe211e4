"""Spike detection over a tool's `control-<value>.csv` files (design.md §4, "detect").

Pure: no network, no Docker; the only I/O is listing one data directory and reading the
control files in it. The rule is the original MAO's: baseline = mean of the `window` values
before the latest, gain % = (latest / baseline - 1) x 100, spike when |gain| > threshold.

A directory may hold 100,000 control files: it is listed once (`os.scandir`), the newest are
picked with `heapq.nlargest` (not a full sort) and only they are read; a result lists the few
names it used, and counts the rest (`SpikeResult`).
"""

from __future__ import annotations

import heapq
import math
import os
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mao_celery.exceptions import InvalidInput, NotFound
from mao_celery.models import ControlMarker, InvalidControlFile, SpikeResult
from mao_celery.text import format_gain_pct

CONTROL_PREFIX = "control-"
CONTROL_SUFFIX = ".csv"
MAX_CONTROL_FILE_BYTES = 4096
INVALID_READS_MAX = 20
"""Invalid control files one detection reads (and reports) before it stops reading."""
LISTED_MAX = 10
"""Names of new control files, and of ignored entries, a result lists (the newest)."""

# A plain decimal number, as a person or a tool writes one: no underscores, no "nan"/"inf" words.
_NUMBER_RE = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_LINE_BREAK_RE = re.compile(r"\r\n|\r|\n")
_FIELD_SEPARATOR_RE = re.compile(r"[\s,;]+")
_PREVIEW_CHARS = 40


def _finite_number(text: str) -> float | None:
    """The value of `text` if it is exactly one finite decimal number, else None."""
    if not _NUMBER_RE.fullmatch(text):
        return None
    value = float(text)
    return value if math.isfinite(value) else None


def _is_control_name(name: str) -> bool:
    return name.startswith(CONTROL_PREFIX) and name.endswith(CONTROL_SUFFIX)


def _value_part(name: str) -> str:
    return name[len(CONTROL_PREFIX) : -len(CONTROL_SUFFIX)]


def _control_name(part: str) -> str:
    return f"{CONTROL_PREFIX}{part}{CONTROL_SUFFIX}"


def _number(part: str) -> float | None:
    """`_finite_number(part)`, quicker for the usual plain ASCII digits (`control-123.csv`)."""
    if part.isascii() and part.isdigit():
        value = float(part)
        return value if math.isfinite(value) else None
    return _finite_number(part)


def _numbers(parts: Iterable[str]) -> dict[str, float | None]:
    """Each value part with its number (None: not a finite decimal number)."""
    return {part: _number(part) for part in parts}


Key = tuple[float, str]
"""Where a value part sorts in detection order: (its number, itself) when every value part of
the set is a number, else (0.0, itself): by string."""


def _order_keys(numbers: dict[str, float | None]) -> dict[str, Key]:
    """The detection-order key of each value part of `numbers` (see `order_control_names`)."""
    if any(number is None for number in numbers.values()):
        return {part: (0.0, part) for part in numbers}
    return {part: (number or 0.0, part) for part, number in numbers.items()}


def _newest_first(keys: Sequence[Key], first: int) -> Iterator[Key]:
    """`keys` from the largest down, selected by `heapq.nlargest` in batches (`first`, then
    twice as many each time more are asked for) instead of sorting all of them."""
    taken, count = 0, max(first, 1)
    while taken < len(keys):
        batch = heapq.nlargest(count, keys)
        yield from batch[taken:]
        taken, count = len(batch), count * 2


def _newest_names(keys: dict[str, Key], parts: Iterable[str]) -> list[str]:
    """The control file names of the `LISTED_MAX` largest of `parts` by `keys`, oldest first."""
    newest = heapq.nlargest(LISTED_MAX, (keys[part] for part in parts))
    return [_control_name(part) for _, part in reversed(newest)]


def _preview(text: str) -> str:
    """`text` quoted for a one-line message, shortened to 40 characters."""
    if len(text) <= _PREVIEW_CHARS:
        return repr(text)
    return repr(text[:_PREVIEW_CHARS]) + "..."


def order_control_names(names: Iterable[str]) -> list[str]:
    """Order control file names by their value part (what is between `control-` and `.csv`).

    Numerically when every value part is a finite decimal number (so `control-9.csv` comes
    before `control-10.csv`), otherwise as strings (ISO dates such as `control-2024-01-31.csv`
    sort right). Equal numbers (`control-1.csv`, `control-1.0.csv`) are ordered by their value
    strings, so the order is total and does not depend on the input order (design.md §4).

    Raises:
        InvalidInput: a name is not of the form `control-<value>.csv` (case-sensitive).
    """
    names = list(names)
    for name in names:
        if not _is_control_name(name):
            raise InvalidInput(
                f"not a control file name: {_preview(name)}; expected control-<value>.csv"
            )
    keys = _order_keys(_numbers(_value_part(name) for name in names))
    return sorted(names, key=lambda name: keys[_value_part(name)])


def parse_control_value(text: str) -> float:
    """Read the content of a control file as exactly one finite number.

    Accepted: one decimal number (`42`, `-4.5`, `1e3`) with spaces or tabs around it and at
    most one trailing line break. Refused: empty text, words, a header row, `NaN`, `inf`,
    numbers too large for a float, several values on one line (`1 2`, `1,2`) or several lines.

    Raises:
        InvalidInput: the text is not one finite number; the message is a short reason such as
            "empty", "2 values; expected exactly one number", "not a finite number: 'abc'".
    """
    body = text.removesuffix("\n").removesuffix("\r")
    if _LINE_BREAK_RE.search(body):
        line_count = len(_LINE_BREAK_RE.split(body))
        raise InvalidInput(f"{line_count} lines; expected one line with one number")
    line = body.strip()
    if not line:
        raise InvalidInput("empty")
    fields = [field for field in _FIELD_SEPARATOR_RE.split(line) if field]
    if len(fields) > 1:
        raise InvalidInput(f"{len(fields)} values; expected exactly one number")
    value = _finite_number(line)
    if value is None:
        raise InvalidInput(f"not a finite number: {_preview(line)}")
    return value


def _check_settings(window: int, threshold_pct: float) -> None:
    """Raises InvalidInput: window is below 1, or threshold_pct is negative or not finite."""
    if window < 1:
        raise InvalidInput(f"spike window {window} is invalid: use 1 or more values")
    if not (math.isfinite(threshold_pct) and threshold_pct >= 0):
        raise InvalidInput(
            f"spike threshold {threshold_pct}% is invalid: use a finite percent >= 0"
        )


def evaluate(
    values: Sequence[float], *, window: int, threshold_pct: float
) -> tuple[float | None, float | None, float | None, bool, str]:
    """Apply the spike rule of the original MAO to `values`, oldest first.

    baseline = mean of the `window` values before the latest (the original used 2);
    difference = latest - baseline; gain % = (latest / baseline - 1) x 100, computed as
    100 x difference / baseline so that an exact 10 % is 10.0, not 10.000000000000009;
    spike when |gain| > `threshold_pct` (percent, strictly greater; the original used 20).
    A negative baseline is used as is, so the sign of the gain then is
    the opposite of the direction of the change (-100 -> -150 is a gain of +50 %).
    A zero baseline leaves the gain undefined (None): a spike when latest is not zero, none when
    it is zero too. Values near the float limits whose difference or gain overflows leave it
    undefined (None) too, counted as a spike: reports hold finite numbers only (strict JSON).

    Returns:
        (baseline, difference, gain_pct, spike, reason); baseline, difference and gain_pct are
        None when there are fewer than window + 1 values. reason is one sentence for a person.

    Raises:
        InvalidInput: window is below 1, or threshold_pct is negative or not finite.
    """
    _check_settings(window, threshold_pct)
    if len(values) < window + 1:
        files = "file" if len(values) == 1 else "files"
        reason = f"insufficient data: {len(values)} valid control {files}, need {window + 1}"
        return None, None, None, False, reason
    latest = values[-1]
    before = values[-window - 1 : -1]
    try:
        baseline = math.fsum(value / window for value in before)
    except OverflowError:  # partial sums overflow near the float limit; the mean of finite
        # values cannot, except by rounding: clamped to the largest float
        total = sum(value / window for value in before)
        baseline = math.copysign(min(abs(total), sys.float_info.max), total)
    difference = latest - baseline
    if baseline == 0:
        if latest == 0:
            return baseline, difference, None, False, "no change: baseline and latest are zero"
        reason = f"gain undefined: baseline is zero and latest is {latest:g}, counted as a spike"
        return baseline, difference, None, True, reason
    gain_pct = 100 * difference / baseline
    if not (math.isfinite(difference) and math.isfinite(gain_pct)):
        shown = difference if math.isfinite(difference) else None
        reason = "gain undefined: too large to compute, counted as a spike"
        return baseline, shown, None, True, reason
    spike = abs(gain_pct) > threshold_pct
    verdict = "exceeds threshold" if spike else "within threshold"
    return (
        baseline,
        difference,
        gain_pct,
        spike,
        f"gain {format_gain_pct(gain_pct)} {verdict} {threshold_pct:.1f}%",
    )


@dataclass
class _Listing:
    """The `control-*.csv` entries of a directory, listed once: `parts` are the value parts of
    the regular files, `ignored` the names of the other entries (directories, symlinks, ...)."""

    parts: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        """How many control entries of any kind."""
        return len(self.parts) + len(self.ignored)


def _list_controls(data_dir: Path) -> _Listing:
    """List the top-level `control-*.csv` entries of `data_dir` (one `os.scandir` pass).

    Raises:
        NotFound: `data_dir` does not exist or is not a directory.
    """
    listing = _Listing()
    try:
        with os.scandir(data_dir) as entries:
            for entry in entries:  # names tested inline: 100,000 function calls cost 0.1 s
                name = entry.name
                if not (name.startswith(CONTROL_PREFIX) and name.endswith(CONTROL_SUFFIX)):
                    continue
                if entry.is_file(follow_symlinks=False):
                    listing.parts.append(name[len(CONTROL_PREFIX) : -len(CONTROL_SUFFIX)])
                else:
                    listing.ignored.append(name)
    except (FileNotFoundError, NotADirectoryError) as e:
        raise NotFound(f"data directory {data_dir} not found: prepare the tool's data first") from e
    return listing


def _mtime_ns(path: Path) -> int | None:
    """The modification time of `path` (not followed if a symlink) in ns, None if it is gone."""
    try:
        return os.lstat(path).st_mtime_ns
    except OSError:
        return None


def control_marker(data_dir: Path) -> ControlMarker:
    """The marker of `data_dir` before a run: how many regular control files it holds, the
    newest in detection order and its modification time. `detect_spike` tells the new files
    with it; the cost is one listing, whatever the number of files.

    Raises:
        NotFound: `data_dir` does not exist or is not a directory.
    """
    parts = _list_controls(data_dir).parts
    if not parts:
        return ControlMarker()
    keys = _order_keys(_numbers(parts))
    newest = _control_name(max(keys.values())[1])
    return ControlMarker(
        files=len(parts), newest=newest, newest_mtime_ns=_mtime_ns(data_dir / newest)
    )


def _read_control_file(path: Path) -> float:
    """The value held by the regular file at `path`, read without following symlinks.

    Raises:
        InvalidInput: unreadable, larger than 4 KiB, not UTF-8, or not one finite number.
    """
    try:
        # O_NONBLOCK: a FIFO put in a file's place after listing must not block the run.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as file:
            content = file.read(MAX_CONTROL_FILE_BYTES + 1)
    except OSError as e:
        raise InvalidInput(f"unreadable: {e.strerror}") from e
    if len(content) > MAX_CONTROL_FILE_BYTES:
        raise InvalidInput(f"larger than {MAX_CONTROL_FILE_BYTES} bytes")
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidInput("not UTF-8 text") from e
    return parse_control_value(text)


@dataclass
class _Reader:
    """Reads control files of `data_dir` by value part, each at most once; keeps the invalid
    ones with their reason and stops (`stopped`) after `INVALID_READS_MAX` of them."""

    data_dir: Path
    values: dict[str, float | None] = field(default_factory=dict)
    invalid: list[InvalidControlFile] = field(default_factory=list)

    @property
    def stopped(self) -> bool:
        """True once `INVALID_READS_MAX` invalid files were read: read no more."""
        return len(self.invalid) >= INVALID_READS_MAX

    def value(self, part: str) -> float | None:
        """The value of control file `control-<part>.csv`, None when it is invalid."""
        if part not in self.values:
            name = _control_name(part)
            try:
                if not part:
                    raise InvalidInput("empty value part")
                self.values[part] = _read_control_file(self.data_dir / name)
            except InvalidInput as e:
                self.values[part] = None
                self.invalid.append(InvalidControlFile(name=name, reason=str(e)))
        return self.values[part]


def _newest_valid(
    reader: _Reader, numbers: dict[str, float | None], count: int
) -> list[tuple[str, float]]:
    """(value part, value) of the `count` newest valid control files, oldest first, read from
    the newest down. The order is numeric unless a valid file's value part is not a number: the
    files whose value part is not a number are read first (newest first) until one is valid."""
    words = [(0.0, part) for part, number in numbers.items() if number is None]
    by_string = False
    for _, part in _newest_first(words, 1):
        if reader.stopped:
            return []
        if reader.value(part) is not None:
            by_string = True
            break
    keys: list[Key] = (
        [(0.0, part) for part in numbers]
        if by_string
        else [(number, part) for part, number in numbers.items() if number is not None]
    )
    chosen: list[tuple[str, float]] = []
    for _, part in _newest_first(keys, count):
        if reader.stopped:
            break
        value = reader.value(part)
        if value is not None:
            chosen.append((part, value))
            if len(chosen) == count:
                break
    return chosen[::-1]


def _new_files(
    data_dir: Path, numbers: dict[str, float | None], before: ControlMarker
) -> tuple[int, list[str]]:
    """How many control files the run wrote (the rule of `detect_spike`) and the names of the
    newest `LISTED_MAX` of them (`numbers`: each regular control file's value part and number)."""
    marker = None if before.newest is None else _value_part(before.newest)
    keys = _order_keys(numbers if marker is None else {**numbers, marker: _number(marker)})
    if marker is None:
        new = list(numbers)
    elif marker in numbers or before.newest_mtime_ns is None:
        marker_key = keys[marker]
        new = [part for part, key in keys.items() if key > marker_key]
        if (
            marker in numbers
            and _mtime_ns(data_dir / _control_name(marker)) != before.newest_mtime_ns
        ):
            new.append(marker)
    else:
        since = before.newest_mtime_ns
        new = [part for part in numbers if (_mtime_ns(data_dir / _control_name(part)) or 0) > since]
    return len(new), _newest_names(keys, new)


def detect_spike(
    data_dir: Path, *, window: int, threshold_pct: float, before: ControlMarker
) -> SpikeResult:
    """Read the newest control files of `data_dir` and apply the spike rule (see `evaluate`).

    Only regular files named `control-<value>.csv` at the top level count; other entries with
    such names are `ignored`. The directory is listed once; the `window` + 1 newest valid files
    in detection order are read, from the newest down (see `order_control_names`; the order is
    numeric unless a valid file's value part is not a number). Files on the way that are not one
    finite number (or are unreadable, not UTF-8, larger than 4 KiB, or have an empty value part)
    are listed in `invalid` with the reason and skipped; after `INVALID_READS_MAX` of them
    reading stops and the reason says so. `window` (number of earlier values averaged) and
    `threshold_pct` (percent) are as in `evaluate`.

    New files are told from `before`, the marker `control_marker` took before the container ran,
    without looking at every file: a control file is new when its name comes after the marker's
    newest name in detection order (the tool added a newer snapshot), and the marker's file is
    new itself when its modification time changed (the tool rewrote the latest snapshot). Older
    files the tool left, rewrote or deleted do not count: rewriting or deleting an old snapshot
    is not writing a new one. When the marker's file is gone (the tool deleted the newest
    snapshot), names no longer tell, so then every file modified after it is new (every
    file's time is read). An empty marker (no file before, or a record of an older version)
    makes every control file new. When none is new, `compliance_warning` says so.

    Raises:
        NotFound: `data_dir` does not exist or is not a directory.
        InvalidInput: window or threshold_pct is invalid (see `evaluate`).
    """
    _check_settings(window, threshold_pct)
    listing = _list_controls(data_dir)
    numbers = _numbers(listing.parts)
    reader = _Reader(data_dir)
    used = _newest_valid(reader, numbers, window + 1)
    values = [value for _, value in used]
    baseline, difference, gain_pct, spike, reason = evaluate(
        values, window=window, threshold_pct=threshold_pct
    )
    if reader.stopped:
        reason = f"{reason}; stopped reading after {INVALID_READS_MAX} invalid control files"
    new_file_count, new_files = _new_files(data_dir, numbers, before)
    warning = None
    if not new_file_count:
        warning = "the run created no new control file: spike detection used older files only"
    return SpikeResult(
        window=window,
        threshold_pct=threshold_pct,
        files=[_control_name(part) for part, _ in used],
        values=values,
        invalid=reader.invalid,
        ignored=order_control_names(listing.ignored)[-LISTED_MAX:],
        new_files=new_files,
        control_files=listing.count,
        new_file_count=new_file_count,
        latest=values[-1] if values else None,
        baseline=baseline,
        difference=difference,
        gain_pct=gain_pct,
        spike=spike,
        reason=reason,
        compliance_warning=warning,
    )
