"""Spike detection over a tool's `control-<value>.csv` files (design.md §4, "detect").

Pure: no network, no Docker; the only I/O is listing one data directory and reading the
control files in it. The rule is the original MAO's: baseline = mean of the `window` values
before the latest, gain % = (latest / baseline - 1) x 100, spike when |gain| > threshold.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path

from mao_celery.exceptions import InvalidInput, NotFound
from mao_celery.models import InvalidControlFile, SpikeResult
from mao_celery.text import format_gain_pct

CONTROL_PREFIX = "control-"
CONTROL_SUFFIX = ".csv"
MAX_CONTROL_FILE_BYTES = 4096

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
    parts = {name: _value_part(name) for name in names}
    numbers = {name: _finite_number(part) for name, part in parts.items()}
    if all(number is not None for number in numbers.values()):
        return sorted(names, key=lambda name: (numbers[name], parts[name]))
    return sorted(names, key=parts.__getitem__)


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
    if window < 1:
        raise InvalidInput(f"spike window {window} is invalid: use 1 or more values")
    if not (math.isfinite(threshold_pct) and threshold_pct >= 0):
        raise InvalidInput(
            f"spike threshold {threshold_pct}% is invalid: use a finite percent >= 0"
        )
    if len(values) < window + 1:
        files = "file" if len(values) == 1 else "files"
        reason = f"insufficient data: {len(values)} valid control {files}, need {window + 1}"
        return None, None, None, False, reason
    latest = values[-1]
    baseline = math.fsum(value / window for value in values[-window - 1 : -1])
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


def _control_entries(data_dir: Path) -> dict[str, os.DirEntry[str]]:
    """The `control-*.csv` entries of `data_dir` (top level only, any kind), by name.

    Raises:
        NotFound: `data_dir` does not exist or is not a directory.
    """
    try:
        with os.scandir(data_dir) as entries:
            return {entry.name: entry for entry in entries if _is_control_name(entry.name)}
    except (FileNotFoundError, NotADirectoryError) as e:
        raise NotFound(f"data directory {data_dir} not found: prepare the tool's data first") from e


def _read_control_file(path: str) -> float:
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


def list_control_names(data_dir: Path) -> list[str]:
    """The names of the `control-*.csv` entries of `data_dir` (of any kind), in detection order.

    A run calls this before its container starts, to tell new control files from old ones.

    Raises:
        NotFound: `data_dir` does not exist or is not a directory.
    """
    return order_control_names(_control_entries(data_dir))


def detect_spike(
    data_dir: Path, *, window: int, threshold_pct: float, seen_before: Collection[str]
) -> SpikeResult:
    """Read the control files of `data_dir` and apply the spike rule (see `evaluate`).

    Only regular files named `control-<value>.csv` at the top level are read. Directories,
    symlinks and other entries with such names are listed in `ignored`; files that are not one
    finite number (or are unreadable, not UTF-8, larger than 4 KiB, or have an empty value part)
    are listed in `invalid` with the reason and skipped. `new_files` are the control files
    (valid or invalid) whose names are not in `seen_before`, the names listed before the
    container ran; when there are none, `compliance_warning` says so. `window` (number of
    earlier values averaged) and `threshold_pct` (percent) are as in `evaluate`.

    Raises:
        NotFound: `data_dir` does not exist or is not a directory.
        InvalidInput: window or threshold_pct is invalid (see `evaluate`).
    """
    entries = _control_entries(data_dir)
    ignored: list[str] = []
    invalid: list[InvalidControlFile] = []
    new_files: list[str] = []
    valid: dict[str, float] = {}
    for name in order_control_names(entries):
        entry = entries[name]
        if not entry.is_file(follow_symlinks=False):
            ignored.append(name)
            continue
        if name not in seen_before:
            new_files.append(name)
        try:
            if not _value_part(name):
                raise InvalidInput("empty value part")
            valid[name] = _read_control_file(entry.path)
        except InvalidInput as e:
            invalid.append(InvalidControlFile(name=name, reason=str(e)))
    files = order_control_names(valid)
    values = [valid[name] for name in files]
    baseline, difference, gain_pct, spike, reason = evaluate(
        values, window=window, threshold_pct=threshold_pct
    )
    warning = None
    if not new_files:
        warning = "the run created no new control file: spike detection used older files only"
    return SpikeResult(
        window=window,
        threshold_pct=threshold_pct,
        files=files,
        values=values,
        invalid=invalid,
        ignored=ignored,
        new_files=new_files,
        latest=values[-1] if values else None,
        baseline=baseline,
        difference=difference,
        gain_pct=gain_pct,
        spike=spike,
        reason=reason,
        compliance_warning=warning,
    )
