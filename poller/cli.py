"""The `poller` command line (the only module that prints).

Exit codes: 0 ok; 1 runtime failure; 2 bad config or usage, with the reason on stderr;
`wait` adds 3 for a job that timed out and 4 for one that could not be watched.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from poller.config import Config, format_duration, load_config
from poller.config.adding import Refused, check_labels, check_removal, watch_spec
from poller.errors import ConfigError, PollerError
from poller.models import JsonValue, Watch, WatchSpec
from poller.store.repo import (
    CONDITIONS,
    ChannelBacklog,
    Store,
    WatchFilter,
    safe_url,
)
from poller.store.shapes import ago as _ago
from poller.store.shapes import iso as _iso
from poller.store.shapes import state_label as _state_label
from poller.store.shapes import undelivered_json, watch_json
from poller.terminal import plain, printable

if TYPE_CHECKING:
    from poller.history import Line as HistoryLine

app = typer.Typer(
    # `poller --install-completion` / `--show-completion` (bash, zsh, fish, PowerShell)
    add_completion=True,
    no_args_is_help=True,
    help="Watch long-running batch jobs on remote APIs and notify through Apprise.",
    pretty_exceptions_enable=False,
    # Click's plain help: rich markup read "[default: ...]" in a help text as a tag and ate it
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

ConfigOption = Annotated[
    str | None,
    typer.Option(
        "-c",
        "--config",
        metavar="PATH",
        help="Config file [default: $POLLER_CONFIG, else /etc/poller/config.yaml].",
        show_default=False,
    ),
]
CredentialsOption = Annotated[
    str | None,
    typer.Option(
        "--credentials-dir",
        metavar="DIR",
        help="The directory ${CREDENTIALS_DIRECTORY} names in the config, for a config that "
        "reads systemd credentials, run outside systemd (e.g. /etc/poller/credentials) "
        "[default: $CREDENTIALS_DIRECTORY, which systemd sets for LoadCredential=].",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document.")]
SourceArgument = Annotated[
    str, typer.Argument(metavar="SOURCE", help="A source name from the config.")
]
IdArgument = Annotated[str, typer.Argument(metavar="ID", help="The remote job id.")]
SiteOption = Annotated[
    str | None,
    typer.Option(
        "--site",
        metavar="SITE",
        help="Site id (ruler sources; for http sources, the {site} of the url, optional).",
    ),
]

DEFAULT_CONFIG = "/etc/poller/config.yaml"
#: The width of tables off a terminal without $COLUMNS: wide enough not to fold a row.
PIPE_WIDTH = 200
#: Undelivered notifications `status` lists (newest first); the counts cover them all.
STATUS_LIST_LIMIT = 20


def _console() -> Console:
    # Off a terminal, a fixed wide width keeps tables unwrapped in pipes and logs, unless
    # $COLUMNS says otherwise (as it does for a terminal). Data is printed as `plain` text;
    # no markup or emoji codes either way, should a string slip by.
    wide = sys.stdout.isatty() or os.environ.get("COLUMNS", "").isdigit()
    return Console(highlight=False, markup=False, emoji=False, width=None if wide else PIPE_WIDTH)


def _show_version(value: bool) -> None:
    if value:
        from poller import __version__

        print(f"poller {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            "-V",
            help="Print poller's version and exit.",
            callback=_show_version,
            is_eager=True,
        ),
    ] = False,
) -> None:
    """Watch long-running batch jobs on remote APIs and notify through Apprise."""


def _fail(message: str, code: int) -> NoReturn:
    print(f"poller: {printable(message)}", file=sys.stderr)
    raise typer.Exit(code)


def _config(path: str | None, credentials: str | None = None) -> Config:
    if credentials is not None:
        if not os.path.isdir(credentials):
            _fail(f"--credentials-dir: {credentials} is not a directory", 2)
        # what systemd would set: the config's ${CREDENTIALS_DIRECTORY}, now and at reloads
        os.environ["CREDENTIALS_DIRECTORY"] = os.path.abspath(credentials)
    path = path or os.environ.get("POLLER_CONFIG") or DEFAULT_CONFIG
    try:
        return load_config(path)
    except ConfigError as exc:
        noun = "problem" if len(exc.problems) == 1 else "problems"
        print(f"poller: the config has {len(exc.problems)} {noun}:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {printable(problem)}", file=sys.stderr)
        raise typer.Exit(2) from None


def _store(config: Config) -> Store:
    from poller.app import open_store

    try:
        return open_store(config)
    except PollerError as exc:
        _fail(str(exc), 1)


@app.command()
def run(config: ConfigOption = None, credentials: CredentialsOption = None) -> None:
    """Run the daemon in the foreground (what systemd starts)."""
    from poller.app import Daemon, runner
    from poller.logs import configure, get_logger

    cfg = _config(config, credentials)
    configure(os.environ.get("POLLER_LOG_LEVEL") or cfg.log.level, cfg.log.format)
    try:
        with runner() as loop:
            code = loop.run(Daemon(cfg).run())
    except PollerError as exc:
        get_logger().error("cannot start", error=str(exc))
        raise typer.Exit(1) from None
    raise typer.Exit(code)


@app.command(short_help="Validate the config and say what it would watch.")
def check(config: ConfigOption = None, credentials: CredentialsOption = None) -> None:
    """Validate the config and say what it would watch; exit 2 on any problem.

    A channel no rule uses and a timeout shorter than the interval are warned about on
    stderr, without failing.
    """
    from poller.app import config_watch_specs
    from poller.notify import Notifier

    cfg = _config(config, credentials)
    console = _console()

    def say(line: str) -> None:
        console.print(plain(line))

    say(f"config {cfg.path} is valid")
    say(f"database: {safe_url(cfg.database)}")
    for name, source in cfg.sources.items():
        # a long-polling source ignores interval for ends (README "Immuta long-poll")
        continuous = ", a statuses request always outstanding (long_poll)"
        say(f"source {name}: {source.type}" + (continuous if source.continuous else ""))
    notifier = Notifier({n: u.get_secret_value() for n, u in cfg.channels.items()})
    for name in notifier.names:
        note = "  (own template)" if name in cfg.channel_templates else ""
        say(f"channel {name}: {', '.join(notifier.describe(name, defaults=False))}{note}")
    for i, rule in enumerate(cfg.rules):
        scope = []
        if rule.sources:
            scope.append("sources " + ", ".join(rule.sources))
        if rule.tags:
            scope.append("tags " + ", ".join(rule.tags))
        if rule.template is not None:
            scope.append("own template")
        say(
            f"rule {i}: {', '.join(e.value for e in rule.on)} -> {', '.join(rule.notify)}"
            + (f" ({'; '.join(scope)})" if scope else "")
        )
    for report in cfg.reports:
        nxt = report.trigger().get_next_fire_time(None, datetime.now(UTC))
        say(
            f"report {report.name}: {report.cron} ({report.timezone}) -> "
            f"{', '.join(report.notify)}; window {format_duration(report.window)}"
            + (f"; next {nxt:%Y-%m-%d %H:%M:%S %Z}" if nxt is not None else "")
        )
    d = cfg.delivery
    say(
        f"delivery: timeout {format_duration(d.timeout)}, retries every "
        f"{format_duration(d.retry_initial)} doubling to {format_duration(d.retry_max)}, "
        f"given up after {format_duration(d.give_up_after)}"
    )
    if d.digest.enabled:
        say(
            f"digests: more than {d.digest.threshold} events of one severity for a channel within "
            f"{format_duration(d.digest.window)} go out as one message "
            f"(events wait {format_duration(d.digest.wait)} for others)"
        )
    else:
        say("digests: off")
    specs = config_watch_specs(cfg)
    bulks = [job for job in cfg.jobs if job.bulk is not None]
    searches = [job for job in cfg.jobs if job.search is not None]
    counts = [_counted(len(specs), "job", "jobs")]
    counts += [_counted(len(bulks), "bulk", "bulks")] if bulks else []
    counts += [_counted(len(searches), "search", "searches")] if searches else []
    said = counts[0] if len(counts) == 1 else f"{', '.join(counts[:-1])} and {counts[-1]}"
    if specs or bulks or searches:
        say(f"would watch {said}:")
    else:  # the starter config's case: nothing listed yet is not a mistake
        say("would watch no jobs yet (list them under jobs:, or `poller add` each as it starts)")
    for spec in specs:
        say(f"  {spec.key}" + (f"  {spec.name}" if spec.name else ""))
    # a first listing records the jobs that had already ended; said only when it notifies
    existing = {False: "", True: "; its first listing notifies jobs already ended"}
    for job in bulks:
        say(f"  every job of bulk {job.bulk} on {job.source}{existing[job.notify_existing]}")
    for job in searches:
        assert job.search is not None
        filters = "; ".join(
            f"{name} {', '.join(value) if isinstance(value, tuple | list) else value}"
            for name, value in job.search.model_dump(exclude_none=True).items()
        )
        say(
            f"  jobs found by a search on {job.source}"
            + (f" ({filters})" if filters else "")
            + existing[job.notify_existing]
        )
    for warning in _check_warnings(cfg):
        print(f"poller: warning: {printable(warning)}", file=sys.stderr)


@app.command(short_help="Write a starter config (or the full example) to begin with.")
def init(
    path: Annotated[
        str | None,
        typer.Argument(
            metavar="PATH",
            help="Where to write it; - prints it [default: $POLLER_CONFIG, else "
            "/etc/poller/config.yaml].",
            show_default=False,
        ),
    ] = None,
    example: Annotated[
        bool,
        typer.Option("--example", help="The full example (every key, explained) instead."),
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing file.")] = False,
) -> None:
    """Write a config to begin with: one ruler source and one channel whose secrets are read
    from credential files, and one rule, each line commented. An existing file is refused
    unless --force is given; `poller check` says what is left to fill in.
    """
    from poller.install import EXAMPLE, STARTER, shipped

    text = shipped(EXAMPLE if example else STARTER)
    target = path or os.environ.get("POLLER_CONFIG") or DEFAULT_CONFIG
    if target == "-":
        sys.stdout.write(text)
        return
    _write_shipped(target, text, force)
    what = "the example config (every key)" if example else "a starter config"
    print(printable(f"wrote {what} to {target}"))
    if not example:
        print(
            "next: write the ruler token to /etc/poller/credentials/ruler and the channel's "
            "Apprise URL\nto /etc/poller/credentials/ops-channel (or to a directory DIR that you "
            "give as --credentials-dir DIR),\nthen run:"
        )
        print(printable(f"  poller check -c {target}"))


@app.command(short_help="Print (or write) the systemd unit.")
def unit(
    path: Annotated[
        str,
        typer.Argument(
            metavar="PATH",
            help="Where to write it, e.g. /etc/systemd/system/poller.service [default: -, "
            "print it].",
            show_default=False,
        ),
    ] = "-",
    force: Annotated[bool, typer.Option("--force", help="Replace an existing file.")] = False,
) -> None:
    """Print the hardened systemd unit poller ships (ExecStart=/opt/poller/bin/poller), or
    write it to PATH; an existing file is refused unless --force is given."""
    from poller.install import UNIT, shipped

    text = shipped(UNIT)
    if path == "-":
        sys.stdout.write(text)
        return
    _write_shipped(path, text, force)
    print(printable(f"wrote the systemd unit to {path}; then: systemctl daemon-reload"))


def _write_shipped(path: str, text: str, force: bool) -> None:
    """`poller.install.write_new`, exit 1 with the reason if it cannot."""
    from poller.install import write_new

    try:
        write_new(path, text, force=force)
    except PollerError as exc:
        _fail(str(exc), 1)


def _counted(number: int, one: str, many: str) -> str:
    return f"{number} {one if number == 1 else many}"


def _check_warnings(cfg: Config) -> list[str]:
    """What `check` warns about without failing: a channel that no rule or report sends to, and a
    `timeout` shorter than `interval` (a watch would time out before its second poll).

    A source's or a job's timings are checked where they set `interval` or `timeout`, so one
    mistake in the top-level `polling` is said once.
    """
    used = {channel for rule in cfg.rules for channel in rule.notify}
    used |= {channel for report in cfg.reports for channel in report.notify}
    warnings = [
        f"channel {name} is not used by any rule or report: nothing will be sent to it"
        for name in cfg.channels
        if name not in used
    ]
    places = [("polling", cfg.policy_for(""))]
    for name, source in cfg.sources.items():
        if {"interval", "timeout"} & source.polling.as_dict().keys():
            places.append((f"sources.{name}.polling", cfg.policy_for(name)))
    for index, job in enumerate(cfg.jobs):
        overrides = job.polling.as_dict()
        if {"interval", "timeout"} & overrides.keys():
            places.append((f"jobs[{index}].polling", cfg.policy_for(job.source, overrides)))
    for where, policy in places:
        if policy.timeout < policy.interval:
            warnings.append(
                f"{where}: timeout {format_duration(policy.timeout)} is shorter than interval "
                f"{format_duration(policy.interval)}: a watch times out before its second poll"
            )
    return warnings


#: Watches `status` shows unless `--limit` or `--all` says otherwise: a screenful, problems
#: first, however many watches the database holds.
DEFAULT_STATUS_LIMIT = 50
#: The largest `--limit` (`--all` has none).
MAX_STATUS_LIMIT = 1_000_000


#: The longest value a repeatable text option takes (ids, sites, tags and job types are at
#: most 256 characters wherever they come from): more is a typo or hostile input.
MAX_OPTION_TEXT = 256


def _option_values(
    option: str, values: Sequence[str] | None, known: Sequence[str] = ()
) -> tuple[str, ...]:
    """A repeatable option's values, in order and once each; exit 2 naming the option on the
    first that is empty, longer than `MAX_OPTION_TEXT` or, when `known` is given, not one of
    them (which are then listed)."""
    said = tuple(dict.fromkeys(values or ()))
    for value in said:
        problem = None
        if not value.strip():
            problem = "must not be empty"
        elif len(value) > MAX_OPTION_TEXT:
            problem = f"is {len(value)} characters long; at most {MAX_OPTION_TEXT} are allowed"
        elif known and value not in known:
            problem = (
                f"no {option.lstrip('-')} {value!r} ({option.lstrip('-')}s: {', '.join(known)})"
            )
        if problem is not None:
            _fail(f"{option}: {problem}", 2)
    return said


@app.command(short_help="The watches, problems first, with counts by state.")
def status(
    config: ConfigOption = None,
    credentials: CredentialsOption = None,
    as_json: JsonOption = False,
    active: Annotated[bool, typer.Option("--active", help="Only watches still polled.")] = False,
    state: Annotated[
        list[str] | None,
        typer.Option(
            "--state",
            metavar="STATE",
            help="Only watches in this state (repeatable): a job state, or new, stalled, "
            "unreachable, timed_out, removed.",
        ),
    ] = None,
    source: Annotated[
        list[str] | None,
        typer.Option("--source", metavar="SOURCE", help="Only this source's watches (repeatable)."),
    ] = None,
    tag: Annotated[
        list[str] | None,
        typer.Option("--tag", metavar="TAG", help="Only watches with this tag (repeatable: all)."),
    ] = None,
    limit: Annotated[
        int | None,
        typer.Option(
            "--limit",
            metavar="N",
            min=1,
            max=MAX_STATUS_LIMIT,
            help=f"Show at most N watches [default: {DEFAULT_STATUS_LIMIT}].",
            show_default=False,
        ),
    ] = None,
    show_all: Annotated[
        bool, typer.Option("--all", help="Show every matching watch (no limit).")
    ] = False,
) -> None:
    """Show the watches, problems first (unreachable, stalled, failing, failed), then a summary
    line: how many watches are in each state and how many deliveries are pending.

    At most 50 watches are shown unless --limit or --all says otherwise; the counts cover
    every watch that matches the filters.
    """
    filters = WatchFilter(
        active=active,
        # `timed-out` is the condition timed_out
        states=_option_values(
            "--state", [v.strip().lower().replace("-", "_") for v in state or ()], CONDITIONS
        ),
        sources=_option_values("--source", source),
        tags=_option_values("--tag", tag),
    )
    shown = None if show_all else (limit or DEFAULT_STATUS_LIMIT)
    cfg = _config(config, credentials)
    store = _store(cfg)
    try:
        counts = store.count_watches(filters)
        watches = store.list_watches(filters, limit=shown, order="problems")
        deliveries = store.delivery_counts()
        by_watch = store.undelivered_by_watch([w.key for w in watches])
        backlog = store.undelivered_by_channel()
        if as_json:
            given_up = store.undelivered("given_up", limit=STATUS_LIST_LIMIT)
            pending = store.undelivered("pending", limit=STATUS_LIST_LIMIT)
    finally:
        store.close()
    total = sum(counts.values())
    if as_json:
        print(
            json.dumps(
                {
                    "watches": [watch_json(w, by_watch.get(w.key)) for w in watches],
                    "matched": total,
                    "more": total - len(watches),
                    "counts": {name: counts[name] for name in CONDITIONS if name in counts},
                    "deliveries": deliveries,
                    "channels": [backlog_json(b) for b in backlog],
                    "given_up": [undelivered_json(e) for e in given_up],
                    "undelivered": [undelivered_json(e) for e in pending],
                },
                indent=2,
            )
        )
        return
    # One `now` for every row, so all the "ago" columns are measured from the same instant.
    now = time.time()
    out = _console()
    filtered = filters != WatchFilter()
    if watches:
        out.print(_watches_table(watches, now, out.width))
    elif filtered:
        out.print("no watches match")
    else:
        out.print("no watches yet: add jobs to the config or run `poller add`")
    if total > len(watches) and watches:
        more = total - len(watches)
        out.print(f"{more} more; use --limit N or --all to see them, or filter them")
    out.print(plain(_summary_line(total, counts, deliveries)))
    if backlog:
        out.print("\nundelivered, by channel:")
        out.print(_backlog_table(backlog, now))


def backlog_json(entry: ChannelBacklog) -> dict[str, JsonValue]:
    """The JSON shape of one channel's undelivered messages in `status --json`."""
    return {
        "channel": entry.channel,
        "pending": entry.pending,
        "given_up": entry.given_up,
        "oldest_at": _iso(entry.oldest_at),
        "last_error": entry.last_error,
    }


def _summary_line(total: int, counts: Mapping[str, int], deliveries: Mapping[str, int]) -> str:
    """``12 watches: 1 unreachable, 2 running, 9 succeeded; deliveries: 3 pending, ...``."""
    by_state = ", ".join(
        f"{counts[name]} {name.replace('_', ' ')}" for name in CONDITIONS if counts.get(name)
    )
    line = _counted(total, "watch", "watches") + (f": {by_state}" if by_state else "")
    pending, given_up = deliveries.get("pending", 0), deliveries.get("given_up", 0)
    line += f"; deliveries: {pending} pending"
    return line + (f", {given_up} given up" if given_up else "")


def _watches_table(watches: Sequence[Watch], now: float, width: int) -> Table:
    """The `status` table: one row per watch, every cell `plain` text.

    A key is never broken (it is what a user copies into `history` or `remove`): its column
    is as wide as the longest key shown, and the other columns fold or go, least useful
    first, until the table fits `width`.
    """
    keys = [plain(w.key) for w in watches]
    key_width = max(k.cell_len for k in keys)
    rows: list[dict[str, str | Text]] = [
        {
            "NAME": plain(w.shown_name or ""),
            "STATE": plain(_state_label(w)),
            "PROGRESS": f"{w.progress.progress:.0f}%" if w.progress.progress is not None else "-",
            "LAST POLL": _ago(w.last_poll_at, now),
            # An inactive watch is not polled again: its stored next poll means nothing.
            "NEXT POLL": _ago(w.next_poll_at, now) if w.progress.active else "-",
            "LAST ERROR": plain((w.progress.last_error or "")[:80]),
        }
        for w in watches
    ]
    # (column, the narrowest it folds to): dropped from the end while the keys would not fit
    columns = [
        ("STATE", 11),
        ("LAST ERROR", 12),
        ("PROGRESS", 8),
        ("NAME", 8),
        ("LAST POLL", 9),
        ("NEXT POLL", 9),
    ]
    while columns and key_width + sum(w + 2 for _, w in columns) > width:
        columns.pop()
    narrowest = dict(columns)
    order = ("NAME", "STATE", "PROGRESS", "LAST POLL", "NEXT POLL", "LAST ERROR")
    shown = [c for c in order if c in narrowest]
    table = Table(box=None, pad_edge=False, collapse_padding=True)
    table.add_column("KEY", no_wrap=True, min_width=key_width, overflow="ignore")
    for column in shown:
        table.add_column(column, overflow="fold", min_width=narrowest[column])
    for key, row in zip(keys, rows, strict=True):
        table.add_row(key, *(row[c] for c in shown))
    return table


def _backlog_table(backlog: Sequence[ChannelBacklog], now: float) -> Table:
    """One row per channel with undelivered messages: counts, the oldest, the last error."""
    table = Table(box=None, pad_edge=False)
    for column in ("CHANNEL", "PENDING", "GIVEN UP", "OLDEST", "LAST ERROR"):
        table.add_column(column, overflow="fold")
    for b in backlog:
        table.add_row(
            *(
                plain(value)
                for value in (
                    b.channel,
                    str(b.pending),
                    str(b.given_up),
                    _ago(b.oldest_at, now),
                    (b.last_error or "")[:240],
                )
            )
        )
    return table


@app.command(short_help="One watch's transitions, events and outages, oldest first.")
def history(
    key: Annotated[
        str, typer.Argument(metavar="KEY", help="The watch key, e.g. ruler-prod/4f2a/9c1e-77.")
    ],
    config: ConfigOption = None,
    credentials: CredentialsOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show one watch's history, oldest first: each transition with the job's reason and row
    counts, each event with where it was sent, and each outage on one line (when polling
    started failing, how many polls failed, the error, when it recovered)."""
    from poller.history import condense, line_json

    cfg = _config(config, credentials)
    store = _store(cfg)
    try:
        watch = store.get_watch(key)
        entries = store.history(key) if watch is not None else None
    finally:
        store.close()
    if watch is None or entries is None:
        _fail(f"no watch {key}", 1)
    lines = condense(entries, watch)
    if as_json:
        print(
            json.dumps(
                {
                    "key": key,
                    "watch": watch_json(watch),
                    "history": [line_json(line) for line in lines],
                },
                indent=2,
            )
        )
        return
    out = _console()
    for line in lines:
        out.print(plain(_history_text(line, watch)))
    if not lines:
        out.print("nothing has happened yet")


def _history_text(line: HistoryLine, watch: Watch) -> str:
    """One history line as `history` prints it."""
    text = f"{_iso(line.at)}  {line.kind:<10}  {line.what}"
    if line.kind == "transition" and line.detail.get("remote_status"):
        text += f" (remote {line.detail['remote_status']})"
    if line.kind == "outage":
        recovered = line.detail.get("recovered_at")
        if recovered is not None:
            lasted = format_duration(max(0.0, recovered - line.at), rounded=True)
            text += f"; recovered {_iso(recovered)} after {lasted}"
        elif watch.progress.active and watch.progress.error_since is not None:
            text += "; still failing"
    if line.reason:
        text += f"; reason: {line.reason}"
    if line.rows:
        text += f"; rows: {line.rows}"
    if line.kind != "transition":
        sent = [f"{d['channel']}: {d['status']}" for d in line.deliveries]
        text += f"  [{', '.join(sent)}]" if sent else "  [no channel]"
    return text


#: The longest `--older-than` (a thousand years): more is a typo.
MAX_RETENTION = 1000 * 365 * 86400.0


@app.command(short_help="Delete watches that ended long ago, with their history.")
def prune(
    older_than: Annotated[
        str | None,
        typer.Option(
            "--older-than",
            metavar="DURATION",
            help="Delete what ended longer ago than this, e.g. 30d, 12h (default: the "
            "config's retention).",
            show_default=False,
        ),
    ] = None,
    config: ConfigOption = None,
    credentials: CredentialsOption = None,
) -> None:
    """Delete now what the daemon's daily retention duty would: watches that ended, timed out
    or were removed longer ago than `retention` (or --older-than), with their transitions,
    events and deliveries, and say how many of each went.

    A watch with a delivery still pending is kept, and so is a job the config lists (it
    would be watched again as new). A discovered job goes and leaves a tombstone, so that
    discovery does not add it again while its bulk or search still lists it.
    """
    cfg = _config(config, credentials)
    if older_than is not None:
        keep = _duration_option("--older-than", older_than, MAX_RETENTION)
    elif cfg.retention:
        keep = cfg.retention
    else:
        print("retention is 0 (keep for ever): nothing pruned; --older-than prunes anyway")
        return
    store = _store(cfg)
    try:
        pruned = store.prune(time.time() - keep)
    finally:
        store.close()
    buried = f" ({pruned.tombstones} discovered, tombstoned)" if pruned.tombstones else ""
    print(
        f"pruned what ended more than {format_duration(keep, rounded=True)} ago: "
        f"{_counted(pruned.watches, 'watch', 'watches')}{buried}, "
        f"{_counted(pruned.transitions, 'transition', 'transitions')}, "
        f"{_counted(pruned.events, 'event', 'events')}, "
        f"{_counted(pruned.deliveries, 'delivery', 'deliveries')}"
    )


def _spec(
    cfg: Config, source: str, job_id: str, site: str | None, name: str | None, tags: Sequence[str]
) -> WatchSpec:
    try:
        return watch_spec(cfg, source, job_id, site, name, tags)
    except Refused as exc:
        _fail(str(exc), 2)


def _labels_said(changes: Mapping[str, tuple[Any, Any]]) -> str:
    """What `add` changed, e.g. ``; name changed from 'a' to 'b'``."""
    said = ""
    for label, (old, new) in changes.items():
        if isinstance(new, tuple):
            old, new = ", ".join(old), ", ".join(new)
        said += f"; {label} changed from {old!r} to {new!r}" if old else f"; {label} set to {new!r}"
    return said


@app.command(short_help="Start watching a job (the daemon sees it within seconds).")
def add(
    source: SourceArgument,
    job_id: IdArgument,
    site: SiteOption = None,
    name: Annotated[
        str | None, typer.Option("--name", metavar="NAME", help="A label for humans.")
    ] = None,
    tag: Annotated[
        list[str] | None, typer.Option("--tag", metavar="TAG", help="A tag (repeatable).")
    ] = None,
    again: Annotated[
        bool,
        typer.Option(
            "--again",
            help="Watch an ended job again from its last state (a resumed or re-run job).",
        ),
    ] = False,
    config: ConfigOption = None,
    credentials: CredentialsOption = None,
) -> None:
    """Start watching a job; the running daemon picks it up within seconds.

    A job already watched keeps its name and tags unless `--name` or `--tag` are given; what
    changed is said. A job of the config is labelled in the config, not here. A watch that
    has ended stays ended unless `--again` is given.
    """
    cfg = _config(config, credentials)
    spec = _spec(cfg, source, job_id, site, name, tag or [])
    try:
        check_labels(cfg, spec.key, name, tag or [])
    except Refused as exc:
        _fail(str(exc), 2)
    store = _store(cfg)
    try:
        added = store.add(spec, time.time(), again=again)
    finally:
        store.close()
    watch = added.watch
    if added.created:
        said = f"watching {watch.key}"
    elif added.reactivated:
        said = f"watching {watch.key} again (it had been removed)"
    elif added.rearmed:
        said = f"watching {watch.key} again from its last state ({_state_label(watch)})"
    else:
        said = f"already watching {watch.key}"
        if not watch.progress.active:
            said += " (it has ended; `poller add --again` watches it again)"
    print(printable(said + _labels_said(added.changes)))


@app.command()
def remove(
    key: Annotated[str, typer.Argument(metavar="KEY", help="The watch key.")],
    config: ConfigOption = None,
    credentials: CredentialsOption = None,
) -> None:
    """Stop watching a job (its history stays). A job the config lists is removed there."""
    cfg = _config(config, credentials)
    try:
        check_removal(cfg, key)
    except Refused as exc:
        _fail(str(exc), 2)
    store = _store(cfg)
    try:
        watch = store.remove_watch(key, time.time())
    finally:
        store.close()
    if watch is None:
        _fail(f"no watch {key}", 1)
    print(printable(f"stopped watching {key}"))


#: The longest `--timeout` a wait takes: a year is beyond any job; more is a typo.
MAX_WAIT_TIMEOUT = 365 * 86400.0
#: The longest text a duration option is read from (``1d 23h 59m 59.999s`` is 17).
MAX_DURATION_TEXT = 64


def _duration_option(option: str, value: str, maximum: float) -> float:
    """A positive duration from the command line, at most `maximum`; exit 2 otherwise."""
    from poller.settings.fields import parse_duration

    if len(value) > MAX_DURATION_TEXT:
        _fail(f"{option}: expected a duration like 30s, 5m, 2h, not {len(value)} characters", 2)
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        _fail(f"{option}: {exc}", 2)
    if not 0 < seconds <= maximum:
        _fail(
            f"{option}: must be more than 0s and at most {format_duration(maximum)}, "
            f"not {format_duration(seconds, rounded=True)}",
            2,
        )
    return seconds


@app.command(short_help="Poll one job until it ends; the exit code says how.")
def wait(
    source: SourceArgument,
    job_id: IdArgument,
    site: SiteOption = None,
    timeout: Annotated[
        str | None,
        typer.Option(
            "--timeout",
            metavar="DURATION",
            help="Give up after this long, e.g. 90s, 30m, 2h (default: the config's "
            "polling.timeout).",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json", help="Print the result as one JSON document (progress goes to stderr)."
        ),
    ] = False,
    config: ConfigOption = None,
    credentials: CredentialsOption = None,
) -> None:
    """Poll one job in the foreground until it ends, then summarise how it ended.

    Exit 0 succeeded, 1 ended otherwise, 3 timed out, 4 could not be watched (credentials
    refused, job not found, source unreachable for error_after; the reason on stderr).
    """
    from poller.models import Watch
    from poller.waiting import EXIT_UNWATCHABLE, display_for, summary, wait_for_job

    cfg = _config(config, credentials)
    spec = _spec(cfg, source, job_id, site, None, ())
    limit = None if timeout is None else _duration_option("--timeout", timeout, MAX_WAIT_TIMEOUT)
    # a bar only where a person watches it and stdout holds nothing else; with --json the
    # progress lines go to stderr so that stdout is the JSON document alone
    live = sys.stdout.isatty() and not as_json
    display = display_for(spec.key, _console(), sys.stderr if as_json else sys.stdout, live)
    try:
        result = asyncio.run(wait_for_job(cfg, spec, display, limit))
    except PollerError as exc:
        display.close()
        _fail(str(exc), 1)
    except KeyboardInterrupt:
        display.close()
        _fail(f"interrupted; {spec.key} was not waited for to its end", 130)
    display.close()
    if as_json:
        watch = Watch(
            id=0,
            key=spec.key,
            source=spec.source,
            job_id=spec.job_id,
            site=spec.site,
            name=None,
            tags=(),
            origin="wait",
            overrides={},
            progress=result.progress,
            next_poll_at=None,
            last_poll_at=result.polled_at,
            removed_at=None,
            version=0,
        )
        document = watch_json(watch) | {"exit_code": result.code, "waited": round(result.waited, 3)}
        print(json.dumps(document, indent=2))
    else:
        limit = limit or cfg.policy_for(spec.source).timeout
        for line in summary(spec, result, limit):
            print(printable(line), flush=True)
    if result.code == EXIT_UNWATCHABLE:
        print(printable(f"poller: could not watch {spec.key}: {result.reason}"), file=sys.stderr)
    raise typer.Exit(result.code)


@app.command(short_help="Count a source's jobs by type and state, as its API says.")
def summary(
    source: SourceArgument,
    job_type: Annotated[
        list[str] | None,
        typer.Option("--job-type", metavar="T", help="Only jobs of this type (repeatable)."),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            metavar="D",
            help="Only jobs created since: a duration ago (24h, 7d) or an ISO 8601 date.",
        ),
    ] = None,
    as_json: JsonOption = False,
    config: ConfigOption = None,
    credentials: CredentialsOption = None,
) -> None:
    """Print how many of the source's jobs there are of each type in each state, as the job
    API counts them (Immuta's GET /jobs/summary); exit 1 if the API cannot say."""
    from poller.errors import SourceError
    from poller.redact import scrub, secrets_of
    from poller.sources import Summarizer, build_source

    cfg = _config(config, credentials)
    found = cfg.sources.get(source)
    if found is None:
        known = ", ".join(cfg.sources) or "none"
        _fail(f"no source {source} in the config (sources: {known})", 2)
    types = list(_option_values("--job-type", job_type))
    start = None if since is None else _since_option(since)

    async def ask() -> Any:
        adapter = build_source(found)
        try:
            if not isinstance(adapter, Summarizer):
                return None
            return await adapter.summary(types, start)
        finally:
            await adapter.aclose()

    try:
        answer = asyncio.run(ask())
    except SourceError as exc:
        # an API may echo the token it was sent: never printed
        message = scrub(f"{exc.kind}: {exc.message}", secrets_of(found))
        _fail(f"summary of {source} failed: {message}", 1)
    if answer is None:
        _fail(f"source {source} ({found.type}) cannot count its jobs; immuta sources can", 2)
    rows = [{"job_type": c.job_type, "state": c.state, "count": c.count} for c in answer.counts]
    total = sum(c.count for c in answer.counts)
    if as_json:
        document = {
            "source": source,
            "job_types": types,
            "since": _iso(start),
            "counts": rows,
            "total": total,
            "truncated": answer.truncated,
        }
        print(json.dumps(document, indent=2))
        return
    console = _console()
    table = Table("job type", "state", "jobs", box=None, pad_edge=False)
    for row in rows:
        table.add_row(plain(str(row["job_type"])), plain(str(row["state"])), str(row["count"]))
    window = f" created since {_iso(start)}" if start is not None else ""
    console.print(plain(f"{source}: {total} jobs{window}"))
    if rows:
        console.print(table)
    if answer.truncated:
        console.print("(the API listed more counts than poller reads; the rest are left out)")


def _since_option(value: str) -> float:
    """``--since``: a duration ago (at most 365d) or an ISO 8601 date; exit 2 otherwise."""
    if len(value) > MAX_DURATION_TEXT:
        _fail(f"--since: expected a duration or an ISO 8601 date, not {len(value)} characters", 2)
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        return time.time() - _duration_option("--since", value, MAX_WAIT_TIMEOUT)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


@app.command("notify-test", short_help="Send a test message through one or every channel.")
def notify_test(
    channel: Annotated[
        str | None, typer.Argument(metavar="CHANNEL", help="One channel (default: all).")
    ] = None,
    config: ConfigOption = None,
    credentials: CredentialsOption = None,
) -> None:
    """Send a test message through one or every channel and show what each service answered
    (URLs with their secrets masked); exit 1 if any channel failed."""
    from poller.errors import NotifyError
    from poller.notify import Notifier

    cfg = _config(config, credentials)
    notifier = Notifier({n: u.get_secret_value() for n, u in cfg.channels.items()})
    names = [channel] if channel else list(notifier.names)
    if channel and channel not in notifier.names:
        known = ", ".join(notifier.names) or "none"
        _fail(f"no channel {channel} in the config (channels: {known})", 2)
    if not names:
        _fail("the config has no channels", 2)

    async def send_all() -> int:
        failures = 0
        for name in names:
            fmt = notifier.format_for(name)
            body = (
                f"If you can read this, poller can reach the channel **{name}**."
                if fmt == "markdown"
                else f"If you can read this, poller can reach the channel {name}."
            )
            try:
                answer = await notifier.send(
                    name,
                    "poller test message",
                    body,
                    severity="info",
                    body_format=fmt,
                    timeout=cfg.delivery.timeout,
                )
                print(printable(f"{name}: ok"))
            except NotifyError as exc:
                failures += 1
                answer = exc.answer
                print(printable(f"{name}: FAILED"))
            for part in answer.split("; "):
                print(f"  {printable(part)}")
        return failures

    raise typer.Exit(1 if asyncio.run(send_all()) else 0)


@app.command(short_help="Print a scheduled report, or send it now (--now).")
def report(
    name: Annotated[str, typer.Argument(metavar="NAME", help="A report of the config.")],
    now: Annotated[
        bool, typer.Option("--now", help="Queue it and send it now, as its schedule would.")
    ] = False,
    config: ConfigOption = None,
    credentials: CredentialsOption = None,
) -> None:
    """Print what report NAME would say now; with --now, queue it in the outbox and send it
    to its channels at once (a daemon running meanwhile may send it instead; never twice).
    Exit 1 if a channel did not get it."""
    from poller.app import channel_urls
    from poller.engine.delivery import DeliveryEngine
    from poller.engine.reporting import build_report, queue_report
    from poller.engine.runtime import DbThread, Runtime, Tuning
    from poller.logs import configure, get_logger
    from poller.notify import Notifier, render_report

    cfg = _config(config, credentials)
    found = next((r for r in cfg.reports if r.name == name), None)
    if found is None:
        known = ", ".join(r.name for r in cfg.reports) or "none"
        _fail(f"no report {name} in the config (reports: {known})", 2)
    store = _store(cfg)
    try:
        at = time.time()
        if not now:
            title, body = render_report(build_report(store, found, at, at))
            print(printable(title))
            print(printable(body))
            return
        queue_report(store, found, at, at)
        # what each channel answered is printed below; the engine's log says only trouble
        configure("warning", cfg.log.format)
        db = DbThread(store)
        runtime = Runtime(cfg, {}, Notifier(channel_urls(cfg)), cfg.rules)
        engine = DeliveryEngine(
            db,
            lambda: runtime,
            f"poller-report-{os.getpid()}",
            log=get_logger(),
            tuning=Tuning(lease=cfg.replicas.lease),
        )
        try:
            asyncio.run(engine.deliver_due())
        finally:
            db.close()
        failed = 0
        for channel, status, error in store.report_deliveries(found.name, at):
            failed += status != "sent"
            said = "ok" if status == "sent" else status.replace("_", " ").upper()
            print(printable(f"{channel}: {said}" + (f" ({error})" if error else "")))
    finally:
        store.close()
    raise typer.Exit(1 if failed else 0)


@app.command(short_help="A self-contained demo: simulated API, real daemon.")
def demo(
    notify: Annotated[
        list[str] | None,
        typer.Option("--notify", metavar="URL", help="Also send to this Apprise URL (repeatable)."),
    ] = None,
    speed: Annotated[
        float, typer.Option(metavar="X", help="Time factor from 0.1 to 10; 2 runs twice as fast.")
    ] = 1.0,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show the daemon's log as well.")
    ] = False,
) -> None:
    """Run a self-contained demo: a simulated Ruler API, the real daemon, notifications here."""
    from poller.demo import MAX_SPEED, MIN_SPEED, notify_problems, run_demo

    if not (math.isfinite(speed) and MIN_SPEED <= speed <= MAX_SPEED):
        _fail(f"--speed: must be from {MIN_SPEED:g} to {MAX_SPEED:g}, not {speed:g}", 2)
    urls = list(notify or [])
    problems = notify_problems(urls)
    for problem in problems:
        print(f"poller: {printable(problem)}", file=sys.stderr)
    if problems:
        raise typer.Exit(2)
    raise typer.Exit(run_demo(urls, speed, _console(), verbose=verbose))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    try:
        app(args=list(argv) if argv is not None else None, prog_name="poller")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
