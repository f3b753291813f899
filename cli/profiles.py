"""Where the client commands find the API and their key: command-line flags, then environment
variables, then a profile saved by ``barge login``, then the defaults.

- The profiles live in ``$XDG_CONFIG_HOME/barge/config.toml`` (``~/.config/barge/config.toml``
  when ``XDG_CONFIG_HOME`` is unset), written with mode 0600 in a directory of mode 0700, since
  they hold API keys::

      default_profile = "prod"

      [profiles."prod"]
      api_url = "https://barge.example.com"
      api_key = "bk_..."

- The profile used is ``--profile NAME``, else ``BARGE_PROFILE``, else ``default_profile``,
  else ``default``. A profile named by ``--profile`` or ``BARGE_PROFILE`` must exist.
- The URL is ``--api-url``, else ``BARGE_API_URL``, else the profile's, else
  ``http://127.0.0.1:8000``; the key is ``BARGE_API_KEY``, else the profile's, else none.

Imports: ``cli.errors``, the standard library.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from cli.errors import CliError

DEFAULT_PROFILE = "default"
DEFAULT_API_URL = "http://127.0.0.1:8000"
URL_ENV = "BARGE_API_URL"
KEY_ENV = "BARGE_API_KEY"
PROFILE_ENV = "BARGE_PROFILE"
KEY_SHOWN = 10  # what lists show of a key: "bk_" and 7 characters, as `barge keys list` does


@dataclass
class Profile:
    api_url: str | None = None
    api_key: str | None = None


@dataclass
class Config:
    default_profile: str | None = None
    profiles: dict[str, Profile] = field(default_factory=dict)


@dataclass(frozen=True)
class Connection:
    """What a client command connects with, and where each part came from."""

    url: str
    key: str
    profile: str | None  # the profile read, if one was
    url_from: str  # "--api-url", "BARGE_API_URL", "profile NAME" or "default"
    key_from: str  # "BARGE_API_KEY", "profile NAME" or "none"


def config_path() -> Path:
    """``$XDG_CONFIG_HOME/barge/config.toml``; a relative ``XDG_CONFIG_HOME`` is ignored, as
    the XDG base directory specification says."""
    base = os.environ.get("XDG_CONFIG_HOME", "")
    root = Path(base) if base and Path(base).is_absolute() else Path.home() / ".config"
    return root / "barge" / "config.toml"


def load(path: Path | None = None) -> Config:
    """The saved profiles (none when the file does not exist); CliError naming the file when it
    cannot be read or is not what ``save`` writes."""
    path = path or config_path()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return Config()
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise CliError(f"{path}: cannot read the barge profiles ({exc})") from None
    profiles = data.get("profiles", {})
    default = data.get("default_profile")
    if not isinstance(profiles, dict) or not isinstance(default, str | None):
        raise CliError(f"{path}: not a barge profiles file (see `barge login --help`)")
    config = Config(default_profile=default)
    for name, values in profiles.items():
        if not isinstance(values, dict):
            raise CliError(f"{path}: profile {name!r} is not a table")
        url, key = values.get("api_url"), values.get("api_key")
        if not isinstance(url, str | None) or not isinstance(key, str | None):
            raise CliError(f"{path}: profile {name!r}: api_url and api_key must be strings")
        config.profiles[name] = Profile(url, key)
    return config


def _toml_string(value: str) -> str:
    # A JSON string is a valid TOML basic string (the same escapes).
    return json.dumps(value)


def dumps(config: Config) -> str:
    lines = ["# barge profiles: written by `barge login`; holds API keys (mode 0600)", ""]
    if config.default_profile is not None:
        lines += [f"default_profile = {_toml_string(config.default_profile)}", ""]
    for name, profile in sorted(config.profiles.items()):
        lines.append(f"[profiles.{_toml_string(name)}]")
        if profile.api_url is not None:
            lines.append(f"api_url = {_toml_string(profile.api_url)}")
        if profile.api_key is not None:
            lines.append(f"api_key = {_toml_string(profile.api_key)}")
        lines.append("")
    return "\n".join(lines)


def save(config: Config, path: Path | None = None) -> Path:
    """Write ``config`` whole, atomically, readable by its owner only (0600, in a 0700
    directory); the path written."""
    path = path or config_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".config-", suffix=".toml", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(dumps(config))
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def chosen_profile(flag: str | None, config: Config) -> tuple[str, bool]:
    """The profile to use and whether it was named (by ``--profile`` or ``BARGE_PROFILE``)."""
    named = flag or os.environ.get(PROFILE_ENV) or None
    return (named, True) if named else (config.default_profile or DEFAULT_PROFILE, False)


def resolve(api_url: str | None = None, profile: str | None = None) -> Connection:
    """The URL and key for a client command: ``api_url`` and ``profile`` are the command-line
    flags (None when not given). CliError for a named profile that does not exist."""
    config = load()
    name, named = chosen_profile(profile, config)
    saved = config.profiles.get(name)
    if saved is None and named:
        known = ", ".join(sorted(config.profiles)) or "none yet"
        raise CliError(
            f"no profile {name!r} in {config_path()} (profiles: {known}); "
            f"create it with `barge login --profile {name}`"
        )
    saved = saved or Profile()
    where = f"profile {name}"
    env_url, env_key = os.environ.get(URL_ENV), os.environ.get(KEY_ENV)
    if api_url:
        url, url_from = api_url, "--api-url"
    elif env_url:
        url, url_from = env_url, URL_ENV
    elif saved.api_url:
        url, url_from = saved.api_url, where
    else:
        url, url_from = DEFAULT_API_URL, "default"
    if env_key:
        key, key_from = env_key, KEY_ENV
    elif saved.api_key:
        key, key_from = saved.api_key, where
    else:
        key, key_from = "", "none"
    used = name if saved.api_url or saved.api_key else None
    return Connection(url.rstrip("/"), key, used, url_from, key_from)


def shown_key(key: str | None) -> str:
    """A key as lists show it: its first characters (what `barge keys list` shows), never all."""
    return f"{key[:KEY_SHOWN]}..." if key else "-"
