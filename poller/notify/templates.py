"""User templates: the Jinja2 sandbox, its limits, and the checks at load time.

`compile_template` builds a user's Jinja2 template (sandboxed) and tries it on sample events, so
that a template error is a config error at load time. `render_limited` bounds the time, output
and memory of one render.
"""

from __future__ import annotations

import functools
import re
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any

import jinja2
import jinja2.exceptions
import jinja2.meta
import jinja2.nodes
import jinja2.runtime
import jinja2.sandbox

from poller.models import Event, JsonValue
from poller.notify.render import MARKERS, event_facts, render
from poller.notify.text import MAX_BODY, MAX_TITLE, Format, md_escape, one_line
from poller.units import shorten

if TYPE_CHECKING:
    from _typeshed import TraceFunction

#: The variables a template may use, with what they hold (README lists the same).
TEMPLATE_VARIABLES: Mapping[str, str] = {
    "event": "the event: started, succeeded, partial, failed, cancelled, expired, stalled, "
    "timed_out, unreachable, recovered",
    "marker": "a short emoji for the event",
    "verb": 'the event in words, e.g. "failed", "is stalled"',
    "severity": "the Apprise message type: success, warning, failure, info",
    "name": "the job's name, or its key when it has none",
    "job_name": "the job's name, the job entry's or else its API's (empty if neither)",
    "key": "the watch key, e.g. ruler-prod/4f2a/9c1e-77",
    "source": "the source name",
    "site": "the site (ruler; an http job's, when it has one)",
    "job_id": "the remote job id",
    "tags": "the watch's tags (a list)",
    "state": "poller's state of the job",
    "previous_state": "the state before this event",
    "remote_status": "the status as the API gave it",
    "progress": "0-100, or empty",
    "counts": "row counts: counts.total, counts.processed, counts.succeeded, counts.failed",
    "rows": 'the counts in words, e.g. "980 succeeded, 20 failed of 1000"',
    "reason": "the failure reason the API gave",
    "failed_rows": "the first failing rows, each with .row and .message",
    "failed_rows_total": "how many failing rows the API listed",
    "failed_rows_error": "why the failing rows could not be read",
    "output": "the job's output, as text",
    "error": "the poll error (unreachable, timed_out)",
    "error_count": "failed polls in a row (unreachable; the whole outage for recovered)",
    "started": "when the job started (UTC)",
    "ended": "when it ended (UTC)",
    "started_at": "the start as UNIX seconds",
    "ended_at": "the end as UNIX seconds",
    "duration": 'how long it took (or has run, when stalled), e.g. "1h 5m"',
    "duration_seconds": "the same in seconds",
    "stalled_since": "the last time progress changed (stalled)",
    "outage_since": "since when polling has failed (unreachable, recovered)",
    "outage": "how long polling failed (recovered)",
    "url": "a link to the job, when the source gives one",
    "details": "every detail the source gave, by name: details.run_name (empty when missing)",
    "at": "when the event happened (UTC)",
    "title": "poller's default title",
    "body": "poller's default body, in the template's format",
}

#: The most a template may write; more is a runaway loop, and the render is stopped.
_MAX_RENDERED = 100_000
#: How long one render of a template may run (a real one takes about a millisecond).
TEMPLATE_TIME_LIMIT = 1.0
#: How much memory one render may take beyond what the process had used before it.
_MAX_RENDER_MEMORY = 256 * 1024 * 1024
#: The largest whole number a template may pass to a filter, function or method: widths and
#: counts above it (``center(2000000000)``) would allocate gigabytes in one C call.
_MAX_ARGUMENT = _MAX_RENDERED
#: A printf or format() width or precision of six digits or more, or one taken from the
#: arguments (``*``): a gigabyte of padding in one C call.
_WIDE_FORMAT = re.compile(r"%[^a-zA-Z%]*(\*|\d{6,})|\{[^{}]*:[^{}]*\d{6,}")


class TemplateProblem(ValueError):
    """A template that cannot be used; `line` is the line within the template (1-based)."""

    def __init__(self, message: str, line: int | None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line


class TemplateLimit(jinja2.exceptions.SecurityError):
    """A template exceeded its time, output or memory limit, or asked for a huge value."""


def _check_arguments(args: Iterable[object], kwargs: Mapping[str, object]) -> None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > _MAX_ARGUMENT:
            raise TemplateLimit(f"argument too large ({_MAX_ARGUMENT} at most)")
        if isinstance(value, str) and _WIDE_FORMAT.search(value):
            raise TemplateLimit("format width too large")


def _limited_filter(func: Callable[..., Any]) -> Callable[..., Any]:
    """`func` (a Jinja filter) refusing huge arguments; the filtered value itself is free."""

    @functools.wraps(func)  # keeps Jinja's pass_context/pass_environment marks
    def limited(*args: object, **kwargs: object) -> object:
        skip = 2 if getattr(func, "jinja_pass_arg", None) is not None else 1
        if func.__name__ == "do_format":  # the filtered value is the format string
            _check_arguments(args[skip - 1 : skip], {})
        _check_arguments(args[skip:], kwargs)
        return func(*args, **kwargs)

    return limited


class _Sandbox(jinja2.sandbox.ImmutableSandboxedEnvironment):
    """Jinja2's immutable sandbox that also refuses to build huge strings or numbers.

    Every filter, function and method call is checked for huge whole-number arguments and wide
    format strings, repetition and powers are capped, and `render_limited` bounds the time,
    output and memory of a whole render.
    """

    intercepted_binops = frozenset(["*", "**", "%"])

    def __init__(self, **options: Any) -> None:  # Any: jinja2.Environment's many options
        super().__init__(**options)
        self.filters = {name: _limited_filter(f) for name, f in self.filters.items()}

    def call_binop(
        self, context: jinja2.runtime.Context, operator: str, left: object, right: object
    ) -> object:
        if operator == "**" and isinstance(right, int | float) and abs(right) > 100:
            raise jinja2.exceptions.SecurityError("exponent too large")
        if operator == "*":
            for a, b in ((left, right), (right, left)):
                if isinstance(a, str | list | tuple) and isinstance(b, int) and len(a) * b > 10_000:
                    raise jinja2.exceptions.SecurityError("repetition too large")
        if operator == "%" and isinstance(left, str):
            _check_arguments((left,), {})
        return super().call_binop(context, operator, left, right)

    def call(
        __self,
        __context: jinja2.runtime.Context,
        __obj: object,
        *args: object,
        **kwargs: object,
    ) -> object:
        _check_arguments(args, kwargs)
        return super().call(__context, __obj, *args, **kwargs)

    def wrap_str_format(self, value: object) -> Callable[..., str] | None:
        # what ``"...".format`` and ``format_map`` become in the sandbox: check the string too
        wrapped = super().wrap_str_format(value)
        if wrapped is not None:  # `value` is then a bound ``str.format``: its string is __self__
            _check_arguments((getattr(value, "__self__", None),), {})
        return wrapped


def render_limited(template: jinja2.Template, variables: Mapping[str, Any]) -> str:
    """Render `template` within `TEMPLATE_TIME_LIMIT`, `_MAX_RENDERED` characters and
    `_MAX_RENDER_MEMORY`; raises `TemplateLimit` (from inside the template, so that its
    traceback names the template's line) when one is exceeded.

    The time and memory are checked on every line the render runs (a trace function on this
    thread only): a loop that writes nothing is stopped too. Run it on a worker thread where a
    second of CPU must not stall anything else.
    """
    deadline = time.monotonic() + TEMPLATE_TIME_LIMIT
    memory_limit = _max_rss() + _MAX_RENDER_MEMORY
    state = {"lines": 0}

    def on_line(frame: FrameType, event: str, arg: object) -> TraceFunction:
        state["lines"] += 1
        if time.monotonic() > deadline:
            raise TemplateLimit(f"took longer than {TEMPLATE_TIME_LIMIT:g}s")
        if state["lines"] % 64 == 0 and _max_rss() > memory_limit:
            raise TemplateLimit(f"used more than {_MAX_RENDER_MEMORY // 2**20} MB")
        return on_line

    previous = sys.gettrace()
    sys.settrace(on_line)
    try:
        parts: list[str] = []
        size = 0
        chunks = template.generate(variables)
        for chunk in chunks:
            size += len(chunk)
            if size > _MAX_RENDERED:
                problem = TemplateLimit(f"wrote more than {_MAX_RENDERED} characters")
                problem.lineno = _suspended_line(template, chunks)  # type: ignore[attr-defined]
                raise problem
            parts.append(chunk)
    finally:
        sys.settrace(previous)
    return "".join(parts)


def _suspended_line(template: jinja2.Template, chunks: object) -> int | None:
    """The template line a suspended render is at (where it wrote its last output)."""
    line = None
    try:
        while chunks is not None:
            frame = getattr(chunks, "gi_frame", None)
            if frame is not None and frame.f_code.co_filename == "<template>":
                line = template.get_corresponding_lineno(frame.f_lineno)
            chunks = getattr(chunks, "gi_yieldfrom", None)
    except Exception:  # only a better message is lost
        return line
    return line


def _max_rss() -> int:
    """The process's peak resident memory in bytes (0 where it cannot be read)."""
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    except (ImportError, OSError):  # pragma: no cover - not Linux
        return 0


def _finalize(value: object) -> object:
    # an absent value prints as nothing, not "None"
    return "" if value is None else value


_ENV = _Sandbox(
    autoescape=False,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=False,
    finalize=_finalize,
    undefined=jinja2.Undefined,
)


def _escape_deep(value: object) -> object:
    if isinstance(value, str):
        return md_escape(value)
    if isinstance(value, list):
        return [_escape_deep(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _escape_deep(v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class MessageTemplate:
    """A user's title and/or body template, compiled; what it leaves out is poller's default."""

    title: jinja2.Template | None
    body: jinja2.Template | None
    format: Format = "text"

    def context(self, kind: Event, payload: Mapping[str, object]) -> dict[str, Any]:
        """The template variables for one event (Markdown-escaped for a Markdown template)."""
        facts = event_facts(kind, payload)
        title, body = render(kind, payload, self.format)
        variables = (
            {key: _escape_deep(value) for key, value in facts.items()}
            if self.format == "markdown"
            else dict(facts)
        )
        variables["title"], variables["body"] = title, body
        return variables

    def render(self, kind: Event, payload: Mapping[str, object]) -> tuple[str, str]:
        """Title and body for one event; raises what the template raises."""
        variables = self.context(kind, payload)
        title, body = variables["title"], variables["body"]
        if self.title is not None:
            # one line, whatever the template does: a title may become a mail Subject header
            title = one_line(render_limited(self.title, variables), MAX_TITLE)
        if self.body is not None:
            body = shorten(render_limited(self.body, variables).strip(), MAX_BODY)
        return title or one_line(f"{MARKERS[kind]} {variables['name']}", MAX_TITLE), body


#: Events the templates are tried on at load time, so that an error shows up then.
SAMPLE_EVENTS: tuple[tuple[Event, Mapping[str, JsonValue]], ...] = (
    (
        Event.FAILED,
        {
            "key": "ruler-prod/4f2a/9c1e-77",
            "name": "Nightly revenue upload",
            "source": "ruler-prod",
            "site": "4f2a",
            "job_id": "9c1e-77",
            "tags": ["revenue"],
            "state": "failed",
            "previous_state": "running",
            "remote_status": "failed",
            "progress": 40.0,
            "details": {
                "total_rows": 1000,
                "processed_rows": 400,
                "success_count": 380,
                "failure_count": 20,
                "failure_reason": "Column 'amount' is missing",
                "failed_rows": [{"row": 3, "message": "Invalid email"}],
                "output": {"written": 380},
                "url": "https://example.com/jobs/9c1e-77",
            },
            "started_at": 1_700_000_000.0,
            "ended_at": 1_700_000_600.0,
            "at": 1_700_000_600.0,
        },
    ),
    (Event.STARTED, {"key": "ruler-prod/4f2a/j2", "details": {}}),
    (
        Event.UNREACHABLE,
        {
            "key": "immuta/2b9f0c",
            "error": "server_error: HTTP 500",
            "error_count": 3,
            "outage_since": 1_700_000_000.0,
            "at": 1_700_000_900.0,
        },
    ),
)


def _template_line(exc: BaseException) -> int | None:
    """The template line a render error happened on, from Jinja's rewritten traceback."""
    line = getattr(exc, "lineno", None)
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename == "<template>":
            line = frame.lineno
    return line


def _compile_one(source: str, what: str) -> jinja2.Template:
    try:
        tree = _ENV.parse(source)
        unknown = sorted(jinja2.meta.find_undeclared_variables(tree) - TEMPLATE_VARIABLES.keys())
        if not unknown:
            return _ENV.from_string(tree)
    except jinja2.TemplateSyntaxError as exc:  # also unknown filters and tests
        raise TemplateProblem(f"{what} template: {exc.message}", exc.lineno) from None
    line = next(
        (node.lineno for node in tree.find_all(jinja2.nodes.Name) if node.name == unknown[0]),
        None,
    )
    raise TemplateProblem(
        f"{what} template: unknown variable {unknown[0]}; "
        f"expected one of: {', '.join(TEMPLATE_VARIABLES)}",
        line,
    )


def check_template(source: str, what: str, fmt: str = "text") -> None:
    """Check one part (``title`` or ``body``) of a template; raises `TemplateProblem`."""
    body_format: Format = "markdown" if fmt == "markdown" else "text"
    if what == "title":
        compile_template(source, None, body_format)
    else:
        compile_template(None, source, body_format)


def compile_template(title: str | None, body: str | None, fmt: Format = "text") -> MessageTemplate:
    """Compile a title and a body template and try them on sample events.

    Raises `TemplateProblem` (a ValueError) with the line in the template for a syntax error,
    an unknown variable, or an error while rendering a sample event.
    """
    template = MessageTemplate(
        title=_compile_one(title, "title") if title is not None else None,
        body=_compile_one(body, "body") if body is not None else None,
        format=fmt,
    )
    for kind, payload in SAMPLE_EVENTS:
        variables = template.context(kind, payload)
        for what, part in (("title", template.title), ("body", template.body)):
            if part is None:
                continue
            try:
                render_limited(part, variables)
            except Exception as exc:
                message = exc.message if isinstance(exc, jinja2.TemplateError) else str(exc)
                hint = (
                    "templates must stay small and quick"
                    if isinstance(exc, TemplateLimit | MemoryError | RecursionError)
                    else "events carry only what their source gave: guard optional values "
                    "with {% if %}"
                )
                raise TemplateProblem(
                    f"{what} template fails on a sample {kind.value} event: "
                    f"{type(exc).__name__}: {one_line(message or '', 200)} ({hint})",
                    _template_line(exc),
                ) from None
    return template
