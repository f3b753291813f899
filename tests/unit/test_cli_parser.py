"""The ``barge`` parser's help, walked command by command: every option and argument says what
it is for, allowed values are listed, every command's help ends with examples that parse, and
the top-level help names the API's variables, the exit codes and no reStructuredText."""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys

import pytest

from cli.errors import EXIT_CODES
from cli.main import EXAMPLES, arguments, build_parser, walk
from tests.services import ROOT

PARSER = build_parser()
COMMANDS = [(path, p) for path, p, _ in walk(PARSER) if path]
RST = re.compile(r"``|:[a-z]+:`")  # ``literal`` and :role:`text`


def test_the_walk_sees_every_command() -> None:
    paths = {path for path, _ in COMMANDS}
    assert {"list", "keys create", "tenants show", "login", "config use", "results"} <= paths
    assert {"errors", "models register", "drops add", "worker", "db upgrade"} <= paths
    assert set(EXAMPLES) <= paths, set(EXAMPLES) - paths  # no example of a command gone


@pytest.mark.parametrize(("path", "parser"), COMMANDS, ids=[c[0] for c in COMMANDS])
def test_every_option_has_help_and_lists_its_values(
    path: str, parser: argparse.ArgumentParser
) -> None:
    text = parser.format_help()
    for action in arguments(parser):
        name = "/".join(action.option_strings) or action.dest
        if action.nargs == argparse.PARSER:  # the subcommands: each listed with its own help
            assert all(a.help for a in action._get_subactions()), f"barge {path}"
            continue
        assert action.help and action.help != argparse.SUPPRESS, f"barge {path}: {name}"
        for choice in action.choices or ():
            assert str(choice) in text, f"barge {path}: {name} does not list {choice}"
    for action in arguments(parser):
        if action.nargs == argparse.PARSER:
            assert all(re.search(rf"^    {c}\b", text, re.M) for c in action.choices or ()), text
    assert not RST.search(text), f"barge {path}: {RST.search(text)}"


def _example_argv(example: str) -> list[str]:
    """The barge arguments of one example line: its barge command alone (not what it pipes to
    or from), with no comment, redirection or environment assignment."""
    command = next(c for c in re.split(r"\s(?:\||&&)\s", example) if "barge " in c)
    words = shlex.split(re.split(r"\s(?:#|<|>)\s?", command)[0])
    while words and re.fullmatch(r"[A-Z_]+=.*", words[0]):
        words.pop(0)
    assert words and words[0] == "barge", example
    return words[1:]


@pytest.mark.parametrize(("path", "parser"), COMMANDS, ids=[c[0] for c in COMMANDS])
def test_every_command_has_examples_that_parse(path: str, parser: argparse.ArgumentParser) -> None:
    text = parser.format_help()
    assert "\nexamples:\n  " in text, f"barge {path} --help has no example"
    assert parser.description, f"barge {path} has no description"
    for example in EXAMPLES[path]:
        argv = _example_argv(example)
        assert " ".join(argv).startswith(path), (path, example)
        assert example in text, (path, example)
        build_parser().parse_args(argv)  # SystemExit (status 2) if the example does not parse


def test_the_top_level_help_names_the_variables_and_exit_codes() -> None:
    """``barge --help`` as a user runs it: a real process."""
    shown = subprocess.run(
        [sys.executable, "-m", "cli", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert shown == PARSER.format_help()
    for name in ("BARGE_API_URL", "BARGE_API_KEY", "BARGE_PROFILE", "XDG_CONFIG_HOME"):
        assert name in shown, name
    assert not RST.search(shown), RST.search(shown)
    for code, meaning in EXIT_CODES:
        assert re.search(rf"^  {code}\s+{re.escape(meaning)}$", shown, re.M), (code, shown)
    assert "\nexamples:\n  barge " in shown


def test_a_usage_error_exits_2_with_the_allowed_values() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cli", "list", "--status", "done"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done
    assert "invalid choice: 'done'" in done.stderr and "succeeded" in done.stderr
    assert "Traceback" not in done.stderr
