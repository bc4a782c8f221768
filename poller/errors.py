"""The exception tree of poller.

::

    PollerError
    ├── ConfigError            a config file (or reload) that cannot be used; carries every problem
    ├── SourceError            one request to a job API went wrong
    │   ├── TransientSourceError   timeouts, refused connections, 5xx, 429: worth retrying
    │   └── PermanentSourceError   401/403/404, unreadable answers: retrying will not help soon
    ├── StoreError             the database cannot be opened, migrated or locked
    ├── ListenError            the HTTP listener cannot bind its address
    └── NotifyError            a channel did not accept a message

Transport trouble is kept apart from what the remote API answered: both become a
`models.PollFailure` for the watches concerned, never an exception out of the daemon.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class PollerError(Exception):
    """Base class of every error poller raises on purpose."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a config file: where it is and what was expected."""

    file: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        place = f"{self.file}:{self.line}" if self.line else self.file
        return f"{place}: {self.path}: {self.message}" if self.path else f"{place}: {self.message}"


class ConfigError(PollerError):
    """A config that is refused as a whole; `problems` lists every reason with its place."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


#: The category of a request that was not sent because its whole source is paused
#: (`http.SourceHealth`); its message names the failure that paused the source.
BACKING_OFF = "backing_off"


class SourceError(PollerError):
    """A request to a job API failed; `kind` is a short category shown to users."""

    transient = False

    def __init__(self, kind: str, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.retry_after = retry_after


class TransientSourceError(SourceError):
    """Timeouts, refused connections, 5xx and 429: the same request may work later."""

    transient = True


class PermanentSourceError(SourceError):
    """401/403/404 and unreadable answers: the API refused or could not be understood."""


class StoreError(PollerError):
    """The database cannot be opened, migrated or locked for this process."""


class ListenError(PollerError):
    """The daemon's HTTP listener (``http.listen``) cannot bind its address; the message names
    the address and the reason (in use, not an address of this host, not allowed)."""


class NotifyError(PollerError):
    """A channel did not accept a message; `answer` is what the service said (secrets masked)."""

    def __init__(self, channel: str, answer: str, *, retry_after: float | None = None) -> None:
        super().__init__(f"channel {channel}: {answer}")
        self.channel = channel
        self.answer = answer
        self.retry_after = retry_after
