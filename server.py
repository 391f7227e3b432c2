"""orderstream command line: serve (default), migrate, createuser, token, demo,
simulate, db-url, bench.

Every command reads settings.toml, then the environment (DATABASE_URL,
ORDERSTREAM_<KEY>), then its flags.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import logging
import os
import signal
import sys
from collections.abc import Sequence

import config

log = logging.getLogger("orderstream")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="server.py",
                                     description="orderstream: a realtime order blotter")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add_serve_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--host", help="address to bind (setting: host)")
        p.add_argument("--port", type=int, help="port to bind (setting: port)")
        p.add_argument("--workers", type=int, help="server processes (setting: workers)")
        p.add_argument("--demo", action="store_true",
                       help="load demo users and orders and keep changing them (simulate)")
        p.add_argument("--rate", type=float, default=5.0,
                       help="with --demo: changes per second (default 5)")

    add_serve_flags(parser)
    add_serve_flags(sub.add_parser("serve", help="run the web server (migrates first)"))
    sub.add_parser("migrate", help="apply db/migrations and db/triggers.sql, then exit")
    p = sub.add_parser("createuser", help="create a user")
    p.add_argument("name")
    p.add_argument("--staff", action="store_true", help="the user sees and edits every order")
    p.add_argument("--password", help="the password (prompted for when absent)")
    p = sub.add_parser("token", help="print a new API token for a user (only the token)")
    p.add_argument("name")
    sub.add_parser("demo", help="create demo users (passwords printed) and orders")
    p = sub.add_parser("simulate", help="write orders and quotes at --rate changes/s until Ctrl-C")
    p.add_argument("--rate", type=float, default=10.0, help="changes per second (default 10)")
    sub.add_parser("db-url", help="print the database URL in use (starts the embedded server)")
    p = sub.add_parser("bench", help="measure commit-to-socket latency and throughput")
    p.add_argument("--updates", type=int, default=1000, help="single-row updates to time")
    p.add_argument("--burst", type=int, default=5000, help="events in the throughput burst")
    p.add_argument("--clients", type=int, default=20, help="extra sockets of the same owner")
    return parser


def _settings(args: argparse.Namespace) -> config.Settings:
    settings = config.load_settings()
    return settings.with_overrides(
        host=getattr(args, "host", None),
        port=getattr(args, "port", None),
        workers=getattr(args, "workers", None),
    )


def _exception_on_one_line(record: logging.LogRecord) -> bool:
    if record.exc_info and record.exc_info[1] is not None:
        record.msg = f"{record.getMessage()}: {record.exc_info[1]!r}"
        record.args = None
        record.exc_info = None
    return True


def _fail(message: str) -> int:
    print(f"server.py: {message}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = args.command or "serve"
    try:
        settings = _settings(args)
    except config.SettingsError as exc:
        return _fail(str(exc))
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # asyncpg's pool logs a full traceback each time it cannot reconnect while the
    # database is away; one line says the same.
    logging.getLogger("asyncpg.pool").addFilter(_exception_on_one_line)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # Imported here so `--help` and settings errors stay fast.
    from cli.database import Database
    from db.migrate import migrate

    if command == "db-url":
        print(Database(settings, keep_running=True).url)
        return 0
    database = Database(settings)
    try:
        migrate(database.url)
        if command == "migrate":
            print("database is up to date")
            return 0
        if command == "serve":
            return _serve(args, settings, database.url)
        if command == "createuser":
            return _createuser(args, settings, database.url)
        if command == "token":
            from cli.users import UserError, create_token
            try:
                print(create_token(database.url, args.name))
            except UserError as exc:
                return _fail(str(exc))
            return 0
        if command == "demo":
            _print_demo(settings, database.url)
            return 0
        if command == "simulate":
            return _simulate(args, database.url)
        if command == "bench":
            from cli.bench import run_bench
            return run_bench(database.url, settings, args.updates, args.burst, args.clients)
        return _fail(f"unknown command {command!r}")
    finally:
        database.stop()


def _createuser(args: argparse.Namespace, settings: config.Settings, url: str) -> int:
    from cli.users import UserError, create_user
    from web.passwords import Passwords

    password = args.password
    if password is None:
        password = getpass.getpass(f"Password for {args.name}: ")
        if password != getpass.getpass("Again: "):
            return _fail("passwords do not match")
    if len(password) < 8:
        return _fail("password must be at least 8 characters")
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
        print(f"  {username:8} {password}")


def _simulate(args: argparse.Namespace, url: str) -> int:
    from cli.simulate import Simulator

    simulator = Simulator(url, args.rate)
    print(f"writing {args.rate:g} changes/s; Ctrl-C to stop", file=sys.stderr)
    with contextlib.suppress(KeyboardInterrupt):
        simulator.run()
    print(f"made {simulator.changes} changes", file=sys.stderr)
    return 0


def _serve(args: argparse.Namespace, settings: config.Settings, url: str) -> int:
    import uvicorn

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
        "ws_max_size": 256 * 1024,
        # Frames are small JSON sent at high rates on local networks: compressing each one
        # cost more CPU than sending it (py-spy, a 100,000-row UPDATE to a staff session).
        "ws_per_message_deflate": False,
        "timeout_graceful_shutdown": 5,
    }
    # uvicorn re-raises the signal that stopped it once it is done; by then shutdown is
    # complete, so let that be a no-op and finish normally (stopping the embedded database).
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    try:
        if settings.workers > 1:
            uvicorn.run("server:app_from_environment", factory=True, workers=settings.workers,
                        **options)
        else:
            from web.app import create_app

            uvicorn.run(create_app(settings, url), **options)
    finally:
        if simulator is not None:
            simulator.stop()
    return 0


def app_from_environment():  # type: ignore[no-untyped-def]
    """uvicorn factory for worker processes (the parent put DATABASE_URL in the environment)."""
    from web.app import create_app

    settings = config.load_settings()
    return create_app(settings, settings.database_url)


if __name__ == "__main__":
    sys.exit(main())
