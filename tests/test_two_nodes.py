"""Two `serve` processes on one database behind Debian's nginx, configured from
docs/deploy.md: a browser session on one node and a token socket on the other both receive a
psql write, and a login made through one node is valid on the other."""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest
import websockets

from tests.conftest import (
    ROOT,
    LocalAddress,
    ServerProcess,
    User,
    free_port,
    insert_order,
    login,
    open_live_page,
    wait_row,
)

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def _deploy_nginx_block() -> str:
    text = (ROOT / "docs" / "deploy.md").read_text()
    match = re.search(r"```nginx\n(.*?)```", text, re.S)
    assert match, "docs/deploy.md has no nginx block"
    return match.group(1)


@dataclass
class Proxy(LocalAddress):
    port: int


@contextlib.contextmanager
def nginx_in_front(nodes: list[ServerProcess], directory: Path) -> Iterator[Proxy]:
    """nginx with the docs' configuration, pointed at `nodes`; each response names the node
    that answered (X-Upstream, added for the test)."""
    if not Path(NGINX).exists():
        message = "the two-node test needs Debian's nginx (apt-get install -y nginx)"
        if os.environ.get("ORDERSTREAM_REQUIRE_BROWSER"):
            pytest.fail(message)
        pytest.skip(message)
    port = free_port()
    block = _deploy_nginx_block()
    upstream = "".join(f"    server 127.0.0.1:{node.port};\n" for node in nodes)
    block = re.sub(r"(upstream orderstream \{\n)(?:    server .*\n)+", r"\g<1>" + upstream, block)
    block = block.replace("listen 80;", f"listen 127.0.0.1:{port};")
    block = block.replace("proxy_pass http://orderstream;",
                          "proxy_pass http://orderstream;\n"
                          "        add_header X-Upstream $upstream_addr always;")
    temp = {name: directory / name for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi")}
    for path in temp.values():
        path.mkdir()
        path.chmod(0o777)
    config = directory / "nginx.conf"
    config.write_text(f"""
{"user root;" if os.geteuid() == 0 else ""}
worker_processes 1;
daemon off;
pid {directory}/nginx.pid;
error_log {directory}/nginx-error.log warn;
events {{ worker_connections 512; }}
http {{
    access_log off;
    client_body_temp_path {temp["body"]};
    proxy_temp_path {temp["proxy"]};
    fastcgi_temp_path {temp["fastcgi"]};
    uwsgi_temp_path {temp["uwsgi"]};
    scgi_temp_path {temp["scgi"]};
{block}
}}
""")
    errors = directory / "nginx-error.log"
    with errors.open("ab") as stderr:
        process = subprocess.Popen([NGINX, "-p", str(directory), "-c", str(config)],
                                   stdout=subprocess.DEVNULL, stderr=stderr)
    proxy = Proxy(port)
    try:
        deadline = time.monotonic() + 10
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"nginx exited: {errors.read_text()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(proxy.base_url + "/healthz", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("nginx did not come up")
            time.sleep(0.05)
        yield proxy
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture
def two_nodes(db_url: str, tmp_path: Path) -> Iterator[list[ServerProcess]]:
    shared = {"ORDERSTREAM_SECRET_KEY": secrets.token_urlsafe(32)}
    nodes = []
    for name in ("node-a", "node-b"):
        data = tmp_path / name
        data.mkdir()
        nodes.append(ServerProcess(db_url, data, extra_env=shared))
    try:
        for node in nodes:
            node.start()
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def _node_of(response_headers: httpx.Headers | websockets.datastructures.Headers,
             nodes: list[ServerProcess]) -> int:
    upstream = response_headers["x-upstream"]
    return [f"127.0.0.1:{node.port}" for node in nodes].index(upstream)


async def test_a_login_through_one_node_is_valid_on_the_other(
        two_nodes: list[ServerProcess], make_user, tmp_path: Path) -> None:
    user: User = make_user()
    with nginx_in_front(two_nodes, tmp_path) as proxy:
        async with httpx.AsyncClient(base_url=proxy.base_url, timeout=10) as client:
            await login(client, user)
            served_by = set()
            # nginx takes the nodes in turn: a few requests reach both.
            for _ in range(4):
                response = await client.get("/api/orders")
                assert response.status_code == 200, response.text
                served_by.add(_node_of(response.headers, two_nodes))
            assert served_by == {0, 1}


@pytest.mark.browser
async def test_a_browser_on_one_node_and_a_token_socket_on_the_other_see_a_psql_write(
        two_nodes: list[ServerProcess], browser, contexts, make_user, tmp_path: Path,
        sql: psycopg.Connection) -> None:
    user: User = make_user()
    with nginx_in_front(two_nodes, tmp_path) as proxy:
        context, page = await open_live_page(browser, proxy, user)  # type: ignore[arg-type]
        contexts.append(context)
        browser_node = None
        for index, node in enumerate(two_nodes):
            async with httpx.AsyncClient(base_url=node.base_url) as client:
                if "orderstream_sessions 1.0" in (await client.get("/metrics")).text:
                    browser_node = index
        assert browser_node is not None, "the browser's socket is on neither node"

        async with contextlib.AsyncExitStack() as stack:
            # Round robin: one of the next two handshakes lands on the other node.
            other = None
            for _ in range(2):
                conn = await stack.enter_async_context(
                    websockets.connect(proxy.ws_url, additional_headers=user.auth,
                                       open_timeout=5))
                if _node_of(conn.response.headers, two_nodes) != browser_node:
                    other = conn
                    break
            assert other is not None, "every handshake reached the browser's node"
            await other.send('{"op": "subscribe", "channel": "orders"}')
            assert '"subscribed"' in await other.recv()

            order_id = insert_order(sql, user.id, "TWONODE", "3", "42")
            await wait_row(page, order_id, "cell('instrument').dataset.value === 'TWONODE'")
            frame = json.loads(await other.recv())
            assert frame["type"] == "order" and frame["order"]["id"] == order_id, frame
