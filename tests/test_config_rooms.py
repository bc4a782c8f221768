"""The config package's own seams: the cross-checks run once per load, and the places whose
values stay text as written are found from the field types, so a new field needs no list."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

import poller.config
import poller.config.models
from poller.config import Config, load_config
from poller.config import crosschecks as crosschecks_module
from poller.errors import ConfigError
from poller.settings.fields import Name, Written
from poller.settings.paths import as_written

CONFIG = """\
sources:
  ruler: {type: ruler, token: ruler-token-0001}
channels:
  ops: json://localhost/hook
rules:
  - {on: failed, notify: ops}
jobs:
  - {source: ruler, site: main, id: 0123}
  - {source: ruler, site: main, id: 17}
"""


def test_cross_checks_run_once_per_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def counting(name: str) -> Any:
        real = getattr(crosschecks_module, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            return real(*args, **kwargs)

        return wrapper

    for name in ("reference_problems", "policy_problems"):
        monkeypatch.setattr(poller.config, name, counting(name))
        monkeypatch.setattr(poller.config.models, name, counting(name))
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG)
    config = load_config(path, environ={})

    assert sorted(calls) == ["policy_problems", "reference_problems"]
    assert [job.id for job in config.jobs] == ["0123", "17"]
    # a Config built directly still checks its references itself
    calls.clear()
    Config(path=str(path), sources=dict(config.sources), jobs=config.jobs)
    assert sorted(calls) == ["policy_problems", "reference_problems"]


class _Inner(BaseModel):
    label: Written
    count: int = 0


class _Outer(BaseModel):
    plain: str = ""
    name: Name = "n"
    names: tuple[Name, ...] = ()
    by_key: dict[str, Written] = {}
    inner: _Inner | None = None
    inners: tuple[_Inner, ...] = ()


def test_text_as_written_is_found_from_the_field_types() -> None:
    assert as_written(_Outer) == [
        ("name",),
        ("names",),
        ("names", int),
        ("by_key", str),
        ("inner", "label"),
        ("inners", int, "label"),
    ]


def test_the_config_keeps_ids_and_tags_as_written() -> None:
    places = poller.config.models.TEXT_AS_WRITTEN
    assert ("jobs", int, "id") in places
    assert ("jobs", int, "tags", int) in places
    assert ("sources", str, "token") in places
    # a database URL or a channel URL given as a number stays a number: "expected a string"
    assert not any(place[0] in ("database", "polling") for place in places)
    assert ("channels", str) not in places


def test_a_name_and_a_watch_part_are_checked_in_the_same_words(tmp_path: Path) -> None:
    """A rule's channel name and a job's name go through one check (`models.line_problem`)."""
    path = tmp_path / "config.yaml"
    path.write_text(
        CONFIG.replace("notify: ops", 'notify: "o\\u0007ps"').replace(
            "id: 17}", 'id: 17, name: "n\\u0007ame"}'
        )
    )
    with pytest.raises(ConfigError) as raised:
        load_config(path, environ={})
    wording = "holds a control character (U+0007); it is one line of text"
    assert f"rules[0].notify[0]: {wording}" in str(raised.value)
    assert f"jobs[1].name: {wording}" in str(raised.value)
