"""Load-test `cibot serve` on loopback with signed pull_request.opened deliveries.

Starts a private redis-server and the real `cibot serve` in a subprocess, then:
  1. throughput: C keep-alive connections post as fast as they are answered (closed loop);
  2. latency: an open-loop schedule at a fixed rate (default 500/s). Latency is measured
     from each request's *scheduled* send time, so a stalled server cannot hide its
     queueing (no coordinated omission).
It checks that every delivery landed on the Celery queue exactly once, counts the Redis
commands per delivery (INFO commandstats), and prints a table of medians over the runs.

    .venv/bin/python tests/benchmarks/bench_webhook.py [--runs 3] [--rate 500] [--seconds 5]

uvicorn picks up httptools and uvloop when they are importable (uvicorn[standard]);
with them the server spends about a fifth less CPU per delivery than with h11.
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
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bot.webhooks import sign  # noqa: E402
from tests.services import RedisServer, free_port, redis_binary, wait_for_port  # noqa: E402

SECRET = "bench-secret"
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
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
    port = free_port()
    env = {
        **os.environ,
        "CIBOT_WEBHOOK_SECRET": SECRET,
        "CIBOT_REDIS_URL": redis_server.url,
        "CIBOT_SPOOL_PATH": str(workdir / "spool.db"),
    }
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bot.cli",
            "serve",
            "--port",
            str(port),
            "--log-level",
            args.log_level,
        ],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, timeout=30)
        asyncio.run(throughput(port, "warmup", connections=4, seconds=1.0))
        rows = []
        for run in range(args.runs):
            store.flushall()
            before, cpu_before = redis_commands(store), cpu_seconds(server.pid)
            sent, elapsed = asyncio.run(
                throughput(port, f"t{run}", connections=args.connections, seconds=args.seconds)
            )
            ops = (redis_commands(store) - before) / sent
            cpu_us = (cpu_seconds(server.pid) - cpu_before) / sent * 1e6
            queued = store.llen("github")
            store.flushall()
            latencies = asyncio.run(
                fixed_rate(port, f"r{run}", rate=args.rate, seconds=args.seconds, connections=32)
            )
            queued_rate = store.llen("github")
            if queued != sent or queued_rate != len(latencies):
                raise SystemExit(
                    f"lost or doubled jobs: {queued}/{sent}, {queued_rate}/{len(latencies)}"
                )
            rows.append(
                (
                    sent / elapsed,
                    percentile(latencies, 50) * 1000,
                    percentile(latencies, 99) * 1000,
                    max(latencies) * 1000,
                    ops,
                    cpu_us,
                )
            )
            print(
                f"run {run + 1}: {rows[-1][0]:8.0f} deliveries/s | at {args.rate:.0f}/s: "
                f"p50 {rows[-1][1]:.2f} ms, p99 {rows[-1][2]:.2f} ms, max {rows[-1][3]:.1f} ms"
                f" | {ops:.2f} Redis commands and {cpu_us:.0f} us server CPU per delivery",
                flush=True,
            )
        med = [statistics.median(col) for col in zip(*rows, strict=True)]
        print()
        print(f"| metric (median of {args.runs} runs, {args.seconds:.0f} s each) | value |")
        print("|---|---:|")
        print(
            f"| sustained throughput, {args.connections} connections | {med[0]:.0f} deliveries/s |"
        )
        print(f"| ack latency p50 at {args.rate:.0f}/s offered | {med[1]:.2f} ms |")
        print(f"| ack latency p99 at {args.rate:.0f}/s offered | {med[2]:.2f} ms |")
        print(f"| ack latency max at {args.rate:.0f}/s offered | {med[3]:.1f} ms |")
        print(f"| Redis commands per delivery | {med[4]:.2f} |")
        print(f"| server CPU per delivery | {med[5]:.0f} us |")
        print("| every delivery enqueued exactly once | yes |")
    finally:
        server.terminate()
        server.wait(timeout=15)
        store.close()
        redis_server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
