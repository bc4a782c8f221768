"""The config of an Immuta source, and the filters of an Immuta job search (a job entry's
``search``, which only this type takes)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, ValidationInfo, field_validator

from poller.settings.fields import (
    Count,
    HttpUrl,
    Name,
    OptionalDuration,
    OptionalNames,
    PositiveDuration,
    ShownValueError,
    Token,
)
from poller.settings.polling import Frozen
from poller.sources.base import SourceConfig
from poller.units import format_duration

#: The shortest ``summary_interval``: the counts are for people and dashboards, not alerts,
#: and a summary may cost the API a scan of its jobs.
MIN_SUMMARY_INTERVAL = 5.0


class ImmutaSource(SourceConfig):
    """The Immuta jobs API. ``long_poll`` (seconds, None: off) lets one statuses request wait
    for jobs to end; ``discovery_interval`` is how often bulks and searches are listed again;
    ``summary_interval`` how often the daemon asks ``GET /jobs/summary`` for the status page
    and ``/metrics`` (None: never)."""

    type: Literal["immuta"] = "immuta"
    base_url: HttpUrl
    token: Token
    batch_size: Annotated[Count, Field(ge=1, le=1000)] = 100
    long_poll: OptionalDuration = None
    discovery_interval: PositiveDuration = 60.0
    summary_interval: OptionalDuration = 60.0

    @property
    def continuous(self) -> bool:
        """With ``long_poll``, a statuses request is kept outstanding for the source's jobs."""
        return self.long_poll is not None

    @field_validator("long_poll")
    @classmethod
    def _long_poll_within_request(cls, value: float | None, info: ValidationInfo) -> float | None:
        if not value:
            # 0 disables long polling just as leaving it out does
            return None
        deadline = info.data.get("request_timeout")
        if deadline is not None and value >= deadline:
            raise ShownValueError(
                f"must be shorter than request_timeout ({format_duration(deadline)}), "
                "the deadline of the request that waits"
            )
        return value

    @field_validator("summary_interval")
    @classmethod
    def _summary_not_too_often(cls, value: float | None) -> float | None:
        if not value:
            return None  # 0 turns the summary off
        if value < MIN_SUMMARY_INTERVAL:
            raise ShownValueError(
                f"must be 0 (off) or at least {format_duration(MIN_SUMMARY_INTERVAL)}"
            )
        return value


class SearchSpec(Frozen):
    """The filters of an Immuta job search; every job it finds is watched."""

    jobType: OptionalNames = None  # the API's names
    state: OptionalNames = None
    startDate: Name | None = None
    endDate: Name | None = None
