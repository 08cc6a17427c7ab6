"""Set up the one structured-logging pipeline that serve, every worker and ``cibot ci`` share.

Lines are a fixed message plus fields. The fields come from three places and are printed in
every format: the ``extra=`` of a stdlib ``logging`` call, the context a job binds for
its whole run (``job_context``: delivery_id, installation_id, task, step, attempt, and
tier once routed), and structlog's own ``bind``. ``delivery_id``, ``installation_id``,
``task`` and ``tier`` are always present, empty when unknown, so a grep or a query on
them never misses a line.

``CIBOT_LOG_FORMAT`` picks the renderer: ``logfmt`` (the default: one line, ``key=value``),
``json`` (one object per line, for Loki, Elasticsearch or Cloud Logging) or ``console``
(aligned and readable, for a terminal). Values that look like credentials are masked
before any renderer sees them. https://www.structlog.org/en/stable/standard-library.html
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import IO, Any

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

STANDARD_FIELDS = ("delivery_id", "installation_id", "task", "tier")
LEADING = ("timestamp", "level", "logger", "event", *STANDARD_FIELDS)
# An extra= field with one of these names would overwrite the line's own; it is renamed.
RESERVED = frozenset({"timestamp", "level", "logger", "event", "exception"})
RECORD_ATTRIBUTES = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
# Libraries that log every HTTP request at INFO: only their warnings are news.
CHATTY = ("httpx", "httpcore", "urllib3", "hpack", "alembic.runtime.plugins")
# Record attributes that repeat the message or only make sense to another formatter.
DROPPED = frozenset({"color_message", "data", "taskName"})
# Keys whose values are credentials; *_tokens (counts of model tokens) are not.
SECRET_KEYS = re.compile(
    r"^(token|access_token|secret|webhook_secret|password|private_key|authorization|"
    r"api_key|admin_token|jwt)$|_token$|_secret$|_password$|_key_pem$",
    re.IGNORECASE,
)
SECRET_VALUES = (
    (re.compile(r"(x-access-token:)[^@\s]+(@)"), r"\1***\2"),
    (re.compile(r"\b(gh[opsur]_|github_pat_)[A-Za-z0-9_]{16,}"), r"\1***"),
    (re.compile(r"(?i)\b(bearer|token)\s+[A-Za-z0-9._~+/=-]{16,}"), r"\1 ***"),
    (
        re.compile(
            r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(-----END [A-Z ]*PRIVATE KEY-----|$)", re.S
        ),
        "-----BEGIN PRIVATE KEY----- *** (redacted)",
    ),
    (re.compile(r"(://[^:/@\s]*:)[^@/\s]+(@)"), r"\1***\2"),  # passwords in URLs
)
# Every SECRET_VALUES pattern needs one of these; most text holds none, and one search
# is several times cheaper than the five substitutions, and every line scrubs each field.
SUSPECT = re.compile(r"(?i:bearer|token)|gh[opsur]_|github_pat_|-----BEGIN|://")
MASK = "***"


def add_extra(_logger: WrappedLogger, _name: str, event: EventDict) -> EventDict:
    """Copy a stdlib record's ``extra=`` fields onto the line, never over its own keys."""
    record = event.get("_record")
    if record is None:
        return event
    for key, value in record.__dict__.items():
        if key in RECORD_ATTRIBUTES or key.startswith("_"):
            continue
        event[f"{key}_field" if key in RESERVED else key] = value
    return event


def standard_fields(_logger: WrappedLogger, _name: str, event: EventDict) -> EventDict:
    """Give every line the four fields a query joins on, empty when unknown."""
    for name in STANDARD_FIELDS:
        event.setdefault(name, "")
    for name in DROPPED & event.keys():
        del event[name]
    return event


def leading_first(_logger: WrappedLogger, _name: str, event: EventDict) -> EventDict:
    """Put time, level, logger, message and the four standard fields first, for JSON readers."""
    ordered = {key: event[key] for key in LEADING if key in event}
    ordered.update((key, value) for key, value in event.items() if key not in ordered)
    return ordered


@functools.lru_cache(maxsize=4096)
def secret_key(key: str) -> bool:
    """Say whether a field's name marks its value as a credential (names repeat: cached)."""
    return bool(SECRET_KEYS.search(key))


def scrub(_logger: WrappedLogger, _name: str, event: EventDict) -> EventDict:
    """Mask credentials: by key (token=, private_key=) and by shape inside any text value."""
    for key, value in list(event.items()):
        if key.startswith("_"):
            continue
        if secret_key(key) and value not in ("", None):
            event[key] = MASK
        elif isinstance(value, str):
            event[key] = scrub_text(value)
    return event


def scrub_text(text: str) -> str:
    """Mask tokens, private keys and URL passwords inside free text."""
    if not SUSPECT.search(text):
        return text
    for pattern, replacement in SECRET_VALUES:
        text = pattern.sub(replacement, text)
    return text


class Logfmt:
    """Render one ``key=value`` line, as structlog's LogfmtRenderer does with these options.

    The output is the same, byte for byte (``tests/test_logsetup.py`` compares them): keys
    in ``key_order`` first (empty when missing), then the rest in order; booleans as
    ``true``/``false``; values with a space, ``=`` or ``"`` quoted, backslashes in them
    doubled, and quotes and newlines escaped. Only faster: a key is checked for blanks
    the first time it is seen, not on every line, since a process logs the same few keys.
    """

    def __init__(self, key_order: Sequence[str]) -> None:
        """Render ``key_order`` first."""
        self.key_order = tuple(key_order)
        self._checked: set[str] = set()

    def __call__(self, _logger: WrappedLogger, _name: str, event: EventDict) -> str:
        """Return the line."""
        items = [(key, event.pop(key, None)) for key in self.key_order]
        items += event.items()
        return " ".join([self._pair(key, value) for key, value in items])

    def _pair(self, key: str, value: Any) -> str:
        """Render one field."""
        if key not in self._checked:
            if any(c <= " " for c in key):
                raise ValueError(f'Invalid key: "{key}"')
            if len(self._checked) < 4096:
                self._checked.add(key)
        if value is None:
            return f"{key}="
        if isinstance(value, bool):
            value = "true" if value else "false"
        text = str(value)
        quoted = " " in text or "=" in text or '"' in text
        if quoted and "\\" in text:
            text = text.replace("\\", "\\\\")
        text = text.replace('"', '\\"').replace("\n", "\\n")
        return f'{key}="{text}"' if quoted else f"{key}={text}"


def _renderer(fmt: str, stream: IO[str]) -> Processor:
    """Return the final processor for a format name."""
    if fmt == "json":
        return structlog.processors.JSONRenderer(default=str, sort_keys=False)
    if fmt == "console":
        colors = bool(getattr(stream, "isatty", lambda: False)())
        return structlog.dev.ConsoleRenderer(colors=colors, sort_keys=False)
    return Logfmt(LEADING)


def _chain() -> list[Processor]:
    """Return the processors every record goes through before rendering."""
    return [
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.contextvars.merge_contextvars,
        add_extra,
        standard_fields,
    ]


def formatter(fmt: str = "logfmt", *, stream: IO[str] | None = None) -> logging.Formatter:
    """Return a stdlib formatter rendering records (with their extra=) in ``fmt``."""
    final: list[Processor] = [structlog.stdlib.ProcessorFormatter.remove_processors_meta]
    if fmt != "console":  # the console renderer prints tracebacks itself
        final.append(structlog.processors.format_exc_info)
    final += [scrub, leading_first, _renderer(fmt, stream or sys.stderr)]
    return structlog.stdlib.ProcessorFormatter(foreign_pre_chain=_chain(), processors=final)


def configure(*, fmt: str = "logfmt", level: str = "info", stream: IO[str] | None = None) -> None:
    """Send every log line of this process to ``stream`` (stderr) in ``fmt`` at ``level``."""
    out = stream or sys.stderr
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter(fmt, stream=out))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.captureWarnings(True)  # a warning is a structured line too, not loose text
    for name in CHATTY:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.filter_by_level,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def bind(**fields: Any) -> None:
    """Add fields to every line this thread (or task) logs from now on, e.g. the routed tier."""
    structlog.contextvars.bind_contextvars(**fields)


def context() -> dict[str, Any]:
    """Return the fields bound to this thread's context."""
    return dict(structlog.contextvars.get_contextvars())


@contextlib.contextmanager
def job_context(**fields: Any) -> Iterator[None]:
    """Bind a job's fields for the duration of one task, leaving nothing behind in the thread.

    Pool threads run one task after another, so whatever a task binds (the tier, once it
    is routed) is cleared on the way out and the thread's previous context comes back.
    """
    saved: Mapping[str, Any] = context()
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(**fields)
    try:
        yield
    finally:
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(**saved)
