"""The frozen base of every config model, and the polling timings a config, a source and a job
may set (README "Config reference")."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

from poller.settings.fields import (
    Backoff,
    Duration,
    OptionalBackoff,
    OptionalDuration,
    OptionalPositiveDuration,
    PositiveDuration,
)
from poller.units import format_duration


class Frozen(BaseModel):
    """The base of every config model: immutable once validated, and no unknown key allowed
    (a misspelt key is a problem, not a silently ignored setting)."""

    model_config = ConfigDict(frozen=True, extra="forbid")


def _check_interval_order(interval: float | None, max_interval: float | None) -> None:
    if interval is not None and max_interval is not None and max_interval < interval:
        raise ValueError(
            f"must be at least interval ({format_duration(interval)}), "
            f"not {format_duration(max_interval)}"
        )


class PollingDefaults(Frozen):
    """Polling timings for every watch (README "Config reference"); durations in seconds."""

    interval: PositiveDuration = 30.0
    backoff: Backoff = 1.5
    max_interval: PositiveDuration = 600.0
    timeout: PositiveDuration = 86400.0
    stall_after: PositiveDuration = 7200.0
    error_after: Duration = 900.0

    @field_validator("max_interval")
    @classmethod
    def _max_after_interval(cls, value: float, info: ValidationInfo) -> float:
        _check_interval_order(info.data.get("interval"), value)
        return value


class PollingOverrides(Frozen):
    """A source's or a job's changes to `PollingDefaults`; None keeps the value from above."""

    interval: OptionalPositiveDuration = None
    backoff: OptionalBackoff = None
    max_interval: OptionalPositiveDuration = None
    timeout: OptionalPositiveDuration = None
    stall_after: OptionalPositiveDuration = None
    error_after: OptionalDuration = None

    @field_validator("max_interval")
    @classmethod
    def _max_after_interval(cls, value: float | None, info: ValidationInfo) -> float | None:
        _check_interval_order(info.data.get("interval"), value)
        return value

    def as_dict(self) -> dict[str, float]:
        """The timings that are set, by `poller.models.Policy` field name."""
        return {name: value for name, value in self if value is not None}
