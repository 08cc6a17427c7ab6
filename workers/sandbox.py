"""Run untrusted commands, such as generated tests, in a contained subprocess.

Every run goes through bubblewrap (``bwrap``, https://github.com/containers/bubblewrap),
which builds the run a view of its own:

- files: a read-only minimal system (``/usr`` and the ``/bin``, ``/lib`` links, the few
  ``/etc`` files the loader, time zones and TLS need, and generated ``passwd``, ``group``
  and ``hosts``), the interpreter's prefixes read-only (a venv's and its base
  installation's, so site-packages cannot be changed), a private size-bounded ``/tmp``
  holding HOME, and the throwaway working copy as the only writable host directory. The
  worker's home, its checkout, the App key and the rest of ``/etc`` are not there at all;
- network: ``--unshare-all`` gives a new network namespace whose loopback is its own, so
  neither the internet nor the host's loopback services (Redis, the model server) answer;
- processes: a new PID namespace with its own /proc, ``--die-with-parent`` and
  ``--new-session``; killing the run kills everything it started;
- user: uid and gid 65534 inside a new user namespace with no capabilities, and no
  further user namespaces (``--disable-userns``);
- limits: address space, CPU seconds, file size, core dumps and, for a non-root worker,
  the process count, set by a small trampoline inside the sandbox that then execs the
  command;
- environment: ``--clearenv``, then a short allowlist; names that look like secrets never
  pass.

Where bubblewrap is missing or cannot build that view (no unprivileged user namespaces, a
container's seccomp or AppArmor profile refusing them), nothing runs: ``run`` raises
SandboxError saying what failed and how to fix it. The check is made once per process,
by starting Python in the same view, and cached.

The limits are set by a trampoline process rather than ``preexec_fn``: ``preexec_fn``
runs Python between fork and exec, which the subprocess documentation calls unsafe in a
multi-threaded process such as a worker's thread pool.
https://docs.python.org/3/library/subprocess.html#subprocess.Popen
"""

from __future__ import annotations

import contextlib
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
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.kernel.errors import SandboxError

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
# The run's own /tmp: a fresh tmpfs inside the sandbox, never the host's.
PRIVATE_TMP = "/tmp"  # noqa: S108
HOME = f"{PRIVATE_TMP}/home"
FIXED_ENV = {
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONNOUSERSITE": "1",
    "MALLOC_ARENA_MAX": "2",  # glibc reserves 64 MB of address space per arena otherwise
    "HOME": HOME,
    "TMPDIR": PRIVATE_TMP,
    "TEMP": PRIVATE_TMP,
    "TMP": PRIVATE_TMP,
}
OUTPUT_LIMIT = 64_000  # characters kept of stdout and of stderr (head and tail)
FILE_LIMIT_MB = 64
PROCESS_ALLOWANCE = 64  # processes the run may add to its user's count
PROBE_TIMEOUT_S = 10.0
NOBODY = 65534  # the uid and gid inside the sandbox
TMP_SIZE_MB = 256  # the private /tmp lives in memory

# The namespaces and process rules of every run (bwrap(1)).
FLAGS = (
    "--unshare-all",
    "--unshare-user",  # --unshare-all only tries; --uid needs it
    "--disable-userns",
    "--uid",
    str(NOBODY),
    "--gid",
    str(NOBODY),
    "--hostname",
    "sandbox",
    "--die-with-parent",
    "--new-session",
    "--clearenv",
)
# The run's own /dev and size-bounded /tmp (with HOME in it), before the working copy.
PRIVATE_MOUNTS = (
    *("--dev", "/dev"),
    *("--size", str(TMP_SIZE_MB * 2**20), "--tmpfs", PRIVATE_TMP),
    *("--perms", "0700", "--dir", HOME),
)
# Host directories shown read-only (symlinks such as a merged /usr's /bin stay symlinks).
SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# /etc entries the loader, Python's time zones and TLS read; never the whole of /etc.
ETC = (
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "timezone",
    "nsswitch.conf",
    "alternatives",
    "mime.types",
    "ssl/certs",
    "ssl/openssl.cnf",
    "ca-certificates",
    "pki/tls/certs",
    "pki/ca-trust/extracted",
)
# Generated in place of the host's files: the sandbox's one user and its loopback names.
GENERATED = {
    "passwd": f"root:x:0:0:root:/root:/usr/sbin/nologin\n"
    f"nobody:x:{NOBODY}:{NOBODY}:nobody:{HOME}:/usr/sbin/nologin\n",
    "group": f"root:x:0:\nnogroup:x:{NOBODY}:\n",
    "hosts": "127.0.0.1 localhost\n::1 localhost\n",
}

INSTALLED = "bubblewrap (bwrap) is not installed on this worker"
BROKEN = "bubblewrap is installed but could not start a sandbox on this worker"
FIX = (
    "install bubblewrap (apt-get install bubblewrap) and allow unprivileged user "
    "namespaces (sysctl user.max_user_namespaces above 0, and on Debian and Ubuntu "
    "kernel.unprivileged_userns_clone=1 and an AppArmor profile that permits bwrap); in a "
    "container, run with a seccomp and AppArmor profile that allow unshare and mount"
)
REFUSED = "refusing to run generated tests: {why} ({detail}); {fix}"
NOTE = f"isolated: bubblewrap, uid {NOBODY}, no network, read-only system"
NO_PROC = ", no /proc (this host refuses a new procfs)"
ROOT_NOTE = (
    "; the worker runs as root, so the run keeps host uid 0 without capabilities: "
    "run workers as an unprivileged user"
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
    isolation_note: str
    duration_s: float = 0.0
    truncated: bool = False

    @property
    def ok(self) -> bool:
        """Tell whether the command finished in time with exit status 0."""
        return self.returncode == 0 and not self.timed_out


@dataclass(frozen=True)
class Isolation:
    """Say whether runs can be contained here: the bwrap binary, or why not.

    ``note`` is safe to show on a pull request; ``detail`` (bwrap's own words, which may
    name host paths) is for the worker's log and the ledger.
    """

    binary: str
    isolated: bool
    note: str
    detail: str = ""
    proc: bool = True

    @property
    def refusal(self) -> str:
        """Say, for an operator, why nothing runs here and how to fix it."""
        return REFUSED.format(why=self.note, detail=self.detail or "no detail", fix=FIX)


def probe(binary: str | None) -> Isolation:
    """Tell whether ``binary`` (bwrap) can run Python in the sandbox's view on this host.

    The view with its own /proc comes first; where a new procfs is refused (a container's
    masked /proc does that), the same view without any /proc.
    """
    if binary is None or not os.access(binary, os.X_OK):
        return Isolation(binary or "", False, INSTALLED, f"no executable {binary or 'bwrap'}")
    said = ""
    for proc in (True, False):
        said = _try(binary, proc)
        if not said:
            note = NOTE + ("" if proc else NO_PROC) + (ROOT_NOTE if os.geteuid() == 0 else "")
            return Isolation(binary, True, note, proc=proc)
    return Isolation(binary, False, BROKEN, said)


def _try(binary: str, proc: bool) -> str:
    """Start Python in the view once; return what went wrong, or "" when it ran."""
    with workspace() as empty, tempfile.TemporaryDirectory(prefix="cibot-probe-") as scratch:
        argv = view(
            binary, cwd=empty, variables={"PATH": BASE_PATH}, scratch=Path(scratch), proc=proc
        )
        try:
            done = subprocess.run(
                [*argv, sys.executable, "-I", "-S", "-c", "pass"],
                capture_output=True,
                stdin=subprocess.DEVNULL,
                timeout=PROBE_TIMEOUT_S,
                check=False,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            return f"{type(exc).__name__}: {exc}"[:300]
    if done.returncode == 0:
        return ""
    return done.stderr.decode("utf-8", "replace").strip()[:300] or f"exit {done.returncode}"


_found: Isolation | None = None
_probing = threading.Lock()


def isolation() -> Isolation:
    """Return this host's isolation, probed on first use and cached for the process."""
    global _found
    with _probing:
        if _found is None:
            _found = probe(shutil.which("bwrap"))
            level = logging.INFO if _found.isolated else logging.ERROR
            log.log(
                level,
                "sandbox isolation probed",
                extra={"isolated": _found.isolated, "note": _found.note, "detail": _found.detail},
            )
        return _found


def set_isolation(found: Isolation | None) -> Isolation | None:
    """Install the isolation runs use (None probes again); return the one it replaces."""
    global _found
    with _probing:
        previous, _found = _found, found
    return previous


def view(
    binary: str,
    *,
    cwd: Path,
    variables: Mapping[str, str],
    scratch: Path,
    proc: bool = True,
) -> list[str]:
    """Return the bwrap command line that contains one run in ``cwd`` (the command follows).

    ``proc`` mounts the PID namespace's own /proc; without it the run has no /proc at all.
    """
    work = os.path.abspath(cwd)
    argv = [binary, *FLAGS, *_system(), *_etc(scratch)]
    argv += [*(("--proc", "/proc") if proc else ()), *PRIVATE_MOUNTS, "--bind", work, work]
    argv += _interpreter()  # after the working copy: a venv inside it stays read-only
    argv += ["--remount-ro", "/", "--chdir", work]  # the mount points bwrap made stay put
    for name, value in variables.items():
        argv += ["--setenv", name, value]
    return [*argv, "--"]


def _system() -> list[str]:
    """Show the system directories read-only, keeping merged-/usr symlinks as symlinks."""
    argv: list[str] = []
    for path in SYSTEM:
        if os.path.islink(path):
            argv += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            argv += ["--ro-bind", path, path]
    return argv


def _etc(scratch: Path) -> list[str]:
    """Show the few /etc entries needed, and the generated passwd, group and hosts."""
    argv: list[str] = []
    for name in ETC:
        argv += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    for name, text in GENERATED.items():
        (scratch / name).write_text(text, encoding="utf-8")
        argv += ["--ro-bind", str(scratch / name), f"/etc/{name}"]
    return argv


def _interpreter() -> list[str]:
    """Show the interpreter's prefixes read-only: a venv's own and its base installation's."""
    shown = [p for p in SYSTEM if os.path.isdir(p) and not os.path.islink(p)]
    argv: list[str] = []
    executable = os.path.dirname(os.path.dirname(os.path.realpath(sys.executable)))
    for prefix in dict.fromkeys(
        (sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix, executable)
    ):
        path = os.path.realpath(prefix)
        if path == "/" or any(_within(path, other) for other in shown):
            continue  # never the whole host; /usr is there already
        argv += ["--ro-bind", path, path]
        if path != os.path.abspath(prefix):
            argv += ["--ro-bind", path, os.path.abspath(prefix)]
        shown.append(path)
    return argv


def _within(path: str, folder: str) -> bool:
    """Tell whether ``path`` is ``folder`` or inside it."""
    return path == folder or path.startswith(folder.rstrip("/") + "/")


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
    """Run ``cmd`` in ``cwd`` without network, secrets, the host's files or unbounded resources.

    ``env_allow`` names variables copied from the worker's environment; ``env`` sets
    values (such as PYTHONPATH). Secret-looking names never pass. Raise SandboxError for
    a command that cannot be started, and where this host cannot contain it (nothing
    runs then); a command that fails is a result, not an error.
    """
    program = _check(cmd, cwd, timeout_s, memory_mb)
    variables = sandbox_env(env_allow, env or {})  # a caller's mistake is named first
    how = contain if contain is not None else isolation()
    if not how.isolated:
        raise SandboxError(how.refusal)
    with tempfile.TemporaryDirectory(prefix="cibot-sandbox-") as scratch_dir:
        scratch = Path(scratch_dir)
        limits = _limits(timeout_s, memory_mb, file_limit_mb, processes)
        argv = view(how.binary, cwd=cwd, variables=variables, scratch=scratch, proc=how.proc)
        argv += [sys.executable, "-I", "-S", "-c", TRAMPOLINE, json.dumps(limits)]
        argv += [program, *cmd[1:]]
        returncode, timed_out, took = _spawn(argv, cwd, scratch, timeout_s)
        stdout, cut_out = read_bounded(scratch / "stdout", output_limit)
        stderr, cut_err = read_bounded(scratch / "stderr", output_limit)
    return SandboxResult(
        returncode=returncode,
        stdout=stdout,
        stderr=stderr,
        timed_out=timed_out,
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
    if os.path.realpath(cwd) == "/":
        raise SandboxError("the sandbox working directory cannot be / (it would show the host)")
    if not (timeout_s > 0 and memory_mb > 0):
        raise SandboxError("the sandbox needs a positive time limit and memory limit")
    program = shutil.which(cmd[0], path=BASE_PATH) if "/" not in cmd[0] else cmd[0]
    if program is None or not os.access(program, os.X_OK):
        raise SandboxError(f"the sandbox cannot run {cmd[0]!r}: no such program")
    return program


def sandbox_env(allow: Sequence[str], given: Mapping[str, str]) -> dict[str, str]:
    """Build the child's environment: allowlisted names, given values, a private HOME and /tmp."""
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
    variables.update(given)
    variables.update(FIXED_ENV)
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


def _spawn(argv: list[str], cwd: Path, scratch: Path, timeout_s: float) -> tuple[int, bool, float]:
    """Start the run in its own session, wait up to ``timeout_s``, then kill what is left.

    bwrap gets only PATH from us: ``--clearenv`` and ``--setenv`` give the run its own.
    """
    started = time.monotonic()
    timed_out = False
    with (scratch / "stdout").open("wb") as out, (scratch / "stderr").open("wb") as err:
        try:
            proc = subprocess.Popen(
                argv,
                cwd=cwd,
                env={"PATH": BASE_PATH},
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
            _kill_group(proc.pid)  # bwrap and the namespace's init: the namespace goes too
            returncode = proc.wait()
        finally:
            _kill_group(proc.pid)
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
