"""Check the sandbox with real subprocesses: no network, no secrets, limits, throwaway files."""

from __future__ import annotations

import os
import socket
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bot.errors import SandboxError
from workers import sandbox

PY = sys.executable


def needs_isolation() -> None:
    """Skip a test that needs namespaces on a host that cannot make them."""
    if not sandbox.isolation().isolated:
        pytest.skip(f"this host cannot isolate runs: {sandbox.isolation().note}")


def python(code: str, cwd: Path, **options: object) -> sandbox.SandboxResult:
    """Run Python source in the sandbox with small limits unless told otherwise."""
    settings: dict[str, object] = {"timeout_s": 20, "memory_mb": 512, **options}
    return sandbox.run([PY, "-c", textwrap.dedent(code)], cwd=cwd, **settings)  # type: ignore[arg-type]


def test_the_host_loopback_is_unreachable_inside(tmp_path: Path) -> None:
    """A port the test opened on 127.0.0.1 cannot be reached from the run."""
    needs_isolation()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=3):
            listener.accept()[0].close()  # the control: reachable from outside
        code = f"""
            import socket
            try:
                socket.create_connection(("127.0.0.1", {port}), timeout=3)
                print("reached")
            except OSError as exc:
                print("blocked", exc.errno)
        """
        result = python(code, tmp_path)
        listener.settimeout(0.2)
        with pytest.raises(TimeoutError):
            listener.accept()
    assert result.ok and result.stdout.startswith("blocked") and "reached" not in result.stdout
    assert result.isolated and result.isolation_note.startswith("isolated:")


def test_secrets_never_reach_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Secret-looking names are dropped even when allowlisted; HOME is a private directory."""
    for name in ("CIBOT_GITHUB_PRIVATE_KEY", "GITHUB_TOKEN", "AWS_SECRET_ACCESS_KEY", "MY_API_KEY"):
        monkeypatch.setenv(name, "s3cr3t-value")
    monkeypatch.setenv("TZ", "UTC")
    allow = ("PATH", "TZ", "CIBOT_GITHUB_PRIVATE_KEY", "GITHUB_TOKEN", "AWS_SECRET_ACCESS_KEY")
    code = "import os, json; print(json.dumps(dict(os.environ)))"
    result = python(code, tmp_path, env_allow=(*allow, "MY_API_KEY"), env={"PYTHONPATH": "/x"})
    assert result.ok
    assert "s3cr3t-value" not in result.stdout
    env = __import__("json").loads(result.stdout)
    assert env["TZ"] == "UTC" and env["PYTHONPATH"] == "/x"
    assert not env["HOME"].startswith(str(Path.home())) and "cibot-sandbox-" in env["HOME"]
    assert env["TMPDIR"] == str(Path(env["HOME"]).parent / "tmp")


def test_a_secret_passed_on_purpose_is_refused(tmp_path: Path) -> None:
    """Handing a secret-looking variable in by value is a bug: it raises, nothing runs."""
    with pytest.raises(SandboxError, match="GITHUB_TOKEN"):
        sandbox.run(
            [PY, "-c", "pass"], cwd=tmp_path, timeout_s=5, memory_mb=256, env={"GITHUB_TOKEN": "x"}
        )


def test_the_worker_processes_are_invisible(tmp_path: Path) -> None:
    """A new PID namespace: the run sees only itself, never the worker's environ."""
    needs_isolation()
    if "PID" not in sandbox.isolation().note:
        pytest.skip("this host gives no PID namespace")
    code = f"""
        import os
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
        print(len(pids), os.path.exists("/proc/{os.getpid()}/environ"))
    """
    result = python(code, tmp_path)
    count, visible = result.stdout.split()
    assert int(count) <= 2 and visible == "False"


def test_the_time_limit_kills_an_endless_loop(tmp_path: Path) -> None:
    """A `while True` is killed at the wall-clock limit and reported as timed out."""
    started = time.monotonic()
    result = python("while True:\n    pass\n", tmp_path, timeout_s=1)
    assert result.timed_out and not result.ok and result.returncode != 0
    assert time.monotonic() - started < 10


def test_processes_left_behind_are_killed(tmp_path: Path) -> None:
    """A detached child that outlives the command stops when the run ends."""
    needs_isolation()
    if "PID" not in sandbox.isolation().note:
        pytest.skip("without a PID namespace a detached child can leave the process group")
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
    result = python("b = bytearray(2 * 1024**3)\nprint('allocated')", tmp_path, memory_mb=256)
    assert result.returncode != 0 and "MemoryError" in result.stderr
    assert "allocated" not in result.stdout


def test_the_file_size_limit_stops_a_disk_filler(tmp_path: Path) -> None:
    """Writing past the file-size limit fails; the file stops at the limit."""
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
    code = "import sys\nsys.stdout.write('A' * 1000 + 'B' * 3_000_000 + 'Z' * 1000)"
    result = python(code, tmp_path, output_limit=8000)
    assert result.ok and result.truncated
    assert len(result.stdout) < 8200 and "bytes cut" in result.stdout
    assert result.stdout.startswith("A") and result.stdout.endswith("Z")


def test_the_working_copy_is_thrown_away(tmp_path: Path) -> None:
    """A run may wreck its copy; the source is untouched and the copy is gone afterwards."""
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


def test_without_namespaces_the_result_says_it_was_not_isolated(tmp_path: Path) -> None:
    """No unshare on the host: the run still happens, and says plainly it was not isolated."""
    bare = sandbox.probe(None)
    assert not bare.isolated and bare.prefix == ()
    result = python("print('ran')", tmp_path, contain=bare)
    assert result.ok and result.stdout == "ran\n"
    assert not result.isolated and result.isolation_note.startswith("not isolated:")
    refused = sandbox.probe("/bin/false")
    assert not refused.isolated and "not isolated" in refused.note


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
