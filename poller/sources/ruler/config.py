"""The config of a Ruler source: where its API is, its token, and when to poll a site's list."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field

from poller.settings.fields import Count, HttpUrl, Token
from poller.sources.base import SourceConfig


class RulerSource(SourceConfig):
    """The Ruler batch API. From ``list_threshold`` watched jobs of one site on, poller polls
    the site's job list instead of each job."""

    #: A site's job list grows with its jobs (~100 bytes each): a bigger cap on one answer
    #: (decoded) than one status needs.
    ANSWER_CAP: ClassVar[int] = 8 << 20

    type: Literal["ruler"] = "ruler"
    base_url: HttpUrl = "https://rest.rulerapi.com/v1"
    token: Token
    list_threshold: Annotated[Count, Field(ge=1)] = 2
