"""orderstream command line: serve (default), migrate, createuser, token, demo,
simulate, tail, db-url, db-stop, bench.

Every command reads settings.toml, then the environment (DATABASE_URL,
ORDERSTREAM_<KEY>), then its flags.

Only `migrate` changes the schema (db/migrate.py). Every other command checks that the
schema is current, with reads only, and refuses with one line if it is behind; `serve
--migrate` (implied by `--demo` and by the embedded database) migrates first. Errors reach
the person as one line on stderr: exit 2 for what they asked (bad flags, a user that exists),
1 for the environment (database unreachable, schema behind, migrate could not lock).
"""

from __future__ import annotations

import argparse
import getpass
import logging
import math
import os
import signal
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

import config

if TYPE_CHECKING:  # starlette is imported only by the commands that serve
    from starlette.applications import Starlette

log = logging.getLogger("orderstream")


VERSION_FALLBACK = "0.1.0"  # when the package metadata is absent (run without pip install)


def _version() -> str:
    """The installed package's version (pyproject.toml via pip install -e .)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("orderstream")
    except PackageNotFoundError:
        return VERSION_FALLBACK


def _port(text: str) -> int:
    """argparse type: a TCP port, 1-65535."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 1-65535, got {port}")
    return port


_NUMBER_NAMES = {int: "a whole number", float: "a number"}


def _positive(kind: type[int] | type[float]):  # type: ignore[no-untyped-def]
    """argparse type: a finite number above zero (workers, rates, timeouts)."""

    def parse(text: str) -> int | float:
        try:
            value: int | float | None = kind(text)
        except ValueError:
            value = None
        # float() also takes "nan" and "inf": no rate, count or timeout can be either.
        if value is None or not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected {_NUMBER_NAMES[kind]}, got {text!r}")
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be above 0, got {text!r}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="server.py",
        description="orderstream: a realtime order blotter. Without a command: serve.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, summary: str) -> argparse.ArgumentParser:
        # help= is the line in `server.py --help`; description= heads `server.py NAME --help`.
        return sub.add_parser(name, help=summary, description=summary[0].upper() + summary[1:])

    def add_serve_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--host", help="address to bind (setting: host)")
        p.add_argument("--port", type=_port, help="port to bind, 1-65535 (setting: port)")
        p.add_argument("--workers", type=_positive(int),
                       help="server processes (setting: workers)")
        p.add_argument("--migrate", action="store_true",
                       help="apply pending migrations first (implied by --demo and by the "
                            "embedded database)")
        p.add_argument("--demo", action="store_true",
                       help="migrate, load demo users and orders and keep changing them")
        p.add_argument("--rate", type=_positive(float), default=5.0,
                       help="with --demo: changes per second (default 5)")

    add_serve_flags(parser)
    add_serve_flags(command("serve", "run the web server (the default command)"))
    p = command("migrate", "apply db/migrations and db/triggers.sql (if changed), then exit")
    p.add_argument("--lock-timeout", type=_positive(float), default=None, metavar="SECONDS",
                   help="longest one DDL statement waits for a lock, and so the longest a "
                        "writer waits behind it (default 2)")
    p.add_argument("--retry-for", type=_positive(float), default=None, metavar="SECONDS",
                   help="keep retrying lock timeouts this long, then fail (default 60)")
    p = command("createuser", "create a user (prompts for the password on a terminal)")
    p.add_argument("name", help="the username")
    p.add_argument("--staff", action="store_true", help="the user sees and edits every order")
    given = p.add_mutually_exclusive_group()
    given.add_argument("--password", help="the password (visible to other local users: "
                                          "prefer the prompt or --password-stdin)")
    given.add_argument("--password-stdin", action="store_true",
                       help="read the password from the first line of stdin")
    p = command("token", "print a new API token for a user (only the token)")
    p.add_argument("name", metavar="USERNAME", help="whose token it is")
    p.add_argument("--name", dest="token_name", metavar="LABEL",
                   help="the token's name, as GET /api/tokens and the tokens page show it"
                        " (1-100 characters)")
    command("demo", "create the demo users that do not exist yet (passwords printed) and "
                    "their orders")
    p = command("simulate", "write orders and quotes at --rate changes/s until Ctrl-C")
    p.add_argument("--rate", type=_positive(float), default=10.0,
                   help="changes per second (default 10)")
    p.add_argument("--progress", type=_positive(float), default=5.0, metavar="SECONDS",
                   help="print the rate achieved and the events written this often (default 5)")
    command("db-url", "print the database URL in use (starts the embedded server)")
    p = command("db-stop", "stop the embedded PostgreSQL (var/pg)")
    p.add_argument("--force", action="store_true",
                   help="stop it even while server processes use it")
    p = command("tail", "print order events as JSON lines, straight from the database")
    p.add_argument("--owner", default="*", metavar="NAME",
                   help="only this user's orders ('*', the default: everyone's)")
    p.add_argument("--after", metavar="CURSOR", help="first the events since this cursor")
    p = command("bench", "measure latency, throughput and writer cost against the naive "
                         "build and PostgreSQL's floor (docs/benchmarks.md)")
    from cli.bench_options import add_bench_flags

    add_bench_flags(p, _positive)
    return parser


def _settings(args: argparse.Namespace) -> config.Settings:
    settings = config.load_settings(check=False)
    return settings.with_overrides(
        host=getattr(args, "host", None),
        port=getattr(args, "port", None),
        workers=getattr(args, "workers", None),
    ).checked()


def _uses_data_dir(command: str, settings: config.Settings) -> bool:
    """The embedded database keeps its files in data_dir, and serve its generated secret
    key (db-stop only looks for a server there)."""
    kept_key = settings.data_path / "secret_key"
    return (not settings.database_url and command != "db-stop") or (
        command == "serve" and not settings.secret_key and not kept_key.is_file())


def _fail(message: str, code: int = 2) -> int:
    """One line on stderr; exit code 2 for what the person asked, 1 for the environment."""
    print(f"server.py: {message}", file=sys.stderr)
    return code


def _database_error(exc: Exception) -> str:
    """One line for a database error: the first line of its message, which names the host
    and port (never the password) for a connection that failed."""
    import psycopg

    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    connection_lost = isinstance(exc, psycopg.OperationalError) and (
        exc.sqlstate is None or exc.sqlstate.startswith(("08", "57P")))
    return f"cannot reach the database: {first}" if connection_lost else f"database error: {first}"


def _migrates_first(command: str, args: argparse.Namespace, settings: config.Settings) -> bool:
    """`serve --migrate`; `--demo` and the embedded database imply it (both are for a machine
    of one's own, where nobody else's transactions hold the tables)."""
    return command == "serve" and bool(
        getattr(args, "migrate", False) or getattr(args, "demo", False)
        or not settings.database_url)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = args.command or "serve"
    try:
        settings = _settings(args)
        if _uses_data_dir(command, settings):
            config.prepare_data_dir(settings)
    except config.SettingsError as exc:
        return _fail(str(exc))
    password = None
    if command == "createuser":
        # Before the database starts: a missing or refused password fails fast.
        password = _read_password(args)
        if password is None:
            return 2
    from cli.logs import configure

    configure(settings.log_level, settings.log_format)
    # Imported here so `--help` and settings errors stay fast.
    import asyncpg
    import psycopg

    from cli.database import Database, stop_embedded
    from db.embedded import EmbeddedPostgresError
    from db.migrate import MigrationError

    try:
        if command == "db-stop":
            print(stop_embedded(settings, args.force))
            return 0
        if command == "db-url":
            # Only prints: psql "$(server.py db-url)" must work on a database that is behind.
            print(Database(settings, keep_running=True).url)
            return 0
        database = Database(settings)
    except EmbeddedPostgresError as exc:
        return _fail(str(exc), 1)
    except psycopg.Error as exc:
        return _fail(_database_error(exc), 1)
    try:
        return _run(command, args, settings, database.url, password)
    except MigrationError as exc:
        return _fail(f"migrate: {exc}", 1)
    except psycopg.Error as exc:
        return _fail(_database_error(exc), 1)
    except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:  # bench, tail
        return _fail(f"database error: {str(exc).strip() or type(exc).__name__}", 1)
    except ConnectionError as exc:  # asyncpg's connect() raises the socket's own errors
        return _fail(f"cannot reach the database: {exc}", 1)
    finally:
        database.stop()


def _run(command: str, args: argparse.Namespace, settings: config.Settings, url: str,
         password: str | None) -> int:
    """Migrate or check the schema, then run `command` on the database at `url`."""
    from db.migrate import migrate, schema_status

    if command == "migrate" or _migrates_first(command, args, settings):
        applied = migrate(url, **_migrate_options(args))
        if command == "migrate":
            print(f"applied {', '.join(applied)}; database is up to date" if applied
                  else "database is up to date")
            return 0
    else:
        # Every other command only reads the schema's state: no DDL, so no lock waits.
        status = schema_status(url)
        if not status.current:
            return _fail(f"the database schema is behind ({status.describe()}); run "
                         "`python server.py migrate` or `serve --migrate`", 1)
    if command == "serve":
        return _serve(args, settings, url)
    if command == "createuser":
        assert password is not None
        return _createuser(args, settings, url, password)
    if command == "token":
        from cli.users import UserError, create_token
        try:
            print(create_token(url, args.name, args.token_name))
        except UserError as exc:
            return _fail(str(exc))
        return 0
    if command == "demo":
        _print_demo(settings, url)
        return 0
    if command == "simulate":
        return _simulate(args, url)
    if command == "tail":
        from cli.tail import run as run_tail
        return run_tail(url, settings, args.owner, args.after)
    if command == "bench":
        return _bench(args, settings, url)
    return _fail(f"unknown command {command!r}")


def _migrate_options(args: argparse.Namespace) -> dict[str, float]:
    options = {"lock_timeout": getattr(args, "lock_timeout", None),
               "retry_for": getattr(args, "retry_for", None)}
    return {key: value for key, value in options.items() if value is not None}


def _read_password(args: argparse.Namespace) -> str | None:
    """createuser's password from --password, stdin or the terminal, if the API would take
    it (web/users_api.py); None after saying why."""
    password = _given_password(args)
    if password is None:
        return None
    from db.text import encodable
    from web.users_api import MAX_PASSWORD, MIN_PASSWORD

    # The API's lengths: /login refuses a longer password, so it could never log in.
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        _fail(f"createuser: the password must be {MIN_PASSWORD}-{MAX_PASSWORD} characters, "
              f"got {len(password)}")
        return None
    if not encodable(password):  # bytes that are not UTF-8 (argv keeps them as surrogates)
        _fail("createuser: the password must be valid UTF-8 text")
        return None
    return password


def _given_password(args: argparse.Namespace) -> str | None:
    if args.password is not None:
        return args.password
    if args.password_stdin:
        try:
            line = sys.stdin.readline()
        except UnicodeDecodeError:
            _fail("createuser: the password must be valid UTF-8 text")
            return None
        if not line:
            _fail("createuser --password-stdin: stdin is empty; expected the password on "
                  "one line")
            return None
        return line.rstrip("\r\n")
    if not sys.stdin.isatty():
        _fail("createuser: no terminal to prompt for the password; pass --password-stdin "
              "(and the password on stdin) or --password")
        return None
    try:
        password = getpass.getpass(f"Password for {args.name}: ")
        again = getpass.getpass("Again: ")
    except (EOFError, KeyboardInterrupt):
        print(file=sys.stderr)
        _fail("createuser: no password given")
        return None
    if password != again:
        _fail("passwords do not match")
        return None
    return password


def _createuser(args: argparse.Namespace, settings: config.Settings, url: str,
                password: str) -> int:
    from cli.users import UserError, create_user
    from web.passwords import Passwords

    try:
        user_id = create_user(url, Passwords(settings.argon2_time_cost,
                                             settings.argon2_memory_cost_kib),
                              args.name, password, args.staff)
    except UserError as exc:
        return _fail(str(exc))
    print(f"created {'staff ' if args.staff else ''}user {args.name!r} (id {user_id})")
    return 0


def _print_demo(settings: config.Settings, url: str) -> None:
    from cli.demo import load_demo
    from web.passwords import Passwords

    credentials = load_demo(url, Passwords(settings.argon2_time_cost,
                                           settings.argon2_memory_cost_kib))
    print("demo users (username / password):")
    for username, password in credentials:
        print(f"  {username:8} {password or 'exists already: its password was left unchanged'}")


def _simulate(args: argparse.Namespace, url: str) -> int:
    from cli.simulate import run_cli

    return run_cli(url, args.rate, args.progress)


def _bench(args: argparse.Namespace, settings: config.Settings, url: str) -> int:
    from cli.bench_options import DEFAULT_SIZES

    if args.fanout:
        from cli.bench_fanout import run_fanout_bench

        rates = list(args.rates or DEFAULT_SIZES.rates)
        return run_fanout_bench(url, settings, rates, args.seconds or 3.0,
                                args.latency_updates or 300, args.bulk_rows or 50_000,
                                args.scale_sessions or 0)
    if args.quotes:
        from cli.bench_quotes import run_quotes_bench

        return run_quotes_bench(url, settings, sessions=args.sessions or 1000,
                                rate=args.quote_rate or 1000.0, seconds=args.seconds or 3.0)
    from cli.bench_suite import run_suite

    return run_suite(args, settings, url)


def _share_metrics() -> str:
    """Workers write their metrics to files in a fresh directory, which /metrics on any of
    them adds up (prometheus-client's multiprocess mode). Returns the directory."""
    import tempfile

    from web.metrics import MULTIPROC_ENV

    directory = tempfile.mkdtemp(prefix="orderstream-metrics-")
    os.environ[MULTIPROC_ENV] = directory
    return directory


def _serve(args: argparse.Namespace, settings: config.Settings, url: str) -> int:
    import shutil

    import uvicorn

    from cli.logs import log_config
    from web.protocols import protocol_options

    metrics_dir = None

    simulator = None
    if getattr(args, "demo", False):
        from cli.simulate import start_in_thread

        _print_demo(settings, url)
        simulator = start_in_thread(url, args.rate)
    print(f"orderstream on http://{settings.host}:{settings.port}/", file=sys.stderr)
    # Workers are separate processes: they find the database through the environment.
    os.environ["DATABASE_URL"] = url
    options = {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        "log_config": log_config(settings.log_level, settings.log_format),
        "timeout_graceful_shutdown": 5,
        **protocol_options(),
    }
    # uvicorn re-raises the signal that stopped it once it is done; by then shutdown is
    # complete, so let that be a no-op and finish normally (stopping the embedded database).
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    try:
        if settings.workers > 1:
            metrics_dir = _share_metrics()
            uvicorn.run("server:app_from_environment", factory=True, workers=settings.workers,
                        **options)
        else:
            from web.app import create_app

            uvicorn.run(create_app(settings, url), **options)
    finally:
        if simulator is not None:
            simulator.stop()
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


def app_from_environment() -> Starlette:
    """uvicorn factory for worker processes (the parent put DATABASE_URL in the environment)."""
    from web.app import create_app

    settings = config.load_settings()
    return create_app(settings, settings.database_url)


if __name__ == "__main__":
    sys.exit(main())
