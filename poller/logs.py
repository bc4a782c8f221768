"""Logging: structlog, JSON lines when stdout is not a terminal, readable lines when it is.

The standard-library loggers of aiohttp, apscheduler and SQLAlchemy go through the same
processors, so journald sees one format. Tracebacks are rendered without local variables,
which could hold tokens.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal, Protocol

import structlog
import structlog.tracebacks
from structlog.typing import EventDict, Processor

from poller.redact import scrub_logged
from poller.terminal import printable

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


class Logger(Protocol):
    """What the daemon's code asks of a logger: structlog's bound loggers (`get_logger`) have
    it, and so does a test's recorder. Fields are any values; the renderer turns them to text."""

    def bind(self, **fields: object) -> Logger:
        """A logger that adds `fields` to every line it logs."""
        ...

    def debug(self, event: str, **fields: object) -> object:
        """Log `event` at debug level."""
        ...

    def info(self, event: str, **fields: object) -> object:
        """Log `event` at info level."""
        ...

    def warning(self, event: str, **fields: object) -> object:
        """Log `event` at warning level."""
        ...

    def error(self, event: str, **fields: object) -> object:
        """Log `event` at error level."""
        ...

    def exception(self, event: str, **fields: object) -> object:
        """Log `event` at error level with the exception being handled."""
        ...


def _printable_values(_logger: object, _name: str, event: EventDict) -> EventDict:
    """Text values shown as text on a terminal: an id or a status from an API with an escape
    sequence in it must not drive the operator's terminal (JSON lines escape them anyway)."""
    return {k: printable(v, lines=True) if isinstance(v, str) else v for k, v in event.items()}


def configure(level: str = "info", fmt: Literal["auto", "json", "console"] = "auto") -> None:
    """Set up structlog and stdlib logging for the whole process (idempotent)."""
    use_console = fmt == "console" or (fmt == "auto" and sys.stdout.isatty())
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Processor
    if use_console:
        # colours only on a terminal: `log.format: console` into a pipe or a file stays text
        renderer = structlog.dev.ConsoleRenderer(
            colors=sys.stdout.isatty(), exception_formatter=structlog.dev.plain_traceback
        )
    else:
        renderer = structlog.processors.JSONRenderer()
    final: list[Processor] = [structlog.stdlib.ProcessorFormatter.remove_processors_meta]
    if use_console:
        final.append(_printable_values)
    if not use_console:
        # Tracebacks as data, never with local variables: those can hold tokens.
        final.append(
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            )
        )
    final.append(renderer)
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(_ScrubbingFormatter(foreign_pre_chain=shared, processors=final))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(LEVELS.get(level, logging.INFO))
    # Third-party chatter stays out unless it is a problem; their debug lines can carry URLs.
    # urllib3 (under Apprise's requests) logs each request's path, a webhook's token included.
    # httpx logs every request's URL at info; a job URL may hold a key in its query.
    for noisy in ("aiohttp", "apscheduler", "sqlalchemy", "alembic", "tzlocal", "urllib3", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Apprise's logger is set where Apprise is used (`poller.notify.apprise`): its records are
    # kept for each send's answer and never printed, whatever the level here.


class _ScrubbingFormatter(structlog.stdlib.ProcessorFormatter):
    """Every line, of any logger at any level, with the known secrets masked
    (`redact.register_logged`): a library may log a URL or an answer that holds one."""

    def format(self, record: logging.LogRecord) -> str:
        return scrub_logged(super().format(record))


def get_logger(name: str = "poller") -> Logger:
    """A structlog logger bound to `name`."""
    logger: Logger = structlog.get_logger(name)
    return logger
