"""The one way the host runs git: hardened, bounded in time, its errors mapped (design.md §4).

Every host-side git command of the node goes through `run` (local commands) or `remote` (those
that talk to a remote, with retries). Both run git from `/`, without system or global config,
with the caller's `GIT_*` variables removed, only the file, git, http(s) and ssh transports, no
password prompt, hooks and `core.fsmonitor` off, no submodule recursion and no credential helper
but the node's git-credential-store file. Callers name the repository with explicit `--git-dir`
and `--work-tree` options (datasets.py), so git never discovers a `.git` a tool wrote. See
datasets.py for the threat model.
"""

from __future__ import annotations

import os
import selectors
import shlex
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, cast

from mao_celery.exceptions import InvalidInput, NotFound, ServiceUnavailable
from mao_celery.text import redact_url, redact_urls

if TYPE_CHECKING:
    from mao_celery.settings import Settings

LOCAL_TIMEOUT_S = 60.0
"""Seconds a git command that reads only the store (and the work tree) may take."""

_GIT_ENV = {
    "GIT_ALLOW_PROTOCOL": "file:git:http:https:ssh",  # the schemes validate_git_url accepts
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_TERMINAL_PROMPT": "0",
    "LC_ALL": "C",  # git's messages are matched below
    "LANGUAGE": "C",
}
_SAFE_CONFIG = (
    *("-c", "core.hooksPath=/dev/null"),
    *("-c", "core.fsmonitor=false"),
    *("-c", "submodule.recurse=false"),
    *("-c", "credential.helper="),  # empties the list of helpers; `_credential_config` adds one
)
# Messages (under LC_ALL=C) of git refusing the URL rather than the remote failing to answer.
_REFUSED_MARKERS = ("not allowed", "not supported", "unable to find remote helper")
_MISSING_MARKERS = ("does not exist", "does not appear to be a git repository", "not found")
# Messages of failures that may heal by themselves (a remote restarting): worth another try.
# curl says "Couldn't connect to server" for a refused connection.
_HEALING_MARKERS = (
    "connection refused",
    "connection reset",
    "connection was reset",
    "couldn't connect to server",
)
RETRY_WAITS_S = (2.0, 10.0, 30.0)
"""Seconds between tries of a remote git command that failed in a way that can heal; their
number is the number of retries (at most 4 tries in all, and within `GitLimits.total_s`)."""


SILENCE_MARGIN_S = 5.0
"""Seconds a silent git gets beyond `GitLimits.low_speed_time_s` before it is killed, so that
git's own stall check (http(s), ssh) speaks first and says why."""


@dataclass(frozen=True)
class GitLimits:
    """How long git may talk to a remote before it is given up.

    Attributes:
        timeout_s: seconds after which one clone or fetch is killed (default 300).
        low_speed_limit_bps: http(s): bytes per second below which a transfer counts as stalled
            (git's `http.lowSpeedLimit`, default 1000).
        low_speed_time_s: seconds of stall after which git gives up (default 30): git's
            `http.lowSpeedTime` for http(s); for every transport (`git://` included) git is
            killed after this plus `SILENCE_MARGIN_S` seconds without any output. A host that
            accepts and never answers fails then.
        connect_timeout_s: ssh: seconds to connect and finish the handshake (ssh's
            `ConnectTimeout`, default 30).
        total_s: seconds all tries of one clone or fetch may take together, waits included
            (default 300).
    """

    timeout_s: float = 300.0
    low_speed_limit_bps: int = 1000
    low_speed_time_s: int = 30
    connect_timeout_s: int = 30
    total_s: float = 300.0

    @classmethod
    def from_settings(cls, settings: Settings) -> GitLimits:
        """The limits of `settings` (`git_timeout_s`, `git_low_speed_*`); the total of the tries
        is the clone timeout too."""
        return cls(
            timeout_s=settings.git_timeout_s,
            low_speed_limit_bps=settings.git_low_speed_limit_bps,
            low_speed_time_s=settings.git_low_speed_time_s,
            connect_timeout_s=min(30, settings.git_low_speed_time_s),
            total_s=settings.git_timeout_s,
        )

    def config(self) -> list[str]:
        """git options bounding the talk with a remote: http(s) low-speed limits, ssh connect
        timeout (and keep-alives that notice a silent peer), ssh never prompting."""
        ssh = (
            f"ssh -o ConnectTimeout={self.connect_timeout_s} -o BatchMode=yes "
            f"-o ServerAliveInterval={self.low_speed_time_s} -o ServerAliveCountMax=1"
        )
        return [
            *("-c", f"http.lowSpeedLimit={self.low_speed_limit_bps}"),
            *("-c", f"http.lowSpeedTime={self.low_speed_time_s}"),
            *("-c", f"core.sshCommand={ssh}"),
        ]


DEFAULT_LIMITS = GitLimits()
"""The limits of a node with default settings."""


class GitUnavailable(ServiceUnavailable):
    """git could not read a remote (it did not answer, stalled, refused the connection, timed
    out). `tries` holds one line per try, e.g. "try 1: fatal: ... Connection refused"."""

    def __init__(self, endpoint: str, tries: Sequence[str]) -> None:
        super().__init__("git", endpoint, _summary(tries))
        self.tries = list(tries)


class Rejected(InvalidInput):
    """The remote refused to move a branch because the push was not a fast-forward (git's
    `[rejected]`: the branch has commits the pushed one lacks); fetch, merge, push again."""


def _summary(tries: Sequence[str]) -> str:
    if len(tries) == 1:
        return tries[0].removeprefix("try 1: ")
    return f"{len(tries)} tries: " + "; ".join(tries)


@dataclass(frozen=True)
class GitResult:
    """What one git command gave: its exit status (-9 when killed), stdout and stderr."""

    status: int
    stdout: str
    stderr: str


def run(
    args: Sequence[str],
    *,
    credentials: Path | None = None,
    stdin: str = "",
    timeout_s: float = LOCAL_TIMEOUT_S,
    silence_s: float | None = None,
) -> GitResult:
    """Run one hardened git command in `/` with `stdin`; return its exit status, stdout, stderr.

    After `timeout_s` seconds, or after `silence_s` seconds without a byte of output (a remote
    that accepts and never answers: run with `--progress`, a live transfer keeps speaking; this
    also covers `git://`, which has no low-speed limit of its own), git and its children
    (transport helpers, ssh) are killed; the result then has status -9 and a `fatal:` message.
    """
    argv = ["git", *_SAFE_CONFIG, *_credential_config(credentials), *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")} | _GIT_ENV
    with subprocess.Popen(
        argv,
        cwd="/",
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group, killed as a whole
    ) as process:
        output, why = _communicate(process, stdin.encode(), timeout_s, silence_s)
        if why is not None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return GitResult(-9, "", f"fatal: {why}")
    stdout, stderr = (b"".join(chunks).decode(errors="replace") for chunks in output)
    return GitResult(process.returncode, stdout, stderr)


def _communicate(
    process: subprocess.Popen[bytes], stdin: bytes, timeout_s: float, silence_s: float | None
) -> tuple[tuple[list[bytes], list[bytes]], str | None]:
    """Feed `stdin`, read stdout and stderr to their end; return them (as chunks) and None, or
    what went wrong when `timeout_s` passed or the output was silent for `silence_s` seconds."""
    # All three are pipes (see _run).
    pipe_in, pipe_out, pipe_err = (
        cast("IO[bytes]", pipe) for pipe in (process.stdin, process.stdout, process.stderr)
    )
    pipe_in.write(stdin)
    pipe_in.close()
    output: tuple[list[bytes], list[bytes]] = ([], [])
    streams = {pipe_out.fileno(): output[0], pipe_err.fileno(): output[1]}
    deadline = time.monotonic() + timeout_s
    heard = time.monotonic()
    with selectors.DefaultSelector() as selector:
        for fd in streams:
            selector.register(fd, selectors.EVENT_READ)
        while selector.get_map():
            now = time.monotonic()
            if now >= deadline:
                return output, f"git did not complete within {timeout_s:g} s"
            if silence_s is not None and now - heard >= silence_s:
                return output, f"git was silent for {silence_s:g} s (the remote does not answer)"
            wait_s = deadline - now
            if silence_s is not None:
                wait_s = min(wait_s, heard + silence_s - now)
            for key, _ in selector.select(wait_s):
                data = os.read(key.fd, 65536)
                if data:
                    streams[key.fd].append(data)
                    heard = time.monotonic()
                else:
                    selector.unregister(key.fd)
    process.wait()
    return output, None


def _credential_config(credentials: Path | None) -> list[str]:
    """git options making `credentials` (a git-credential-store file) the only helper."""
    if credentials is None:
        return []
    helper = f"store --file={shlex.quote(str(credentials.absolute()))}"
    return ["-c", f"credential.helper={helper}"]


def remote(
    args: Sequence[str],
    *,
    endpoint: str,
    credentials: Path | None,
    limits: GitLimits,
    tries: list[str] | None = None,
    before_try: Callable[[], None] = lambda: None,
) -> str:
    """Run one hardened git command that talks to `endpoint` within `limits`; return its stdout.

    A failure that can heal (connection refused or reset) is tried again after
    `RETRY_WAITS_S`, as long as all tries fit in `limits.total_s` seconds; any other failure
    (a stall, the timeout, no such repository) ends at once. Each failed try is appended to
    `tries` ("try N: git's message"); `before_try` runs before each try. Errors show `endpoint`
    through `text.redact_url`.

    Raises:
        InvalidInput: git refused the URL (e.g. a transport that is not allowed).
        Rejected: a push was not a fast-forward (an InvalidInput).
        InvalidInput: the remote refused a push otherwise (e.g. a hook declined it).
        NotFound: there is no repository at the URL (not worth a retry).
        GitUnavailable: any other failure (or the timeout), naming each try.
    """
    shown = redact_url(endpoint)
    deadline = time.monotonic() + limits.total_s
    failed: list[str] = []
    for attempt in range(len(RETRY_WAITS_S) + 1):
        before_try()
        left_s = min(limits.timeout_s, deadline - time.monotonic())
        done = run(
            [*limits.config(), *args],
            credentials=credentials,
            timeout_s=left_s,
            silence_s=limits.low_speed_time_s + SILENCE_MARGIN_S,
        )
        if done.status == 0:
            return done.stdout
        detail = git_message(done.stderr)
        refusal = _push_refusal(done.stderr)
        if refusal is not None:
            kind = Rejected if "[rejected]" in refusal else InvalidInput
            raise kind(f"{shown} refused the push: {redact_urls(refusal)}")
        if any(marker in detail for marker in _REFUSED_MARKERS):
            raise InvalidInput(f"git refused the URL {shown!r}: {detail}")
        if any(marker in detail for marker in _MISSING_MARKERS):
            raise NotFound(f"no git repository at {shown}: {detail}")
        line = f"try {attempt + 1}: {redact_urls(detail)}"
        failed.append(line)
        if tries is not None:
            tries.append(line)
        heals = any(marker in detail.lower() for marker in _HEALING_MARKERS)
        if attempt == len(RETRY_WAITS_S) or not heals:
            break
        wait_s = RETRY_WAITS_S[attempt]
        if time.monotonic() + wait_s >= deadline - 1.0:
            break
        time.sleep(wait_s)
    raise GitUnavailable(shown, failed)


def _push_refusal(stderr: str) -> str | None:
    """The line of a push's ref the remote refused (` ! [rejected] HEAD -> b (fetch first)`,
    `[remote rejected]` for a hook's refusal), or None."""
    found = (line.strip() for line in stderr.splitlines() if line.lstrip().startswith("! ["))
    return next(found, None)


def git_message(stderr: str) -> str:
    """git's first `fatal:` line (its reason), else its last line. When a transport said why
    before git's own "Could not read from remote repository" (ssh: "Connection timed out during
    banner exchange", ...), that line comes first: "<why>; fatal: ..."."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    fatal = [i for i, line in enumerate(lines) if line.startswith("fatal:")]
    if not fatal:
        return (lines or ["no message from git"])[-1]
    first = fatal[0]
    before = [line for line in lines[:first] if not line.startswith(("hint:", "warning:"))]
    if "could not read from remote repository" in lines[first].lower() and before:
        return f"{before[-1]}; {lines[first]}"
    return lines[first]
