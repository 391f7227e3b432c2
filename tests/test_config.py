"""Settings: settings.toml, then ORDERSTREAM_<KEY> and DATABASE_URL, then flags."""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import fields

import pytest

import server
from config import SETTINGS_FILE, Settings, SettingsError, load_settings
from tests.conftest import ROOT, free_port


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


# -- every setting has a rule, checked before anything starts (audit, item 1) ---------------

# For every setting: a value past its rule, and what the one-line error says of it.
REFUSED = {
    "host": ("", "setting 'host': must be a host name or address (not empty, no spaces), "
                 "got ''"),
    "port": ("0", "setting 'port': must be 1-65535, got 0"),
    "workers": ("0", "setting 'workers': must be 1-1024, got 0"),
    "database_url": ("host=db password=hunter2",
                     "setting 'database_url': must be empty (the embedded database) or a "
                     "postgresql:// URL, got a value not shown here (it may hold a password)"),
    "data_dir": ("", "setting 'data_dir': must be a directory path (not empty), got ''"),
    "cookie_secure": ("maybe", "setting 'cookie_secure': must be one of 'auto', 'always', "
                               "'never', got 'maybe'"),
    "allowed_origins": ("https://ok.example, ftp://files.example/x",
                        "setting 'allowed_origins': must be origins (http:// or https://, "
                        "host[:port], nothing after it) or \"null\" (what file:// pages and "
                        "sandboxed frames send), got 'ftp://files.example/x'"),
    "pool_min_size": ("-1", "setting 'pool_min_size': must be 0-1000, got -1"),
    "pool_max_size": ("0", "setting 'pool_max_size': must be 2-1000, got 0"),
    "pool_acquire_timeout_s": ("nan", "setting 'pool_acquire_timeout_s': must be 0 (wait "
                                      "forever) to 3600, got nan"),
    "pool_read_reserve": ("-1", "setting 'pool_read_reserve': must be 0-1000, got -1"),
    "api_statement_timeout_ms": ("-1", "setting 'api_statement_timeout_ms': must be 0 (off) "
                                       "to 2147483647, got -1"),
    "api_lock_timeout_ms": ("-5", "setting 'api_lock_timeout_ms': must be 0 (off) to "
                                  "2147483647, got -5"),
    "session_queue_bytes": ("100", "setting 'session_queue_bytes': must be "
                                   "4096-1073741824, got 100"),
    "listener_queue_size": ("0", "setting 'listener_queue_size': must be 1-10000000, got 0"),
    "max_page_size": ("0", "setting 'max_page_size': must be 1-100000, got 0"),
    "change_log_retention_hours": ("inf", "setting 'change_log_retention_hours': must be "
                                          "above 0, at most 87600 (ten years), got inf"),
    "log_read_connections": ("0", "setting 'log_read_connections': must be 1-100, got 0"),
    "log_statement_timeout_ms": ("2147483648", "setting 'log_statement_timeout_ms': must be "
                                               "0 (off) to 2147483647, got 2147483648"),
    "argon2_time_cost": ("0", "setting 'argon2_time_cost': must be 1-100, got 0"),
    "argon2_memory_cost_kib": ("1", "setting 'argon2_memory_cost_kib': must be "
                                    "32-4194304, got 1"),
    "login_max_failures": ("0", "setting 'login_max_failures': must be 1-10000, got 0"),
    "password_hash_concurrency": ("-1", "setting 'password_hash_concurrency': must be 0 "
                                        "(one per CPU) to 1024, got -1"),
    "max_sockets_per_user": ("-1", "setting 'max_sockets_per_user': must be 0 (no limit) to "
                                   "1000000, got -1"),
    "ws_compress_min_bytes": ("-1", "setting 'ws_compress_min_bytes': must be 0 (never "
                                    "compress) or more, got -1"),
    "log_level": ("loud", "setting 'log_level': must be one of 'debug', 'info', 'warning', "
                          "'error', 'critical', got 'loud'"),
    "log_format": ("xml", "setting 'log_format': must be one of 'text', 'json', got 'xml'"),
}


# Settings that take any value of their type (a short secret key worked before rules came,
# and refusing it would stop deployments that run today).
ANY_VALUE = {"secret_key"}


def test_every_setting_has_a_rule_and_its_message_names_what_is_allowed():
    assert set(REFUSED) | ANY_VALUE == {f.name for f in fields(Settings)}
    for name, (value, message) in REFUSED.items():
        with pytest.raises(SettingsError) as refused:
            load_settings(environ={f"ORDERSTREAM_{name.upper()}": value})
        assert str(refused.value) == message


def test_only_the_final_value_is_checked(monkeypatch: pytest.MonkeyPatch):
    """A value a later layer replaces does not matter: the environment's by a flag
    (server.py checks after its flags); without the flag it is refused."""
    monkeypatch.setenv("ORDERSTREAM_WORKERS", "0")
    flags = argparse.Namespace(host=None, port=None, workers=2)
    assert server._settings(flags).workers == 2
    with pytest.raises(SettingsError):
        server._settings(argparse.Namespace(host=None, port=None, workers=None))


def test_a_huge_number_and_a_null_origin():
    with pytest.raises(SettingsError) as refused:
        load_settings(environ={"ORDERSTREAM_WS_COMPRESS_MIN_BYTES": "-" + "9" * 400})
    assert str(refused.value).startswith("setting 'ws_compress_min_bytes': must be 0")
    settings = load_settings(environ={"ORDERSTREAM_MAX_PAGE_SIZE": "9" * 400}, check=False)
    with pytest.raises(SettingsError):  # one line, not math.isfinite's OverflowError
        settings.checked()
    origins = load_settings(environ={"ORDERSTREAM_ALLOWED_ORIGINS": "null, https://a.example"})
    assert origins.allowed_origins == ["null", "https://a.example"]
    assert load_settings(environ={"ORDERSTREAM_SECRET_KEY": "short"}).secret_key == "short"


def test_the_edges_of_each_rule_are_allowed():
    settings = load_settings(environ={
        "ORDERSTREAM_POOL_MIN_SIZE": "0", "ORDERSTREAM_POOL_MAX_SIZE": "2",
        "ORDERSTREAM_POOL_ACQUIRE_TIMEOUT_S": "0", "ORDERSTREAM_API_LOCK_TIMEOUT_MS": "0",
        "ORDERSTREAM_LOG_STATEMENT_TIMEOUT_MS": "2147483647",
        "ORDERSTREAM_ARGON2_TIME_COST": "1", "ORDERSTREAM_ARGON2_MEMORY_COST_KIB": "32",
        "ORDERSTREAM_MAX_PAGE_SIZE": "1", "ORDERSTREAM_LOG_READ_CONNECTIONS": "1",
        "ORDERSTREAM_CHANGE_LOG_RETENTION_HOURS": "0.01", "ORDERSTREAM_LOG_LEVEL": "WARNING",
        "ORDERSTREAM_COOKIE_SECURE": "never", "ORDERSTREAM_SECRET_KEY": "k" * 32,
        "ORDERSTREAM_ALLOWED_ORIGINS": "http://127.0.0.1:9000/, https://a.example",
        "DATABASE_URL": "postgres://u@db:5432/x"})
    assert (settings.pool_max_size, settings.argon2_memory_cost_kib) == (2, 32)
    assert settings.log_level == "WARNING"  # uvicorn and logging both take any case


def test_argon2_takes_the_lowest_costs_the_rules_allow():
    from web.passwords import Passwords

    lowest = load_settings(environ={"ORDERSTREAM_ARGON2_TIME_COST": "1",
                                    "ORDERSTREAM_ARGON2_MEMORY_COST_KIB": "32"})
    passwords = Passwords(lowest.argon2_time_cost, lowest.argon2_memory_cost_kib)
    assert passwords.verify(passwords.hash("long-enough"), "long-enough")


def test_the_file_is_checked_like_the_environment(tmp_path):
    settings_file = tmp_path / "settings.toml"
    settings_file.write_text("max_page_size = 0\n")
    with pytest.raises(SettingsError, match="setting 'max_page_size': must be 1-100000"):
        load_settings(settings_file, environ={})


def _server(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "server.py", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(run: subprocess.Popen[str]) -> tuple[str, str]:
    """The run's output once it exits; one that is still running (it started) is stopped."""
    try:
        return run.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        run.kill()
        _, err = run.communicate()
        raise AssertionError(f"still running after 30 s: {err}") from None


def test_cli_refuses_each_audited_value_in_one_line(tmp_path):
    """The values an audit found giving tracebacks (or accepted): one line naming the
    setting, exit 2 as for every setting error, before any database or server starts."""
    audited = [("POOL_MAX_SIZE", "-1"), ("POOL_MAX_SIZE", "0"), ("LOG_READ_CONNECTIONS", "0"),
               ("LOG_LEVEL", "loud"), ("ARGON2_MEMORY_COST_KIB", "1"),
               ("ARGON2_TIME_COST", "0"), ("MAX_PAGE_SIZE", "0"), ("COOKIE_SECURE", "maybe"),
               ("POOL_ACQUIRE_TIMEOUT_S", "nan"), ("API_LOCK_TIMEOUT_MS", "-5")]
    commands = {"ARGON2_MEMORY_COST_KIB": ["createuser", "x", "--password", "long-enough"],
                "ARGON2_TIME_COST": ["createuser", "x", "--password", "long-enough"]}
    runs = []
    for key, value in audited:
        env = {"PATH": "/usr/bin:/bin", "ORDERSTREAM_DATA_DIR": str(tmp_path),
               "DATABASE_URL": "postgresql://postgres@127.0.0.1:1/nothing",
               f"ORDERSTREAM_{key}": value}
        runs.append((key, value, _server(commands.get(key, ["serve"]), env)))
    for key, value, run in runs:
        out, err = _finish(run)
        assert run.returncode == 2, (key, value, err)
        assert err.startswith(f"server.py: setting '{key.lower()}': must be "), err
        assert err.count("\n") == 1 and value in err and out == "", (key, err)


def test_an_unusable_data_dir_is_one_line(tmp_path, db_url):
    """serve keeps its generated secret key in data_dir, and the embedded database its
    files: a directory that cannot be made is named, in one line, before either starts."""
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    cases = [("/proc/nope", db_url, "No such file or directory"),
             ("/proc/nope", "", "No such file or directory"),
             (str(a_file), db_url, "File exists")]
    runs = [(data_dir, reason, _server(["serve", "--port", str(free_port())], {
        "PATH": "/usr/bin:/bin", "ORDERSTREAM_DATA_DIR": data_dir, "DATABASE_URL": url}))
        for data_dir, url, reason in cases]
    for data_dir, reason, run in runs:
        _, err = _finish(run)
        assert run.returncode == 2, err
        assert err == (f"server.py: setting 'data_dir': cannot use {data_dir!r} as a "
                       f"directory: {reason}\n")
