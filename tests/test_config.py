"""The config file: loading, defaults, ${VAR} and x_file, every kind of problem, and secrets."""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr, ValidationError

from poller.config import (
    Config,
    DeliveryConfig,
    JobConfig,
    PollingDefaults,
    PollingOverrides,
    Rule,
    default_database_url,
    format_duration,
    load_config,
    parse_duration,
    parse_rate,
    resolve_database_url,
)
from poller.errors import ConfigError
from poller.models import Event, Policy, State
from poller.sources.http import HttpSource
from poller.sources.immuta import ImmutaSource, SearchSpec
from poller.sources.ruler import RulerSource

REPO = Path(__file__).resolve().parent.parent

ENV = {
    "RULER_TOKEN": "ruler-token-0001",
    "WAREHOUSE_TOKEN": "warehouse-token-0002",
    "SLACK_URL": "json://localhost/slack-hook-0003",
    "ONCALL_MAIL_URL": "mailtos://user:mail-pass-0004@smtp.example.com?to=oncall@example.com",
}

SPEC_EXAMPLE = """\
database: sqlite:////var/lib/poller/poller.db   # default: poller.db next to the config file
                                                # postgresql+psycopg://... for several replicas
sources:
  ruler-prod:
    type: ruler
    token: ${RULER_TOKEN}
    max_concurrency: 4          # requests in flight to this source (default 8)
    rate_limit: 5/s             # requests per second to this source (default: none)
  immuta:
    type: immuta
    base_url: https://acme.hosted.immutacloud.com
    token_file: CREDENTIALS/immuta
  warehouse:
    type: http
    url: https://api.example.com/v2/jobs/{id}
    headers: {Authorization: "Bearer ${WAREHOUSE_TOKEN}"}
    state: data.status          # JMESPath into the JSON body
    progress: data.percent      # optional
    states: {QUEUED: pending, RUNNING: running, DONE: succeeded, ERROR: failed}

channels:
  ops-slack: ${SLACK_URL}                      # any Apprise URL
  oncall: mailtos://user:pass@smtp.example.com?to=oncall@example.com

rules:                          # every matching rule fires; each channel gets an event once
  - on: [failed, partial, expired, cancelled, timed_out, unreachable]
    notify: [ops-slack, oncall]
  - on: [succeeded]
    sources: [ruler-prod]       # optional filters: sources, tags
    notify: [ops-slack]

polling:                        # defaults; a source or a job may override any of them
  interval: 30s                 # first wait between polls
  backoff: 1.5                  # each poll that sees no change multiplies the wait ...
  max_interval: 10m             # ... up to this; a change resets it to interval
  timeout: 24h                  # then: event timed_out, watch stops
  stall_after: 2h               # no progress for this long: event stalled (once)
  error_after: 15m              # polling failing this long: event unreachable (once)

jobs:
  - source: ruler-prod
    site: 4f2a
    id: 9c1e-77
    name: Nightly revenue upload
    tags: [revenue]
  - source: immuta
    id: 2b9f0c
  - source: immuta
    bulk: 7d1e2a                # watches every job of this bulk
  - source: immuta
    search: {jobType: [policyUpdate], state: failed}   # watches jobs as they appear
"""

#: A small valid config that the problem tests break one piece of.
BASE = """\
sources:
  ruler-prod:
    type: ruler
    token: t0k3n-value
  immuta:
    type: immuta
    base_url: https://immuta.example.com
    token: imm-token
channels:
  ops: json://localhost
"""


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> Config:
    return load_config(write(tmp_path, text), environ=ENV if env is None else env)


def problems(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> list[str]:
    """`line: path: message` of each problem, in the order reported."""
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text, env)
    return [f"{p.line}: {p.path}: {p.message}" for p in caught.value.problems]


def error_text(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text, env)
    return str(caught.value)


class TestValidConfig:
    """Configs that load, and what they load to."""

    def test_spec_example_loads_with_its_values(self, tmp_path: Path) -> None:
        """A full example config loads and every value arrives typed."""
        (tmp_path / "immuta").write_text("  immuta-key-0005\n")
        text = SPEC_EXAMPLE.replace("CREDENTIALS", str(tmp_path))
        config = load(tmp_path, text)

        assert config.database == "sqlite:////var/lib/poller/poller.db"
        ruler = config.sources["ruler-prod"]
        assert isinstance(ruler, RulerSource)
        assert ruler.token.get_secret_value() == "ruler-token-0001"
        assert (ruler.max_concurrency, ruler.rate_limit) == (4, 5.0)
        assert ruler.base_url == "https://rest.rulerapi.com/v1"
        assert (ruler.list_threshold, ruler.request_timeout) == (2, 30.0)
        immuta = config.sources["immuta"]
        assert isinstance(immuta, ImmutaSource)
        assert immuta.token.get_secret_value() == "immuta-key-0005"
        assert (immuta.batch_size, immuta.long_poll, immuta.discovery_interval) == (100, None, 60)
        warehouse = config.sources["warehouse"]
        assert isinstance(warehouse, HttpSource)
        assert warehouse.headers["Authorization"].get_secret_value() == (
            "Bearer warehouse-token-0002"
        )
        assert warehouse.states == {
            "queued": State.PENDING,
            "running": State.RUNNING,
            "done": State.SUCCEEDED,
            "error": State.FAILED,
        }
        assert warehouse.compiled().state.search({"data": {"status": "DONE"}}) == "DONE"
        assert config.channels["ops-slack"].get_secret_value() == ENV["SLACK_URL"]
        assert config.rules[0].on == (
            Event.FAILED,
            Event.PARTIAL,
            Event.EXPIRED,
            Event.CANCELLED,
            Event.TIMED_OUT,
            Event.UNREACHABLE,
        )
        assert config.rules[1].sources == ("ruler-prod",)
        assert config.polling == PollingDefaults(
            interval=30, backoff=1.5, max_interval=600, timeout=86400, stall_after=7200,
            error_after=900,
        )  # fmt: skip
        assert [job.key for job in config.jobs] == [
            "ruler-prod/4f2a/9c1e-77",
            "immuta/2b9f0c",
            None,
            None,
        ]
        assert config.jobs[0].name == "Nightly revenue upload"
        assert config.jobs[0].tags == ("revenue",)
        assert config.jobs[2].bulk == "7d1e2a"
        assert config.jobs[3].search == SearchSpec(jobType=("policyUpdate",), state=("failed",))
        assert config.log.level == "info" and config.log.format == "auto"

    def test_example_file_loads(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """config.example.yaml loads from os.environ when the variables it names are set."""
        (tmp_path / "immuta").write_text("immuta-key\n")
        (tmp_path / "mlflow-oauth").write_text("mlflow-client-secret\n")
        for name, value in ENV.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
        monkeypatch.delenv("POLLER_LOG_LEVEL", raising=False)

        config = load_config(REPO / "config.example.yaml")

        assert config.database == "sqlite:////var/lib/poller/poller.db"
        assert set(config.sources) == {"ruler-prod", "immuta", "warehouse", "mlflow"}
        assert set(config.channels) == {"ops-slack", "oncall"}
        assert len(config.rules) == 3 and len(config.jobs) == 6
        assert config.policy_for("ruler-prod").interval == 60
        # the http source's batch and discover, and a bulk entry listed with the latter
        mlflow = config.sources["mlflow"]
        assert isinstance(mlflow, HttpSource) and mlflow.batch and mlflow.discover
        assert (mlflow.batch.max_ids, mlflow.discover.next) == (100, "next_page_token")
        assert (config.jobs[5].source, config.jobs[5].bulk) == ("mlflow", "7")
        assert config.jobs[0].polling.as_dict() == {"timeout": 6 * 3600}
        # the delivery section shows every default; both kinds of template are there
        assert config.delivery == DeliveryConfig()
        assert set(config.channel_templates) == {"oncall"}
        assert config.rules[0].template is not None
        assert config.rules[0].template.format == "markdown"
        assert config.http.listen == "127.0.0.1:9180"

    def test_empty_file_is_an_empty_config(self, tmp_path: Path) -> None:
        """An empty file is valid: no sources, no jobs, every default (the database is
        poller.db next to the config file, whatever systemd's STATE_DIRECTORY says)."""
        config = load(tmp_path, "", env={"STATE_DIRECTORY": "/srv/state:/srv/other"})
        assert config.database == f"sqlite:///{tmp_path}/poller.db"
        assert (config.sources, config.channels, config.rules, config.jobs) == ({}, {}, (), ())
        assert config.polling == PollingDefaults()
        assert config.policy_for("anything") == Policy()

    def test_path_is_kept_as_given(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """Config.path is the path as the caller gave it, relative or not."""
        monkeypatch.chdir(tmp_path)
        write(tmp_path, "jobs: []\n", name="relative.yaml")
        assert load_config("relative.yaml", environ={}).path == "relative.yaml"

    def test_optional_keys_of_every_kind(self, tmp_path: Path) -> None:
        """Optional source keys parse their units: rates, durations, 0 long_poll as off."""
        config = load(
            tmp_path,
            BASE.replace("type: immuta", "type: immuta\n    long_poll: 0\n    batch_size: 7")
            + """\
            log: {level: DEBUG, format: json}
            """.replace("            ", ""),
        )
        immuta = config.sources["immuta"]
        assert isinstance(immuta, ImmutaSource)
        assert (immuta.long_poll, immuta.batch_size) == (None, 7)
        assert config.log.level == "debug" and config.log.format == "json"

    def test_poller_log_level_overrides_the_file(self, tmp_path: Path) -> None:
        """POLLER_LOG_LEVEL, when set, wins over log.level."""
        config = load(tmp_path, "log: {level: error}\n", env={"POLLER_LOG_LEVEL": "Warning"})
        assert config.log.level == "warning"

    def test_http_source_with_post_body_and_detail(self, tmp_path: Path) -> None:
        """A POST body may carry {id}; detail expressions are compiled and usable."""
        config = load(
            tmp_path,
            """\
            sources:
              wh:
                type: http
                method: post
                url: https://api.example.com/{site}/jobs
                body: {ids: ["{id}"], size: 10, exact: true}
                state: status
                detail: {rows: stats.rows}
                states: {1: running, 2: succeeded}
            """,
        )
        wh = config.sources["wh"]
        assert isinstance(wh, HttpSource)
        assert wh.method == "POST" and wh.body == {"ids": ["{id}"], "size": 10, "exact": True}
        assert wh.states == {"1": State.RUNNING, "2": State.SUCCEEDED}
        assert wh.compiled().detail["rows"].search({"stats": {"rows": 5}}) == 5
        assert wh.compiled().progress is None


class TestYaml:
    """YAML 1.2 booleans, text that looks like numbers, merge keys, syntax errors."""

    def test_on_stays_a_string_key(self, tmp_path: Path) -> None:
        """A bare `on` is the rule key, not the boolean true of YAML 1.1."""
        config = load(tmp_path, BASE + "rules:\n  - on: failed\n    notify: ops\n")
        assert config.rules[0].on == (Event.FAILED,)
        assert config.rules[0].notify == ("ops",)

    def test_yes_no_on_off_values_stay_strings(self, tmp_path: Path) -> None:
        """yes, no, on and off are text; only true and false are booleans."""
        config = load(
            tmp_path,
            """\
            sources:
              wh:
                type: http
                url: https://x.example.com/{id}
                state: "on"
                detail: {a: yes, b: no, c: off, d: on}
                states: {yes: succeeded, no: failed}
            """,
        )
        wh = config.sources["wh"]
        assert isinstance(wh, HttpSource)
        assert wh.detail == {"a": "yes", "b": "no", "c": "off", "d": "on"}
        assert wh.states == {"yes": State.SUCCEEDED, "no": State.FAILED}

    def test_numbers_and_dates_meant_as_text_keep_their_text(self, tmp_path: Path) -> None:
        """A job id, site, name or search date written as a YAML number or date stays as typed."""
        config = load(
            tmp_path,
            BASE
            + """\
            jobs:
              - {source: ruler-prod, site: 5, id: 0123, name: 2024, tags: [1.10]}
              - {source: immuta, id: 1e3}
              - source: immuta
                search: {state: created, startDate: 2024-01-31, endDate: 2024-02-01T00:00:00Z}
            """.replace("            ", ""),
        )
        job = config.jobs[0]
        assert (job.site, job.id, job.name, job.tags) == ("5", "0123", "2024", ("1.10",))
        assert config.jobs[0].key == "ruler-prod/5/0123"
        assert config.jobs[1].id == "1e3"
        assert config.jobs[2].search == SearchSpec(
            state=("created",), startDate="2024-01-31", endDate="2024-02-01T00:00:00Z"
        )

    def test_merge_keys_expand_and_explicit_keys_win(self, tmp_path: Path) -> None:
        """`<<: *anchor` merges a mapping; a key written next to it overrides the merged one."""
        config = load(
            tmp_path,
            BASE
            + """\
            polling: &slow {interval: 2m, max_interval: 30m}
            jobs:
              - source: immuta
                id: a
                polling:
                  <<: *slow
                  interval: 5m
            """.replace("            ", ""),
        )
        assert config.jobs[0].polling.as_dict() == {"interval": 300, "max_interval": 1800}

    def test_syntax_error_is_one_problem_with_its_line(self, tmp_path: Path) -> None:
        """A YAML syntax error is reported once, at its line."""
        found = problems(tmp_path, "sources:\n  a: [1, 2\nchannels: {}\n")
        assert found == ["3: : invalid YAML: expected ',' or ']', but got ':'"]

    def test_syntax_error_message_format(self, tmp_path: Path) -> None:
        """A syntax error reads `file:line: invalid YAML: ...`."""
        path = write(tmp_path, "jobs:\n  - id: 1\n   source: x\n")
        with pytest.raises(ConfigError) as caught:
            load_config(path, environ={})
        assert str(caught.value).startswith(f"{path}:3: invalid YAML: ")

    def test_several_documents_are_refused(self, tmp_path: Path) -> None:
        """A config is one YAML document."""
        assert problems(tmp_path, "jobs: []\n---\njobs: []\n") == [
            "2: : invalid YAML: expected a single document in the stream, but found another "
            "document"
        ]

    def test_other_yaml_loaders_are_untouched(self, tmp_path: Path) -> None:
        """Loading a config does not change how yaml.safe_load reads `on`."""
        load(tmp_path, BASE)
        assert yaml.safe_load("a: on") == {"a": True}

    def test_duplicate_key(self, tmp_path: Path) -> None:
        """A key given twice in one mapping is a problem at the second one."""
        found = problems(tmp_path, BASE + "polling:\n  interval: 10s\n  interval: 20s\n")
        assert found == ["13: polling.interval: duplicate key (first at line 12)"]

    def test_missing_file(self, tmp_path: Path) -> None:
        """A missing file is one problem naming the file."""
        with pytest.raises(ConfigError) as caught:
            load_config(tmp_path / "nope.yaml", environ={})
        assert str(caught.value) == f"{tmp_path / 'nope.yaml'}: cannot read the config file: " + (
            "No such file or directory"
        )

    def test_directory_instead_of_file(self, tmp_path: Path) -> None:
        """A directory is not a config file."""
        with pytest.raises(ConfigError) as caught:
            load_config(tmp_path, environ={})
        assert len(caught.value.problems) == 1
        assert "cannot read the config file" in str(caught.value)

    def test_root_must_be_a_mapping(self, tmp_path: Path) -> None:
        """A file that is a list or a scalar is refused with the keys it should have."""
        assert problems(tmp_path, "- a\n- b\n") == [
            "1: : expected a mapping with the keys database, sources, channels, rules, polling, "
            "delivery, replicas, jobs, reports, log, http, retention"
        ]

    def test_alias_bomb_is_refused(self, tmp_path: Path) -> None:
        """Aliases that expand without end are refused, not followed."""
        lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
        lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 8)]
        found = problems(tmp_path, "\n".join(lines) + "\n")
        assert found == ["None: : too deeply nested or too many aliases"]


class TestEnvironment:
    """${VAR}, ${VAR:-default} and $$."""

    def test_set_unset_default_and_literal_dollar(self, tmp_path: Path) -> None:
        """Set variables are used, defaults fill unset or empty ones, $$ is one $."""
        config = load(
            tmp_path,
            """\
            database: ${DB:-sqlite:///./poller.db}
            sources:
              r:
                type: ruler
                token: pa$$word-${SUFFIX}
                base_url: ${BASE:-https://default.example.com}/v1
                max_concurrency: ${CONCURRENCY}
                request_timeout: ${TIMEOUT:-45s}
            """,
            env={"SUFFIX": "x1", "BASE": "", "CONCURRENCY": "3"},
        )
        source = config.sources["r"]
        assert isinstance(source, RulerSource)
        assert config.database == f"sqlite:///{tmp_path}/poller.db"  # next to the config
        assert source.token.get_secret_value() == "pa$word-x1"
        assert source.base_url == "https://default.example.com/v1"
        assert (source.max_concurrency, source.request_timeout) == (3, 45.0)

    def test_unset_variable_is_a_problem_at_its_line(self, tmp_path: Path) -> None:
        """An unset variable without default is reported once, at its scalar's line."""
        found = problems(tmp_path, BASE + "  pager: ${PAGER_URL}\n", env={})
        assert found == ["11: channels.pager: environment variable PAGER_URL is not set"]

    def test_unset_variable_in_a_reference(self, tmp_path: Path) -> None:
        """A reference whose name is unset is not also reported as an unknown name."""
        text = BASE + "rules:\n  - on: failed\n    notify: [ops, '${CHANNEL}']\n"
        assert problems(tmp_path, text, env={}) == [
            "13: rules[0].notify[1]: environment variable CHANNEL is not set"
        ]

    def test_malformed_reference(self, tmp_path: Path) -> None:
        """`${` that is not a reference is a problem that says how to write one."""
        found = problems(tmp_path, BASE + "database: sqlite:///${oops\n")
        assert found == ["11: database: malformed ${...}: use ${VAR} or ${VAR:-default}, $$ for $"]


class TestFiles:
    """`x_file: PATH` gives `x` the file's stripped content."""

    def test_file_content_is_stripped(self, tmp_path: Path) -> None:
        """The file's content, without surrounding whitespace, becomes the value."""
        (tmp_path / "token").write_text("\n  file-token-0006 \n")
        (tmp_path / "slack").write_text("json://localhost/from-file\n")
        config = load(
            tmp_path,
            f"""\
            sources:
              r: {{type: ruler, token_file: {tmp_path}/token}}
            channels:
              ops_file: ${{CREDS}}/slack
            """,
            env={"CREDS": str(tmp_path)},
        )
        source = config.sources["r"]
        assert isinstance(source, RulerSource)
        assert source.token.get_secret_value() == "file-token-0006"
        assert config.channels["ops"].get_secret_value() == "json://localhost/from-file"

    def test_unreadable_file_names_the_path(self, tmp_path: Path) -> None:
        """An unreadable file is one problem at the x_file key, naming the path."""
        found = problems(
            tmp_path, f"sources:\n  r:\n    type: ruler\n    token_file: {tmp_path}/missing\n"
        )
        assert found == [
            f"4: sources.r.token_file: cannot read {tmp_path}/missing: No such file or directory"
        ]

    def test_unset_variable_in_file_path_is_one_problem(self, tmp_path: Path) -> None:
        """An x_file path with an unset variable is reported once, not also as unreadable."""
        found = problems(
            tmp_path, "sources:\n  r:\n    type: ruler\n    token_file: ${CREDS}/token\n", env={}
        )
        assert found == ["4: sources.r.token_file: environment variable CREDS is not set"]

    def test_both_key_and_file_key(self, tmp_path: Path) -> None:
        """x and x_file together are refused."""
        (tmp_path / "t").write_text("abc")
        found = problems(
            tmp_path,
            f"sources:\n  r:\n    type: ruler\n    token: a\n    token_file: {tmp_path}/t\n",
        )
        assert found == ["5: sources.r.token_file: give either token or token_file, not both"]

    def test_file_keys_in_data_mappings_are_not_read(self, tmp_path: Path) -> None:
        """Keys of states and detail are the user's data: `x_file` there is just a name."""
        config = load(
            tmp_path,
            """\
            sources:
              wh:
                type: http
                url: https://x.example.com/{id}
                state: s
                detail: {log_file: output.log_file}
                states: {in_file: running}
            """,
        )
        wh = config.sources["wh"]
        assert isinstance(wh, HttpSource)
        assert wh.detail == {"log_file": "output.log_file"}
        assert wh.states == {"in_file": State.RUNNING}

    def test_unknown_file_key_is_reported_as_written(self, tmp_path: Path) -> None:
        """An unknown `x_file` key is reported under the name the user wrote."""
        (tmp_path / "t").write_text("abc")
        found = problems(tmp_path, BASE + f"log:\n  colour_file: {tmp_path}/t\n")
        assert found == [
            "12: log.colour_file: unknown key; expected one of: level, format",
        ]


class TestDurations:
    """Durations and rates."""

    @pytest.mark.parametrize(
        ("text", "seconds"),
        [
            (0, 0.0),
            (30, 30.0),
            (1.5, 1.5),
            ("45", 45.0),
            ("500ms", 0.5),
            ("1.5s", 1.5),
            ("10s", 10.0),
            ("5m", 300.0),
            ("2h", 7200.0),
            ("1d", 86400.0),
            (" 15m ", 900.0),
            ("1h30m", 5400.0),
            ("1m 30s", 90.0),
            (".5s", 0.5),
        ],
    )
    def test_valid(self, text: object, seconds: float) -> None:
        """Numbers are seconds; strings take ms, s, m, h or d."""
        assert parse_duration(text) == pytest.approx(seconds)

    @pytest.mark.parametrize(
        "text", ["", "5", "soon", "5x", "-5s", "5 minutes", "1.2.3s", "m5", "5M", None, True, [1]]
    )
    def test_invalid(self, text: object) -> None:
        """Anything else is a ValueError that says what a duration looks like."""
        if text == "5":
            assert parse_duration(text) == 5.0
            return
        with pytest.raises(ValueError, match="duration"):
            parse_duration(text)

    @pytest.mark.parametrize("value", [-1, float("nan"), float("inf"), "1e400s", 10**400])
    def test_negative_and_infinite(self, value: object) -> None:
        """Negative, NaN and infinite durations are refused."""
        with pytest.raises(ValueError, match="duration"):
            parse_duration(value)

    def test_error_does_not_quote_the_value(self) -> None:
        """The message says what was expected without repeating what was given."""
        with pytest.raises(ValueError) as caught:
            parse_duration("hunter2-secret")
        assert "hunter2" not in str(caught.value)
        assert "expected a duration like 30s, 5m, 2h" in str(caught.value)

    @given(st.floats(min_value=0, max_value=1e12, allow_nan=False, allow_infinity=False))
    def test_formatting_parses_back_equal(self, seconds: float) -> None:
        """format_duration gives a string parse_duration reads back exactly."""
        assert parse_duration(format_duration(seconds)) == seconds
        assert parse_duration(f"{seconds!r}s") == seconds

    @pytest.mark.parametrize(
        ("seconds", "text"), [(0, "0s"), (90, "90s"), (600, "10m"), (7200, "2h"), (0.25, "0.25s")]
    )
    def test_format(self, seconds: float, text: str) -> None:
        """Whole minutes, hours and days use their unit."""
        assert format_duration(seconds) == text

    @pytest.mark.parametrize(
        ("text", "per_second"),
        [(5, 5.0), ("5/s", 5.0), ("300/m", 5.0), ("1000/h", 1000 / 3600), ("2.5", 2.5),
         ("60 / min", 1.0)],
    )  # fmt: skip
    def test_rates(self, text: object, per_second: float) -> None:
        """Rates are per second, per minute or per hour; a bare number is per second."""
        assert parse_rate(text) == pytest.approx(per_second)

    @pytest.mark.parametrize("text", ["fast", "5/w", "0/s", -1, True, "5/"])
    def test_bad_rates(self, text: object) -> None:
        """Anything else, and rates of zero or less, are refused."""
        with pytest.raises(ValueError):
            parse_rate(text)


SOURCE_PROBLEMS = [
    (
        "unknown key",
        "sources:\n  r:\n    type: ruler\n    token: x\n    tokn: y\n",
        [
            "5: sources.r.tokn: unknown key; expected one of: max_concurrency, rate_limit, "
            "request_timeout, polling, type, base_url, token, list_threshold (did you mean token?)"
        ],
    ),
    (
        "missing token",
        "sources:\n  r:\n    type: ruler\n",
        ["2: sources.r.token: required (or token_file)"],
    ),
    (
        "missing type",
        "sources:\n  r:\n    token: x\n",
        ["2: sources.r.type: required; expected one of: ruler, immuta, http"],
    ),
    (
        "unknown type",
        "sources:\n  r:\n    type: jenkins\n",
        ["3: sources.r.type: unknown source type 'jenkins'; expected one of: ruler, immuta, http"],
    ),
    (
        "bad duration",
        "sources:\n  r:\n    type: ruler\n    token: x\n    request_timeout: soon\n",
        [
            "5: sources.r.request_timeout: expected a duration like 30s, 5m, 2h "
            "(seconds, or a number with ms, s, m, h, d); got 'soon'"
        ],
    ),
    (
        "bad rate",
        "sources:\n  r:\n    type: ruler\n    token: x\n    rate_limit: fast\n",
        [
            "5: sources.r.rate_limit: expected a rate like 5/s, 300/m or 1000/h "
            "(requests per second if a bare number); got 'fast'"
        ],
    ),
    (
        "bad base_url",
        "sources:\n  r:\n    type: immuta\n    token: x\n    base_url: ftp://h\n",
        ["5: sources.r.base_url: expected an http:// or https:// URL"],
    ),
    (
        "long_poll too long",
        "sources:\n  r:\n    type: immuta\n    token: x\n    base_url: https://h\n"
        "    long_poll: 1m\n",
        [
            "6: sources.r.long_poll: must be shorter than request_timeout (30s), the deadline "
            "of the request that waits; got '1m'"
        ],
    ),
    (
        "batch size",
        "sources:\n  r:\n    type: immuta\n    token: x\n    base_url: https://h\n"
        "    batch_size: 5000\n",
        ["6: sources.r.batch_size: must be at most 1000; got 5000"],
    ),
    (
        "bad JMESPath",
        "sources:\n  h:\n    type: http\n    url: https://h/{id}\n    state: 'data..status'\n"
        "    states: {A: failed}\n",
        ["5: sources.h.state: not a valid JMESPath expression (at character 6)"],
    ),
    (
        "bad JMESPath in detail",
        "sources:\n  h:\n    type: http\n    url: https://h/{id}\n    state: s\n"
        "    detail:\n      rows: 'a b'\n    states: {A: failed}\n",
        ["7: sources.h.detail.rows: not a valid JMESPath expression (at character 3)"],
    ),
    (
        "unknown target state",
        "sources:\n  h:\n    type: http\n    url: https://h/{id}\n    state: s\n"
        "    states:\n      A: failed\n      B: finished\n      C: unknown\n",
        [
            "8: sources.h.states.B: unknown state 'finished'; expected one of: pending, running, "
            "succeeded, partial, failed, cancelled, expired",
            "9: sources.h.states.C: unknown state 'unknown'; expected one of: pending, running, "
            "succeeded, partial, failed, cancelled, expired",
        ],
    ),
    (
        "bad url template",
        "sources:\n  h:\n    type: http\n    url: https://h/{site}/{job}\n    state: s\n"
        "    states: {A: failed}\n",
        [
            "4: sources.h.url: template names unknown field job; expected {id}, {site}, "
            "{source}, {key}"
        ],
    ),
    (
        "url without id",
        "sources:\n  h:\n    type: http\n    url: https://h/jobs\n    state: s\n"
        "    states: {A: failed}\n",
        ["4: sources.h.url: must name {id} (or the body must)"],
    ),
    (
        "malformed url template",
        "sources:\n  h:\n    type: http\n    url: https://h/{id\n    state: s\n"
        "    states: {A: failed}\n",
        [
            "4: sources.h.url: malformed template: expected '}' before end of string; write {{ and "
            "}} for braces"
        ],
    ),
    (
        "body with GET",
        "sources:\n  h:\n    type: http\n    url: https://h/{id}\n    body: {a: 1}\n"
        "    state: s\n    states: {A: failed}\n",
        ["5: sources.h.body: a body needs method: POST"],
    ),
    (
        "bad body template",
        "sources:\n  h:\n    type: http\n    method: POST\n    url: https://h/{id}\n"
        "    body: {a: ['{nope}']}\n    state: s\n    states: {A: failed}\n",
        [
            "6: sources.h.body: body.a[0]: template names unknown field nope; expected {id}, "
            "{site}, {source}, {key}"
        ],
    ),
    (
        "bad method",
        "sources:\n  h:\n    type: http\n    method: PUT\n    url: https://h/{id}\n"
        "    state: s\n    states: {A: failed}\n",
        ["4: sources.h.method: expected one of: GET, POST; got 'PUT'"],
    ),
    (
        "empty states",
        "sources:\n  h:\n    type: http\n    url: https://h/{id}\n    state: s\n    states: {}\n",
        ["6: sources.h.states: must map at least one remote state to a poller state"],
    ),
    (
        "source polling",
        "sources:\n  r:\n    type: ruler\n    token: x\n    polling:\n      backoff: 0.5\n"
        "      intervall: 1m\n",
        [
            "6: sources.r.polling.backoff: expected a number of at least 1, like 1.5; got 0.5",
            "7: sources.r.polling.intervall: unknown key; expected one of: interval, backoff, "
            "max_interval, timeout, stall_after, error_after (did you mean interval?)",
        ],
    ),
    (
        "merged polling",
        "sources:\n  r:\n    type: ruler\n    token: x\n    polling:\n      interval: 20m\n",
        ["6: sources.r.polling.interval: makes max_interval (10m) shorter than interval (20m)"],
    ),
    (
        "sources not a mapping",
        "sources: [a, b]\n",
        ["1: sources: expected a mapping of source names"],
    ),
]

OTHER_PROBLEMS = [
    (
        "unknown top-level key",
        "source: {}\n",
        [
            "1: source: unknown key; expected one of: database, sources, channels, rules, "
            "polling, delivery, replicas, jobs, reports, log, http, retention "
            "(did you mean sources?)"
        ],
    ),
    (
        "bad Apprise URL",
        "channels:\n  ops: json://localhost\n  bad: nonsense://what\n",
        [
            "3: channels.bad: not an Apprise URL Apprise understands "
            "(see https://github.com/caronc/apprise/wiki)"
        ],
    ),
    (
        "empty channel",
        "channels:\n  ops:\n",
        ["2: channels.ops: expected a string"],
    ),
    (
        "unknown channel in rule",
        "channels:\n  ops: json://localhost\nrules:\n  - on: [failed]\n    notify: [ops, opz]\n",
        ["5: rules[0].notify[1]: unknown channel 'opz'; expected one of: ops"],
    ),
    (
        "unknown source in rule",
        "channels:\n  ops: json://localhost\nrules:\n  - on: failed\n    notify: ops\n"
        "    sources: nope\n",
        ["6: rules[0].sources: unknown source 'nope'; no sources are configured"],
    ),
    (
        "unknown event",
        "channels:\n  ops: json://localhost\nrules:\n  - on: [failed, exploded]\n    notify: ops\n",
        [
            "4: rules[0].on[1]: expected one of: started, succeeded, partial, failed, cancelled, "
            "expired, stalled, timed_out, unreachable, recovered; got 'exploded'"
        ],
    ),
    (
        "empty rule",
        "rules:\n  - on: []\n    notify: []\n",
        ["2: rules[0].on: must not be empty", "3: rules[0].notify: must not be empty"],
    ),
    (
        "polling order",
        "polling:\n  interval: 5m\n  max_interval: 1m\n",
        ["3: polling.max_interval: must be at least interval (5m), not 1m"],
    ),
    (
        "bad level",
        "log: {level: loud, format: xml}\n",
        [
            "1: log.level: expected one of: debug, info, warning, error; got 'loud'",
            "1: log.format: expected one of: auto, json, console; got 'xml'",
        ],
    ),
    (
        "bad database",
        "database: /var/lib/poller.db\n",
        [
            "1: database: expected a database URL like sqlite:////var/lib/poller/poller.db or "
            "postgresql+psycopg://user@host/poller"
        ],
    ),
]

JOB_PROBLEMS = [
    ("site missing for ruler", "  - {source: ruler-prod, id: a}\n",
     ["12: jobs[0].site: required for a ruler source"]),
    ("site on immuta", "  - {source: immuta, id: a, site: s}\n",
     ["12: jobs[0].site: only for a ruler or http source; this one is immuta"]),
    ("unknown source", "  - {source: rulr-prod, id: a}\n",
     ["12: jobs[0].source: unknown source 'rulr-prod'; expected one of: immuta, ruler-prod"]),
    ("bulk on ruler", "  - {source: ruler-prod, bulk: b, site: s}\n",
     ["12: jobs[0].bulk: only for an immuta or http source; this one is ruler"]),
    ("id and bulk", "  - {source: immuta, id: a, bulk: b}\n",
     ["12: jobs[0]: give exactly one of id, bulk or search"]),
    ("nothing to watch", "  - {source: immuta}\n",
     ["12: jobs[0]: give exactly one of id, bulk or search"]),
    ("missing source", "  - {id: a}\n", ["12: jobs[0].source: required"]),
    ("duplicate key", "  - {source: immuta, id: a}\n  - {source: immuta, id: b}\n"
     "  - source: immuta\n    id: a\n",
     ["14: jobs[2]: the same job as jobs[0] (line 12); list each job once"]),
    ("bad job polling", "  - source: immuta\n    id: a\n    polling: {timeout: forever}\n",
     ["14: jobs[0].polling.timeout: expected a duration like 30s, 5m, 2h "
      "(seconds, or a number with ms, s, m, h, d); got 'forever'"]),
    ("unknown search filter", "  - source: immuta\n    search: {status: failed}\n",
     ["13: jobs[0].search.status: unknown key; expected one of: jobType, state, startDate, "
      "endDate (did you mean state?)"]),
]  # fmt: skip


class TestProblems:
    """Every kind of wrong config gives `file:line: path: what was expected`."""

    @pytest.mark.parametrize(
        ("text", "expected"),
        [pytest.param(t, e, id=i) for i, t, e in SOURCE_PROBLEMS + OTHER_PROBLEMS],
    )
    def test_problem(self, tmp_path: Path, text: str, expected: list[str]) -> None:
        """The config is refused with exactly these problems."""
        assert problems(tmp_path, text) == expected

    @pytest.mark.parametrize(
        ("jobs", "expected"), [pytest.param(t, e, id=i) for i, t, e in JOB_PROBLEMS]
    )
    def test_job_problem(self, tmp_path: Path, jobs: str, expected: list[str]) -> None:
        """Jobs are checked against their sources and each other."""
        assert problems(tmp_path, BASE + "jobs:\n" + jobs) == expected

    def test_str_is_file_line_path_message(self, tmp_path: Path) -> None:
        """str(ConfigError) has one `file:line: path: message` line per problem."""
        path = write(tmp_path, "sources:\n  r:\n    type: ruler\n")
        with pytest.raises(ConfigError) as caught:
            load_config(path, environ={})
        assert str(caught.value) == f"{path}:2: sources.r.token: required (or token_file)"
        assert caught.value.problems[0].file == str(path)

    def test_every_problem_at_once_ordered_by_line(self, tmp_path: Path) -> None:
        """Problems in every section are all reported together, ordered by line."""
        text = """\
            jobs:
              - {source: ghost, id: 1}
              - {source: r, id: 2}
            sources:
              r: {type: ruler, token: x, max_concurrency: 0}
              h: {type: http, url: 'https://h/{id}', state: 'a[', states: {X: done}}
            channels:
              ops: not-a-url
            rules:
              - {on: [failed], notify: [ops, nobody]}
            polling: {interval: 1x}
            log: {level: chatty}
            extra: 1
            """
        found = problems(tmp_path, text, env={"POLLER_LOG_LEVEL": "shouting"})
        assert found == [
            "2: jobs[0].source: unknown source 'ghost'; expected one of: h, r",
            "3: jobs[1].site: required for a ruler source",
            "5: sources.r.max_concurrency: must be at least 1; got 0",
            "6: sources.h.state: not a valid JMESPath expression (it ends too early)",
            "6: sources.h.states.X: unknown state 'done'; expected one of: pending, running, "
            "succeeded, partial, failed, cancelled, expired",
            "8: channels.ops: not an Apprise URL Apprise understands "
            "(see https://github.com/caronc/apprise/wiki)",
            "10: rules[0].notify[1]: unknown channel 'nobody'; expected one of: ops",
            "11: polling.interval: expected a duration like 30s, 5m, 2h "
            "(seconds, or a number with ms, s, m, h, d); got '1x'",
            "12: log.level: expected one of: debug, info, warning, error; got 'chatty'",
            "13: extra: unknown key; expected one of: database, sources, channels, rules, "
            "polling, delivery, replicas, jobs, reports, log, http, retention",
            "None: POLLER_LOG_LEVEL: expected one of: debug, info, warning, error",
        ]

    def test_wrong_types_never_quote_the_input(self, tmp_path: Path) -> None:
        """Type errors say what was expected; only a value that is never a secret (a number,
        a choice, a duration) is quoted, so a token in the wrong place is not."""
        text = error_text(
            tmp_path,
            "sources:\n  r: {type: ruler, token: [quoted-value-1], max_concurrency: quoted-value-2}"
            "\njobs:\n  - {source: r, site: s, id: {x: quoted-value-3}}\n",
        )
        assert "quoted-value-1" not in text and "quoted-value-3" not in text
        assert "sources.r.token: expected a string" in text
        assert "sources.r.max_concurrency: expected a whole number; got 'quoted-value-2'" in text
        assert "jobs[0].id: expected a string" in text


class TestSecrets:
    """Secrets from the environment or files never appear in a problem."""

    SECRET = "s3cr3t-Value-9f8e7d"

    def test_env_secret_in_wrong_places(self, tmp_path: Path) -> None:
        """A secret used where it does not fit is reported without being shown."""
        env = {"S": self.SECRET}
        text = error_text(
            tmp_path,
            """\
            database: ${S}
            sources:
              r: {type: ruler, token: "${S}", request_timeout: "${S}", rate_limit: "${S}"}
              h:
                type: http
                url: https://h/{id}?k=${S}&x={${S}}
                headers: {X-Key: "${S}"}
                state: "${S}["
                states: {A: "${S}"}
            channels:
              ops: nonsense://${S}@host
            rules:
              - {on: [failed], notify: ["${S}"], sources: ["${S}"]}
            jobs:
              - {source: "${S}", id: "${S}"}
              - {source: r, site: "${S}", id: "${S}", polling: {interval: "${S}"}}
              - {source: r, site: "${S}", id: "${S}"}
            log: {level: "${S}"}
            """,
            env=env,
        )
        assert len(text.splitlines()) >= 10
        assert self.SECRET not in text
        assert "s3cr3t" not in text

    def test_file_secret_in_wrong_places(self, tmp_path: Path) -> None:
        """A secret read from an x_file is never shown, even when it breaks the config."""
        (tmp_path / "url").write_text(f"not-apprise://{self.SECRET}\n")
        (tmp_path / "timeout").write_text(self.SECRET)
        text = error_text(
            tmp_path,
            f"""\
            sources:
              r:
                type: ruler
                token: x
                request_timeout_file: {tmp_path}/timeout
                base_url_file: {tmp_path}/timeout
            channels:
              ops_file: {tmp_path}/url
            """,
        )
        assert "sources.r.request_timeout_file: expected a duration" in text
        assert "channels.ops_file: not an Apprise URL" in text
        assert self.SECRET not in text

    def test_unreadable_secret_file_shows_path_only(self, tmp_path: Path) -> None:
        """A file that cannot be read is named; nothing of its content could leak anyway."""
        secret_file = tmp_path / "secret"
        secret_file.write_bytes(b"\xff\xfe" + self.SECRET.encode())
        text = error_text(tmp_path, f"sources:\n  r: {{type: ruler, token_file: {secret_file}}}\n")
        assert f"cannot read {secret_file}: not UTF-8 text" in text
        assert self.SECRET not in text

    def test_apprise_does_not_log_the_url(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Apprise's own complaint about a bad URL (it quotes the URL) is not logged."""
        caplog.set_level(logging.DEBUG)
        error_text(tmp_path, "channels:\n  ops: ${S}\n", env={"S": f"slack://{self.SECRET}"})
        assert self.SECRET not in caplog.text

    def test_secret_is_not_in_repr(self, tmp_path: Path) -> None:
        """Tokens, headers and channel URLs are masked in reprs and dumps."""
        config = load(
            tmp_path,
            BASE.replace("t0k3n-value", "${S}") + "  other: json://localhost/${S}\n",
            env={"S": self.SECRET},
        )
        assert self.SECRET not in repr(config)
        assert self.SECRET not in config.model_dump_json()


class TestPolicy:
    """Config.policy_for merges defaults < polling < source < overrides."""

    def test_merge_order(self, tmp_path: Path) -> None:
        """Each level overrides only the timings it sets."""
        config = load(
            tmp_path,
            """\
            sources:
              r:
                type: ruler
                token: x
                polling: {interval: 1m, timeout: 2h}
              i: {type: immuta, token: x, base_url: 'https://h'}
            polling: {interval: 10s, backoff: 2, stall_after: 1h}
            """,
        )
        assert config.policy_for("i") == Policy(interval=10, backoff=2, stall_after=3600)
        assert config.policy_for("r") == Policy(
            interval=60, backoff=2, timeout=7200, stall_after=3600
        )
        assert config.policy_for("r", {"timeout": 60.0, "error_after": 5.0}) == Policy(
            interval=60, backoff=2, timeout=60, stall_after=3600, error_after=5
        )

    def test_unknown_override_keys_are_ignored_and_max_interval_kept_above(self) -> None:
        """Stored overrides of another version never break polling; max_interval >= interval."""
        config = Config(path="x", database="sqlite://")
        policy = config.policy_for("none", {"interval": 1200.0, "colour": 1.0})
        assert (policy.interval, policy.max_interval) == (1200, 1200)

    def test_override_values_that_are_not_numbers_are_ignored(self) -> None:
        """An override stored as text, or absurd, leaves the default: the watch is still polled."""
        config = Config(path="x", database="sqlite://")
        stored: dict[str, object] = {
            "interval": "soon",
            "timeout": 1e400,
            "backoff": -1,
            "stall_after": 9,
        }
        policy = config.policy_for("none", stored)
        assert (policy.interval, policy.timeout, policy.backoff) == (30, 86400, 1.5)
        assert policy.stall_after == 9

    def test_job_overrides_checked_against_their_source(self, tmp_path: Path) -> None:
        """A job's interval above its source's max_interval is a problem at the job."""
        found = problems(
            tmp_path,
            BASE.replace("type: immuta", "type: immuta\n    polling: {max_interval: 1m}")
            + "jobs:\n  - {source: immuta, id: a, polling: {interval: 2m}}\n",
        )
        assert found == [
            "13: jobs[0].polling.interval: makes max_interval (1m) shorter than interval (2m)"
        ]


class TestRule:
    """Rule.matches."""

    RULE = Rule(on=(Event.FAILED, Event.STALLED), notify=("ops",))

    def test_event_must_be_listed(self) -> None:
        """Only the listed events match."""
        assert self.RULE.matches(Event.FAILED, "r", ())
        assert not self.RULE.matches(Event.SUCCEEDED, "r", ())

    def test_source_filter(self) -> None:
        """With sources, only watches of those sources match."""
        rule = self.RULE.model_copy(update={"sources": ("r",)})
        assert rule.matches(Event.FAILED, "r", ())
        assert not rule.matches(Event.FAILED, "other", ())

    def test_tags_filter_needs_any_tag(self) -> None:
        """With tags, a watch with any one of them matches; one without none does not."""
        rule = self.RULE.model_copy(update={"tags": ("a", "b")})
        assert rule.matches(Event.STALLED, "r", ["x", "b"])
        assert not rule.matches(Event.STALLED, "r", ["x"])
        assert not rule.matches(Event.STALLED, "r", [])

    def test_single_strings_become_tuples(self) -> None:
        """`on: failed` and `notify: ops` mean lists of one."""
        rule = Rule.model_validate({"on": "failed", "notify": "ops", "tags": "t"})
        assert (rule.on, rule.notify, rule.tags) == ((Event.FAILED,), ("ops",), ("t",))


class TestModels:
    """The models built directly, as other modules and tests do."""

    def test_direct_config_checks_references(self) -> None:
        """A Config built in code is cross-checked too."""
        with pytest.raises(ValidationError, match="unknown channel"):
            Config(path="x", rules=(Rule(on=(Event.FAILED,), notify=("nobody",)),))

    def test_job_key_and_number_ids(self) -> None:
        """Number ids and sites become text; the key follows models.watch_key."""
        job = JobConfig.model_validate({"source": "r", "site": 4, "id": 12})
        assert (job.id, job.site, job.key) == ("12", "4", "r/4/12")
        assert JobConfig(source="i", bulk="b").key is None

    def test_polling_overrides_as_dict(self) -> None:
        """as_dict has the timings that are set, in seconds."""
        overrides = PollingOverrides.model_validate({"interval": "1m", "backoff": 2})
        assert overrides.as_dict() == {"interval": 60.0, "backoff": 2.0}
        assert PollingOverrides().as_dict() == {}

    def test_models_are_frozen(self) -> None:
        """Config models cannot be changed after validation."""
        source = RulerSource(token=SecretStr("x"))
        with pytest.raises(ValidationError):
            source.max_concurrency = 3

    def test_http_states_lowercase_conflict(self) -> None:
        """Two remote states that differ only in case must agree."""
        with pytest.raises(ValidationError, match="differ only in case"):
            HttpSource.model_validate(
                {"url": "https://h/{id}", "state": "s", "states": {"A": "failed", "a": "running"}}
            )

    def test_default_database_url(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """poller.db next to the config file, absolute; relative SQLite paths are relative
        to the config file, wherever the process runs."""
        monkeypatch.chdir(tmp_path)
        assert default_database_url("/etc/poller/config.yaml") == "sqlite:////etc/poller/poller.db"
        assert default_database_url("conf/c.yaml") == f"sqlite:///{tmp_path}/conf/poller.db"
        assert resolve_database_url("sqlite:///state/p.db", "/etc/poller/c.yaml") == (
            "sqlite:////etc/poller/state/p.db"
        )
        assert resolve_database_url("sqlite:///../p.db", "/etc/poller/c.yaml") == (
            "sqlite:////etc/p.db"
        )
        for same in ("sqlite:////abs/p.db", "sqlite://", "postgresql+psycopg://u:p@h/db"):
            assert resolve_database_url(same, "/etc/poller/c.yaml") == same
        built = Config(path="/etc/poller/c.yaml", database="sqlite:///p.db")
        assert built.database == "sqlite:////etc/poller/p.db"
        assert Config(path="/etc/poller/c.yaml").database == "sqlite:////etc/poller/poller.db"


class TestReplicas:
    """The ``replicas`` section."""

    def test_lease_default_and_override(self, tmp_path: Path) -> None:
        """30 s by default; any positive duration."""
        assert load(tmp_path, "").replicas.lease == 30
        assert load(tmp_path, "replicas: {lease: 5s}").replicas.lease == 5

    def test_bad_lease_is_a_problem(self, tmp_path: Path) -> None:
        """A lease that is not a positive duration is refused with its line."""
        found = problems(tmp_path, "replicas:\n  lease: never\n")
        assert len(found) == 1 and found[0].startswith("2: replicas.lease: ")


class TestDelivery:
    """The ``delivery`` section: timeouts, retries, giving up, digests."""

    def test_defaults(self, tmp_path: Path) -> None:
        """30 s per send, 5 s doubling to 15 m, 24 h before giving up, digests on."""
        d = load(tmp_path, "").delivery
        assert (d.timeout, d.retry_initial, d.retry_max, d.give_up_after) == (
            30,
            5,
            900,
            86400,
        )
        assert d.digest.enabled and (d.digest.threshold, d.digest.window) == (10, 60)
        assert (d.digest.wait, d.digest.max_jobs) == (2, 200)

    def test_every_key(self, tmp_path: Path) -> None:
        """Durations as strings or seconds; digests can be switched off."""
        d = load(
            tmp_path,
            """\
            delivery:
              timeout: 500ms
              retry_initial: 1
              retry_max: 2m
              give_up_after: 2d
              digest: {enabled: false, threshold: 3, window: 10s, wait: 0, max_jobs: 7}
            """,
        ).delivery
        assert (d.timeout, d.retry_initial, d.retry_max, d.give_up_after) == (
            0.5,
            1,
            120,
            172800,
        )
        assert not d.digest.enabled
        assert (d.digest.threshold, d.digest.window, d.digest.wait, d.digest.max_jobs) == (
            3,
            10,
            0,
            7,
        )

    def test_problems_have_their_place(self, tmp_path: Path) -> None:
        """Wrong values and unknown keys are reported with their line."""
        assert problems(
            tmp_path,
            """\
            delivery:
              retry_initial: 1m
              retry_max: 10s
              give_up: 1h
              digest:
                threshold: 0
                enabled: perhaps
            """,
        ) == [
            "3: delivery.retry_max: must be at least retry_initial (1m), not 10s",
            "4: delivery.give_up: unknown key; expected one of: timeout, retry_initial, "
            "retry_max, give_up_after, digest (did you mean give_up_after?)",
            "6: delivery.digest.threshold: must be at least 1; got 0",
            "7: delivery.digest.enabled: expected true or false; got 'perhaps'",
        ]


CHANNEL = "channels:\n  ops: json://localhost/hook\n"


class TestTemplatesInConfig:
    """Templates per rule and per channel; their errors are config errors with file:line."""

    def test_rule_and_channel_templates_load(self, tmp_path: Path) -> None:
        """A channel may be a mapping with url and template; rules may have templates."""
        config = load(
            tmp_path,
            """\
            channels:
              ops: json://localhost/hook
              mail:
                url: ${SLACK_URL}
                template: {title: '{{ marker }} {{ name }}'}
            rules:
              - on: [failed]
                notify: [ops, mail]
                template:
                  format: markdown
                  body: |
                    **{{ name }}** {{ verb }}
                    {{ reason }}
              - on: [succeeded]
                notify: [mail]
            """,
        )
        assert config.channels["mail"].get_secret_value() == ENV["SLACK_URL"]
        assert config.channel_templates["mail"].title == "{{ marker }} {{ name }}"
        rule_template = config.rules[0].template
        assert rule_template is not None and rule_template.format == "markdown"
        assert config.template_for("ops", Event.FAILED, "r", []) is rule_template
        assert config.template_for("mail", Event.FAILED, "r", []) is rule_template
        assert (
            config.template_for("mail", Event.SUCCEEDED, "r", [])
            is (config.channel_templates["mail"])
        )
        assert config.template_for("ops", Event.SUCCEEDED, "r", []) is None
        _title, body = rule_template.compiled().render(
            Event.FAILED, {"key": "r/s/j", "details": {"failure_reason": "x"}}
        )
        assert body == "**r/s/j** failed\nx"

    def test_error_in_a_literal_block_names_the_file_line(self, tmp_path: Path) -> None:
        """The line of the mistake inside a | block is the line in the file."""
        found = problems(
            tmp_path,
            CHANNEL
            + textwrap.dedent(
                """\
                rules:
                  - on: [failed]
                    notify: [ops]
                    template:
                      body: |
                        {{ name }} failed
                        {% if reason %}
                        {{ reason }
                """
            ),
        )
        assert found == [
            "10: rules[0].template.body: body template: unexpected '}'",
        ]

    def test_unknown_variable_in_a_one_line_template(self, tmp_path: Path) -> None:
        """An unknown variable is reported at the template's line, with the known ones."""
        (found,) = problems(
            tmp_path,
            CHANNEL
            + "rules:\n  - on: [failed]\n    notify: [ops]\n"
            + "    template: {title: '{{ nmae }} failed'}\n",
        )
        assert found.startswith(
            "6: rules[0].template.title: title template: unknown variable nmae; "
            "expected one of: event, marker"
        )

    def test_quoted_multiline_template_says_the_template_line(self, tmp_path: Path) -> None:
        """Where lines do not map onto the file, the message says the template's own line."""
        (found,) = problems(
            tmp_path,
            CHANNEL
            + "rules:\n  - on: [failed]\n    notify: [ops]\n"
            + '    template: {body: "ok\\n{{ progress + 1 }}"}\n',
        )
        assert found.startswith("6: rules[0].template.body: body template fails on a sample")
        assert found.endswith("(line 2 of the template)")

    def test_template_from_a_file_names_that_file(self, tmp_path: Path) -> None:
        """body_file: the problem names the template file and its line."""
        template = tmp_path / "failed.j2"
        template.write_text("{{ name }}\n\n{{ name | nosuchfilter }}\n")
        found = problems(
            tmp_path,
            f"""\
            channels:
              ops:
                url: json://localhost/hook
                template:
                  body_file: {template}
            """,
        )
        assert found == [
            f"5: channels.ops.template.body_file: in {template}:3: body template: "
            "No filter named 'nosuchfilter'."
        ]

    def test_empty_and_sandbox_escapes_are_refused(self, tmp_path: Path) -> None:
        """A template needs a title or a body; attribute games fail at load time."""
        found = problems(
            tmp_path,
            CHANNEL
            + "rules:\n"
            + "  - {on: [failed], notify: [ops], template: {}}\n"
            + "  - on: [failed]\n"
            + "    notify: [ops]\n"
            + '    template: {title: "{{ name.__class__.__mro__ }}"}\n',
        )
        assert found[0] == "4: rules[0].template: give a title, a body or both"
        assert found[1].startswith("7: rules[1].template.title: title template fails")
        assert "SecurityError" in found[1]

    def test_channel_mapping_problems(self, tmp_path: Path) -> None:
        """A mapping channel needs a url; its url is checked like any channel's."""
        found = problems(
            tmp_path,
            """\
            channels:
              a: {template: {title: x}}
              b: {url: 'nonsense://x', colour: red}
            """,
        )
        assert found == [
            "2: channels.a.url: required",
            "3: channels.b.url: not an Apprise URL Apprise understands "
            "(see https://github.com/caronc/apprise/wiki)",
            "3: channels.b.colour: unknown key; expected one of: url, template",
        ]

    def test_stall_and_error_overrides_per_source_and_job(self, tmp_path: Path) -> None:
        """stall_after and error_after follow defaults < source < job."""
        config = load(
            tmp_path,
            """\
            sources:
              fast: {type: ruler, token: x, polling: {stall_after: 5m, error_after: 1m}}
              slow: {type: ruler, token: x}
            polling: {stall_after: 1h, error_after: 10m}
            jobs:
              - {source: slow, site: s, id: a, polling: {stall_after: 30s}}
            """,
        )
        assert (config.policy_for("slow").stall_after, config.policy_for("slow").error_after) == (
            3600,
            600,
        )
        assert (config.policy_for("fast").stall_after, config.policy_for("fast").error_after) == (
            300,
            60,
        )
        job = config.policy_for("slow", config.jobs[0].polling.as_dict())
        assert (job.stall_after, job.error_after) == (30, 600)
