"""What an install needs, shipped inside the package: the starter config, the full example
config and the systemd unit (`poller init`, `poller unit`), and writing them safely.

The example config and the unit live once, at the repo's ``config.example.yaml`` and
``systemd/poller.service``; ``poller/share/`` holds links to them, which the wheel build
follows, so an installed poller prints the very files the repo documents.
"""

from __future__ import annotations

import os
import tempfile
from importlib import resources
from pathlib import Path

from poller.errors import PollerError

#: The files `shipped` reads, by what they are: a minimal config for one source and one
#: channel, the example with every key, and the hardened systemd unit.
STARTER = "starter.yaml"
EXAMPLE = "config.example.yaml"
UNIT = "poller.service"


def shipped(name: str) -> str:
    """The text of one of the files under ``poller/share/`` (`STARTER`, `EXAMPLE`, `UNIT`)."""
    return resources.files("poller").joinpath("share", name).read_text(encoding="utf-8")


def write_new(path: str, text: str, *, force: bool, mode: int = 0o644) -> None:
    """Writes `text` to `path`, creating its directory; refuses an existing file unless
    `force` (then the file is replaced whole, never left half written).

    Raises `PollerError` saying why it cannot: the file exists, the path is a directory, or
    the system refused (permission denied, read-only file system).
    """
    target = Path(path)
    if target.is_dir():
        raise PollerError(f"{path} is a directory; give the path of a file")
    try:
        if not target.parent.is_dir():
            # mkdir would say only "File exists" where a file stands in the way
            for folder in target.parents:
                if folder.exists() and not folder.is_dir():
                    raise PollerError(f"cannot write {path}: {folder} is not a directory")
            target.parent.mkdir(mode=0o755, parents=True)
        if not force:
            try:
                # O_EXCL: refused if the file exists, even if another process made it just now
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            except FileExistsError:
                raise PollerError(f"{path} exists; --force replaces it") from None
            # the mode as said, whatever the umask: the service's user must read the config
            os.fchmod(fd, mode)
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(text)
            return
        fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(text)
            os.chmod(temporary, mode)
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise PollerError(f"cannot write {path}: {exc.strerror or exc}") from None
