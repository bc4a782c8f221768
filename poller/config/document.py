"""The config file read into plain data, with the line of every key and item.

`Document` reads the file (regular files only, up to `CONFIG_FILE_LIMIT`), parses its YAML
with YAML 1.2 booleans, replaces ``${VAR}`` references from the environment and reads the
``x_file`` keys (up to `VALUE_FILE_LIMIT`). It remembers what a problem needs: the line of
every place, which values came from the environment or a file (they are never quoted) and
the secrets to mask.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import stat
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from poller.settings.fields import control_character
from poller.settings.paths import KeyPath, Pattern

if TYPE_CHECKING:
    from poller.notify import TemplateProblem

#: The most poller reads of a file a ``x_file`` key names (a secret or a template) and of the
#: config file itself (README "Config reference"); anything larger is a config error.
VALUE_FILE_LIMIT = 64 * 1024
CONFIG_FILE_LIMIT = 1024 * 1024
#: What the first "CREDENTIALS_DIRECTORY is not set" adds: systemd sets it for a service with
#: LoadCredential=, so it is missing whenever a command runs in a shell.
CREDENTIALS_HINT = (
    " (systemd sets it for a service with LoadCredential=; outside systemd, give the command"
    " --credentials-dir DIR, the directory holding those files, e.g. /etc/poller/credentials)"
)


class _Unreadable(Exception):
    """Why a file the config names cannot be used: a reason in words, never its content."""


def _file_kind(mode: int) -> str:
    for test, kind in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return kind
    return "not a regular file"


def _read_small_file(path: str, limit: int) -> bytes:
    """The content of the regular file at `path`, if it holds at most `limit` bytes.

    Raises `_Unreadable` for anything else. The file is opened non-blocking, so that a FIFO
    without a writer cannot hang the caller, and its type is checked on the open descriptor
    before a byte is read, so that a device (``/dev/zero``) or a directory is refused
    instead of read without end. Reading stops one byte past `limit`, whatever size the
    file claims.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise _Unreadable(exc.strerror or type(exc).__name__) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise _Unreadable(f"{_file_kind(mode)}, not a regular file")
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise _Unreadable(f"larger than {_format_size(limit)}")
        return b"".join(chunks)
    except OSError as exc:
        raise _Unreadable(exc.strerror or type(exc).__name__) from None
    finally:
        os.close(fd)


def _format_size(size: int) -> str:
    return f"{size // (1024 * 1024)} MiB" if size % (1024 * 1024) == 0 else f"{size // 1024} KiB"


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans: only true/false are, so ``on`` and ``no`` are text."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regex) for tag, regex in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)

_ENV_REFERENCE = re.compile(r"\$(?:(\$)|\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|(\{))")
#: Far more than any real config; stops alias bombs from expanding without end.
_MAX_NODES = 100_000


def _matches(path: KeyPath, pattern: Pattern) -> bool:
    if len(path) != len(pattern):
        return False
    for part, want in zip(path, pattern, strict=True):
        if want is str or want is int:
            if type(part) is not want:
                return False
        elif part != want:
            return False
    return True


def _is_data(path: KeyPath) -> bool:
    """Mappings whose keys are the user's data, not config keys: ``x_file`` means nothing there."""
    return len(path) >= 3 and path[0] == "sources" and path[2] in ("states", "detail", "body")


class _TooBig(Exception):
    pass


class Document:
    """A YAML file read into plain data, with the line of every key and item."""

    def __init__(
        self, file: str, environ: Mapping[str, str], as_written: Sequence[Pattern] = ()
    ) -> None:
        self.file = file
        self.environ = environ
        #: where a plain scalar YAML reads as a number, a boolean or a date is text as written
        self.as_written = as_written
        self.data: Any = None
        self.lines: dict[KeyPath, int] = {(): 1}
        self.problems: list[tuple[KeyPath, int | None, str]] = []
        #: paths whose value is already reported broken; later problems there are noise
        self.broken: set[KeyPath] = set()
        #: paths whose value came from the environment or a file
        self.tainted: set[KeyPath] = set()
        self.secrets: set[str] = set()
        #: whether a problem has said how to set $CREDENTIALS_DIRECTORY (said once)
        self.credentials_hinted = False
        #: ``x`` paths that were written as ``x_file``
        self.renamed: dict[KeyPath, KeyPath] = {}
        #: the path of the file each ``x_file`` value was read from, by ``x`` path
        self.file_values: dict[KeyPath, str] = {}
        #: where each scalar value starts (line) and its YAML style ("|", '"', None...)
        self.scalars: dict[KeyPath, tuple[int, str | None]] = {}
        self._nodes = 0
        self._active: set[int] = set()
        self._loader: _Loader | None = None
        #: how many problems reading found (the rest come from validation)
        self.read_problems = 0

    def problem(self, path: KeyPath, message: str, line: int | None = None) -> None:
        """Records a problem at `path`, on `line` or else the line of `path`."""
        self.problems.append((path, line if line is not None else self.line_of(path), message))

    def template_place(self, path: KeyPath, problem: TemplateProblem) -> tuple[int | None, str]:
        """The config line and message of a problem in the template at `path`.

        A template in a literal block (``|``) maps line for line onto the file; one read from
        an ``x_file`` is reported with that file's own line; otherwise the line of the value is
        given and the message says which line of the template it is.
        """
        inner = problem.line
        if path in self.file_values:
            where = self.file_values[path] + (f":{inner}" if inner else "")
            return self.line_of(path), f"in {where}: {problem.message}"
        start, style = self.scalars.get(path, (None, None))
        if start is None:
            return self.line_of(path), problem.message
        if inner is None:
            return start, problem.message
        if style == "|":
            return start + inner, problem.message
        if inner == 1:
            return start, problem.message
        return start, f"{problem.message} (line {inner} of the template)"

    def line_of(self, path: KeyPath) -> int | None:
        """The line of `path`, or of the nearest place above it that has one."""
        while path not in self.lines and path:
            path = path[:-1]
        return self.lines.get(path)

    def read(self) -> bool:
        """Parses the file; False if nothing more can be checked."""
        try:
            raw = _read_small_file(self.file, CONFIG_FILE_LIMIT)
        except _Unreadable as exc:
            self.problems.append(((), None, f"cannot read the config file: {exc}"))
            return False
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line = raw[: exc.start].count(b"\n") + 1
            self.problems.append(((), line, "not UTF-8 text"))
            return False
        try:
            loader = _Loader(text)
        except yaml.reader.ReaderError as exc:
            # YAML allows no control character but tab and newlines, not even in quotes
            line = text.count("\n", 0, max(exc.position, 0)) + 1
            code = f"U+{exc.character:04X}" if isinstance(exc.character, int) else "one"
            self.problems.append(
                (
                    (),
                    line,
                    f"invalid YAML: control character {code} is not allowed "
                    '(write it as an escape such as "\\x07" in a double-quoted string)',
                )
            )
            return False
        self._loader = loader
        try:
            node = loader.get_single_node()
            self.data = None if node is None else self._build(node, ())
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            where = mark.line + 1 if mark is not None else None
            what = exc.problem or exc.context or "cannot be parsed"
            if exc.context and exc.problem and exc.problem.startswith("but "):
                what = f"{exc.context}, {exc.problem}"
            self.problems.append(((), where, f"invalid YAML: {what}"))
            return False
        except yaml.YAMLError:
            self.problems.append(((), None, "invalid YAML"))
            return False
        except (_TooBig, RecursionError):
            self.problems.append(((), None, "too deeply nested or too many aliases"))
            return False
        finally:
            loader.dispose()
            self.read_problems = len(self.problems)
        return True

    def _build(self, node: Node, path: KeyPath) -> object:
        self._nodes += 1
        if self._nodes > _MAX_NODES or id(node) in self._active:
            raise _TooBig
        self._active.add(id(node))
        try:
            if isinstance(node, MappingNode):
                return self._mapping(node, path)
            if isinstance(node, SequenceNode):
                items: list[object] = []
                for index, item in enumerate(node.value):
                    self.lines[(*path, index)] = item.start_mark.line + 1
                    items.append(self._build(item, (*path, index)))
                return items
            return self._scalar(node, path)
        finally:
            self._active.discard(id(node))

    def _mapping(self, node: MappingNode, path: KeyPath) -> dict[str, Any]:
        assert self._loader is not None
        own = {id(key) for key, _ in node.value}
        # merge keys (<<: *defaults) are expanded in place; their keys may then be overridden
        self._loader.flatten_mapping(node)
        result: dict[str, Any] = {}
        merged: set[str] = set()
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, ScalarNode):
                self.problem(path, "keys must be plain strings", line)
                continue
            key = str(key_node.value)
            key_path = (*path, key)
            from_merge = id(key_node) not in own
            if key in result:
                if from_merge and key not in merged:
                    continue  # an explicit key wins over a merged one
                if key not in merged:
                    self.problem(
                        key_path, f"duplicate key (first at line {self.lines[key_path]})", line
                    )
                    continue
                del result[key]
            self.lines[key_path] = line
            result[key] = self._build(value_node, key_path)
            if from_merge:
                merged.add(key)
            else:
                merged.discard(key)
        return result if _is_data(path) else self._read_files(result, path)

    def _scalar(self, node: Node, path: KeyPath) -> object:
        assert self._loader is not None
        try:
            value = self._loader.construct_object(node, deep=True)
        except yaml.YAMLError:
            self.problem(
                path, "a value YAML cannot read (unsupported tag?)", node.start_mark.line + 1
            )
            self.broken.add(path)
            return None
        if isinstance(value, str):
            self.scalars[path] = (node.start_mark.line + 1, getattr(node, "style", None))
            return self._substitute(value, path, node.start_mark.line + 1)
        plain = isinstance(node, ScalarNode) and node.style is None
        if (
            plain
            and value is not None
            and (isinstance(value, dt.date) or any(_matches(path, p) for p in self.as_written))
        ):
            return str(node.value)
        return value

    def _substitute(self, text: str, path: KeyPath, line: int) -> str:
        is_file_path = bool(path) and str(path[-1]).endswith("_file")

        def replace(match: re.Match[str]) -> str:
            if match.group(1):
                return "$"
            if match.group(4):
                self.problem(
                    path, "malformed ${...}: use ${VAR} or ${VAR:-default}, $$ for $", line
                )
                self.broken.add(path)
                return match.group(0)
            name, default = match.group(2), match.group(3)
            value = self.environ.get(name)
            # like the shell, :- also replaces a variable that is set but empty
            if value is None or (default is not None and value == ""):
                if default is not None:
                    return default
                said = f"environment variable {name} is not set"
                if name == "CREDENTIALS_DIRECTORY" and not self.credentials_hinted:
                    self.credentials_hinted = True
                    said += CREDENTIALS_HINT
                self.problem(path, said, line)
                self.broken.add(path)
                return ""
            self.tainted.add(path)
            if not is_file_path:
                self.secrets.add(value)
            return value

        return _ENV_REFERENCE.sub(replace, text) if "$" in text else text

    def _read_files(self, mapping: dict[str, Any], path: KeyPath) -> dict[str, Any]:
        if not any(k.endswith("_file") and len(k) > 5 for k in mapping):
            return mapping
        result: dict[str, Any] = {}
        for key, value in mapping.items():
            if not (key.endswith("_file") and len(key) > 5):
                result[key] = value
                continue
            base = key[: -len("_file")]
            file_path, base_path = (*path, key), (*path, base)
            if base in mapping:
                self.problem(file_path, f"give either {base} or {key}, not both")
                continue
            self.lines[base_path] = self.lines[file_path]
            self.renamed[base_path] = file_path
            if isinstance(value, str):
                self.file_values[base_path] = value
            self.tainted.add(base_path)
            if file_path in self.broken:  # its ${VAR} is unset: already reported
                self.broken.add(base_path)
                result[base] = ""
                continue
            if not isinstance(value, str) or not value:
                self.problem(file_path, "expected the path of a file")
                self.broken.add(base_path)
                result[base] = ""
                continue
            content, reason = _value_file(value, template=path[-1:] == ("template",))
            if reason is not None:
                self.problem(file_path, f"cannot read {value}: {reason}")
                self.broken.add(base_path)
            else:
                self.secrets.add(content)
            result[base] = content
        return result


def _value_file(path: str, *, template: bool) -> tuple[str, str | None]:
    """The value an ``x_file`` key names, stripped, and None; or "" and why it cannot be used.

    A template may span lines; any other value (a token, a password, a URL) is one line: a
    trailing newline is dropped, a control character inside is refused rather than sent.
    """
    try:
        content = _read_small_file(path, VALUE_FILE_LIMIT).decode("utf-8").strip()
    except _Unreadable as exc:
        return "", str(exc)
    except UnicodeDecodeError:
        return "", "not UTF-8 text"
    found = None if template else control_character(content)
    if found is None:
        return content, None
    line, code = found
    if code in ("U+000A", "U+000D"):
        return (
            "",
            "holds more than one line; the value must be one line (a trailing newline is fine)",
        )
    return "", f"line {line} holds a control character ({code}); the value must be one line"
