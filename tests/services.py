"""Start and stop the real services the integration tests need (Redis on a free port)."""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path


def _ephemeral_range() -> range:
    """Return the ports the kernel hands out to outgoing connections and to bind(port 0)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return range(int(low), int(high) + 1)
    except (OSError, ValueError):
        return range(32768, 61000)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now, outside the ephemeral range.

    A port taken from bind(port 0) comes out of the range the kernel also gives to every
    outgoing connection, so between picking it and a server binding it a Redis client or a
    worker can take it ("address already in use"). A port below that range only collides
    with another explicit bind, which this function checks.
    """
    ephemeral = _ephemeral_range()
    candidates = [p for p in range(10000, 30000) if p not in ephemeral] or list(range(1024, 10000))
    for port in random.sample(candidates, 200):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free TCP port below the ephemeral range after 200 tries")


def wait_for_port(port: int, *, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
    """Block until something accepts connections on host:port (127.0.0.1 by default)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


@dataclass
class RedisServer:
    """Run a private redis-server on a free port, so tests can stop and restart it."""

    binary: str
    port: int = field(default_factory=free_port)
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="cibot-redis-")))
    process: subprocess.Popen[bytes] | None = None
    # Keep data across a stop and start (an append-only file synced on every write), as a
    # production Redis does, so a restart is an outage and not a wipe.
    persistent: bool = False

    @property
    def url(self) -> str:
        """Return the redis:// URL of database 0."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server (again) on the same port, persisting only when asked to."""
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes" if self.persistent else "no",
            "--appendfsync",
            "always",
            "--dir",
            str(self.workdir),
        ]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port)

    def stop(self) -> None:
        """Stop the server and wait until it has exited."""
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


def redis_binary() -> str | None:
    """Return the path of redis-server, if it is installed."""
    return shutil.which("redis-server")
