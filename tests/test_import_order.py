"""Every module of poller can be imported first, alone: the import graph has no cycle that
only some import orders trip over (a source type's model importing the config loader, which
imports the registered source types, was one).

Each module is imported in a fresh process that holds no poller module yet. The process is a
fork of one interpreter that has loaded the libraries poller's files import but none of
poller, so that a check of some sixty modules costs seconds, not a minute of interpreter
starts and library imports.
"""

from __future__ import annotations

import ast
import os
import pkgutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import poller

#: Modules that do something when imported, and are not meant to be imported but run:
#: ``python -m poller`` runs the CLI.
RUN_NOT_IMPORTED = frozenset({"poller.__main__"})

#: Imports the libraries named in argv and the submodules of theirs that poller loads, then
#: every module named on stdin first, each in a fork that holds no poller module, one per core
#: at a time; prints one line per module that fails, with the last line of its error.
_CHECKER = textwrap.dedent(
    """
    import importlib, os, sys, traceback

    def preload(libraries):
        for library in libraries:
            try:
                importlib.import_module(library)
            except BaseException:
                pass  # optional, or loaded only by its parent: a module that needs it says so

    def loaded_by_poller(names):
        # the submodules the libraries load lazily, found by a fork that imports all of poller
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read)
            preload(names)
            with os.fdopen(write, "w") as out:
                out.write(" ".join(m for m in sys.modules if m.split(".")[0] != "poller"))
            os._exit(0)
        os.close(write)
        with os.fdopen(read) as found:
            modules = found.read().split()
        os.waitpid(pid, 0)
        return modules

    names = sys.stdin.read().split()
    preload(sys.argv[1:])
    preload(loaded_by_poller(names))
    assert not any(m.split(".")[0] == "poller" for m in sys.modules), "poller preloaded"

    def check(name):
        pid = os.fork()
        if pid == 0:
            try:
                importlib.import_module(name)
            except BaseException:
                last = traceback.format_exc().strip().splitlines()[-1]
                sys.stdout.write(f"{name}: {last}\\n")
                sys.stdout.flush()
                os._exit(1)
            os._exit(0)
        return pid

    running, failed = set(), 0
    while names or running:
        while names and len(running) < (os.cpu_count() or 1):
            running.add(check(names.pop()))
        pid, status = os.wait()
        running.discard(pid)
        failed += status != 0
    sys.exit(1 if failed else 0)
    """
)


def libraries() -> list[str]:
    """The modules outside poller that poller's files import (the standard library's too)."""
    found: set[str] = set()
    for path in Path(poller.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module)
    return sorted(name for name in found if name.split(".")[0] != "poller")


def poller_modules() -> list[str]:
    """Every module of the poller package, by its dotted name."""
    return sorted(
        info.name
        for info in pkgutil.walk_packages(poller.__path__, "poller.")
        if info.name not in RUN_NOT_IMPORTED
    )


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the check forks one process per module")
def test_every_module_imports_first_and_alone() -> None:
    names = poller_modules()
    # the packages the layout is about are walked too
    assert {"poller.settings.fields", "poller.sources.ruler.config"} <= set(names)
    done = subprocess.run(
        [sys.executable, "-c", _CHECKER, *libraries()],
        input="\n".join(names),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_only_the_composition_root_imports_the_listener() -> None:
    """`poller.web` sits above the engine and the store: it reads them, and only `app` (which
    starts it) imports it, so that nothing the daemon needs depends on the listener."""
    root = Path(poller.__file__).parent
    importers = set()
    for path in root.rglob("*.py"):
        module = ".".join(("poller", *path.relative_to(root).with_suffix("").parts))
        if module.startswith("poller.web"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom) and node.level == 0
                else []
            )
            if any(name == "poller.web" or name.startswith("poller.web.") for name in names):
                importers.add(module)
    assert importers == {"poller.app"}, importers
