"""Saved profiles (``cli.profiles``): the file under ``XDG_CONFIG_HOME`` (mode 0600), what it
round-trips, and which URL and key a command uses (flags > environment > profile > defaults).
``barge login`` against a real API is in tests/e2e/test_cli.py."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from cli import profiles
from cli.errors import EXIT_USAGE, CliError
from cli.profiles import Config, Profile, config_path, load, resolve, save


@pytest.fixture(autouse=True)
def config_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    for name in ("BARGE_API_URL", "BARGE_API_KEY", "BARGE_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "xdg"


def test_the_file_is_in_xdg_config_home_and_only_its_owner_reads_it(config_home: Path) -> None:
    path = save(Config("prod", {"prod": Profile("https://barge.example.com", "bk_secret")}))
    assert path == config_path() == config_home / "barge" / "config.toml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert [p.name for p in path.parent.iterdir()] == ["config.toml"]  # no temporary left


def test_a_relative_xdg_config_home_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", "relative/dir")
    assert config_path() == Path.home() / ".config" / "barge" / "config.toml"


def test_what_is_saved_loads_back_whatever_it_holds() -> None:
    config = Config(
        'we"ird',
        {
            'we"ird': Profile("http://h:1/a b", 'bk_"quoted"\\back\nnew'),
            "ünï cödé": Profile("https://x", None),
            "url-less": Profile(None, "bk_k"),
        },
    )
    save(config)
    assert load() == config


def test_an_unreadable_file_is_a_usage_error_naming_it(config_home: Path) -> None:
    path = config_home / "barge" / "config.toml"
    path.parent.mkdir(parents=True)
    path.write_text("[profiles.x\napi_url = 1\n")
    with pytest.raises(CliError, match=str(path)) as caught:
        load()
    assert caught.value.exit_code == EXIT_USAGE
    path.write_text("[profiles.x]\napi_url = 1\n")
    with pytest.raises(CliError, match="must be strings"):
        load()


def test_no_file_at_all_means_the_defaults() -> None:
    conn = resolve()
    assert (conn.url, conn.key, conn.profile) == (profiles.DEFAULT_API_URL, "", None)
    assert (conn.url_from, conn.key_from) == ("default", "none")


class TestPrecedence:
    """Command-line flags, then environment variables, then the profile, then the defaults."""

    @pytest.fixture(autouse=True)
    def saved(self) -> None:
        save(
            Config(
                "main",
                {
                    "main": Profile("http://main:1/", "bk_main"),
                    "other": Profile("http://other:2", "bk_other"),
                },
            )
        )

    def test_the_default_profile(self) -> None:
        conn = resolve()
        assert (conn.url, conn.key, conn.profile) == ("http://main:1", "bk_main", "main")
        assert (conn.url_from, conn.key_from) == ("profile main", "profile main")

    def test_barge_profile_picks_another(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("BARGE_PROFILE", "other")
        assert (resolve().url, resolve().key) == ("http://other:2", "bk_other")

    def test_the_flag_beats_barge_profile(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("BARGE_PROFILE", "other")
        assert resolve(profile="main").key == "bk_main"

    def test_environment_variables_beat_the_profile(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("BARGE_API_URL", "http://env:3")
        monkeypatch.setenv("BARGE_API_KEY", "bk_env")
        conn = resolve(profile="other")
        assert (conn.url, conn.key) == ("http://env:3", "bk_env")
        assert (conn.url_from, conn.key_from) == ("BARGE_API_URL", "BARGE_API_KEY")

    def test_the_url_flag_beats_the_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("BARGE_API_URL", "http://env:3")
        conn = resolve(api_url="http://flag:4/")
        assert (conn.url, conn.url_from, conn.key) == ("http://flag:4", "--api-url", "bk_main")

    def test_a_named_profile_must_exist(self, monkeypatch: pytest.MonkeyPatch) -> None:
        with pytest.raises(CliError, match=r"no profile 'nope'.*main, other.*barge login"):
            resolve(profile="nope")
        monkeypatch.setenv("BARGE_PROFILE", "gone")
        with pytest.raises(CliError, match="no profile 'gone'"):
            resolve()


def test_a_listed_key_shows_only_its_prefix() -> None:
    assert profiles.shown_key("bk_abcdefghijklmnopqrstuvwxyz") == "bk_abcdefg..."
    assert profiles.shown_key(None) == "-"
