"""How a source proves who it is: an `httpx.Auth` per source.

The static headers of the built-in sources (a bearer token, Immuta's API key, the generic
source's `headers`) are one `StaticHeaders`; Basic authentication is `httpx.BasicAuth`; OAuth 2
client credentials are `OAuth2ClientCredentials`, which fetches its token through the same
client. Each is applied by the source's `httpx.AsyncClient` to every request it sends, so an
adapter never handles a secret itself.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
import re
import time
from collections.abc import AsyncGenerator, Callable, Generator, Iterable, Mapping
from urllib.parse import quote_plus

import httpx

from poller import redact
from poller.errors import PermanentSourceError
from poller.sources.errortext import api_says


class StaticHeaders(httpx.Auth):
    """Sets the same headers on every request (an API key, a bearer token)."""

    def __init__(self, headers: Mapping[str, str]) -> None:
        self._items = list(headers.items())

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        """Set the headers, then send the request once."""
        self._set(request)
        yield request

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        """`auth_flow` for the async client, written out: httpx's default drives the sync
        flow from an async one (a second generator and a `StopIteration` per request)."""
        self._set(request)
        yield request

    def _set(self, request: httpx.Request) -> None:
        headers = request.headers
        for name, value in self._items:  # one at a time: cheaper than merging a Headers
            headers[name] = value


def bearer(token: str) -> StaticHeaders:
    """``Authorization: Bearer TOKEN``."""
    return StaticHeaders({"Authorization": f"Bearer {token}"})


#: The most bytes of a token endpoint's answer poller reads (a token answer is a few KiB).
MAX_TOKEN_ANSWER = 64 * 1024
#: The longest access token poller accepts (it is sent in a header on every request).
MAX_TOKEN = 8 * 1024
#: The longest lifetime a token is trusted for, whatever ``expires_in`` says, and the one
#: assumed when the endpoint gives none (it is fetched again on a 401 anyway).
MAX_LIFETIME = 24 * 3600.0
DEFAULT_LIFETIME = 3600.0
#: A token is refreshed this long before it expires (at most a tenth of its lifetime), so that
#: a request is not sent with a token that expires on the way.
REFRESH_MARGIN = 60.0
#: How long a refused token request stands for every request of the source, so that a wrong
#: secret costs one token request per polling round, not one per job.
REFUSAL_HOLD = 10.0
#: A 403 to a token at least this old is taken for an expired token (Airflow 3 answers one
#: with 403, not 401) and the request is sent once more with a new token. A token younger
#: than this was just accepted by the token endpoint: its 403 is a permission refused, which
#: is reported at once, and a refusal never loops (one new token per request at most).
STALE_403 = 5.0
_HEADER_SAFE = re.compile(r"[\x21-\x7e]+")
_ERROR_CODE = re.compile(r"[A-Za-z0-9_.:-]{1,60}")


class OAuth2ClientCredentials(httpx.Auth):
    """OAuth 2 client credentials (RFC 6749 §4.4): a bearer token fetched from `token_url`,
    cached, refreshed before it expires or once when a request is refused with 401 (or with
    403 for a token older than `STALE_403`).

    The token request is yielded from the flow, so it goes through the source's own client:
    the same transport, answer cap and per-request deadline as a job request. Concurrent
    requests share one refresh (a lock). A refused or unreadable token answer raises
    `PermanentSourceError` of kind ``auth`` (the watch's poll error), whose message holds the
    endpoint's error code at most, never the secret or the token. Each token is registered
    for log redaction while it is in use.
    """

    requires_response_body = True

    def __init__(
        self,
        token_url: str,
        client_id: str,
        client_secret: str,
        *,
        scope: str | None = None,
        client_auth: str = "basic",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._token_url = token_url
        self._client_id = client_id
        self._client_secret = client_secret
        self._scope = scope
        self._client_auth = client_auth
        self._clock = clock
        self._token: str | None = None
        #: the token's `redact.pieces`, longest first: what an answer must not echo
        self.secrets: tuple[str, ...] = ()
        self._refresh_at = 0.0
        #: when the current token was fetched (its age decides what a 403 means)
        self._fetched_at = 0.0
        self._lock = asyncio.Lock()
        #: the last refusal of the token endpoint, and until when it stands (`REFUSAL_HOLD`)
        self._refused: tuple[PermanentSourceError, float] | None = None

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response]:
        """Not supported: poller's clients are async."""
        raise RuntimeError("OAuth2ClientCredentials works with an async client only")

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        """Send `request` with a valid token; if it is refused (`_refused`), fetch a new token
        and send it once more."""
        token = self._token
        if token is None or self._clock() >= self._refresh_at:
            async with self._lock:
                if self._token is None or self._clock() >= self._refresh_at:
                    response = yield self._token_request()
                    self._accept(response)
                token = self._token
        fetched = self._fetched_at
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if not self._refused_token(response.status_code, fetched):
            return
        async with self._lock:
            if self._token == token:  # nobody refreshed it meanwhile: this one is refused
                response = yield self._token_request()
                self._accept(response)
            token = self._token
        request.headers["Authorization"] = f"Bearer {token}"
        yield request

    def _refused_token(self, status: int, fetched: float) -> bool:
        """Whether an answer of `status` to a request sent with the token fetched at `fetched`
        says the token is no longer good. A 401 does; so does a 403 to a token older than
        `STALE_403`, because Airflow 3 answers an expired token with 403. A 403 to a newer
        token is a permission the user lacks: reported at once, without a token request."""
        if status == 401:
            return True
        return status == 403 and self._clock() - fetched >= STALE_403

    def _new_token_request(self) -> httpx.Request:
        form = {"grant_type": "client_credentials"}
        if self._scope:
            form["scope"] = self._scope
        headers = {"Accept": "application/json"}
        if self._client_auth == "post":
            form.update(client_id=self._client_id, client_secret=self._client_secret)
        else:
            # RFC 6749 §2.3.1: each part form-urlencoded before Basic
            pair = f"{quote_plus(self._client_id)}:{quote_plus(self._client_secret)}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        return httpx.Request(
            "POST",
            self._token_url,
            data=form,
            headers=headers,
            extensions={"timeout": httpx.Timeout(None).as_dict()},
        )

    def _token_request(self) -> httpx.Request:
        """The request for a new token; raises the endpoint's recent refusal instead, if any."""
        if self._refused is not None:
            error, until = self._refused
            if self._clock() < until:
                raise PermanentSourceError(error.kind, error.message)
            self._refused = None
        return self._new_token_request()

    def _accept(self, response: httpx.Response) -> None:
        """Keep the token of a token answer, or raise the ``auth`` error it is."""
        try:
            token, lifetime = read_token_answer(response, redact.pieces(self._client_secret))
        except PermanentSourceError as exc:
            self._refused = (exc, self._clock() + REFUSAL_HOLD)
            raise
        if self._token is not None:
            redact.forget_logged(redact.pieces(self._token))
        pieces = redact.pieces(token)
        redact.register_logged(pieces)
        self._token = token
        self.secrets = tuple(sorted(pieces, key=len, reverse=True))
        margin = min(REFRESH_MARGIN, lifetime / 10)
        self._fetched_at = self._clock()
        self._refresh_at = self._fetched_at + lifetime - margin


class JsonLogin(OAuth2ClientCredentials):
    """A bearer token from a login endpoint: ``POST`` a JSON ``{"username", "password"}``,
    answered ``{"access_token"}`` (Airflow 3's ``/auth/token``, 201 Created). Kept, refreshed and
    refused like `OAuth2ClientCredentials` tokens; without an ``expires_in`` it is fetched again
    every `DEFAULT_LIFETIME`, and sooner when Airflow answers 403 to a token that expired
    (`STALE_403`)."""

    def __init__(
        self, url: str, username: str, password: str, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__(url, username, password, clock=clock)

    def _new_token_request(self) -> httpx.Request:
        login = {"username": self._client_id, "password": self._client_secret}
        return httpx.Request(
            "POST",
            self._token_url,
            json=login,
            headers={"Accept": "application/json"},
            extensions={"timeout": httpx.Timeout(None).as_dict()},
        )


def read_token_answer(response: httpx.Response, secrets: Iterable[str] = ()) -> tuple[str, float]:
    """The access token and its lifetime in seconds from a token endpoint's answer; raises
    `PermanentSourceError` (``auth``) for a refusal or an answer that is not a token. A
    refusal names the endpoint's error code and quotes its words (`errortext.api_says`, with
    `secrets`, the ones the request carried in its body, masked)."""
    status = response.status_code
    if status not in (200, 201):  # a login endpoint may answer 201 Created
        code = ""
        if status < 500 and len(response.content) <= MAX_TOKEN_ANSWER:
            # RFC 6749 §5.2: {"error": "invalid_client", ...}
            with contextlib.suppress(ValueError, RecursionError):
                body = json.loads(response.content)
                error = body.get("error") if isinstance(body, dict) else None
                if isinstance(error, str) and _ERROR_CODE.fullmatch(error):
                    code = error
        said = api_says(response, secrets)
        words = f'; the API says: "{said}"' if said and said != code else ""
        code = f" ({code})" if code else ""
        raise PermanentSourceError(
            "auth", f"the token endpoint refused: HTTP {status}{code}{words}"
        )
    if len(response.content) > MAX_TOKEN_ANSWER:
        raise PermanentSourceError("auth", "the token endpoint's answer is too large")
    try:
        body = json.loads(response.content)
    except ValueError:
        raise PermanentSourceError("auth", "the token endpoint's answer is not JSON") from None
    if not isinstance(body, dict):
        raise PermanentSourceError("auth", "the token endpoint's answer is not a JSON object")
    token = body.get("access_token")
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN:
        raise PermanentSourceError("auth", "the token endpoint's answer has no usable access_token")
    if not _HEADER_SAFE.fullmatch(token):
        raise PermanentSourceError("auth", "the access token is not printable ASCII")
    kind = body.get("token_type", "bearer")
    if not isinstance(kind, str) or kind.lower() != "bearer":
        raise PermanentSourceError("auth", "the token endpoint's token is not a bearer token")
    expires_in = body.get("expires_in")
    if expires_in is None:
        return token, DEFAULT_LIFETIME
    if isinstance(expires_in, str):  # some endpoints send it as text
        with contextlib.suppress(ValueError):
            expires_in = float(expires_in)
    if (
        isinstance(expires_in, bool)
        or not isinstance(expires_in, int | float)
        or not math.isfinite(expires_in)
        or expires_in <= 0
    ):
        raise PermanentSourceError(
            "auth", "the token endpoint's expires_in is not a positive number"
        )
    return token, min(float(expires_in), MAX_LIFETIME)
