"""The naive build that `bench --fanout` measures orderstream against (issue 8): Starlette
plus a generic LISTEN/NOTIFY pub/sub, one channel per owner, a row trigger that notifies the
row as JSON, an unbounded queue per socket, and no authentication, ordering or recovery.

Run by the bench as `python -m cli.naive_build --port P --dsn URL`; `install(conn)` and
`uninstall(conn)` create and drop its table and trigger in the bench's database.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import AsyncIterator

import asyncpg
import psycopg
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

TABLE = "bench_naive_orders"

_INSTALL = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    owner_id bigint NOT NULL,
    instrument text NOT NULL,
    side text NOT NULL DEFAULT 'buy',
    quantity numeric NOT NULL,
    price numeric NOT NULL,
    status text NOT NULL DEFAULT 'new',
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE OR REPLACE FUNCTION bench_naive_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('owner_' || NEW.owner_id, json_build_object(
        'type', 'order', 'op', lower(TG_OP),
        'ts', round(extract(epoch FROM clock_timestamp()) * 1000, 3),
        'order', row_to_json(NEW))::text);
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS bench_naive_notify ON {TABLE};
CREATE TRIGGER bench_naive_notify AFTER INSERT OR UPDATE ON {TABLE}
    FOR EACH ROW EXECUTE FUNCTION bench_naive_notify();
"""


def install(conn: psycopg.Connection) -> None:
    conn.execute(_INSTALL)  # type: ignore[arg-type]  # fixed text, no parameters


def uninstall(conn: psycopg.Connection) -> None:
    conn.execute(f"DROP TABLE IF EXISTS {TABLE}")  # type: ignore[arg-type]
    conn.execute("DROP FUNCTION IF EXISTS bench_naive_notify()")


class PubSub:
    """One LISTEN connection; each channel's payloads go to every queue subscribed to it."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.conn: asyncpg.Connection | None = None
        self.queues: dict[str, set[asyncio.Queue[str]]] = {}
        self._listening = asyncio.Lock()  # one command at a time on the connection

    async def start(self) -> None:
        self.conn = await asyncpg.connect(self.dsn)

    async def stop(self) -> None:
        if self.conn is not None:
            await self.conn.close()

    def _deliver(self, _conn: object, _pid: int, channel: str, payload: str) -> None:
        for queue in self.queues.get(channel, ()):
            queue.put_nowait(payload)

    @contextlib.asynccontextmanager
    async def subscribe(self, channel: str) -> AsyncIterator[asyncio.Queue[str]]:
        assert self.conn is not None
        queue: asyncio.Queue[str] = asyncio.Queue()
        async with self._listening:
            if channel not in self.queues:
                await self.conn.add_listener(channel, self._deliver)
                self.queues[channel] = set()
        self.queues[channel].add(queue)
        try:
            yield queue
        finally:
            self.queues[channel].discard(queue)


def create_app(dsn: str) -> Starlette:
    pubsub = PubSub(dsn)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        await pubsub.start()
        yield
        await pubsub.stop()

    async def endpoint(websocket: WebSocket) -> None:
        owner = int(websocket.query_params["owner"])
        async with pubsub.subscribe(f"owner_{owner}") as queue:
            # Accepted once LISTENing: a client that is connected misses nothing.
            await websocket.accept()

            async def forward() -> None:
                while True:
                    await websocket.send_text(await queue.get())

            sender = asyncio.create_task(forward())
            try:
                while (await websocket.receive())["type"] != "websocket.disconnect":
                    pass
            except WebSocketDisconnect:
                pass
            finally:
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await sender

    return Starlette(routes=[WebSocketRoute("/ws", endpoint)], lifespan=lifespan)


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dsn", required=True)
    args = parser.parse_args()
    # The same server options as `serve`, so the comparison is of the two apps.
    uvicorn.run(create_app(args.dsn), host="127.0.0.1", port=args.port, log_level="warning",
                ws_max_size=256 * 1024, ws_per_message_deflate=False)


if __name__ == "__main__":
    main()
