"""Test CI-log trimming: error blocks of each tool, cleaning, budget, streaming and memory."""

from __future__ import annotations

import re
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.kernel.errors import InputError
from policies.tokens import count
from workers import logs
from workers.logs import TrimmedLog, clean, paths_in, trim

LOGS = Path(__file__).parent / "fixtures" / "logs"
FIXTURES = sorted(LOGS.glob("*.log"))
STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")


def run(name: str, budget_tokens: int = 4_000, window: int = 20, size: int = 0) -> TrimmedLog:
    """Trim a fixture log, fed whole or in chunks of ``size`` bytes."""
    data = (LOGS / name).read_bytes()
    chunks = [data] if not size else [data[i : i + size] for i in range(0, len(data), size)]
    return trim(chunks, budget_tokens=budget_tokens, window=window)


def kinds(trimmed: TrimmedLog) -> list[str]:
    """Return the kinds of the blocks found, in log order."""
    return [block.kind for block in trimmed.blocks]


def test_pytest_failures_and_summary() -> None:
    """Find both failure sections, the short summary and the exit, without timestamps."""
    trimmed = run("pytest_failure.log")
    assert kinds(trimmed) == ["pytest", "pytest", "pytest", "exit"]
    assert [b.start_line for b in trimmed.blocks] == [19, 29, 49, 53]
    assert trimmed.blocks[1].end_line == 48  # runs to "path:line: UnicodeEncodeError"
    assert "E       AssertionError: assert Decimal('0.31') == Decimal('0.32')" in trimmed.text
    assert "=========================== short test summary info" in trimmed.text
    assert "FAILED services/catalog/tests/test_search.py::test_search_unicode_query" in trimmed.text
    assert not STAMP.search(trimmed.text)
    assert "##[group]" not in trimmed.text
    assert paths_in(trimmed) == [
        "services/billing/tests/test_invoice.py",
        "services/catalog/tests/test_search.py",
        "services/catalog/app/search.py",
        "services/catalog/app/text.py",
    ]
    assert trimmed.lines_seen == 53
    assert trimmed.bytes_seen == (LOGS / "pytest_failure.log").stat().st_size


def test_jest_failure_block() -> None:
    """Keep the jest block with the expectation, the code frame and the stack line."""
    trimmed = run("jest_failure.log")
    assert kinds(trimmed) == ["jest", "jest", "exit"]
    jest = trimmed.blocks[1]
    assert jest.first_line == "  ● cart total › applies the percentage discount before tax"
    assert (jest.start_line, jest.end_line) == (7, 21)
    for needle in ("Expected: 108", "Received: 110", "> 14 |", "(src/cart/total.test.ts:14:55)"):
        assert needle in trimmed.text
    assert paths_in(trimmed) == ["src/cart/total.test.ts"]


def test_go_test_failure_and_panic() -> None:
    """Find go's FAIL lines and the panic with its stack, with workspace paths made relative."""
    trimmed = run("go_test_failure.log")
    assert kinds(trimmed) == ["go_test", "go_test", "go_test", "exit", "go_test", "go_test"]
    assert trimmed.blocks[0].first_line == "--- FAIL: TestParseAmount (0.00s)"
    assert trimmed.blocks[0].end_line == 5  # the nested subtest and its message belong to it
    panic = trimmed.blocks[2]
    assert panic.first_line.startswith("panic: runtime error: index out of range")
    assert panic.end_line == 21
    assert paths_in(trimmed) == [
        "amount_test.go",
        "internal/ledger/replay.go",
        "internal/ledger/replay_test.go",
    ]  # the toolchain's testing.go is not the repo's


def test_rustc_errors() -> None:
    """Find each rustc error with its code frame, then the exit."""
    trimmed = run("rustc_error.log")
    assert kinds(trimmed) == ["compiler", "compiler", "compiler", "exit"]
    assert [(b.start_line, b.end_line) for b in trimmed.blocks[:2]] == [(5, 11), (13, 17)]
    assert "41 |     let cents: i64 = amount.to_string();" in trimmed.text
    assert paths_in(trimmed) == ["src/posting.rs", "src/account.rs"]


def test_tsc_errors_and_npm_exit() -> None:
    """Find tsc errors in the (line,col) format and npm's failure lines."""
    trimmed = run("tsc_error.log")
    assert kinds(trimmed) == ["compiler", "compiler", "exit"]
    assert trimmed.blocks[0].end_line == 5  # the indented explanation belongs to it
    assert trimmed.blocks[2].end_line == 10  # npm ERR! lines merge into one block
    assert paths_in(trimmed)[:2] == ["src/api/client.ts", "src/cart/total.ts"]


def test_python_traceback() -> None:
    """End a traceback at its exception line and keep only the repository's paths."""
    trimmed = run("traceback.log")
    assert kinds(trimmed) == ["traceback", "exit"]
    block = trimmed.blocks[0]
    assert (block.start_line, block.end_line) == (4, 13)
    assert "KeyError: '0013_add_refunds'" in trimmed.text
    assert paths_in(trimmed) == ["scripts/migrate.py", "services/orders/db/plan.py"]


def test_ansi_crlf_and_bytes_that_are_not_utf8() -> None:
    """Strip colours, OSC titles and CR overdraws, and replace bytes that do not decode."""
    trimmed = run("ansi_crlf_latin1.log")
    assert "\x1b" not in trimmed.text
    assert "\r" not in trimmed.text
    assert "added 812 paquets \ufffd jour \ufffd in 5s" in trimmed.text
    assert " downloading 100%" in trimmed.text.splitlines()
    assert "  ● parser › rejects empty input" in trimmed.text.splitlines()
    assert kinds(trimmed) == ["jest", "jest", "exit"]
    assert trimmed.lines_seen == 14


@pytest.mark.parametrize("name", [p.name for p in FIXTURES])
@pytest.mark.parametrize("size", [1, 7, 4096])
def test_chunk_boundaries_do_not_matter(name: str, size: int) -> None:
    """Give the same result whether the log arrives whole or byte by byte."""
    assert run(name, size=size) == run(name)


@pytest.mark.parametrize("name", [p.name for p in FIXTURES])
def test_every_block_start_is_a_prefilter_candidate(name: str) -> None:
    """Check the prefilter never skips a line that starts a block."""
    text = (LOGS / name).read_bytes().decode("utf-8", errors="replace")
    candidates = set(logs._candidates(text))
    offset, starts = 0, 0
    for raw in text.split("\n"):
        if logs.classify(clean(raw)) is not None:
            starts += 1
            assert offset in candidates, raw
        offset += len(raw) + 1
    assert starts > 0


def test_clean_strips_timestamps_ansi_and_groups() -> None:
    """Clean a line the way GitHub Actions' raw logs need."""
    assert clean("2024-01-01T00:00:00.0000000Z \x1b[31mFAILED\x1b[0m x") == "FAILED x"
    assert clean("2024-01-01T00:00:00.0000000Z ##[group]Run pytest") == "Run pytest"
    assert clean("##[endgroup]") == ""
    assert clean("10%\r50%\r100%\r\n") == "100%"
    assert clean("x" * 5_000) == "x" * logs.MAX_LINE_CHARS + "…"


def many_failures(count_: int, noise: int = 30) -> Iterator[bytes]:
    """Yield a log with ``count_`` tracebacks, each between lines of noise."""
    for i in range(count_):
        lines = [f"2024-01-01T00:00:00.0000000Z step {i} line {j} ok" for j in range(noise)]
        lines += [
            "Traceback (most recent call last):",
            f'  File "/home/runner/_work/r/r/svc{i % 3}/app.py", line {i + 1}, in run',
            "    handle()",
            f"ValueError: failure number {i}",
        ]
        yield ("\n".join(lines) + "\n").encode()


def test_the_budget_is_kept_and_the_first_failure_comes_first() -> None:
    """Stay within a small budget, show the first failure, and mark what was cut."""
    trimmed = trim(many_failures(50), budget_tokens=300)
    assert trimmed.tokens == count(trimmed.text) <= 300
    assert "ValueError: failure number 0" in trimmed.text
    assert "[… " in trimmed.text
    shown = sum(1 for line in trimmed.text.splitlines() if not line.startswith("[… "))
    assert trimmed.omitted_lines == trimmed.lines_seen - shown
    assert trimmed.blocks[0].shown
    assert not all(block.shown for block in trimmed.blocks)


def test_a_big_budget_shows_first_and_last_failures_with_context() -> None:
    """Keep the first and last blocks only, and their context lines."""
    trimmed = trim(many_failures(1_000), budget_tokens=20_000, window=5)
    assert trimmed.blocks_seen == 1_000
    assert len(trimmed.blocks) == 2 * logs.KEEP
    starts = [block.start_line for block in trimmed.blocks]
    assert starts == sorted(starts)
    assert starts[: logs.KEEP] == [31 + 34 * i for i in range(logs.KEEP)]  # 30 noise + 4 lines each
    assert "ValueError: failure number 0" in trimmed.text
    assert "ValueError: failure number 999" in trimmed.text
    assert "ValueError: failure number 500" not in trimmed.text
    assert "step 999 line 29 ok" in trimmed.text  # context right above the last block
    assert "step 999 line 20 ok" not in trimmed.text  # beyond the 5-line window
    assert paths_in(trimmed) == ["svc0/app.py", "svc1/app.py", "svc2/app.py"]


def test_a_log_without_errors_shows_its_end() -> None:
    """Fall back to the last lines when no error block is found."""
    data = "".join(f"building step {i}\n" for i in range(500)).encode()
    trimmed = trim([data], budget_tokens=1_000, window=10)
    assert trimmed.blocks == ()
    assert trimmed.text.splitlines() == ["[… 490 lines omitted …]"] + [
        f"building step {i}" for i in range(490, 500)
    ]


def test_an_empty_log() -> None:
    """Trim an empty log to nothing."""
    trimmed = trim([], budget_tokens=100)
    assert (trimmed.text, trimmed.lines_seen, trimmed.bytes_seen, trimmed.blocks) == ("", 0, 0, ())


def test_a_huge_line_without_newlines_is_bounded() -> None:
    """Cut a 5 MB line with no newline instead of holding it whole."""
    blob = b"x" * (5 * 1024 * 1024)
    trimmed = trim([blob[i : i + 65536] for i in range(0, len(blob), 65536)], budget_tokens=2_000)
    assert trimmed.bytes_seen == len(blob)
    assert all(len(line) <= logs.MAX_LINE_CHARS + 1 for line in trimmed.text.splitlines())
    assert trimmed.tokens <= 2_000


def test_bad_arguments_are_clear_errors() -> None:
    """Reject a budget, a window or a chunk that cannot work."""
    with pytest.raises(InputError, match="budget_tokens"):
        trim([b"x\n"], budget_tokens=0)
    with pytest.raises(InputError, match="window"):
        trim([b"x\n"], budget_tokens=10, window=-1)
    with pytest.raises(InputError, match="log chunks must be bytes, got int"):
        trim([b"x\n", 42], budget_tokens=10)  # type: ignore[list-item]


def test_text_chunks_and_a_tiny_budget() -> None:
    """Accept text chunks, and return nothing rather than exceed a budget too small to use."""
    log = "Traceback (most recent call last):\n  File \"app.py\", line 1\nKeyError: 'x'\n"
    trimmed = trim([log], budget_tokens=3)  # type: ignore[list-item]
    assert trimmed.text == ""
    assert trimmed.tokens == 0
    assert [(b.kind, b.shown) for b in trimmed.blocks] == [("traceback", False)]
    assert trimmed.omitted_lines == trimmed.lines_seen == 3
    assert trim([log], budget_tokens=100).text == log.rstrip("\n")  # type: ignore[list-item]


def test_memory_stays_bounded_on_a_large_stream() -> None:
    """Stream 40 MB through trim while Python's peak allocation stays a few MB."""
    line = (
        b"2024-01-01T00:00:00.0000000Z \x1b[32mPASSED\x1b[0m tests/test_mod.py::test_case [ 50%]\n"
    )
    block = line * (65536 // len(line))

    def stream() -> Iterator[bytes]:
        for i in range(40 * 1024 * 1024 // len(block)):
            yield block if i != 300 else block + b"FAILED tests/test_mod.py::test_x - boom\n"

    count("load the tokenizer before measuring")
    tracemalloc.start()
    try:
        trimmed = trim(stream(), budget_tokens=2_000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert trimmed.bytes_seen > 40_000_000
    assert kinds(trimmed) == ["pytest"]
    assert peak < 12 * 1024 * 1024
