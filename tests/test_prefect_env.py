"""Prefect settings: the user's configuration (environment, profile) kept, the database never on a network
mount, generous server start, no analytics."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from anima_lora_flow.errors import UserInputError
from anima_lora_flow.core.processes import free_port
from anima_lora_flow.platforms.prefect_env import (
    check_api_reachable,
    configure_prefect_environment,
    configured_api,
    network_mount,
)


def test_defaults_on_a_bare_machine():
    env = {}
    applied = configure_prefect_environment(env)
    assert env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] == "90"
    assert env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    # Prefect's own default home is kept (a user's profiles live there), and reported.
    assert "PREFECT_HOME" not in env
    assert applied["PREFECT_HOME"] == str(Path("~/.prefect").expanduser().absolute())


def test_prefect_home_on_drive_is_moved_to_local_disk(capsys):
    env = {"PREFECT_HOME": "/content/drive/MyDrive/.prefect"}
    configure_prefect_environment(env)
    assert not env["PREFECT_HOME"].startswith("/content/drive")
    assert "unsafe" in capsys.readouterr().err


def test_network_mounts_are_told_from_local_disk(tmp_path):
    assert network_mount("/content/drive/MyDrive/x") == "Google Drive"
    assert network_mount(tmp_path) is None


def write_profiles(home: Path, active: str, **profiles: dict) -> None:
    home.mkdir(parents=True, exist_ok=True)
    lines = [f'active = "{active}"']
    for name, settings in profiles.items():
        lines.append(f"[profiles.{name}]")
        lines += [f'{key} = "{value}"' for key, value in settings.items()]
    (home / "profiles.toml").write_text("\n".join(lines) + "\n")


def test_the_active_profile_api_is_used_as_prefect_reads_it(tmp_path):
    """`prefect config set PREFECT_API_URL=...` or `prefect cloud login` write the active profile: the run
    reports there, PREFECT_HOME stays, and Prefect itself resolves the same URL from the same files."""
    home = tmp_path / "ph"
    url = "http://127.0.0.1:4999/api"
    write_profiles(home, "remote", remote={"PREFECT_API_URL": url}, other={"PREFECT_API_URL": "http://other:1/api"})
    env = {"PREFECT_HOME": str(home)}
    api = configured_api(env)
    assert api.url == url and "remote" in api.source
    configure_prefect_environment(env)
    assert "PREFECT_API_URL" not in env and env["PREFECT_HOME"] == str(home)  # prefect reads the profile itself
    prefects = subprocess.run(
        [sys.executable, "-c", "from prefect.settings import get_current_settings; print(get_current_settings().api.url)"],
        env={k: v for k, v in {**os.environ, **env}.items() if k != "PREFECT_API_URL"},
        capture_output=True, text=True, check=True,
    )
    assert prefects.stdout.strip() == url
    assert configured_api({**env, "PREFECT_PROFILE": "other"}).url == "http://other:1/api"
    assert configured_api({**env, "PREFECT_API_URL": "http://env:2/api"}).source == "PREFECT_API_URL"


def test_a_profile_api_that_does_not_answer_is_refused_naming_the_profile(tmp_path):
    home = tmp_path / "ph"
    write_profiles(home, "dead", dead={"PREFECT_API_URL": f"http://127.0.0.1:{free_port()}/api"})
    with pytest.raises(UserInputError, match="profile 'dead'"):
        check_api_reachable({"PREFECT_HOME": str(home)})


def test_profiles_stay_readable_when_prefect_home_is_moved_off_drive(tmp_path, monkeypatch, capsys):
    """PREFECT_HOME on Drive moves; the profiles file there is still the one Prefect reads."""
    import anima_lora_flow.platforms.prefect_env as prefect_env

    drive_home = tmp_path / "drive-home"
    write_profiles(drive_home, "mine", mine={"PREFECT_LOGGING_LEVEL": "DEBUG"})
    monkeypatch.setattr(prefect_env, "network_mount", lambda path: "Google Drive" if Path(path) == drive_home else None)
    env = {"PREFECT_HOME": str(drive_home)}
    configure_prefect_environment(env)
    assert env["PREFECT_HOME"] != str(drive_home)
    assert env["PREFECT_PROFILES_PATH"] == str(drive_home / "profiles.toml")
    assert "unsafe" in capsys.readouterr().err


def test_user_settings_are_kept():
    env = {"PREFECT_API_URL": "https://api.prefect.cloud/api/accounts/a/workspaces/w", "PREFECT_HOME": "/tmp/ph",
           "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "200"}
    configure_prefect_environment(env)
    assert env["PREFECT_API_URL"].startswith("https://api.prefect.cloud")
    assert env["PREFECT_HOME"] == "/tmp/ph"
    assert env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] == "200"


def test_prefect_home_is_always_reported(tmp_path):
    env = {"PREFECT_HOME": str(tmp_path / "ph")}
    assert configure_prefect_environment(env)["PREFECT_HOME"] == str(tmp_path / "ph")


def test_prefect_cloud_from_colab_secrets(monkeypatch):
    import sys
    import types

    secrets = {"PREFECT_API_URL": "https://api.prefect.cloud/api/accounts/a/workspaces/w", "PREFECT_API_KEY": "pnu_x"}
    userdata = types.SimpleNamespace(get=lambda name: secrets.get(name))
    colab = types.ModuleType("google.colab")
    colab.userdata = userdata
    google = types.ModuleType("google")
    google.colab = colab
    monkeypatch.setitem(sys.modules, "google", google)
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    env = {}
    shown = configure_prefect_environment(env)
    assert env["PREFECT_API_URL"] == secrets["PREFECT_API_URL"] and env["PREFECT_API_KEY"] == "pnu_x"
    assert "PREFECT_API_KEY" not in shown  # reported settings never carry the key


def test_history_links_point_at_a_ui_that_outlives_the_command(tmp_path):
    from anima_lora_flow.platforms.prefect_env import ApiConfig, History, user_history

    cloud = ApiConfig("https://api.prefect.cloud/api/accounts/a1/workspaces/w1", "pnu_x", "PREFECT_API_URL")
    assert user_history(cloud).describe("r1") == "run history: https://app.prefect.cloud/account/a1/workspace/w1/runs/flow-run/r1"
    own = ApiConfig("http://gpu-box:4200/api", None, "PREFECT_API_URL")
    assert user_history(own).describe() == "run history: http://gpu-box:4200/runs"
    # A temporary server has no UI after the command: the database and the command that opens it, no link.
    local = History(ui_url=None, home=tmp_path).describe("r1")
    assert str(tmp_path) in local and "`anima-lora ui`" in local and "http" not in local
