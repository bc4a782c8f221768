"""What a request to watch or stop watching a job is checked against, before any database:
the config's sources and site rules, the parts' text rules, and the jobs the config lists.

`poller add` / `poller remove` and the API's writes (``POST``/``DELETE /api/v1/watches``)
call these, so that both refuse the same requests with the same words.
"""

from __future__ import annotations

from collections.abc import Sequence

from poller.config.models import Config
from poller.models import WatchSpec


class Refused(Exception):
    """A request to watch or stop watching a job that cannot be done; the message says why,
    in the CLI's words."""


def watch_spec(
    cfg: Config, source: str, job_id: str, site: str | None, name: str | None, tags: Sequence[str]
) -> WatchSpec:
    """The spec of a job to watch, or `Refused` (unknown source, a site missing or given
    where it means nothing, a part that breaks the text rules)."""
    if source not in cfg.sources:
        known = ", ".join(cfg.sources) or "none"
        raise Refused(f"no source {source} in the config (sources: {known})")
    from poller.sources.base import registered, source_type

    type_name = cfg.sources[source].type
    kind = source_type(type_name)
    # the same rule as the config's cross-check (`SourceType.needs_site`)
    if kind is not None and kind.needs_site and site is None:
        raise Refused(f"--site is required for a {type_name} source")
    if kind is not None and not kind.takes("site") and site is not None:
        takers = " or ".join(n for n, other in registered().items() if other.takes("site"))
        raise Refused(f"--site is only for {takers} sources; {source} is {type_name}")
    spec = WatchSpec(source=source, job_id=job_id, site=site, name=name, tags=tuple(tags))
    # the config's rule for the same parts (models.text_problem), checked before any database
    problems = spec.problems()
    if problems:
        raise Refused(f"cannot watch this job: {'; '.join(problems)}")
    return spec


def config_job(cfg: Config, key: str) -> str | None:
    """Where the config lists the job of `key` (``jobs[i] in FILE``), or None."""
    for index, job in enumerate(cfg.jobs):
        if job.key == key:
            return f"jobs[{index}] in {cfg.path}"
    return None


def check_labels(cfg: Config, key: str, name: str | None, tags: Sequence[str]) -> None:
    """`Refused` if a job the config lists is given a name or tags here: the next reload
    would put the config's labels back without a word."""
    listed = config_job(cfg, key)
    if listed is not None and (name is not None or tags):
        raise Refused(f"{key} is {listed}: change its name and tags there, then reload")


def check_removal(cfg: Config, key: str) -> None:
    """`Refused` if the config lists the job of `key`: removing it elsewhere would not stick,
    every reload and restart brings it back."""
    listed = config_job(cfg, key)
    if listed is not None:
        raise Refused(
            f"{key} is {listed}; remove it from there and reload the daemon "
            "(systemctl reload poller), or it comes back at the next reload"
        )
