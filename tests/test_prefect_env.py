"""Prefect settings: local database, generous server start, no analytics, the user's API kept."""

from anima_lora_flow.platforms.prefect_env import configure_prefect_environment


def test_defaults_on_a_bare_machine():
    env = {}
    applied = configure_prefect_environment(env)
    assert env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] == "90"
    assert env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    assert "drive" not in env["PREFECT_HOME"]
    assert applied["PREFECT_HOME"] == env["PREFECT_HOME"]


def test_prefect_home_on_drive_is_moved_to_local_disk(capsys):
    env = {"PREFECT_HOME": "/content/drive/MyDrive/.prefect"}
    configure_prefect_environment(env)
    assert not env["PREFECT_HOME"].startswith("/content/drive")
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
