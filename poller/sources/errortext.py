"""What a job API says in its own words when it refuses a request, made safe to show.

An error status alone ("HTTP 401: credentials refused") hides what the server explained:
Flower's 401 says ``FLOWER_UNAUTHENTICATED_API ... is required``, MLflow's 404 names the run,
Airflow's 403 says "Invalid JWT token". `api_says` takes that text from a JSON body (the
usual keys: ``message``, ``detail``, ``error_description``, ``error``, ``title``) or from a
short ``text/plain`` body, and makes it fit for a terminal, a database row and a
notification: one line, no control characters nor terminal escapes, at most `MAX_SAID`
characters, and without the credentials the request carried (an API may echo them). An HTML
body says nothing worth showing (it is a proxy's or a sign-in page), and neither does text
that only repeats the status's reason phrase.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import http
import json
import re
from collections.abc import Iterable

import httpx

from poller import redact

#: The most characters of the API's own words shown after an error status.
MAX_SAID = 200
#: A ``text/plain`` body longer than this is a dump (a stack trace, a page), not a message.
MAX_TEXT_BODY = 2048
#: The keys of a JSON error body that hold its message, best first (MLflow ``message``,
#: Prefect and Airflow ``detail``, RFC 6749 ``error_description`` then ``error``, RFC 9457
#: problem details ``detail`` then ``title``, FastAPI validation items ``msg``).
_KEYS = ("message", "detail", "error_description", "error", "title", "msg")
#: Request headers that carry nothing secret; every other header value is scrubbed.
_PLAIN_HEADERS = frozenset(
    {"accept", "accept-encoding", "content-type", "content-length", "host", "user-agent"}
)
#: Terminal escape sequences (CSI, OSC, and two-character ones), removed whole.
_ESCAPES = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])")
#: Characters that are not text: C0 and C1 controls, DEL, lone surrogates, and the format
#: characters that reorder or hide text (bidi overrides, zero-width ones, BOM).
_NOT_TEXT = re.compile(
    "[\x00-\x08\x0e-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u206f\ufeff\ud800-\udfff]"
)
_SPACES = re.compile(r"\s+")
#: Query parameters whose values are credentials (``?api_key=...``, ``&access_token=...``);
#: other values (a run id) are what an error message is about, and stay.
_SECRET_PARAM = re.compile(r"token|key|secret|pass|auth|sig|credential", re.IGNORECASE)


def api_says(response: httpx.Response, secrets: Iterable[str] = ()) -> str:
    """A one-line excerpt of the message in an error answer's body, or ``""`` if it has none
    worth showing (no body, HTML, a long text, JSON without a message, only the status's
    reason phrase). The credentials of the request that got the answer are masked, and so
    are `secrets` (those it carried in its body: a login's password)."""
    raw = response.content
    if not raw or not raw.strip():
        return ""
    kind = response.headers.get("content-type", "").partition(";")[0].strip().lower()
    text = ""
    if kind == "" or kind == "application/json" or kind.endswith("+json"):
        with contextlib.suppress(ValueError, RecursionError):
            text = _message(json.loads(raw))
    elif kind == "text/plain" and len(raw) <= MAX_TEXT_BODY:
        text = raw.decode("utf-8", "replace")
        if text.lstrip().startswith("<"):
            text = ""  # markup sent as text: a page, not a message
    if not text:
        return ""
    text = _SPACES.sub(" ", _NOT_TEXT.sub("", _ESCAPES.sub("", text))).strip()
    # scrubbed whole, before it is cut: a secret cut in two would no longer be found
    found = {*request_secrets(response.request), *secrets}
    text = redact.scrub(text, sorted(found, key=len, reverse=True))
    if text.rstrip(".").casefold() == _reason(response.status_code).casefold():
        return ""
    return text if len(text) <= MAX_SAID else text[: MAX_SAID - 1].rstrip() + "…"


def _message(body: object, depth: int = 0) -> str:
    """The message of a decoded JSON error body: a string at one of `_KEYS`, looked for in an
    object, the first item of a list, and one level down (``{"error": {"message": ...}}``)."""
    if isinstance(body, str):
        return body
    if depth > 2:
        return ""
    if isinstance(body, list):
        return _message(body[0], depth + 1) if body else ""
    if isinstance(body, dict):
        for key in _KEYS:
            found = _message(body.get(key), depth + 1)
            if found:
                return found
    return ""


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""


def request_secrets(request: httpx.Request) -> tuple[str, ...]:
    """The pieces (`redact.pieces`) of every credential a request carried, longest first:
    each header value other than the plain ones, a Basic password decoded, the URL's
    password and its query parameters named like credentials."""
    found: set[str] = set()
    for name, value in request.headers.items():
        if name.lower() in _PLAIN_HEADERS:
            continue
        found.update(redact.pieces(value))
        scheme, _, encoded = value.partition(" ")
        if scheme.lower() == "basic":
            with contextlib.suppress(binascii.Error, UnicodeDecodeError):
                pair = base64.b64decode(encoded.strip(), validate=True).decode()
                found.update(redact.pieces(pair))
                found.update(redact.pieces(pair.partition(":")[2]))
    url = request.url
    if url.password:
        found.update(redact.pieces(url.password))
    for name, value in url.params.multi_items():
        if _SECRET_PARAM.search(name):
            found.update(redact.pieces(value))
    return tuple(sorted(found, key=len, reverse=True))
