"""``barge login``, ``barge logout`` and ``barge config``: the saved profiles (``cli.profiles``).

``login`` reads the key at a prompt (a terminal) or from stdin (a pipe), never only from a
visible argument, and asks the API whether it takes the key before saving it.

Imports: ``cli.client``, ``cli.errors``, ``cli.output``, ``cli.profiles``, ``cli.tables``.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from typing import Any

from cli.client import ApiError, Client
from cli.errors import CliError
from cli.output import emit
from cli.profiles import (
    DEFAULT_API_URL,
    KEY_ENV,
    URL_ENV,
    Config,
    Profile,
    chosen_profile,
    config_path,
    load,
    save,
    shown_key,
)
from cli.tables import Item, table


def read_key(args: argparse.Namespace, url: str) -> str:
    """The key: ``--api-key``, else typed at a prompt that does not echo it (stdin a terminal),
    else the first line of stdin."""
    if args.api_key:
        key = str(args.api_key)
    elif sys.stdin.isatty():
        key = getpass.getpass(f"API key for {url}: ")
    else:
        key = sys.stdin.readline()
    key = key.strip()
    if not key:
        raise CliError(
            "no API key given: type it at the prompt, or pipe it on stdin "
            "(`barge login --api-url URL < key.txt`)"
        )
    return key


def cmd_login(args: argparse.Namespace) -> int:
    config = load()
    name, _ = chosen_profile(args.profile, config)
    saved = config.profiles.get(name) or Profile()
    url = (args.api_url or os.environ.get(URL_ENV) or saved.api_url or DEFAULT_API_URL).rstrip("/")
    key = read_key(args, url)
    if not args.no_verify:
        try:
            Client(url, key).jobs(limit=1)  # any call that needs a valid key
        except ApiError:
            print(f"barge login: profile {name} not saved", file=sys.stderr)
            raise
    config.profiles[name] = Profile(url, key)
    if config.default_profile is None or config.default_profile not in config.profiles:
        config.default_profile = name
    path = save(config)
    print(f"saved profile {name} ({url}, key {shown_key(key)}) in {path}", file=sys.stderr)
    if os.environ.get(KEY_ENV) or os.environ.get(URL_ENV):
        print(
            f"note: {KEY_ENV} / {URL_ENV} are set in this shell and win over any profile",
            file=sys.stderr,
        )
    return 0


def cmd_logout(args: argparse.Namespace) -> int:
    config = load()
    name, _ = chosen_profile(args.profile, config)
    _require(config, name)
    del config.profiles[name]
    if config.default_profile == name:
        config.default_profile = None
    path = save(config)
    print(f"removed profile {name} from {path}", file=sys.stderr)
    return 0


def _require(config: Config, name: str) -> None:
    if name not in config.profiles:
        known = ", ".join(sorted(config.profiles)) or "none yet"
        raise CliError(f"no profile {name!r} in {config_path()} (profiles: {known})")


def _profiles_shown(config: Config, wide: bool) -> list[Item]:
    rows = [
        [
            name,
            p.api_url or "-",
            shown_key(p.api_key),
            "*" if name == config.default_profile else "",
        ]
        for name, p in sorted(config.profiles.items())
    ]
    return [f"profiles in {config_path()}", table(["PROFILE", "API URL", "KEY", "DEFAULT"], rows)]


def cmd_config_list(args: argparse.Namespace) -> int:
    config = load()
    data: dict[str, Any] = {
        "path": str(config_path()),
        "default_profile": config.default_profile,
        "profiles": {
            name: {"api_url": p.api_url, "api_key": shown_key(p.api_key)}
            for name, p in sorted(config.profiles.items())
        },
    }
    emit(args, data, sorted(config.profiles), lambda wide: _profiles_shown(config, wide))
    return 0


def cmd_config_use(args: argparse.Namespace) -> int:
    config = load()
    _require(config, args.name)
    config.default_profile = args.name
    path = save(config)
    print(f"default profile: {args.name} (in {path})", file=sys.stderr)
    return 0
