"""Sending through Apprise: one Apprise object per channel, answers, and masked URLs.

`Notifier` sends through Apprise, one Apprise object per channel, so that a slow or broken
channel fails alone and its answer is known. Apprise reports results instead of raising; a
failure becomes `NotifyError` with what each service answered. Channel URLs hold secrets: only
``url(privacy=True)`` is ever shown, and any part of a URL that the masked form hides is scrubbed
from the services' answers too. Apprise does not expose HTTP response headers, so a ``requests``
response hook (installed once, active only around our own sends) records the status and
``Retry-After`` of each answer.
"""

from __future__ import annotations

import asyncio
import contextvars
import html
import importlib
import logging
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import apprise

from poller import redact
from poller.errors import NotifyError
from poller.models import EVENT_SEVERITY, Event
from poller.notify.text import Format, markdown_to_html, one_line, text_to_html
from poller.units import parse_retry_after

if TYPE_CHECKING:
    import requests

#: The HTTP answers (status, Retry-After) seen during the send running in this context.
_ANSWERS: contextvars.ContextVar[list[tuple[int, str | None]] | None] = contextvars.ContextVar(
    "poller_http_answers", default=None
)
_hook_installed = False


def _record_answer(response: requests.Response, *args: object, **kwargs: object) -> None:
    answers = _ANSWERS.get()
    if answers is not None:
        answers.append((int(response.status_code), response.headers.get("Retry-After")))
        _read_capped(response)


#: The most of a channel's answer that is read, decoded: far more than any service's reply.
MAX_ANSWER_BYTES = 1 << 20
_ANSWER_CHUNK = 64 * 1024


def _read_capped(response: requests.Response) -> None:
    """Read a channel's answer now, at most `MAX_ANSWER_BYTES` of it once decoded.

    ``requests`` would read it whole after the hooks, expanding any gzip bomb a channel sends
    in memory; a body read here is what it keeps instead (urllib3 decodes a step at a time).
    An answer cut short only loses what no plugin needs, and its connection is closed.
    """
    raw = getattr(response, "raw", None)
    if raw is None or getattr(response, "_content", None) is not False:
        return  # not a fresh ``requests`` response, or already read
    chunks: list[bytes] = []
    size = 0
    try:
        while size <= MAX_ANSWER_BYTES:
            chunk = raw.read(_ANSWER_CHUNK, decode_content=True)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except Exception:  # a broken answer: keep what was read, the status says the rest
        size = MAX_ANSWER_BYTES + 1
    response._content = b"".join(chunks)[:MAX_ANSWER_BYTES]
    response._content_consumed = True
    if size > MAX_ANSWER_BYTES:
        response.close()  # the rest is not wanted: the connection cannot be reused


def _install_answer_hook() -> None:
    """Add `_record_answer` to the response hooks of every ``requests`` session.

    Apprise's HTTP plugins use ``requests`` and keep the response to themselves; the hook is the
    documented ``requests`` way to see it. It only records while a send of ours runs (Apprise
    copies the caller's context into its worker threads), and records nothing else.
    """
    global _hook_installed
    if _hook_installed:
        return
    _hook_installed = True
    try:
        sessions: Any = importlib.import_module("requests.sessions")
    except ImportError:  # pragma: no cover - Apprise depends on requests
        return
    original = sessions.default_hooks

    def default_hooks() -> dict[str, list[Callable[..., Any]]]:
        hooks: dict[str, list[Callable[..., Any]]] = original()
        hooks.setdefault("response", []).append(_record_answer)
        return hooks

    sessions.default_hooks = default_hooks


def _capture_apprise_warnings() -> None:
    """Let Apprise's per-service capture see warnings, without printing them.

    This and `quiet_apprise` are the only places that set Apprise's logger (this runs once,
    when this module is imported). Apprise records what each service answered ("error=500",
    "connection error...") through its logger, and only what that logger lets through: at the
    ERROR level that `logs.configure` once set, the answers were lost. The records stay out of
    poller's own output (they are not propagated): each delivery attempt is logged once by
    poller, with the answer, scrubbed; Apprise's own lines can quote URLs, tokens included.
    """
    logger = logging.getLogger("apprise")
    logger.setLevel(logging.WARNING)
    logger.propagate = False
    if not any(isinstance(h, logging.NullHandler) for h in logger.handlers):
        logger.addHandler(logging.NullHandler())


# before any Notifier exists, so that no order of `logs.configure` and sends can undo it
_capture_apprise_warnings()


@contextmanager
def quiet_apprise() -> Iterator[None]:
    """Apprise's logger switched off while the config checks a channel URL: Apprise logs the
    URLs it cannot load, passwords and tokens included."""
    logger = logging.getLogger("apprise")
    was_disabled = logger.disabled
    logger.disabled = True
    try:
        yield
    finally:
        logger.disabled = was_disabled


#: A path segment shown as it is: a plain word (``hooks``, ``services``) or an API version.
#: Anything else (tokens, ids, Apprise's half-masked ``m...f``) is masked.
_PUBLIC_SEGMENT = re.compile(r"[a-z]{1,12}|v\d{1,2}")
#: A query value shown as it is: Apprise's own settings (``format=text``, ``retry=0``)...
_PUBLIC_VALUE = re.compile(r"[\w.]{0,12}")
#: ... unless the key says it holds a credential. Keys starting with ``+`` (headers), ``-``
#: (query parameters) or ``:`` (payload fields) are masked whatever their value.
_SECRET_KEY = re.compile(r"^[-+:]|token|key|secret|pass|pwd|auth|sig|code|hook|cred", re.I)


def mask_url(url: str) -> str:
    """An Apprise privacy URL masked further: every path segment that is not a plain word and
    every query value that may be a credential become ``***``.

    Apprise's privacy URLs hide passwords and some tokens, but not a token in a ``json://``
    path or in a ``+Authorization`` header or a ``-token`` parameter.
    """
    head, _, query = url.partition("?")
    scheme, sep, rest = head.partition("://")
    if not sep:
        return "***"
    authority, slash, path = rest.partition("/")
    segments = [s if not s or _PUBLIC_SEGMENT.fullmatch(s) else "***" for s in path.split("/")]
    masked = f"{scheme}://{authority}{slash}{'/'.join(segments)}"
    if not query:
        return masked
    pairs = []
    for pair in query.split("&"):
        key, eq, value = pair.partition("=")
        decoded = unquote(key)
        public = not _SECRET_KEY.search(decoded) and _PUBLIC_VALUE.fullmatch(unquote(value))
        pairs.append(f"{key}{eq}{value if public else '***'}")
    return f"{masked}?{'&'.join(pairs)}"


def _query_keys(url: str) -> frozenset[str]:
    """The query keys of every URL in a channel's text, decoded and lower-cased."""
    return frozenset(
        unquote(pair.partition("=")[0]).lower()
        for part in re.split(r"[\s,]+", url)
        for pair in part.partition("?")[2].split("&")
        if pair
    )


def _only_written(url: str, written: frozenset[str]) -> str:
    """`url` with only the query parameters whose keys are in `written`."""
    head, _, query = url.partition("?")
    kept = [p for p in query.split("&") if p and unquote(p.partition("=")[0]).lower() in written]
    return f"{head}?{'&'.join(kept)}" if kept else head


def _secret_parts(url: str, masked: str) -> list[str]:
    """The pieces of a channel URL that its masked form hides (tokens, passwords...), and
    their decoded and URL-encoded forms."""
    found: set[str] = set()
    # the scheme and the query's keys name things; they hold nothing secret
    named = {url.partition("://")[0]}
    named.update(pair.partition("=")[0] for pair in unquote(url.partition("?")[2]).split("&"))
    for text in (url, unquote(url)):
        for part in re.split(r"[/:@?&=#,+\s]", text):
            if len(part) >= 4 and part not in masked and part.lstrip("+-:") not in named:
                found.update(redact.pieces(part))
    return sorted((p for p in found if p not in masked), key=len, reverse=True)


def _shows_html(service: object) -> bool:
    """Whether an Apprise service shows HTML best: email (every SMTP flavour), and Matrix
    posting to a homeserver (its webhook modes go through bots with markups of their own).

    For these poller writes the HTML itself (`markdown_to_html`): Apprise's own Markdown for
    Matrix runs lines into one paragraph, its text mode shows the title as a literal ``# ``,
    and its email text part started every line after the first with a space.
    """
    return "NotifyEmail" in _classes(service) or _is_matrix(service)


def _classes(service: object) -> set[str]:
    return {cls.__name__ for cls in type(service).__mro__}


def _is_matrix(service: object) -> bool:
    """A Matrix service posting to a homeserver (not through a webhook bot)."""
    return "NotifyMatrix" in _classes(service) and getattr(service, "mode", None) == "off"


class Notifier:
    """Sends messages to named channels, one Apprise object each."""

    def __init__(self, channels: Mapping[str, str], *, timeout: float = 30.0) -> None:
        _install_answer_hook()
        self.timeout = timeout
        self._channels: dict[str, apprise.Apprise] = {}
        self._secrets: dict[str, list[str]] = {}
        self._socket_timeout: dict[str, float] = {}
        #: the query keys each channel's URL was written with (keys name settings, not secrets)
        self._written: dict[str, frozenset[str]] = {}
        #: channels whose every service shows HTML best and whose URL leaves ``format`` alone
        self._html: set[str] = set()
        #: Matrix channels: the title goes in the body as a bold line. Apprise would make it
        #: an <h1> and start the plain text that notifications show with a literal ``# ``.
        self._title_in_body: set[str] = set()
        for name, url in channels.items():
            self._written[name] = _query_keys(url)
            obj = apprise.Apprise()
            obj.add(url)
            self._channels[name] = obj
            if len(obj) and "format" not in self._written[name] and all(map(_shows_html, obj)):
                self._html.add(name)
                if all(map(_is_matrix, obj)):
                    self._title_in_body.add(name)
            masked = " ".join(self.describe(name))
            self._secrets[name] = _secret_parts(url, masked)
            # also out of every log line: urllib3 logs the paths Apprise posts to
            redact.register_logged(self._secrets[name])

    @property
    def names(self) -> tuple[str, ...]:
        """The configured channel names."""
        return tuple(self._channels)

    def describe(self, channel: str, *, defaults: bool = True) -> list[str]:
        """The channel's service URLs with secrets masked.

        Without `defaults`, a URL keeps only the query parameters its user wrote: Apprise adds
        its own defaults (``overflow=upstream&retry=0&wait=0.5...``) to every URL it prints.
        """
        urls = [
            mask_url(str(service.url(privacy=True)))  # type: ignore[no-untyped-call]
            for service in self._channels[channel]
        ]
        if defaults:
            return urls
        return [_only_written(url, self._written.get(channel, frozenset())) for url in urls]

    def format_for(self, channel: str) -> Format:
        """Markdown if every service of the channel prefers Markdown or HTML, or shows HTML
        best (poller then sends it as HTML, `send`), else text."""
        obj = self._channels.get(channel)
        if obj is None or len(obj) == 0:
            return "text"
        if channel in self._html:
            return "markdown"
        for service in obj:
            preferred = service.notify_format
            if isinstance(preferred, tuple | list):
                preferred = preferred[0] if preferred else None
            if str(getattr(preferred, "value", preferred)) not in ("markdown", "html"):
                return "text"
        return "markdown"

    def scrub(self, channel: str, text: str) -> str:
        """`text` with every secret part of the channel's URL masked."""
        for part in self._secrets.get(channel, ()):
            text = text.replace(part, "***")
        return text

    def _limit_sockets(self, channel: str, obj: apprise.Apprise, timeout: float) -> None:
        # A send we stop waiting for keeps a worker thread until its socket gives up: make the
        # sockets give up when we do, so that a hanging service cannot pile up threads.
        if self._socket_timeout.get(channel) == timeout:
            return
        self._socket_timeout[channel] = timeout
        for service in obj:
            for attr in ("socket_connect_timeout", "socket_read_timeout"):
                current = getattr(service, attr, None)
                if isinstance(current, int | float) and (current <= 0 or current > timeout):
                    setattr(service, attr, timeout)

    async def send(
        self,
        channel: str,
        title: str,
        body: str,
        kind: Event | None = None,
        *,
        severity: str | None = None,
        body_format: Format = "text",
        # the per-send limit handed to Apprise, which enforces it on its worker threads
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> str:
        """Send one message; return what the services answered, or raise `NotifyError`.

        The Apprise type is `severity`, else that of `kind`. The whole send is bounded by
        `timeout` (default: the notifier's). The error's `retry_after` is the longest
        ``Retry-After`` a service answered with a 429 or 503, in seconds. A channel that shows
        HTML best (email, Matrix) gets the body as HTML written by poller, whatever its format.
        """
        obj = self._channels.get(channel)
        if obj is None:
            raise NotifyError(channel, "channel is not configured")
        limit = self.timeout if timeout is None else timeout
        self._limit_sockets(channel, obj, limit)
        notify_type = severity or (EVENT_SEVERITY[kind] if kind is not None else "info")
        sent_format: str = body_format
        if channel in self._html:
            body = markdown_to_html(body) if body_format == "markdown" else text_to_html(body)
            sent_format = "html"
            if channel in self._title_in_body and title:
                body, title = f"<p><strong>{html.escape(title)}</strong></p>{body}", ""
        answers: list[tuple[int, str | None]] = []
        token = _ANSWERS.set(answers)
        try:
            # Apprise's own deadline reports TIMEOUT; ours is the backstop if that fails.
            result = await asyncio.wait_for(
                obj.async_notify(
                    body=body,
                    title=title,
                    notify_type=notify_type,
                    body_format=sent_format,
                    timeout=limit,
                ),
                timeout=limit + 5.0,
            )
        except TimeoutError:
            raise NotifyError(channel, f"no answer within {limit:g}s") from None
        finally:
            _ANSWERS.reset(token)
        answer = self.scrub(channel, _answer(result, answers))
        if not result:
            raise NotifyError(channel, answer, retry_after=_retry_after(answers))
        return answer


def _retry_after(answers: Sequence[tuple[int, str | None]]) -> float | None:
    waits = [
        wait
        for status, header in answers
        if status in (429, 503) and (wait := parse_retry_after(header, time.time())) is not None
    ]
    return max(waits) if waits else None


def _answer(result: object, answers: Sequence[tuple[int, str | None]]) -> str:
    """A one-line account of what each service answered; URLs are Apprise's masked ones."""
    parts = []
    for outcome in getattr(result, "results", ()):
        status = outcome.status.name.lower()
        # the query string holds Apprise's defaults (method, overflow...): noise in an answer
        line = f"{mask_url(str(outcome.url).split('?', 1)[0])} {status}"
        if not outcome:
            messages = [
                entry.message for entry in outcome.logs() if entry.level in ("WARNING", "ERROR")
            ]
            if messages:
                line += f": {one_line(messages[-1], 300)}"
        parts.append(line)
    failed = [(status, header) for status, header in answers if status >= 400]
    if failed:
        status, header = failed[-1]
        parts.append(
            f"HTTP {status}" + (f", Retry-After: {one_line(header, 40)}" if header else "")
        )
    if not parts:
        status_name = getattr(getattr(result, "status", None), "name", "")
        if status_name == "NOMATCH":
            return "no service is loaded for this channel"
        return "ok" if result else "no service accepted the message"
    return "; ".join(parts)
