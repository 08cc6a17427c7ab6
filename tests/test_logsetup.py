"""Render log records through bot.kernel.logsetup: the formats, the fields, the masking."""

from __future__ import annotations

import json
import logging
import sys
import threading

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.kernel import logsetup


def record(msg: str = "delivery answered", **extra: object) -> logging.LogRecord:
    """Return a record as `log.info(msg, extra=...)` on bot.server makes it."""
    return logging.makeLogRecord(
        {"name": "bot.server", "levelname": "INFO", "levelno": logging.INFO, "msg": msg, **extra}
    )


def test_logfmt_puts_the_fixed_fields_first_and_quotes_what_needs_it() -> None:
    line = logsetup.formatter("logfmt").format(
        record(delivery_id="d-1", installation_id=7, ms=1.5, reason='a "quoted" value')
    )
    assert line.startswith("timestamp=")
    head = line.split(" delivery_id=", 1)[0]
    assert head.endswith('level=info logger=bot.server event="delivery answered"')
    for pair in ("delivery_id=d-1", "installation_id=7", "task=", "tier=", "ms=1.5"):
        assert f" {pair}" in line
    assert 'reason="a \\"quoted\\" value"' in line
    assert "\n" not in line


def test_json_is_one_object_per_record_with_the_exception_inside() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        failed = record("webhook failed", delivery_id="d-2", exc_info=sys.exc_info())
    text = logsetup.formatter("json").format(failed)
    assert "\n" not in text
    data = json.loads(text)
    assert list(data)[:8] == [
        "timestamp",
        "level",
        "logger",
        "event",
        "delivery_id",
        "installation_id",
        "task",
        "tier",
    ]
    assert data["event"] == "webhook failed" and data["delivery_id"] == "d-2"
    assert "ValueError: boom" in data["exception"]


def test_console_is_readable_and_carries_the_fields() -> None:
    line = logsetup.formatter("console").format(record(delivery_id="d-3", status=202))
    assert "delivery answered" in line and "delivery_id=d-3" in line and "status=202" in line


def test_an_extra_field_never_overwrites_the_message() -> None:
    data = json.loads(logsetup.formatter("json").format(record(event="pull_request", level=3)))
    assert (data["event"], data["event_field"]) == ("delivery answered", "pull_request")
    assert (data["level"], data["level_field"]) == ("info", 3)


@pytest.mark.parametrize(
    ("field", "value", "hidden"),
    [
        ("token", "ghs_16CharactersOfToken0000", "ghs_16Char"),
        (
            "private_key",
            "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----",
            "MIIE",
        ),
        ("webhook_secret", "It's a Secret", "Secret"),
        ("url", "https://x-access-token:ghs_abcdefghijklmnopqrstu@github.com/a/b.git", "ghs_abc"),
        ("database", "postgresql+psycopg://cibot:hunter2@db/cibot", "hunter2"),
        ("error", "sent Authorization: Bearer abcdefghijklmnopqrstuvwxyz012345", "abcdefghijkl"),
        ("note", "key was ghp_ABCDEFGHIJKLMNOPQRSTUVWXYZ", "ABCDEFGHIJKL"),
    ],
)
def test_credentials_are_masked_by_name_and_by_shape(field: str, value: str, hidden: str) -> None:
    for fmt in ("logfmt", "json"):
        line = logsetup.formatter(fmt).format(record(**{field: value}))
        assert hidden not in line, line
        assert "***" in line


def test_token_counts_are_not_mistaken_for_tokens() -> None:
    data = json.loads(logsetup.formatter("json").format(record(prompt_tokens=1200)))
    assert data["prompt_tokens"] == 1200


def test_a_job_context_is_printed_and_left_behind_by_nobody() -> None:
    fmt = logsetup.formatter("json")
    seen: dict[str, dict[str, object]] = {}

    def job(name: str) -> None:
        with logsetup.job_context(delivery_id=name, task="summary"):
            logsetup.bind(tier="local")
            seen[name] = json.loads(fmt.format(record("model call")))
        seen[f"{name}-after"] = json.loads(fmt.format(record("idle")))

    threads = [threading.Thread(target=job, args=(n,)) for n in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for name in ("a", "b"):
        assert (seen[name]["delivery_id"], seen[name]["tier"]) == (name, "local")
        assert (seen[f"{name}-after"]["delivery_id"], seen[f"{name}-after"]["tier"]) == ("", "")


_KEYS = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=0x2FF), min_size=1)
_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(),
    st.lists(st.text(max_size=5), max_size=3),
)


@given(st.dictionaries(_KEYS, _VALUES, max_size=8), st.dictionaries(_KEYS, _VALUES, max_size=3))
@settings(max_examples=300, deadline=None)
def test_the_logfmt_renderer_writes_what_structlogs_does(
    fields: dict[str, object], leading: dict[str, object]
) -> None:
    """The faster renderer is a drop-in: the same line for any fields, quotes and blanks."""
    order = [*leading, "timestamp", "event"]
    ours = logsetup.Logfmt(order)
    theirs = structlog.processors.LogfmtRenderer(key_order=order, bool_as_flag=False)
    event = {**leading, **fields}
    assert ours(None, "", dict(event)) == theirs(None, "", dict(event))


def test_the_logfmt_renderer_refuses_a_key_with_a_blank_every_time() -> None:
    render = logsetup.Logfmt([])
    for _ in range(2):
        with pytest.raises(ValueError, match="Invalid key"):
            render(None, "", {"a key": 1})
