"""Answers about many jobs at once, shared by the source types whose APIs give them.

Immuta's ``POST /jobs/statuses`` and an http source's ``batch`` ask for many job ids in one
request: `poll_batches` cuts a poll group into batches of ids and sends them within the
source's limits, and `batch_outcomes` turns the entries of one answer, keyed by id, into one
outcome per job asked for. A batch that fails costs its own jobs only, and a job the answer
leaves out is ``not_found`` like a job whose own request says 404.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Protocol, TypeVar

from poller.errors import SourceError
from poller.models import JobRef, PollFailure, PollOutcome
from poller.sources import lenient
from poller.sources.base import failure_of, read_outcome

__all__ = ["Each", "batch_outcomes", "poll_batches"]

T = TypeVar("T")
R = TypeVar("R")


class Each(Protocol):
    """`client.Requester.each`: `fn(item)` for every item within the source's limits."""

    async def __call__(self, fn: Callable[[T], Awaitable[R]], items: Sequence[T]) -> list[R]:
        """The results, in order."""
        ...


async def poll_batches(
    jobs: Sequence[JobRef],
    size: int,
    fetch: Callable[[list[str]], Awaitable[Mapping[str, PollOutcome]]],
    each: Each,
) -> dict[str, PollOutcome]:
    """One outcome per job key, the jobs asked `size` ids per request.

    `fetch` answers one batch of job ids, an outcome per id (`batch_outcomes`); the batches
    go through `each` (the source's concurrency and rate limits). A `SourceError` raised by
    `fetch` costs its batch only: each of its jobs gets that failure.
    """
    job_ids = list(dict.fromkeys(job.job_id for job in jobs))
    chunks = [job_ids[i : i + size] for i in range(0, len(job_ids), size)]

    async def one(chunk: list[str]) -> Mapping[str, PollOutcome]:
        try:
            return await fetch(chunk)
        except SourceError as exc:
            return dict.fromkeys(chunk, failure_of(exc))

    by_id: dict[str, PollOutcome] = {}
    for answer in await each(one, chunks):
        by_id.update(answer)
    return {job.key: by_id[job.job_id] for job in jobs}


def batch_outcomes(
    entries: Mapping[str, object],
    job_ids: Sequence[str],
    read: Callable[[object], PollOutcome],
    answer: str = "the answer",
) -> dict[str, PollOutcome]:
    """One outcome per id of `job_ids`, from the entries of an answer about many jobs keyed by
    id; never raises.

    Ids are matched exactly, then ignoring case. A job the answer does not mention is
    ``not_found`` (the poll rules retry it before they believe it, as a 404 of its own); an
    entry that cannot be read (`lenient.unreadable`, or that `read` trips on) costs its job.
    """
    folded = {k.lower(): v for k, v in entries.items()}
    outcomes: dict[str, PollOutcome] = {}
    for job_id in job_ids:
        entry = entries[job_id] if job_id in entries else folded.get(job_id.lower())
        if entry is None:
            why = f"{answer} did not mention this job"
            outcomes[job_id] = PollFailure("not_found", why, transient=False)
            continue
        unread = lenient.unreadable(entry)
        if unread is not None:
            why = f"this job's entry cannot be read: {unread}"
            outcomes[job_id] = PollFailure("bad_answer", why, transient=False)
        else:
            outcomes[job_id] = read_outcome(read, entry)
    return outcomes
