"""Settings: settings.toml, then ORDERSTREAM_<KEY> and DATABASE_URL, then flags."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import fields

import pytest

from config import SETTINGS_FILE, Settings, SettingsError, load_settings
from tests.conftest import ROOT


def test_every_setting_has_a_default_in_settings_toml():
    text = SETTINGS_FILE.read_text()
    for f in fields(Settings):
        assert f"\n{f.name} = " in text, f"{f.name} is missing from settings.toml"


def test_environment_overrides_the_file_with_the_right_types():
    settings = load_settings(environ={
        "ORDERSTREAM_PORT": "9001", "ORDERSTREAM_ALLOWED_ORIGINS": "https://a.example, https://b",
        "ORDERSTREAM_CHANGE_LOG_RETENTION_HOURS": "1.5", "DATABASE_URL": "postgresql://x/y"})
    assert settings.port == 9001
    assert settings.allowed_origins == ["https://a.example", "https://b"]
    assert settings.change_log_retention_hours == 1.5
    assert settings.database_url == "postgresql://x/y"


def test_orderstream_database_url_wins_over_database_url():
    settings = load_settings(environ={"DATABASE_URL": "postgresql://a/a",
                                      "ORDERSTREAM_DATABASE_URL": "postgresql://b/b"})
    assert settings.database_url == "postgresql://b/b"


def test_a_bad_value_is_named():
    with pytest.raises(SettingsError, match="port"):
        load_settings(environ={"ORDERSTREAM_PORT": "eighty"})


def test_flags_win_over_the_environment():
    settings = load_settings(environ={"ORDERSTREAM_PORT": "9001"}).with_overrides(port=9002)
    assert settings.port == 9002


def test_cli_reports_a_bad_setting_without_a_traceback():
    result = subprocess.run([sys.executable, "server.py", "db-url"], cwd=ROOT,
                            env={"PATH": "/usr/bin:/bin", "ORDERSTREAM_PORT": "eighty"},
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "port" in result.stderr and "Traceback" not in result.stderr


def test_api_timeouts_come_from_settings_toml_and_the_environment():
    defaults = load_settings(environ={})
    assert (defaults.api_statement_timeout_ms, defaults.api_lock_timeout_ms) == (5000, 500)
    assert (defaults.pool_acquire_timeout_s, defaults.pool_read_reserve) == (2.0, 3)
    settings = load_settings(environ={
        "ORDERSTREAM_API_STATEMENT_TIMEOUT_MS": "1500", "ORDERSTREAM_API_LOCK_TIMEOUT_MS": "0",
        "ORDERSTREAM_POOL_ACQUIRE_TIMEOUT_S": "0.25", "ORDERSTREAM_POOL_READ_RESERVE": "2"})
    assert settings.api_statement_timeout_ms == 1500
    assert settings.api_lock_timeout_ms == 0
    assert settings.pool_acquire_timeout_s == 0.25
    assert settings.pool_read_reserve == 2
    with pytest.raises(SettingsError, match="api_lock_timeout_ms"):
        load_settings(environ={"ORDERSTREAM_API_LOCK_TIMEOUT_MS": "half a second"})
