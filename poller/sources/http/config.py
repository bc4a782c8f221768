"""The config of an http source: any JSON job-status endpoint, described by a URL template, an
optional body and JMESPath expressions over the answer."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, NamedTuple

from jmespath.parser import ParsedResult
from pydantic import Field, ValidationInfo, field_validator

from poller.models import State
from poller.settings.fields import (
    HeaderValue,
    JmesPath,
    TargetState,
    Written,
    body_fields,
    compile_jmespath,
    http_url,
    template_fields,
)
from poller.sources.base import SourceConfig


class HttpExpressions(NamedTuple):
    """The compiled JMESPath expressions of an `HttpSource`."""

    state: ParsedResult
    progress: ParsedResult | None
    detail: Mapping[str, ParsedResult]


class HttpSource(SourceConfig):
    """Any JSON job-status endpoint, described by templates and JMESPath expressions.

    ``url`` and the string leaves of ``body`` are ``str.format`` templates over
    `TEMPLATE_FIELDS` (``{{``/``}}`` for literal braces). ``states`` maps remote values,
    lower-cased (compare ``str(value).lower()``), to poller's states. `compiled` gives the
    JMESPath expressions ready to search a body with (compiled once per process).
    """

    type: Literal["http"] = "http"
    method: Literal["GET", "POST"] = "GET"
    headers: dict[str, HeaderValue] = Field(default_factory=dict)
    # body comes before url so that the url's check can see whether the body names {id}
    body: Any = None
    url: Written
    state: JmesPath
    progress: JmesPath | None = None
    detail: dict[str, JmesPath] = Field(default_factory=dict)
    states: dict[str, TargetState]

    @field_validator("method", mode="before")
    @classmethod
    def _upper_method(cls, value: object) -> object:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("body")
    @classmethod
    def _check_body(cls, value: object, info: ValidationInfo) -> object:
        if value is None:
            return None
        if info.data.get("method") == "GET":
            raise ValueError("a body needs method: POST")
        body_fields(value)
        return value

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str, info: ValidationInfo) -> str:
        http_url(value)
        names = template_fields(value)
        if "id" not in names and "body" in info.data:
            body = info.data["body"]
            if body is None or "id" not in body_fields(body):
                raise ValueError("must name {id} (or the body must)")
        return value

    @field_validator("states")
    @classmethod
    def _lower_states(cls, value: dict[str, State]) -> dict[str, State]:
        if not value:
            raise ValueError("must map at least one remote state to a poller state")
        lowered: dict[str, State] = {}
        for remote, state in value.items():
            key = remote.lower()
            if lowered.get(key, state) is not state:
                raise ValueError("two remote states that differ only in case map differently")
            lowered[key] = state
        return lowered

    def compiled(self) -> HttpExpressions:
        """The ``state``, ``progress`` and ``detail`` expressions, compiled."""
        return HttpExpressions(
            state=compile_jmespath(self.state),
            progress=compile_jmespath(self.progress) if self.progress is not None else None,
            detail={name: compile_jmespath(expr) for name, expr in self.detail.items()},
        )
