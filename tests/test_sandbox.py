"""Check the sandbox with real subprocesses under real bubblewrap: no network, no host
files, no secrets, limits, throwaway files; and the plain refusal where bwrap cannot run."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import sys
import sysconfig
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.kernel.errors import SandboxError
from workers import sandbox

PY = sys.executable
REDIS = ("127.0.0.1", 6379)


def needs_isolation() -> None:
    """Skip, saying why and how to fix it, on a host where bubblewrap cannot contain runs."""
    found = sandbox.isolation()
    if not found.isolated:
        pytest.skip(f"bubblewrap cannot contain runs on this host: {found.refusal}")


def python(code: str, cwd: Path, **options: object) -> sandbox.SandboxResult:
    """Run Python source in the sandbox with small limits unless told otherwise."""
    settings: dict[str, object] = {"timeout_s": 20, "memory_mb": 512, **options}
    return sandbox.run([PY, "-c", textwrap.dedent(code)], cwd=cwd, **settings)  # type: ignore[arg-type]


@pytest.fixture
def work() -> Iterator[Path]:
    """Yield a throwaway working copy, as the tests job gives the sandbox."""
    with sandbox.workspace() as copy:
        yield copy


def attempts(result: sandbox.SandboxResult) -> dict[str, str]:
    """Read the JSON verdicts a probe script printed: what it tried, and what happened."""
    assert result.ok, result.stderr
    verdicts: dict[str, str] = json.loads(result.stdout.strip().splitlines()[-1])
    return verdicts


# Tries each action and prints {name: "done" | "<errno name>"} as one JSON line.
TRY_ALL = """
    import errno, json, os, socket
    def attempt(action):
        try:
            action()
            return "done"
        except OSError as exc:
            return errno.errorcode.get(exc.errno, str(exc.errno))
    def read(path):
        return lambda: open(path, "rb").read()
    def write(path):
        return lambda: open(path, "w").write("import os; print('owned')\\n")
    def connect(host, port):
        return lambda: socket.create_connection((host, port), timeout=3).close()
    print(json.dumps({name: attempt(action) for name, action in ACTIONS.items()}))
"""


def try_all(actions: str, cwd: Path) -> dict[str, str]:
    """Run TRY_ALL with ``actions`` (Python source of a dict literal) in the sandbox."""
    code = textwrap.dedent(TRY_ALL).replace("ACTIONS.items()", f"({actions}).items()")
    return attempts(sandbox.run([PY, "-c", code], cwd=cwd, timeout_s=20, memory_mb=512))


def test_the_host_loopback_is_unreachable_inside(work: Path) -> None:
    """A port the test opened on 127.0.0.1 cannot be reached from the run."""
    needs_isolation()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=3):
            listener.accept()[0].close()  # the control: reachable from outside
        tried = try_all(f'{{"listener": connect("127.0.0.1", {port})}}', work)
        listener.settimeout(0.2)
        with pytest.raises(TimeoutError):
            listener.accept()
    assert tried == {"listener": "ECONNREFUSED"}


def test_the_real_redis_is_unreachable_inside(work: Path) -> None:
    """The worker's Redis on 127.0.0.1:6379 answers outside and not inside."""
    needs_isolation()
    try:
        socket.create_connection(REDIS, timeout=3).close()
    except OSError as exc:
        pytest.skip(f"no Redis listens on {REDIS[0]}:{REDIS[1]} to try from inside ({exc})")
    tried = try_all(
        f'{{"redis": connect("{REDIS[0]}", {REDIS[1]}), "dns": connect("github.com", 443)}}', work
    )
    assert tried["redis"] == "ECONNREFUSED"
    assert tried["dns"] != "done"


def test_files_outside_the_working_copy_cannot_be_read(tmp_path: Path, work: Path) -> None:
    """A planted App key beside the workspace, the worker's HOME and the checkout are not there."""
    needs_isolation()
    key = tmp_path / "secrets" / "github-app.pem"
    key.parent.mkdir()
    key.write_text("-----BEGIN RSA PRIVATE KEY-----\nfake\n", encoding="utf-8")
    home_file = Path.home() / f".cibot-sandbox-probe-{uuid.uuid4().hex}"
    home_file.write_text("worker home secret\n", encoding="utf-8")
    try:
        assert key.read_bytes() and home_file.read_bytes()  # the control: readable outside
        tried = try_all(
            "{"
            f'"app_key": read({str(key)!r}), "home": read({str(home_file)!r}), '
            f'"checkout": read({__file__!r}), "shadow": read("/etc/shadow"), '
            f'"mine": read("mine.txt")'
            "}",
            _with_file(work, "mine.txt"),
        )
    finally:
        home_file.unlink()
    assert tried == {
        "app_key": "ENOENT",
        "home": "ENOENT",
        "checkout": "ENOENT",
        "shadow": "ENOENT",
        "mine": "done",
    }


def _with_file(folder: Path, name: str) -> Path:
    """Write a small file into ``folder``; return the folder."""
    (folder / name).write_text("in the working copy\n", encoding="utf-8")
    return folder


def test_only_the_working_copy_is_writable(tmp_path: Path, work: Path) -> None:
    """Writes to site-packages, the system, a folder beside the workspace and HOME fail."""
    needs_isolation()
    name = f"cibot-sandbox-probe-{uuid.uuid4().hex}"
    site = Path(sysconfig.get_paths()["purelib"])
    targets = {
        "site_packages": site / f"{name}.pth",
        "stdlib": Path(sysconfig.get_paths()["stdlib"]) / f"{name}.py",
        "usr": Path("/usr/lib") / name,
        "etc": Path("/etc") / name,
        "beside": tmp_path / name,
        "home": Path.home() / name,
    }
    actions = ", ".join(f'"{label}": write({str(path)!r})' for label, path in targets.items())
    tried = try_all(
        "{" + actions + f', "tmp": write("/tmp/{name}"), "workspace": write("{name}")' + "}", work
    )
    assert tried["workspace"] == "done" and (work / name).is_file()
    assert tried["tmp"] == "done" and not Path("/tmp", name).exists()  # a private /tmp
    for label, path in targets.items():
        assert tried[label] in ("EROFS", "ENOENT", "EACCES"), (label, tried[label])
        assert not path.exists(), f"{label}: {path} was written from inside the sandbox"


def test_secrets_never_reach_the_environment(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Secret-looking names are dropped even when allowlisted; nothing else leaks in."""
    needs_isolation()
    for name in ("CIBOT_GITHUB_PRIVATE_KEY", "GITHUB_TOKEN", "AWS_SECRET_ACCESS_KEY", "MY_API_KEY"):
        monkeypatch.setenv(name, "s3cr3t-value")
    monkeypatch.setenv("TZ", "UTC")
    monkeypatch.setenv("UNLISTED_SETTING", "worker-only")
    allow = ("PATH", "TZ", "CIBOT_GITHUB_PRIVATE_KEY", "GITHUB_TOKEN", "AWS_SECRET_ACCESS_KEY")
    code = "import os, json; print(json.dumps(dict(os.environ)))"
    result = python(code, work, env_allow=(*allow, "MY_API_KEY"), env={"PYTHONPATH": "/x"})
    assert result.ok, result.stderr
    assert "s3cr3t-value" not in result.stdout and "worker-only" not in result.stdout
    env = json.loads(result.stdout)
    assert env["TZ"] == "UTC" and env["PYTHONPATH"] == "/x"
    assert env["HOME"] == sandbox.HOME and env["TMPDIR"] == "/tmp"
    expected = {"PATH", "TZ", "LANG", "PYTHONPATH", "PWD", *sandbox.FIXED_ENV}
    assert set(env) <= expected, set(env) - expected
    assert env["PWD"] == str(work)


def test_a_secret_passed_on_purpose_is_refused(tmp_path: Path) -> None:
    """Handing a secret-looking variable in by value is a bug: it raises, nothing runs."""
    with pytest.raises(SandboxError, match="GITHUB_TOKEN"):
        sandbox.run(
            [PY, "-c", "pass"], cwd=tmp_path, timeout_s=5, memory_mb=256, env={"GITHUB_TOKEN": "x"}
        )


def test_a_passing_pytest_module_passes_and_a_failing_one_fails(work: Path) -> None:
    """The interpreter's pytest runs in the view; its verdict comes back."""
    needs_isolation()
    (work / "test_ok.py").write_text(
        "def test_adds(tmp_path):\n"
        "    (tmp_path / 'f').write_text('x')\n"
        "    assert 1 + 1 == 2\n"
        "def test_fails():\n"
        "    assert 1 + 1 == 3\n",
        encoding="utf-8",
    )
    argv = [PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts="]
    passed = sandbox.run([*argv, "test_ok.py::test_adds"], cwd=work, timeout_s=60, memory_mb=1024)
    assert passed.ok and "1 passed" in passed.stdout, passed.stdout + passed.stderr
    failed = sandbox.run([*argv, "test_ok.py::test_fails"], cwd=work, timeout_s=60, memory_mb=1024)
    assert failed.returncode == 1 and "1 failed" in failed.stdout


def test_where_bubblewrap_cannot_run_nothing_runs_and_the_error_says_how_to_fix_it(
    work: Path,
) -> None:
    """A missing bwrap, or one that cannot start, is a refusal: the command never starts."""
    missing = sandbox.probe("/nonexistent/bwrap")
    broken = sandbox.probe("/bin/false")
    assert not missing.isolated and missing.note == sandbox.INSTALLED
    assert not broken.isolated and broken.note == sandbox.BROKEN
    code = "open('ran', 'w').write('unisolated')"
    for found in (missing, broken):
        with pytest.raises(SandboxError, match="refusing to run generated tests") as raised:
            python(code, work, contain=found)
        assert "install bubblewrap" in str(raised.value) and "user namespaces" in str(raised.value)
        assert not (work / "ran").exists()
    previous = sandbox.set_isolation(missing)
    try:
        with pytest.raises(SandboxError, match="bubblewrap \\(bwrap\\) is not installed"):
            python(code, work)
    finally:
        sandbox.set_isolation(previous)
    assert not (work / "ran").exists()


def test_the_probe_runs_once_and_is_cached() -> None:
    """Every run in a process shares one probe result."""
    assert sandbox.isolation() is sandbox.isolation()


def test_the_worker_processes_are_invisible(tmp_path: Path) -> None:
    """A new PID namespace: the run sees only itself, never the worker's environ."""
    needs_isolation()
    code = f"""
        import os
        pids = [p for p in os.listdir("/proc") if p.isdigit()] if os.path.isdir("/proc") else []
        print(len(pids), os.path.exists("/proc/{os.getpid()}/environ"), os.getpid())
    """
    result = python(code, tmp_path)
    count, visible, pid = result.stdout.split()
    assert int(count) <= 3 and visible == "False" and int(pid) <= 3
    assert os.path.exists(f"/proc/{os.getpid()}/environ")  # the control: there outside


def test_without_a_new_procfs_the_run_has_no_proc_at_all(tmp_path: Path) -> None:
    """The fallback view for hosts that refuse a new procfs shows no /proc, not the host's."""
    needs_isolation()
    bare = dataclasses.replace(sandbox.isolation(), proc=False)
    code = "import os; print(os.path.exists('/proc'), os.getpid())"
    result = python(code, tmp_path, contain=bare)
    assert result.ok, result.stderr
    exists, pid = result.stdout.split()
    assert exists == "False" and int(pid) <= 3


def test_the_time_limit_kills_an_endless_loop(tmp_path: Path) -> None:
    """A `while True` is killed at the wall-clock limit and reported as timed out."""
    needs_isolation()
    started = time.monotonic()
    result = python("while True:\n    pass\n", tmp_path, timeout_s=1)
    assert result.timed_out and not result.ok and result.returncode != 0
    assert time.monotonic() - started < 10


def test_processes_left_behind_are_killed(tmp_path: Path) -> None:
    """A detached child that outlives the command stops when the run ends."""
    needs_isolation()
    beat = tmp_path / "beat"
    (tmp_path / "child.py").write_text(
        "import time\n"
        "while True:\n"
        f"    with open({str(beat)!r}, 'a') as f:\n"
        "        f.write('x')\n"
        "    time.sleep(0.05)\n"
    )
    code = """
        import subprocess, sys, time
        subprocess.Popen([sys.executable, "child.py"], start_new_session=True)
        time.sleep(0.5)
    """
    result = python(code, tmp_path)
    assert result.ok
    time.sleep(0.3)
    size = beat.stat().st_size
    time.sleep(0.5)
    assert size > 0 and beat.stat().st_size == size


def test_the_memory_limit_stops_a_huge_allocation(tmp_path: Path) -> None:
    """Two gigabytes under a 256 MB address-space limit fail with MemoryError."""
    needs_isolation()
    result = python("b = bytearray(2 * 1024**3)\nprint('allocated')", tmp_path, memory_mb=256)
    assert result.returncode != 0 and "MemoryError" in result.stderr
    assert "allocated" not in result.stdout


def test_the_file_size_limit_stops_a_disk_filler(tmp_path: Path) -> None:
    """Writing past the file-size limit fails; the file stops at the limit."""
    needs_isolation()
    code = """
        with open("big", "wb") as f:
            for _ in range(64):
                f.write(b"x" * 2**20)
    """
    result = python(code, tmp_path, file_limit_mb=4)
    assert result.returncode != 0
    assert (tmp_path / "big").stat().st_size <= 4 * 2**20


def test_output_is_bounded_head_and_tail(tmp_path: Path) -> None:
    """Megabytes of output come back as a bounded head and tail with a cut note."""
    needs_isolation()
    code = "import sys\nsys.stdout.write('A' * 1000 + 'B' * 3_000_000 + 'Z' * 1000)"
    result = python(code, tmp_path, output_limit=8000)
    assert result.ok and result.truncated
    assert len(result.stdout) < 8200 and "bytes cut" in result.stdout
    assert result.stdout.startswith("A") and result.stdout.endswith("Z")


def test_the_working_copy_is_thrown_away(tmp_path: Path) -> None:
    """A run may wreck its copy; the source is untouched and the copy is gone afterwards."""
    needs_isolation()
    source = tmp_path / "src"
    (source / ".git").mkdir(parents=True)
    (source / "keep.py").write_text("x = 1\n")
    (source / ".git" / "config").write_text("[core]\n")
    code = """
        import os
        os.remove("keep.py")
        os.makedirs("locked/inner")
        open("locked/inner/f", "w").write("y")
        os.chmod("locked/inner", 0)
        os.chmod("locked", 0)
        print(sorted(os.listdir(".")))
    """
    with sandbox.workspace(source) as copy:
        assert (copy / "keep.py").is_file() and not (copy / ".git").exists()
        result = python(code, copy)
        assert result.ok and result.stdout.strip() == "['locked']"
    assert not copy.exists() and not copy.parent.exists()
    assert (source / "keep.py").read_text() == "x = 1\n"


@pytest.mark.parametrize(
    ("cmd", "problem"),
    [
        ([], "needs a command"),
        (["no-such-program-cibot"], "no such program"),
        ([PY, ""], "needs a command"),
    ],
)
def test_unusable_commands_are_refused(tmp_path: Path, cmd: list[str], problem: str) -> None:
    """A bad command is a clear SandboxError, not a crash."""
    with pytest.raises(SandboxError, match=problem):
        sandbox.run(cmd, cwd=tmp_path, timeout_s=5, memory_mb=256)


def test_a_missing_directory_or_zero_limit_is_refused(tmp_path: Path) -> None:
    """The working directory must exist and the limits must be positive."""
    with pytest.raises(SandboxError, match="not a directory"):
        sandbox.run([PY, "-c", "pass"], cwd=tmp_path / "nope", timeout_s=5, memory_mb=256)
    with pytest.raises(SandboxError, match="positive"):
        sandbox.run([PY, "-c", "pass"], cwd=tmp_path, timeout_s=0, memory_mb=256)


def test_secret_names_are_recognised() -> None:
    """The deny pattern catches the usual secret names and leaves ordinary ones."""
    for name in (
        "CIBOT_REDIS_URL",
        "GITHUB_TOKEN",
        "AWS_REGION",
        "OPENAI_API_KEY",
        "DB_PASSWORD",
        "SSH_AUTH_SOCK",
        "NPM_TOKEN",
        "SOME_KEY",
        "GOOGLE_APPLICATION_CREDENTIALS",
    ):
        assert sandbox.SECRET_NAME.search(name), name
    for name in ("PATH", "LANG", "TZ", "PYTHONPATH", "HOME", "LC_ALL"):
        assert not sandbox.SECRET_NAME.search(name), name
    assert os.environ.get("PATH")  # the allowlist's first name exists on any host
