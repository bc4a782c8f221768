"""Secrets kept out of logs, command output and the database, wherever a text may echo them.

Channel URLs and source tokens and headers are held as secrets, but the outside world can still
hand them back: an HTTP library logs the path of a webhook it posts to, and a job API may echo
the token it refused in its answer. Each secret is known here by its pieces (a header's token
without its ``Bearer``, a URL's path segments, their URL-encoded forms), and texts are scrubbed
of them: poll outcomes before they are stored, and every log line before it is written
(`logs.configure` installs `scrub_logged`).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import cast
from urllib.parse import quote, quote_plus

from pydantic import BaseModel, SecretStr

from poller.models import PollFailure, PollOutcome, PollResult

#: What replaces a secret.
MASK = "***"
#: Shorter pieces are not scrubbed: they would mask common words, and guess nothing.
MIN_SECRET = 4
#: Words a header value starts with that are not secret themselves.
_SCHEMES = frozenset({"bearer", "basic", "token", "digest", "apikey"})

_LOGGED: set[str] = set()
#: `_LOGGED`, longest first (a secret that contains another is masked whole)
_LOGGED_ORDER: list[str] = []


def pieces(secret: str) -> set[str]:
    """`secret`, each whitespace-separated piece of it, and their URL-encoded forms."""
    found = {secret.strip()}
    found.update(p for p in secret.split() if p.lower() not in _SCHEMES)
    encoded = set()
    for piece in found:
        encoded.update({quote(piece, safe=""), quote_plus(piece), quote(piece)})
    return {p for p in found | encoded if len(p) >= MIN_SECRET}


def secrets_of(value: object) -> tuple[str, ...]:
    """Every secret (`SecretStr`) held anywhere in a config model, as `pieces`, longest first."""
    found: set[str] = set()

    def walk(item: object) -> None:
        if isinstance(item, SecretStr):
            found.update(pieces(item.get_secret_value()))
        elif isinstance(item, BaseModel):
            for name in type(item).model_fields:
                walk(getattr(item, name, None))
        elif isinstance(item, Mapping):
            for member in item.values():
                walk(member)
        elif isinstance(item, list | tuple | set | frozenset):
            for member in item:
                walk(member)

    walk(value)
    return tuple(sorted(found, key=len, reverse=True))


def scrub(text: str, secrets: Iterable[str]) -> str:
    """`text` with every one of `secrets` (longest first) replaced by `MASK`."""
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def scrub_value(value: object, secrets: Sequence[str]) -> object:
    """A JSON-like value with `scrub` applied to every string in it, keys included."""
    if isinstance(value, str):
        return scrub(value, secrets)
    if isinstance(value, Mapping):
        return {scrub_value(k, secrets): scrub_value(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub_value(v, secrets) for v in value]
    return value


#: What `_finder` puts between the texts it searches at once. A match of a secret that does
#: not hold it cannot span two texts, so one search over the joined texts finds what a search
#: of each would find; a secret that holds it makes `_finder` search text by text.
_SEPARATOR = "\x00"
#: Exact types of a JSON-like value that hold no text (checked before any `isinstance`).
_NO_TEXT = frozenset({int, float, bool, type(None)})


@functools.lru_cache(maxsize=64)
def _finder(secrets: tuple[str, ...]) -> Callable[[list[str]], bool]:
    """Whether any of `texts` holds any of `secrets`: one search of all of a poll's texts,
    not one search a secret, nor one a text."""
    search = re.compile("|".join(map(re.escape, secrets))).search
    if any(_SEPARATOR in secret for secret in secrets):
        return lambda texts: any(search(text) is not None for text in texts)
    return lambda texts: search(_SEPARATOR.join(texts)) is not None


def _texts(value: object, out: list[str]) -> None:
    """Append every string in a JSON-like value (keys included) to `out`.

    Exact types are asked first: most members of an answer are numbers or plain strings, and
    an `isinstance` against `Mapping` costs more than the rest of the walk (this runs on every
    poll's details).
    """
    kind = type(value)
    if kind in _NO_TEXT:
        return
    if isinstance(value, str):
        out.append(value)
        return
    if kind is dict or isinstance(value, Mapping):
        for key, member in cast("Mapping[object, object]", value).items():
            if type(key) is str:
                out.append(key)
            elif type(key) not in _NO_TEXT:
                _texts(key, out)
            if type(member) is str:
                out.append(member)
            elif type(member) not in _NO_TEXT:
                _texts(member, out)
    elif isinstance(value, list | tuple):
        for member in value:
            if type(member) is str:
                out.append(member)
            elif type(member) not in _NO_TEXT:
                _texts(member, out)


def scrub_outcome(outcome: PollOutcome, secrets: tuple[str, ...]) -> PollOutcome:
    """A poll outcome whose texts (the error, the status, every detail) hold none of `secrets`:
    an API may echo the token it was sent, and what it says is stored and shown. The outcome
    itself when it holds none (the common case costs one search and no copy)."""
    if not secrets:
        return outcome
    found = _finder(secrets)
    if isinstance(outcome, PollFailure):
        if not found([outcome.message]):
            return outcome
        return dataclasses.replace(outcome, message=scrub(outcome.message, secrets))
    if isinstance(outcome, PollResult):
        texts = [outcome.remote_status]
        _texts(outcome.details, texts)
        if not found(texts):
            return outcome
        return dataclasses.replace(
            outcome,
            remote_status=scrub(outcome.remote_status, secrets),
            details={
                scrub(k, secrets): scrub_value(v, secrets) for k, v in outcome.details.items()
            },
        )
    return outcome


def register_logged(secrets: Iterable[str]) -> None:
    """Mask these secrets in every log line from now on (for the life of the process)."""
    new = {s for s in secrets if len(s) >= MIN_SECRET} - _LOGGED
    if new:
        _LOGGED.update(new)
        _LOGGED_ORDER[:] = sorted(_LOGGED, key=len, reverse=True)


def scrub_logged(text: str) -> str:
    """A log line with every registered secret masked."""
    return scrub(text, _LOGGED_ORDER) if _LOGGED_ORDER else text


def forget_logged(secrets: Iterable[str]) -> None:
    """Stop masking these secrets (a short-lived token replaced by a new one), so that the
    registered set stays as small as the secrets in use."""
    gone = _LOGGED.intersection(secrets)
    if gone:
        _LOGGED.difference_update(gone)
        _LOGGED_ORDER[:] = sorted(_LOGGED, key=len, reverse=True)
