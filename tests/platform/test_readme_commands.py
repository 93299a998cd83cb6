"""Every `manage.py` command the README shows works as written.

Concrete examples (no placeholders) run, in the README's order, against a fresh
database on the test server (the session's tenants are not touched). Synopses
(`on|off`, `[--tenant S]`, `KEY`) are checked against the command's own
`--help`: every option they name exists, and so does every choice they list.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
EXAMPLE = re.compile(r"`manage\.py ([^`]+)`")
# A synopsis has placeholders: alternatives, optional parts, upper-case values, "...".
PLACEHOLDER = re.compile(r"[|\[\]]|\.\.\.|\b[A-Z][A-Z_-]*\b")


def readme_examples() -> list[str]:
    """Every `manage.py ...` in the README, in order, without duplicates."""
    found: list[str] = []
    for example in EXAMPLE.findall(README.read_text()):
        example = " ".join(example.split())
        if example not in found:
            found.append(example)
    return found


def concrete(example: str) -> bool:
    return not PLACEHOLDER.search(example)


def runnable(example: str) -> str | None:
    """The example as a command line to run: as written, or with its optional
    parts included when they are its only placeholders (`[--tier premium]`)."""
    line = example.replace("[", "").replace("]", "")
    return None if PLACEHOLDER.search(line) else line


def test_the_readme_shows_commands_of_both_kinds() -> None:
    examples = readme_examples()
    assert any(concrete(e) for e in examples)
    assert any(not concrete(e) for e in examples)
    assert any(e.startswith("create_tenant ") for e in examples if concrete(e))


def _manage(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def fresh_database() -> Iterator[dict[str, str]]:
    """A database of its own on the test server, with the shared schema migrated:
    the environment for `manage.py` to use it."""
    url = os.environ["DATABASE_URL"]
    parts = urlsplit(url)
    name = "readme_commands"
    admin = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "aiplatform.settings.test",
        "DATABASE_URL": urlunsplit(parts._replace(path=f"/{name}")),
        # Its own Redis database: nothing a command writes reaches the suite's.
        "REDIS_URL": re.sub(r"/\d+$", "/9", os.environ["REDIS_URL"]),
    }
    migrated = _manage(["migrate_schemas", "--shared", "--verbosity", "0"], env)
    assert migrated.returncode == 0, migrated.stderr
    try:
        yield env
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_every_concrete_readme_command_runs_as_written(fresh_database: dict[str, str]) -> None:
    lines = [line for line in map(runnable, readme_examples()) if line is not None]
    assert any(line.startswith("create_api_key ") for line in lines)
    for example in lines:
        result = _manage(shlex.split(example), fresh_database)
        assert result.returncode == 0, f"manage.py {example}\n{result.stdout}\n{result.stderr}"


def _options_and_choices(help_text: str) -> tuple[set[str], set[str]]:
    options = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", help_text))
    choices: set[str] = set()
    for group in re.findall(r"\{([^}]+)\}", help_text):
        choices.update(group.split(","))
    return options, choices


@pytest.mark.parametrize("example", [e for e in readme_examples() if not concrete(e)])
def test_every_readme_synopsis_matches_the_command(example: str) -> None:
    words = shlex.split(example)
    command = words[0]
    result = _manage([command, "--help"], {**os.environ, "DJANGO_SETTINGS_MODULE": "aiplatform.settings.test"})
    assert result.returncode == 0, result.stderr
    options, choices = _options_and_choices(result.stdout)
    for word in words[1:]:
        word = word.strip("[]")
        name, _, value = word.partition("=")
        if name.startswith("--"):
            assert name in options, f"{command} has no option {name} (README: {example})"
        # `on|off`, `day|month`: alternatives the command must accept.
        for alternative in (value or word).split("|") if "|" in (value or word) else ():
            assert alternative in choices, f"{command} does not accept {alternative!r} (README: {example})"
