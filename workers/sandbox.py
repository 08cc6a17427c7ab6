"""Run untrusted commands, such as generated tests, in a contained subprocess.

Containment, as far as the host allows (probed once per process, then cached):

- network: a new network namespace (``unshare --net``; ``--map-root-user`` adds an
  unprivileged user namespace when the worker is not root) holds only a loopback interface
  that is down, so neither the internet nor the host's own loopback services answer;
- processes: a new PID namespace with its own /proc (``--pid --fork --mount-proc``), so the
  run cannot see the worker's processes or read their environments, and killing the run
  kills everything it started (``--kill-child``);
- limits: address space, CPU seconds, file size, core dumps and, for a non-root user, the
  process count, set by a small trampoline that then execs the command;
- environment: a short allowlist, and names that look like secrets never pass;
- files: a private HOME and TMPDIR, removed afterwards; ``workspace`` gives the
  throwaway working copy.

When no namespace can be made, the command still runs under the other limits and the
result says plainly that it was not isolated.

The limits are set by a trampoline process rather than ``preexec_fn``: ``preexec_fn``
runs Python between fork and exec, which the subprocess documentation calls unsafe in a
multi-threaded process such as a worker's thread pool.
https://docs.python.org/3/library/subprocess.html#subprocess.Popen
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.errors import SandboxError

log = logging.getLogger("cibot.sandbox")

# Names copied from the worker's environment unless a caller says otherwise.
DEFAULT_ENV_ALLOW: tuple[str, ...] = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ")
# Names that never reach the sandbox, whatever the allowlist says.
SECRET_NAME = re.compile(
    r"^(CIBOT_|AWS_|GITHUB_|ACTIONS_|AZURE_|GOOGLE_|GCP_)"
    r"|TOKEN|SECRET|PASSW|CREDENTIAL|PRIVATE|_KEY$|^KEY$|_KEY_|API_?KEY|AUTH",
    re.IGNORECASE,
)
BASE_PATH = "/usr/local/bin:/usr/bin:/bin"
FIXED_ENV = {
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONNOUSERSITE": "1",
    "MALLOC_ARENA_MAX": "2",  # glibc reserves 64 MB of address space per arena otherwise
}
OUTPUT_LIMIT = 64_000  # characters kept of stdout and of stderr (head and tail)
FILE_LIMIT_MB = 64
PROCESS_ALLOWANCE = 64  # processes the run may add to its user's count
PROBE_TIMEOUT_S = 10.0

# The namespace sets tried in order; the first that works on this host is used.
NAMESPACES: tuple[tuple[tuple[str, ...], str], ...] = (
    (
        ("--net", "--pid", "--fork", "--kill-child", "--mount-proc"),
        "new network and PID namespaces",
    ),
    (
        ("--map-root-user", "--net", "--pid", "--fork", "--kill-child", "--mount-proc"),
        "new user, network and PID namespaces",
    ),
    (
        ("--net",),
        "a new network namespace; no PID namespace, so detached processes may outlive the run",
    ),
    (
        ("--map-root-user", "--net"),
        "new user and network namespaces; no PID namespace, so detached processes may outlive the run",
    ),
)
NOT_ISOLATED = (
    "not isolated: no network namespace could be made on this host ({why}), so the "
    "tests ran with the host's network reachable"
)

TRAMPOLINE = """\
import json, os, resource, sys
for name, (soft, hard) in json.loads(sys.argv[1]).items():
    resource.setrlimit(getattr(resource, name), (soft, hard))
os.execvp(sys.argv[2], sys.argv[2:])
"""


@dataclass(frozen=True)
class SandboxResult:
    """Report one contained run: exit status, bounded output, and how it was contained."""

    returncode: int
    stdout: str
    stderr: str
    timed_out: bool
    isolated: bool
    isolation_note: str
    duration_s: float = 0.0
    truncated: bool = False

    @property
    def ok(self) -> bool:
        """Tell whether the command finished in time with exit status 0."""
        return self.returncode == 0 and not self.timed_out


@dataclass(frozen=True)
class Isolation:
    """Say how runs are isolated here: the command prefix and a note for people."""

    prefix: tuple[str, ...]
    isolated: bool
    note: str


def probe(unshare: str | None) -> Isolation:
    """Find the strongest namespace set ``unshare`` can make here; none when it is None."""
    true = shutil.which("true") or "/bin/true"
    if unshare is None:
        return Isolation((), False, NOT_ISOLATED.format(why="the unshare tool is not installed"))
    errors: list[str] = []
    for flags, what in NAMESPACES:
        try:
            done = subprocess.run(
                [unshare, *flags, true],
                capture_output=True,
                timeout=PROBE_TIMEOUT_S,
                check=False,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            errors.append(f"{type(exc).__name__}")
            continue
        if done.returncode == 0:
            return Isolation((unshare, *flags), True, f"isolated: {what}")
        errors.append(done.stderr.decode("utf-8", "replace").strip()[:120] or "refused")
    return Isolation((), False, NOT_ISOLATED.format(why="; ".join(dict.fromkeys(errors))))


@functools.cache
def isolation() -> Isolation:
    """Return this host's isolation, probed on first use and cached for the process."""
    found = probe(shutil.which("unshare"))
    log.info("sandbox isolation probed", extra={"isolated": found.isolated, "note": found.note})
    return found


def run(
    cmd: Sequence[str],
    *,
    cwd: Path,
    timeout_s: float,
    memory_mb: int,
    env_allow: Sequence[str] = DEFAULT_ENV_ALLOW,
    env: Mapping[str, str] | None = None,
    output_limit: int = OUTPUT_LIMIT,
    file_limit_mb: int = FILE_LIMIT_MB,
    processes: int = PROCESS_ALLOWANCE,
    contain: Isolation | None = None,
) -> SandboxResult:
    """Run ``cmd`` in ``cwd`` without network, secrets or unbounded resources.

    ``env_allow`` names variables copied from the worker's environment; ``env`` sets
    values (such as PYTHONPATH). Secret-looking names never pass. Raise SandboxError for
    a command that cannot be started; a command that fails is a result, not an error.
    """
    program = _check(cmd, cwd, timeout_s, memory_mb)
    how = contain if contain is not None else isolation()
    with tempfile.TemporaryDirectory(prefix="cibot-sandbox-") as scratch_dir:
        scratch = Path(scratch_dir)
        variables = sandbox_env(env_allow, env or {}, scratch)
        limits = _limits(timeout_s, memory_mb, file_limit_mb, processes)
        argv = [*how.prefix, sys.executable, "-I", "-S", "-c", TRAMPOLINE, json.dumps(limits)]
        argv += [program, *cmd[1:]]
        returncode, timed_out, took = _spawn(argv, cwd, variables, scratch, timeout_s)
        stdout, cut_out = read_bounded(scratch / "stdout", output_limit)
        stderr, cut_err = read_bounded(scratch / "stderr", output_limit)
    return SandboxResult(
        returncode=returncode,
        stdout=stdout,
        stderr=stderr,
        timed_out=timed_out,
        isolated=how.isolated,
        isolation_note=how.note,
        duration_s=took,
        truncated=cut_out or cut_err,
    )


def _check(cmd: Sequence[str], cwd: Path, timeout_s: float, memory_mb: int) -> str:
    """Reject an unusable run before starting anything; return the program's path."""
    if not cmd or not all(isinstance(part, str) and part for part in cmd):
        raise SandboxError("the sandbox needs a command: a non-empty list of non-empty strings")
    if not Path(cwd).is_dir():
        raise SandboxError(f"the sandbox working directory {str(cwd)!r} is not a directory")
    if not (timeout_s > 0 and memory_mb > 0):
        raise SandboxError("the sandbox needs a positive time limit and memory limit")
    program = shutil.which(cmd[0], path=BASE_PATH) if "/" not in cmd[0] else cmd[0]
    if program is None or not os.access(program, os.X_OK):
        raise SandboxError(f"the sandbox cannot run {cmd[0]!r}: no such program")
    return program


def sandbox_env(allow: Sequence[str], given: Mapping[str, str], scratch: Path) -> dict[str, str]:
    """Build the child's environment: allowlisted names, given values, private HOME and TMPDIR."""
    for name in given:
        if SECRET_NAME.search(name):
            raise SandboxError(
                f"refusing to pass {name!r} into the sandbox: it looks like a secret"
            )
    variables = {
        name: os.environ[name]
        for name in allow
        if name in os.environ and not SECRET_NAME.search(name)
    }
    variables.setdefault("PATH", BASE_PATH)
    variables.setdefault("LANG", "C.UTF-8")
    variables.update(FIXED_ENV)
    variables.update(given)
    for name in ("home", "tmp"):
        (scratch / name).mkdir()
    variables["HOME"] = str(scratch / "home")
    for name in ("TMPDIR", "TEMP", "TMP"):
        variables[name] = str(scratch / "tmp")
    return variables


def _limits(
    timeout_s: float, memory_mb: int, file_limit_mb: int, processes: int
) -> dict[str, tuple[int, int]]:
    """Return the rlimits as (soft, hard): SIGXCPU at the soft CPU limit, SIGKILL at the hard."""
    cpu = math.ceil(timeout_s) + 1
    limits = {
        "RLIMIT_AS": (memory_mb * 2**20, memory_mb * 2**20),
        "RLIMIT_CPU": (cpu, cpu + 1),
        "RLIMIT_FSIZE": (file_limit_mb * 2**20, file_limit_mb * 2**20),
        "RLIMIT_CORE": (0, 0),
    }
    uid = os.getuid()
    if uid != 0:  # the kernel does not apply RLIMIT_NPROC to root
        allowed = _user_processes(uid) + processes
        limits["RLIMIT_NPROC"] = (allowed, allowed)
    return limits


def _user_processes(uid: int) -> int:
    """Count the processes ``uid`` runs now (RLIMIT_NPROC counts them all, not just ours)."""
    count = 0
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    count += entry.stat().st_uid == uid
    return count


def _spawn(
    argv: list[str], cwd: Path, variables: dict[str, str], scratch: Path, timeout_s: float
) -> tuple[int, bool, float]:
    """Start the run in its own session, wait up to ``timeout_s``, then kill what is left."""
    started = time.monotonic()
    timed_out = False
    with (scratch / "stdout").open("wb") as out, (scratch / "stderr").open("wb") as err:
        try:
            proc = subprocess.Popen(
                argv,
                cwd=cwd,
                env=variables,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:
            raise SandboxError(f"the sandbox could not start: {exc.strerror or exc}") from exc
        try:
            returncode = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc.pid)
            returncode = proc.wait()
        finally:
            _kill_group(proc.pid)  # stragglers left in the session after a normal exit
    return returncode, timed_out, time.monotonic() - started


def _kill_group(pgid: int) -> None:
    """SIGKILL a process group; it may already be gone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def read_bounded(path: Path, limit: int) -> tuple[str, bool]:
    """Read at most ``limit`` bytes of a file as text: its head and tail around a cut note."""
    if not path.exists():
        return "", False
    size = path.stat().st_size
    with path.open("rb") as handle:
        if size <= limit:
            return handle.read().decode("utf-8", "replace"), False
        head = handle.read(limit // 4)
        handle.seek(size - (limit - len(head)))
        tail = handle.read()
    cut = size - len(head) - len(tail)
    return (
        f"{head.decode('utf-8', 'replace')}\n… [{cut} bytes cut] …\n{tail.decode('utf-8', 'replace')}",
        True,
    )


@contextlib.contextmanager
def workspace(source: Path | None = None, *, ignore: Sequence[str] = (".git",)) -> Iterator[Path]:
    """Yield a throwaway copy of ``source`` (or an empty directory); remove it afterwards."""
    root = Path(tempfile.mkdtemp(prefix="cibot-work-"))
    try:
        work = root / "repo"
        if source is None:
            work.mkdir()
        else:
            shutil.copytree(source, work, symlinks=True, ignore=shutil.ignore_patterns(*ignore))
        yield work
    finally:
        remove_tree(root)


def remove_tree(path: Path) -> None:
    """Delete a directory tree, even parts a run made unreadable (chmod 000)."""

    def retry(function: Callable[..., Any], name: str, _info: Any) -> None:
        """Make the path and its folder writable again, then retry the removal."""
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(name), stat.S_IRWXU)
            os.chmod(name, stat.S_IRWXU)
        with contextlib.suppress(OSError):
            function(name)

    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=retry)
    else:
        shutil.rmtree(path, onerror=retry)
