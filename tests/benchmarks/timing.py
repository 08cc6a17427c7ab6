"""Time a benchmark step: median wall and CPU seconds over several runs, after a warm-up."""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Callable


def cpu_s() -> float:
    """Return CPU seconds used so far by this process and its finished children."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def median_s(fn: Callable[[], object], runs: int) -> tuple[float, float]:
    """Return the median wall and CPU seconds of ``fn`` over ``runs`` runs, after a warm-up.

    CPU time is reported too because a shared machine inflates wall time, not CPU time.
    """
    fn()
    wall, cpu = [], []
    for _ in range(runs):
        start, start_cpu = time.perf_counter(), cpu_s()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(cpu_s() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)
