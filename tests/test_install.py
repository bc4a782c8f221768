"""From demo to production: `poller init` and `poller unit`, `--credentials-dir`, the files the
wheel ships (built and installed in a venv of its own), the environment variables the README
lists, and the Dockerfile (parsed: no container tool can build it here)."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import typer
import yaml
from typer.testing import CliRunner

from poller.cli import app

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "config.example.yaml"
UNIT = REPO / "systemd" / "poller.service"


def run(
    *args: str, env: dict[str, str] | None = None, exe: list[str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`poller ARGS` as a user runs it (this checkout's, or the executable `exe`), in an
    `environment` with `env`."""
    command = exe or [sys.executable, "-m", "poller"]
    return subprocess.run(
        [*command, *args],
        capture_output=True,
        text=True,
        env=environment(env, installed=exe is not None),
        timeout=120,
    )


def environment(env: dict[str, str] | None = None, *, installed: bool = False) -> dict[str, str]:
    """This process's environment without poller's and systemd's variables, and for an
    installed poller without PYTHONPATH (which could put a checkout before it), plus `env`."""
    dropped = {"CREDENTIALS_DIRECTORY", *(["PYTHONPATH"] if installed else [])}
    kept = {k: v for k, v in os.environ.items() if not k.startswith("POLLER_") and k not in dropped}
    return kept | (env or {})


def secrets(directory: Path, **files: str) -> Path:
    """A credentials directory holding one file per secret, as LoadCredential= makes it."""
    directory.mkdir(exist_ok=True)
    for name, value in files.items():
        (directory / name.replace("_", "-")).write_text(value)
    return directory


def starter_secrets(directory: Path) -> Path:
    """The two files the starter config reads."""
    return secrets(directory, ruler="the-ruler-token", ops_channel="json://127.0.0.1:9/hook")


class TestInit:
    """`poller init [PATH] [--example] [--force]`."""

    def test_starter_config_is_checked_valid(self, tmp_path: Path) -> None:
        """The starter names one source and one channel, and `check` passes on it once the
        two credential files are there (read through --credentials-dir)."""
        config = tmp_path / "etc" / "config.yaml"
        kept = os.umask(0o077)  # a umask that would keep the file from the service's user
        try:
            made = run("init", str(config))
        finally:
            os.umask(kept)
        assert made.returncode == 0, made.stderr
        assert f"wrote a starter config to {config}" in made.stdout
        assert "poller check -c" in made.stdout
        assert config.stat().st_mode & 0o777 == 0o644
        text = config.read_text()
        assert "token_file" in text and "url_file" in text
        # commented: every key line is explained, and no secret is written in it
        assert sum(line.lstrip().startswith("#") for line in text.splitlines()) >= 10

        checked = run(
            "check", "-c", str(config), "--credentials-dir", str(starter_secrets(tmp_path / "c"))
        )
        assert checked.returncode == 0, checked.stderr
        assert "source ruler-prod: ruler" in checked.stdout
        assert "channel ops: json://127.0.0.1:9/hook" in checked.stdout
        assert checked.stdout.endswith(
            "would watch no jobs yet (list them under jobs:, or `poller add` each as it starts)\n"
        )
        assert "the-ruler-token" not in checked.stdout + checked.stderr

    def test_starter_without_its_files_names_them(self, tmp_path: Path) -> None:
        """Without the credential files, `check` says which files it could not read."""
        config = tmp_path / "config.yaml"
        assert run("init", str(config)).returncode == 0
        empty = secrets(tmp_path / "empty")
        checked = run("check", "-c", str(config), "--credentials-dir", str(empty))
        assert checked.returncode == 2
        assert f"cannot read {empty}/ruler" in checked.stderr
        assert f"cannot read {empty}/ops-channel" in checked.stderr

    def test_refuses_to_overwrite_without_force(self, tmp_path: Path) -> None:
        """An existing file is left alone (exit 1, saying --force); --force replaces it."""
        config = tmp_path / "config.yaml"
        config.write_text("mine: true\n")
        refused = run("init", str(config))
        assert refused.returncode == 1
        assert "exists; --force replaces it" in refused.stderr
        assert config.read_text() == "mine: true\n"
        forced = run("init", str(config), "--force")
        assert forced.returncode == 0, forced.stderr
        assert "ruler-prod" in config.read_text()
        assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]  # no temporary left

    def test_a_directory_or_an_unwritable_place_is_said(self, tmp_path: Path) -> None:
        """A directory as PATH, or a parent that is a file: exit 1 with the reason."""
        said = run("init", str(tmp_path))
        assert said.returncode == 1 and "is a directory" in said.stderr
        (tmp_path / "file").write_text("")
        said = run("init", str(tmp_path / "file" / "config.yaml"))
        assert said.returncode == 1
        assert (
            f"cannot write {tmp_path}/file/config.yaml: {tmp_path}/file is not a directory"
            in said.stderr
        )
        assert "Traceback" not in said.stderr

    def test_default_path_is_poller_config(self, tmp_path: Path) -> None:
        """Without PATH it writes where every command reads: $POLLER_CONFIG."""
        config = tmp_path / "from-env.yaml"
        made = run("init", env={"POLLER_CONFIG": str(config)})
        assert made.returncode == 0, made.stderr
        assert config.is_file()

    def test_example_is_the_repo_file_and_checks_with_what_the_readme_lists(
        self, tmp_path: Path
    ) -> None:
        """`init --example -` prints config.example.yaml byte for byte, and `check` passes
        on it with the environment variables the README lists set."""
        printed = run("init", "--example", "-")
        assert printed.returncode == 0, printed.stderr
        assert printed.stdout == EXAMPLE.read_text()
        listed = readme_environment()
        env = {name: value for name, value in listed.items() if name != "CREDENTIALS_DIRECTORY"}
        credentials = secrets(tmp_path / "c", immuta="immuta-key", mlflow_oauth="mlflow-secret")
        checked = run("check", "-c", str(EXAMPLE), "--credentials-dir", str(credentials), env=env)
        assert checked.returncode == 0, checked.stderr


class TestCredentialsDirectory:
    """A config that reads systemd credentials, checked outside systemd."""

    def test_missing_says_the_fix_once(self, tmp_path: Path) -> None:
        """Without $CREDENTIALS_DIRECTORY the first problem names --credentials-dir; with it
        the same config is valid."""
        env = {
            name: value
            for name, value in readme_environment().items()
            if name != "CREDENTIALS_DIRECTORY"
        }
        missing = run("check", "-c", str(EXAMPLE), env=env)
        assert missing.returncode == 2
        # each place that reads it is a problem; only the first says the fix
        assert missing.stderr.count("CREDENTIALS_DIRECTORY is not set") >= 2
        assert missing.stderr.count("give the command --credentials-dir DIR") == 1
        credentials = secrets(tmp_path / "c", immuta="k", mlflow_oauth="s")
        given = run("check", "-c", str(EXAMPLE), "--credentials-dir", str(credentials), env=env)
        assert given.returncode == 0, given.stderr
        # the environment variable does as well as the option
        by_env = run(
            "check", "-c", str(EXAMPLE), env=env | {"CREDENTIALS_DIRECTORY": str(credentials)}
        )
        assert by_env.returncode == 0, by_env.stderr

    def test_option_wins_and_must_be_a_directory(self, tmp_path: Path) -> None:
        """--credentials-dir overrides the environment; a path that is not a directory is a
        usage error."""
        config = tmp_path / "config.yaml"
        assert run("init", str(config)).returncode == 0
        good = starter_secrets(tmp_path / "good")
        wrong = {"CREDENTIALS_DIRECTORY": str(tmp_path / "nowhere")}
        chosen = run("check", "-c", str(config), "--credentials-dir", str(good), env=wrong)
        assert chosen.returncode == 0, chosen.stderr
        bad = run("check", "-c", str(config), "--credentials-dir", str(tmp_path / "nowhere"))
        assert bad.returncode == 2
        assert f"--credentials-dir: {tmp_path / 'nowhere'} is not a directory" in bad.stderr

    def test_every_command_that_reads_the_config_takes_it(self) -> None:
        """The option is offered wherever -c is, in every command's help (typer's runner)."""
        group = typer.main.get_command(app)
        assert isinstance(group, typer.core.TyperGroup)
        reading = []
        for name in group.commands:
            shown = CliRunner().invoke(app, [name, "-h"]).output
            if "-c, --config" in shown:
                reading.append(name)
                assert "--credentials-dir DIR" in shown, name
            else:
                assert "--credentials-dir" not in shown, name
        assert {"run", "check", "status", "add", "wait", "notify-test"} <= set(reading)


class TestUnit:
    """`poller unit [PATH] [--force]`."""

    def test_prints_and_writes_the_repo_unit(self, tmp_path: Path) -> None:
        """It prints systemd/poller.service as it is; PATH writes it, once without --force."""
        printed = run("unit")
        assert printed.returncode == 0 and printed.stdout == UNIT.read_text()
        target = tmp_path / "poller.service"
        assert run("unit", str(target)).returncode == 0
        assert target.read_text() == UNIT.read_text()
        again = run("unit", str(target))
        assert again.returncode == 1 and "--force" in again.stderr
        assert run("unit", str(target), "--force").returncode == 0

    def test_starter_credentials_match_the_unit(self) -> None:
        """The credential names the starter config reads are the ones the unit's comments
        load, so uncommenting them is all the unit needs."""
        starter = run("init", "-").stdout
        read = set(re.findall(r"\$\{CREDENTIALS_DIRECTORY[^}]*\}/([\w-]+)", starter))
        loaded = set(re.findall(r"^# LoadCredential=([\w-]+):", UNIT.read_text(), re.M))
        assert read == {"ruler", "ops-channel"} and read <= loaded


def readme_environment() -> dict[str, str]:
    """The README's table of the variables config.example.yaml needs, with its example
    values: `| `NAME` | what | `value` |`."""
    text = (REPO / "README.md").read_text()
    section = text.split("<!-- example-environment -->")[1].split("<!-- /example-environment")[0]
    rows = re.findall(r"^\| `([A-Z_]+)` \| [^|]+ \| `([^`]*)` \|$", section, re.M)
    return dict(rows)


def test_readme_lists_every_variable_the_example_needs() -> None:
    """Every ${VAR} without a default in config.example.yaml's values (not its comments) is
    in the README's table, and the table lists nothing else."""
    values = "\n".join(line.split("#")[0] for line in EXAMPLE.read_text().splitlines())
    needed = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", values))
    assert needed and set(readme_environment()) == needed


def readme_block(heading: str) -> str:
    """The first ```sh block of the README's section `heading`."""
    section = (REPO / "README.md").read_text().split(f"\n{heading}\n")[1].split("\n## ")[0]
    found = re.search(r"```sh\n(.*?)```", section, re.S)
    assert found, heading
    return found.group(1)


def test_readme_service_install_runs_as_written(tmp_path: Path) -> None:
    """The README's install steps, run with /etc under a temporary directory and this
    checkout's poller for /opt/poller's (no pip install, no systemctl, no root): the config,
    the credentials, the unit and its drop-in are where the service wants them, each
    LoadCredential= names a file that is there, and `check` passes on what was written."""
    script = "\n".join(
        line
        for line in readme_block("## Running as a service").replace("\\\n", " ").splitlines()
        if "/opt/poller/bin/pip" not in line and "systemctl" not in line
    )
    script = (
        script.replace("sudo ", "")
        .replace("/opt/poller/bin/poller", f"{sys.executable} -m poller")
        .replace("/etc/", f"{tmp_path}/etc/")
    )
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    etc = tmp_path / "etc"
    assert (etc / "systemd/system/poller.service").read_text() == UNIT.read_text()
    drop_in = (etc / "systemd/system/poller.service.d/credentials.conf").read_text()
    loaded = dict(re.findall(r"^LoadCredential=([\w-]+):(\S+)$", drop_in, re.M))
    starter = (etc / "poller/config.yaml").read_text()
    read = set(re.findall(r"\$\{CREDENTIALS_DIRECTORY[^}]*\}/([\w-]+)", starter))
    assert drop_in.startswith("[Service]\n") and set(loaded) == read
    assert all(Path(source).is_file() for source in loaded.values())
    # the service's view: systemd hands the credentials over in $CREDENTIALS_DIRECTORY
    checked = run(
        "check",
        "-c",
        str(etc / "poller/config.yaml"),
        env={"CREDENTIALS_DIRECTORY": str(etc / "poller/credentials")},
    )
    assert checked.returncode == 0, checked.stderr


class TestWheel:
    """The wheel carries the starter, the example and the unit; an installed poller prints
    them without the repo."""

    def test_built_wheel_installed_in_a_venv(self, tmp_path: Path) -> None:
        """`python -m build` (the sdist, then the wheel from the sdist, as a release is
        built: the links under poller/share must survive both), a fresh venv with the wheel
        alone (its dependencies come from this test's environment), then `init` and `unit`
        from there, run outside the repo."""
        built = subprocess.run(
            [sys.executable, "-m", "build", "--outdir", str(tmp_path), str(REPO)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert built.returncode == 0, built.stdout + built.stderr
        (wheel,) = tmp_path.glob("poller-*.whl")
        with zipfile.ZipFile(wheel) as archive:
            names = set(archive.namelist())
            shipped = {
                "poller/share/starter.yaml",
                "poller/share/config.example.yaml",
                "poller/share/poller.service",
            }
            assert shipped <= names
            # the links were followed: the files themselves, not link text
            assert archive.read("poller/share/poller.service") == UNIT.read_bytes()
        venv = tmp_path / "venv"
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
        python = venv / "bin" / "python"
        installed = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "--python",
                str(python),
                "install",
                "-q",
                "--no-deps",
                str(wheel),
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert installed.returncode == 0, installed.stderr
        # the dependencies from this environment, added after the venv's own site-packages
        # (a .pth line adds a path without reading the .pth files there, so this
        # environment's editable poller stays out)
        purelib = subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        Path(purelib, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
        where = subprocess.run(
            [str(python), "-c", "import poller; print(poller.__file__)"],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=environment(installed=True),
            check=True,
        ).stdout
        assert where.startswith(str(venv)), where
        exe = [str(venv / "bin" / "poller")]
        assert run("unit", exe=exe).stdout == UNIT.read_text()
        assert run("init", "--example", "-", exe=exe).stdout == EXAMPLE.read_text()
        config = tmp_path / "config.yaml"
        assert run("init", str(config), exe=exe).returncode == 0
        checked = run(
            "check",
            "-c",
            str(config),
            "--credentials-dir",
            str(starter_secrets(tmp_path / "c")),
            exe=exe,
        )
        assert checked.returncode == 0, checked.stderr


# The Dockerfile: there is no container tool to build it on the machines this project's
# tests run on, so it is parsed here and held to what it must do.

INSTRUCTIONS = {
    "ADD",
    "ARG",
    "CMD",
    "COPY",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "FROM",
    "HEALTHCHECK",
    "LABEL",
    "ONBUILD",
    "RUN",
    "SHELL",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
}


def dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of each instruction, lines joined at a trailing backslash
    and comments left out, as Docker reads it; fails on anything it would refuse."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for number, line in enumerate(path.read_text().splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        pending += (" " if pending else "") + stripped.removesuffix("\\").strip()
        if stripped.endswith("\\"):
            continue
        keyword, _, arguments = pending.partition(" ")
        assert keyword.upper() in INSTRUCTIONS, f"line {number}: unknown instruction {keyword}"
        assert keyword == keyword.upper(), f"line {number}: {keyword} in lower case"
        assert arguments.strip(), f"line {number}: {keyword} without arguments"
        if arguments.lstrip().startswith("["):
            parsed = json.loads(arguments)  # an exec form must be a JSON array of strings
            assert isinstance(parsed, list) and all(isinstance(a, str) for a in parsed)
        instructions.append((keyword, arguments.strip()))
        pending = ""
    assert not pending, "the file ends in a continuation line"
    return instructions


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore keeps `path` out of the build context (the last pattern that
    matches the path or a folder above it decides; ! brings back)."""
    verdict = False
    parts = path.split("/")
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern.removeprefix("!").strip("/")
        for depth in range(1, len(parts) + 1):
            prefix = "/".join(parts[:depth])
            if fnmatch.fnmatchcase(prefix, body) or (
                body.startswith("**/") and fnmatch.fnmatchcase(parts[depth - 1], body[3:])
            ):
                verdict = not negate
                break
    return verdict


class TestDockerfile:
    """The Dockerfile and .dockerignore."""

    def test_parses_and_runs_poller_as_non_root_with_volumes(self) -> None:
        """Known instructions in the last stage: a non-root USER, the config and state
        volumes, `poller run` as the command, and the config where POLLER_CONFIG says."""
        steps = dockerfile(REPO / "Dockerfile")
        stages = [i for i, (keyword, _) in enumerate(steps) if keyword == "FROM"]
        assert steps[0][0] in {"ARG", "FROM"} and len(stages) == 2
        final = steps[stages[-1] :]
        said = {keyword: arguments for keyword, arguments in final}  # the last of each
        user = said["USER"].split(":")[0]
        assert user not in {"root", "0"}
        volumes = json.loads(said["VOLUME"])
        assert {"/etc/poller", "/var/lib/poller"} <= set(volumes)
        assert json.loads(said["ENTRYPOINT"]) + json.loads(said["CMD"]) == ["poller", "run"]
        env = dict(
            item.split("=", 1) for item in shlex.split(" ".join(a for k, a in final if k == "ENV"))
        )
        assert os.path.dirname(env["POLLER_CONFIG"]) in volumes
        # the starter's database lies in the state volume
        starter = yaml.safe_load(run("init", "-").stdout)
        assert starter["database"].removeprefix("sqlite:///").startswith("/var/lib/poller/")
        assert env["CREDENTIALS_DIRECTORY"] == "/run/secrets"

    def test_copies_files_that_exist_and_are_in_the_context(self) -> None:
        """Every COPY source (but --from a stage) is in the repo and not kept out by
        .dockerignore; the links under poller/share point at files copied too."""
        patterns = [
            line.strip()
            for line in (REPO / ".dockerignore").read_text().splitlines()
            if line.strip() and not line.startswith("#")
        ]
        copied: list[str] = []
        for keyword, arguments in dockerfile(REPO / "Dockerfile"):
            if keyword != "COPY" or arguments.startswith("--from"):
                continue
            *sources, _ = arguments.split()
            for source in sources:
                assert (REPO / source).exists(), f"COPY {source}: not in the repo"
                assert not ignored(source.rstrip("/"), patterns), f"{source} is .dockerignored"
                copied.append(source.rstrip("/"))
        for link in (REPO / "poller" / "share").iterdir():
            if link.is_symlink():
                target = (link.parent / os.readlink(link)).resolve().relative_to(REPO)
                assert str(target) in copied, f"{link.name} points at {target}, not copied"
        # the context holds the package, and none of the local clutter
        assert not ignored("poller/cli.py", patterns)
        for clutter in (
            ".venv/bin/python",
            ".git/HEAD",
            "tests/test_cli.py",
            "poller.db",
            "poller/__pycache__/cli.cpython-311.pyc",
        ):
            assert ignored(clutter, patterns), clutter
