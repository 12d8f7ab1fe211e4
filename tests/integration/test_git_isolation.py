"""A tool writes anything into its data directory: host-side git must never read it.

Each attack is planted on disk as a tool would (everything under the work tree is the tool's),
then the host's git paths run (`update`, `open_clone`, `list_local`, the prepare step) and the
payload's marker file must not appear. Before the store existed, `importdir/<tool>/.git` was the
clone's git dir and each of these payloads ran as the worker's user (root) at the next update.
"""

from __future__ import annotations

import base64
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from mao_celery import datasets, run_steps
from mao_celery.exceptions import AlreadyExists, NotFound, ServiceUnavailable
from mao_celery.models import RunReport, Tool
from mao_celery.node import Node
from mao_celery.registry import Registry
from tests.fixtures.node import NodeUnderTest, git
from tests.fixtures.services import require_root

pytestmark = pytest.mark.integration

TOOL_UID = 10001
HTTP_USER = "collector"
HTTP_PASSWORD = "s3cret-token"


@dataclass(frozen=True)
class Upstream:
    """The registered data repository (file:// URL of a bare repo) and its work clone."""

    url: str
    work: Path

    @property
    def bare(self) -> Path:
        return Path(self.url.removeprefix("file://"))

    def push_file(self, name: str, content: str = "1\n") -> None:
        """Commit a file in the work clone and push it."""
        (self.work / name).write_text(content)
        git("add", name, cwd=self.work)
        git("commit", "-q", "-m", f"add {name}", cwd=self.work)
        git("push", "-q", "origin", "HEAD", cwd=self.work)


@dataclass(frozen=True)
class Attack:
    """What a plant needs: where it writes, the marker its payload creates, helpers."""

    data_dir: Path
    marker: Path
    script: Path
    upstream: Upstream
    tmp_path: Path
    http_url: str  # a password-protected repository: git asks credential helpers for it

    def append_config(self, text: str) -> None:
        """The tool turns its data directory into a repository of its own and configures it."""
        git("init", "-q", str(self.data_dir), cwd=self.tmp_path)
        with (self.data_dir / ".git" / "config").open("a") as config:
            config.write(text)

    def origin(self, url: str, extra: str = "") -> str:
        """A config section making `url` the remote `origin`, with `extra` lines in it."""
        refspec = "+refs/heads/*:refs/remotes/origin/*"
        return f'[remote "origin"]\n\turl = {url}\n\tfetch = {refspec}\n{extra}'


def closed_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as server:
        return int(server.getsockname()[1])


def plant_uploadpack(a: Attack) -> None:
    a.append_config(
        a.origin(str(a.upstream.bare), f"\tuploadpack = touch {a.marker}; git-upload-pack\n")
    )


def plant_ssh_command(a: Attack) -> None:
    a.append_config(f"[core]\n\tsshCommand = {a.script}\n" + a.origin("ssh://127.0.0.1/data.git"))


def plant_git_proxy(a: Attack) -> None:
    url = f"git://127.0.0.1:{closed_port()}/data.git"
    a.append_config(f"[core]\n\tgitProxy = {a.script}\n" + a.origin(url))


def plant_credential_helper(a: Attack) -> None:
    a.append_config(f"[credential]\n\thelper = !{a.script}\n" + a.origin(a.http_url))


def plant_include(a: Attack) -> None:
    included = a.tmp_path / "included.cfg"
    included.write_text(a.origin(str(a.upstream.bare), f"\tuploadpack = {a.script}\n"))
    a.append_config(f"[include]\n\tpath = {included}\n")


def plant_gitdir_file(a: Attack) -> None:
    elsewhere = a.tmp_path / "tool-written-gitdir"
    git("init", "-q", "--bare", str(elsewhere), cwd=a.tmp_path)
    with (elsewhere / "config").open("a") as config:
        config.write(a.origin(str(a.upstream.bare), f"\tuploadpack = {a.script}\n"))
    (a.data_dir / ".git").write_text(f"gitdir: {elsewhere}\n")


def plant_filter(a: Attack) -> None:
    (a.data_dir / ".gitattributes").write_text("* filter=evil\n")
    a.append_config(f'[filter "evil"]\n\tsmudge = {a.script}\n\tclean = {a.script}\n\trequired\n')


def plant_hook_and_fsmonitor(a: Attack) -> None:
    a.append_config(f"[core]\n\tfsmonitor = {a.script}\n")
    for hook in ("post-merge", "post-checkout", "reference-transaction"):
        shutil.copy(a.script, a.data_dir / ".git" / "hooks" / hook)


PLANTS: dict[str, Callable[[Attack], None]] = {
    "uploadpack": plant_uploadpack,
    "core.sshCommand": plant_ssh_command,
    "core.gitProxy": plant_git_proxy,
    "credential.helper": plant_credential_helper,
    "include.path": plant_include,
    "gitdir_file": plant_gitdir_file,
    "gitattributes_filter": plant_filter,
    "hooks_and_fsmonitor": plant_hook_and_fsmonitor,
}
# The plants whose payload a plain `git fetch` in the data directory runs (the old layout's way).
FETCH_PLANTS = ["uploadpack", "core.sshCommand", "core.gitProxy", "credential.helper",
                "include.path", "gitdir_file"]  # fmt: skip


# ---- fixtures ---------------------------------------------------------------------------------


class GitHttpServer(ThreadingHTTPServer):
    """`git http-backend` over HTTP on loopback, behind basic authentication."""

    def __init__(self, root: Path) -> None:
        super().__init__(("127.0.0.1", 0), GitHttpHandler)
        self.root = root

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class GitHttpHandler(BaseHTTPRequestHandler):
    server: GitHttpServer
    expected = "Basic " + base64.b64encode(f"{HTTP_USER}:{HTTP_PASSWORD}".encode()).decode()

    def do_GET(self) -> None:
        self.serve()

    def do_POST(self) -> None:
        self.serve()

    def serve(self) -> None:
        if self.headers.get("Authorization") != self.expected:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        path, _, query = self.path.partition("?")
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        env = {
            "PATH": os.environ["PATH"],
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_PROJECT_ROOT": str(self.server.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "REQUEST_METHOD": self.command,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
            "REMOTE_USER": HTTP_USER,
            "REMOTE_ADDR": "127.0.0.1",
        }
        cgi = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True)
        head, _, payload = cgi.stdout.partition(b"\r\n\r\n")
        headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n") if line)
        self.send_response(int(headers.pop("Status", "200").split()[0]))
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


@pytest.fixture
def upstream(make_data_repo: Callable[..., str]) -> Upstream:
    url = make_data_repo("data")
    bare = Path(url.removeprefix("file://"))
    return Upstream(url=url, work=bare.with_name("data-work"))


@pytest.fixture
def http_server(upstream: Upstream) -> Iterator[GitHttpServer]:
    """Serves the upstream's directory: `<base_url>/data.git` needs HTTP_USER:HTTP_PASSWORD."""
    server = GitHttpServer(upstream.bare.parent)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def attack(
    tmp_path: Path, importdir: Path, upstream: Upstream, http_server: GitHttpServer
) -> Attack:
    marker = tmp_path / "pwned"
    script = tmp_path / "payload.sh"
    script.write_text(f"#!/bin/sh\ntouch {marker}\n")
    script.chmod(0o755)
    data_dir = datasets.clone(upstream.url, importdir / "tool")
    return Attack(data_dir, marker, script, upstream, tmp_path, f"{http_server.base_url}/data.git")


def store_git(dest: Path, *args: str) -> str:
    """git on our clone at `dest`, through its store; returns stdout."""
    argv = ["git", f"--git-dir={datasets.store_path(dest)}", f"--work-tree={dest}", *args]
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout.strip()


def owners(top: Path) -> set[tuple[int, int]]:
    """(uid, gid) of `top` and of everything under it, symlinks themselves."""
    found = {(top.lstat().st_uid, top.lstat().st_gid)}
    for path in top.rglob("*"):
        found.add((path.lstat().st_uid, path.lstat().st_gid))
    return found


# ---- the attacks ------------------------------------------------------------------------------


@pytest.mark.parametrize("plant", PLANTS)
def test_update_runs_nothing_a_tool_planted(attack: Attack, plant: str) -> None:
    PLANTS[plant](attack)
    attack.upstream.push_file("control-2.csv", "11\n")

    head = datasets.update(attack.data_dir, url=attack.upstream.url)

    assert head == store_git(attack.data_dir, "rev-parse", "HEAD")
    assert (attack.data_dir / "control-2.csv").read_text() == "11\n"
    assert not attack.marker.exists()


@pytest.mark.parametrize("plant", PLANTS)
def test_open_clone_and_list_local_read_the_store_only(
    attack: Attack, importdir: Path, plant: str
) -> None:
    PLANTS[plant](attack)

    _, remote = datasets.open_clone(attack.data_dir, url=attack.upstream.url)
    assert remote == attack.upstream.url
    [described] = datasets.list_local(importdir)

    assert described.is_git
    assert described.remote == attack.upstream.url  # not the URL the tool planted
    assert not attack.marker.exists()


@pytest.mark.parametrize("plant", FETCH_PLANTS)
def test_the_planted_payload_is_live_for_plain_git(attack: Attack, plant: str) -> None:
    """The control: git run in the data directory (how the old layout ran it) runs the payload."""
    PLANTS[plant](attack)

    subprocess.run(
        ["git", "fetch", "origin"],
        cwd=attack.data_dir,
        env=os.environ | {"GIT_TERMINAL_PROMPT": "0", "GIT_CONFIG_NOSYSTEM": "1"},
        capture_output=True,
    )

    assert attack.marker.exists()


def test_gitmodules_and_a_submodule_git_dir_are_not_followed(
    attack: Attack, make_data_repo: Callable[..., str], tmp_path: Path
) -> None:
    upstream, data_dir = attack.upstream, attack.data_dir
    sub_url = make_data_repo("sub")
    sub_work = Path(sub_url.removeprefix("file://")).with_name("sub-work")
    git(
        "-c",
        "protocol.file.allow=always",
        "submodule",
        "add",
        "-q",
        sub_url,
        "sub",
        cwd=upstream.work,
    )
    git("commit", "-q", "-m", "add submodule", cwd=upstream.work)
    git("push", "-q", "origin", "HEAD", cwd=upstream.work)
    datasets.update(data_dir, url=upstream.url)
    # The tool makes `sub` a populated submodule of its own and rewrites .gitmodules.
    git("init", "-q", str(data_dir / "sub"), cwd=tmp_path)
    (data_dir / "sub" / ".git" / "config").write_text(
        attack.origin(sub_url, f"\tuploadpack = {attack.script}\n")
    )
    (data_dir / ".gitmodules").write_text(
        f'[submodule "sub"]\n\tpath = sub\n\turl = {sub_url}\n\tupdate = !{attack.script}\n'
        "\tfetchRecurseSubmodules = true\n"
    )
    # Upstream moves the submodule: a fetch that recursed would fetch in `sub`.
    (sub_work / "new.csv").write_text("2\n")
    git("add", "new.csv", cwd=sub_work)
    git("commit", "-q", "-m", "new", cwd=sub_work)
    git("push", "-q", "origin", "HEAD", cwd=sub_work)
    git(
        "-c",
        "protocol.file.allow=always",
        "submodule",
        "update",
        "-q",
        "--remote",
        cwd=upstream.work,
    )
    upstream.push_file("control-2.csv")

    datasets.update(data_dir, url=upstream.url)

    assert (data_dir / "control-2.csv").is_file()
    assert not attack.marker.exists()


def test_prepare_clones_and_hands_over_without_running_planted_config(
    node: NodeUnderTest, registry: Registry, upstream: Upstream, tmp_path: Path
) -> None:
    require_root()
    registry.tools.add(
        Tool(name="tool", author="t", image="busybox:latest", data_repo=upstream.url,
             code_repo=upstream.url, artefact="csv")
    )  # fmt: skip
    ctx = Node(node.settings())
    report = RunReport(run_id="r1", tool="tool", node="node-a")
    data_dir = node.importdir / "tool"
    run_steps.prepare(ctx, report)
    marker = tmp_path / "pwned"
    git("init", "-q", str(data_dir), cwd=tmp_path)
    payload = f"touch {marker}; git-upload-pack"
    (data_dir / ".git" / "config").write_text(
        f'[remote "origin"]\n\turl = {upstream.bare}\n\tuploadpack = {payload}\n'
    )
    upstream.push_file("control-2.csv")

    prepared = run_steps.prepare(ctx, report)
    datasets.update(data_dir, url=upstream.url)  # what `maoctl dataset clone tool --update` does

    assert prepared.data_dir == str(data_dir)
    assert not marker.exists()
    assert (data_dir.stat().st_uid, data_dir.stat().st_gid) == (TOOL_UID, TOOL_UID)


# ---- the layout -------------------------------------------------------------------------------


def test_a_tool_owned_work_tree_stays_usable_by_root(attack: Attack, importdir: Path) -> None:
    """git's safe.directory check is about discovery: an explicit --git-dir is not refused."""
    require_root()
    datasets.hand_over(attack.data_dir, TOOL_UID, TOOL_UID)
    attack.upstream.push_file("control-2.csv")

    head = datasets.update(attack.data_dir, url=attack.upstream.url)

    assert datasets.list_local(importdir)[0].head == head[: datasets.SHORT_SHA_LEN]
    assert datasets.store_path(attack.data_dir).stat().st_uid == 0


def test_hand_over_owns_everything_and_follows_no_symlink(attack: Attack, tmp_path: Path) -> None:
    require_root()
    data_dir = attack.data_dir
    data_dir.chmod(0o700)
    outside_file = tmp_path / "root-file"
    outside_file.write_text("root's")
    outside_dir = tmp_path / "root-dir"
    outside_dir.mkdir()
    (outside_dir / "inner").write_text("root's")
    (data_dir / "nested" / "deeper").mkdir(parents=True)
    (data_dir / "nested" / "deeper" / "control-2.csv").write_text("1\n")
    (data_dir / "link-to-file").symlink_to(outside_file)
    (data_dir / "nested" / "link-to-dir").symlink_to(outside_dir)

    datasets.hand_over(data_dir, TOOL_UID, TOOL_UID + 1)

    assert owners(data_dir) == {(TOOL_UID, TOOL_UID + 1)}
    assert data_dir.stat().st_mode & 0o777 == 0o755
    assert owners(outside_file) == {(0, 0)}
    assert owners(outside_dir) == {(0, 0)}
    assert owners(datasets.store_path(data_dir)) == {(0, 0)}


def test_hand_over_by_a_non_root_worker_keeps_ownership() -> None:
    require_root()
    nobody = 65534
    with tempfile.TemporaryDirectory() as tmp:  # under /tmp: pytest's tmp_path is root-only
        Path(tmp).chmod(0o755)
        top = Path(tmp) / "mine"
        (top / "sub").mkdir(parents=True)
        for path in (top, top / "sub"):
            os.chown(path, nobody, nobody)
        top.chmod(0o700)

        pid = os.fork()
        if pid == 0:  # the child: a worker running as `nobody`
            os.setgid(nobody)
            os.setuid(nobody)
            try:
                datasets.hand_over(top, TOOL_UID, TOOL_UID)
            finally:
                os._exit(0 if sys.exc_info()[0] is None else 1)
        _, status = os.waitpid(pid, 0)

        assert os.waitstatus_to_exitcode(status) == 0
        assert owners(top) == {(nobody, nobody)}
        assert top.stat().st_mode & 0o777 == 0o755


# ---- the old layout ---------------------------------------------------------------------------


def old_layout_clone(upstream: Upstream, dest: Path, marker: Path) -> None:
    """A clone made before the store, with tool files and a poisoned .git/config."""
    git("clone", "-q", upstream.url, str(dest), cwd=dest.parent)
    (dest / "control-1.csv").write_text("100\n")
    (dest / "README.md").write_text("changed by the tool\n")
    with (dest / ".git" / "config").open("a") as config:
        config.write(f'[remote "origin"]\n\tuploadpack = touch {marker}; git-upload-pack\n')


@pytest.mark.parametrize("entry", ["open_clone", "update"])
def test_an_old_layout_directory_is_migrated_without_reading_its_git(
    upstream: Upstream, importdir: Path, tmp_path: Path, entry: str
) -> None:
    dest = importdir / "tool"
    marker = tmp_path / "pwned"
    old_layout_clone(upstream, dest, marker)
    upstream.push_file("control-2.csv", "11\n")

    if entry == "open_clone":
        datasets.open_clone(dest, url=upstream.url)
    else:
        datasets.update(dest, url=upstream.url)

    assert not (dest / ".git").exists()
    assert store_git(dest, "config", "remote.origin.url") == upstream.url
    assert (dest / "control-1.csv").read_text() == "100\n"  # the tool's files are kept
    assert store_git(dest, "status", "--porcelain") == "M README.md\n?? control-1.csv"
    assert (dest / "control-2.csv").read_text() == "11\n"  # missing from the old clone
    assert not marker.exists()


def test_an_old_layout_gitdir_file_is_removed_not_followed(attack: Attack, importdir: Path) -> None:
    dest = importdir / "old"
    dest.mkdir()
    (dest / "control-1.csv").write_text("1\n")
    elsewhere = attack.tmp_path / "elsewhere.git"
    git("init", "-q", "--bare", str(elsewhere), cwd=attack.tmp_path)
    (elsewhere / "config").write_text(
        attack.origin(attack.upstream.url, f"\tuploadpack = {attack.script}\n")
    )
    (dest / ".git").write_text(f"gitdir: {elsewhere}\n")

    datasets.update(dest, url=attack.upstream.url)

    assert not os.path.lexists(dest / ".git")
    assert (elsewhere / "config").is_file()
    assert not attack.marker.exists()


def test_an_old_layout_directory_is_never_read_before_migration(
    upstream: Upstream, importdir: Path, tmp_path: Path
) -> None:
    dest = importdir / "tool"
    marker = tmp_path / "pwned"
    old_layout_clone(upstream, dest, marker)

    with pytest.raises(NotFound, match=r"old layout, never read\): update it from its registered"):
        datasets.update(dest)
    with pytest.raises(AlreadyExists, match="use --update"):
        datasets.clone(upstream.url, dest)
    [described] = datasets.list_local(importdir)

    assert described == datasets.LocalDataset("tool", dest, False, None, None)
    assert (dest / ".git").is_dir()
    assert not marker.exists()


# ---- credentials ------------------------------------------------------------------------------


def test_clone_and_update_use_the_node_credentials_file_only(
    attack: Attack, importdir: Path, tmp_path: Path
) -> None:
    credentials = tmp_path / "secrets" / "git credentials"  # a space: the helper is quoted
    credentials.parent.mkdir()
    host = attack.http_url.removeprefix("http://").split("/")[0]
    credentials.write_text(f"http://{HTTP_USER}:{HTTP_PASSWORD}@{host}\n")
    dest = datasets.clone(attack.http_url, importdir / "web", credentials=credentials)
    git("init", "-q", str(dest), cwd=tmp_path)
    with (dest / ".git" / "config").open("a") as config:
        config.write(f"[credential]\n\thelper = !{attack.script}\n")
    attack.upstream.push_file("control-2.csv", "11\n")

    datasets.update(dest, url=attack.http_url, credentials=credentials)

    assert (dest / "control-2.csv").read_text() == "11\n"
    assert not attack.marker.exists()


def test_without_credentials_the_clone_fails_and_leaves_nothing(
    attack: Attack, importdir: Path
) -> None:
    before = sorted(importdir.iterdir())

    with pytest.raises(ServiceUnavailable, match="terminal prompts disabled") as caught:
        datasets.clone(attack.http_url, importdir / "web")

    assert HTTP_PASSWORD not in str(caught.value)
    assert sorted(importdir.iterdir()) == before
    assert not attack.marker.exists()


def test_hand_over_clears_setuid_and_setgid_bits(tmp_path: Path) -> None:
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    setuid, setgid = work / "x", work / "sub" / "y"
    for path, mode in ((setuid, 0o4755), (setgid, 0o2750)):
        path.write_text("#!/bin/sh\n")
        path.chmod(mode)

    datasets.hand_over(work, TOOL_UID, TOOL_UID)

    assert stat.S_IMODE(setuid.stat().st_mode) == 0o755
    assert stat.S_IMODE(setgid.stat().st_mode) == 0o750
