"""Load-test `cibot serve` against a bare receiver on loopback, in the same run.

Starts a private redis-server and two servers in subprocesses: the real `cibot serve`,
and a bare receiver (tests/benchmarks/bare_receiver.py: HMAC-SHA256 verify and one Redis
LPUSH, a raw ASGI app under the same uvicorn settings). Each run measures both, in
alternating order, with the same client and the same signed pull_request.opened deliveries:
  1. throughput: C keep-alive connections post as fast as they are answered (closed loop);
  2. latency: an open-loop schedule at a fixed rate (default 500/s). Latency is measured
     from each request's *scheduled* send time, so a stalled server cannot hide its
     queueing (no coordinated omission).
It checks that every delivery landed on the queue exactly once, counts the Redis
commands per delivery (INFO commandstats), and prints a table of medians over the runs,
with cibot's throughput as a ratio of the bare receiver's (the median of each run's ratio).

    .venv/bin/python tests/benchmarks/bench_webhook.py [--runs 5] [--rate 500] [--seconds 5]

Goal: a ratio of at least 0.5 and a p99 of at most 20 ms at 500/s offered.
uvicorn picks up httptools and uvloop when they are importable (uvicorn[standard]).
The server's CPU per delivery is the figure least disturbed by other load on the box.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import astuple, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bot.webhooks import sign  # noqa: E402
from tests.services import RedisServer, free_port, redis_binary, wait_for_port  # noqa: E402

SECRET = "bench-secret"
GOAL_RATIO = 0.5
GOAL_P99_MS = 20.0
BODY = (ROOT / "tests" / "fixtures" / "webhooks" / "pull_request.opened.json").read_bytes()
SIGNATURE = sign(BODY, secret=SECRET)
REQUEST = (
    "POST /webhook HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: GitHub-Hookshot/bench\r\n"
    "Content-Type: application/json\r\nX-GitHub-Event: pull_request\r\n"
    "X-GitHub-Delivery: {delivery}\r\nX-Hub-Signature-256: " + SIGNATURE + "\r\n"
    "Content-Length: " + str(len(BODY)) + "\r\n\r\n"
)


@dataclass
class Connection:
    """One keep-alive HTTP/1.1 connection that sends a delivery and reads the answer."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    @classmethod
    async def open(cls, port: int) -> Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def deliver(self, delivery: str) -> int:
        self.writer.write(REQUEST.format(delivery=delivery).encode() + BODY)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        self.writer.close()


async def throughput(
    port: int, prefix: str, *, connections: int, seconds: float
) -> tuple[int, float]:
    """Post as fast as answered on N connections; return (deliveries, elapsed seconds)."""
    conns = [await Connection.open(port) for _ in range(connections)]
    deadline = time.perf_counter() + seconds
    counts = [0] * connections
    bad: list[int] = []

    async def worker(i: int) -> None:
        while time.perf_counter() < deadline:
            status = await conns[i].deliver(f"{prefix}-{i}-{counts[i]}")
            if status != 202:
                bad.append(status)
            counts[i] += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(connections)))
    elapsed = time.perf_counter() - started
    for conn in conns:
        conn.close()
    if bad:
        raise SystemExit(f"non-202 answers during the throughput run: {sorted(set(bad))}")
    return sum(counts), elapsed


async def fixed_rate(
    port: int, prefix: str, *, rate: float, seconds: float, connections: int
) -> list[float]:
    """Send at a fixed schedule; return each delivery's latency from its scheduled time."""
    pool: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(connections):
        pool.put_nowait(await Connection.open(port))
    latencies: list[float] = []
    bad: list[int] = []
    total = int(rate * seconds)
    start = time.perf_counter() + 0.05

    async def one(n: int) -> None:
        scheduled = start + n / rate
        conn = await pool.get()
        status = await conn.deliver(f"{prefix}-{n}")
        latencies.append(time.perf_counter() - scheduled)
        if status != 202:
            bad.append(status)
        pool.put_nowait(conn)

    tasks = []
    for n in range(total):
        delay = start + n / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(n)))
    await asyncio.gather(*tasks)
    while not pool.empty():
        pool.get_nowait().close()
    if bad:
        raise SystemExit(f"non-202 answers during the fixed-rate run: {sorted(set(bad))}")
    return latencies


def percentile(values: list[float], q: float) -> float:
    """Return the q-th percentile (0-100) by nearest rank."""
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered)) - 1))
    return ordered[index]


def cpu_seconds(pid: int) -> float:
    """Return a process's user+system CPU time so far, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def redis_commands(client: object) -> int:
    """Return the total number of commands Redis has executed (INFO commandstats)."""
    stats = client.info("commandstats")  # type: ignore[attr-defined]
    return sum(int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info")


@dataclass
class Target:
    """One server under test: its name, its command line, and its figures per run."""

    name: str
    command: list[str]
    rows: list[Row] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None
    port: int = field(default_factory=free_port)

    def start(self, env: dict[str, str]) -> None:
        """Start the server on its port and wait until it accepts connections."""
        self.process = subprocess.Popen(
            [*self.command, "--port", str(self.port)],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port, timeout=30)
        asyncio.run(throughput(self.port, f"{self.name}-warmup", connections=4, seconds=1.0))

    def stop(self) -> None:
        """Stop the server and wait for it."""
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=15)


@dataclass(frozen=True)
class Row:
    """One run's figures for one server."""

    rate: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    commands: float
    cpu_us: float


def measure(target: Target, store: Any, run: int, args: argparse.Namespace) -> Row:
    """Run the closed-loop and the fixed-rate load on one server; check nothing was lost."""
    assert target.process is not None
    prefix = f"{target.name}-{run}"
    store.flushall()
    before, cpu_before = redis_commands(store), cpu_seconds(target.process.pid)
    sent, elapsed = asyncio.run(
        throughput(target.port, f"t{prefix}", connections=args.connections, seconds=args.seconds)
    )
    commands = (redis_commands(store) - before) / sent
    cpu_us = (cpu_seconds(target.process.pid) - cpu_before) / sent * 1e6
    queued = store.llen("github")
    store.flushall()
    latencies = asyncio.run(
        fixed_rate(target.port, f"r{prefix}", rate=args.rate, seconds=args.seconds, connections=32)
    )
    queued_rate = store.llen("github")
    if queued != sent or queued_rate != len(latencies):
        raise SystemExit(
            f"{target.name} lost or doubled jobs: {queued}/{sent}, {queued_rate}/{len(latencies)}"
        )
    ms = [latency * 1000 for latency in latencies]
    return Row(sent / elapsed, percentile(ms, 50), percentile(ms, 99), max(ms), commands, cpu_us)


def show(target: Target, row: Row, rate: float) -> None:
    """Print one run's line for one server."""
    print(
        f"  {target.name:5s} {row.rate:8.0f} deliveries/s | at {rate:.0f}/s: p50 {row.p50_ms:.2f}"
        f" ms, p99 {row.p99_ms:.2f} ms, max {row.max_ms:.1f} ms | {row.commands:.2f} Redis"
        f" commands and {row.cpu_us:.0f} us server CPU per delivery",
        flush=True,
    )


def median_row(rows: list[Row]) -> Row:
    """Return the median of every figure over the runs."""
    return Row(*(statistics.median(column) for column in zip(*map(astuple, rows), strict=True)))


def table(bare: Target, cibot: Target, args: argparse.Namespace) -> float:
    """Print the medians of both servers side by side; return the median throughput ratio."""
    ratio = statistics.median(c.rate / b.rate for b, c in zip(bare.rows, cibot.rows, strict=True))
    b, c = median_row(bare.rows), median_row(cibot.rows)
    rate = f"{args.rate:.0f}/s offered"
    lines = [
        (f"sustained throughput, {args.connections} connections", b.rate, c.rate, "{:.0f}/s"),
        (f"ack latency p50 at {rate}", b.p50_ms, c.p50_ms, "{:.2f} ms"),
        (f"ack latency p99 at {rate}", b.p99_ms, c.p99_ms, "{:.2f} ms"),
        (f"ack latency max at {rate}", b.max_ms, c.max_ms, "{:.1f} ms"),
        ("Redis commands per delivery", b.commands, c.commands, "{:.2f}"),
        ("server CPU per delivery", b.cpu_us, c.cpu_us, "{:.0f} us"),
    ]
    print()
    print(f"| median of {args.runs} runs, {args.seconds:.0f} s each | bare receiver | cibot |")
    print("|---|---:|---:|")
    for label, theirs, ours, shape in lines:
        print(f"| {label} | {shape.format(theirs)} | {shape.format(ours)} |")
    print(f"| cibot throughput / bare receiver's (median of per-run ratios) | | {ratio:.2f}x |")
    print(f"| bare receiver's CPU per delivery / cibot's | | {b.cpu_us / c.cpu_us:.2f}x |")
    print("| every delivery queued exactly once | yes | yes |")
    return ratio


def main() -> int:
    """Measure both servers over several runs and print the table; 1 if the goal is missed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each run")
    parser.add_argument("--rate", type=float, default=500.0, help="offered load, deliveries/s")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args()

    import redis

    binary = redis_binary()
    if binary is None:
        print("redis-server is not installed", file=sys.stderr)
        return 2
    redis_server = RedisServer(binary=binary)
    redis_server.start()
    store = redis.Redis.from_url(redis_server.url)
    workdir = Path(tempfile.mkdtemp(prefix="cibot-bench-"))
    env = {
        **os.environ,
        "CIBOT_WEBHOOK_SECRET": SECRET,
        "CIBOT_REDIS_URL": redis_server.url,
        "CIBOT_SPOOL_PATH": str(workdir / "spool.db"),
        "CIBOT_ADMIN_PORT": str(free_port()),  # not 8081: another cibot may hold it
    }
    level = ["--log-level", args.log_level]
    bare = Target(
        "bare", [sys.executable, str(Path(__file__).with_name("bare_receiver.py")), *level]
    )
    cibot = Target("cibot", [sys.executable, "-m", "bot.cli", "serve", *level])
    try:
        for target in (bare, cibot):
            target.start(env)
        for run in range(args.runs):
            print(f"run {run + 1}:")
            # Alternate which server goes first, so a drift in the box's load hits both.
            for target in (bare, cibot) if run % 2 == 0 else (cibot, bare):
                target.rows.append(measure(target, store, run, args))
                show(target, target.rows[-1], args.rate)
        ratio = table(bare, cibot, args)
    finally:
        for target in (bare, cibot):
            target.stop()
        store.close()
        redis_server.stop()
    met = ratio >= GOAL_RATIO and median_row(cibot.rows).p99_ms <= GOAL_P99_MS
    print(
        f"goal (ratio >= {GOAL_RATIO}, p99 <= {GOAL_P99_MS:.0f} ms): {'met' if met else 'MISSED'}"
    )
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
