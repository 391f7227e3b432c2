"""Schemathesis against GET /api/openapi.json: every operation, as a regular user and as
staff, with schema-valid and schema-violating requests; no 5xx, and every response is a
documented status whose JSON body matches the schema.

Cases run (schemathesis 4.32.5, 60 examples per operation, mode and role): 2160, 1080 as a
regular user and 1080 as staff over the 9 operations, in 25-45 s. What it found: a staff
`owner=<past bigint>` answered an undocumented 422 with asyncpg's message (now a 400), and
`owner`, `sort`, `quantity` and `price` are now described precisely enough to generate.
The checks: no 5xx, documented status codes and content types, JSON bodies matching the
response schemas, 405 for undocumented methods. schemathesis' positive_data_acceptance and
negative_data_rejection are left out on purpose: the schema cannot say that an owner_id must
exist or that quantity must be > 0, and the API ignores `q` under format=datatables.
"""

from __future__ import annotations

import os
import secrets
from collections import Counter
from collections.abc import Iterator

import psycopg
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from cli.users import create_token, create_user
from db.embedded import database_url
from db.migrate import migrate
from tests.conftest import FAST_PASSWORDS, ServerProcess, insert_order
from web.openapi import SPEC

# Examples per operation, per generation mode, per role (operations x 2 modes x 2 roles).
EXAMPLES = int(os.environ.get("SCHEMATHESIS_EXAMPLES", "60"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, unsupported_method]


@pytest.fixture(scope="module")
def api_server(server_url: str, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[tuple[ServerProcess, dict[str, str], list[int]]]:
    """A server on a database of its own: staff cases delete orders, revoke tokens and make
    users staff at random ids, which must not reach the other tests' users."""
    name = f"orderstream_schemathesis_{os.getpid()}_{secrets.token_hex(3)}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = database_url(server_url, name)
    migrate(url)
    tokens = {}
    order_ids: list[int] = []
    for role, staff in (("user", False), ("staff", True)):
        username = f"schema_{role}"
        user_id = create_user(url, FAST_PASSWORDS, username, secrets.token_urlsafe(12), staff)
        tokens[role] = create_token(url, username)
        with psycopg.connect(url, autocommit=True) as conn:
            # DELETE /api/tokens/{token_id} at generated ids must not revoke the token the
            # cases run with: move it to an id no generator will pick.
            conn.execute("UPDATE api_tokens SET id = %s WHERE user_id = %s",
                         (2**62 + secrets.randbelow(2**60), user_id))
            for i in range(3):
                order_ids.append(insert_order(conn, user_id, f"S{role}{i}"))
    proc = ServerProcess(url, tmp_path_factory.mktemp("schemathesis"), extra_env={
        # Staff cases create users: hash their passwords cheaply.
        "ORDERSTREAM_ARGON2_TIME_COST": "1", "ORDERSTREAM_ARGON2_MEMORY_COST_KIB": "8192"})
    proc.start()
    yield proc, tokens, order_ids
    proc.stop()
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.slow
@pytest.mark.parametrize("role", ["user", "staff"])
def test_api_matches_its_schema(api_server, role: str) -> None:
    proc, tokens, order_ids = api_server
    schema = schemathesis.openapi.from_url(proc.base_url + "/api/openapi.json")
    headers = {"Authorization": f"Bearer {tokens[role]}"}
    statuses: Counter[int] = Counter()
    cases = 0
    operations = 0
    with requests.Session() as http:
        for result in schema.get_all_operations():
            operation = result.ok()
            operations += 1
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

                strategy = operation.as_strategy(generation_mode=mode)
                if "{order_id}" in operation.path:
                    # Random ids rarely exist: half the cases aim at real orders, the user's
                    # own and the other role's (which a regular user must get a 404 for).
                    strategy = strategy | st.sampled_from(order_ids).flatmap(
                        lambda i, m=mode, o=operation: o.as_strategy(
                            generation_mode=m, path_parameters={"order_id": i}))

                @given(case=strategy)
                @settings(max_examples=EXAMPLES, deadline=None, database=None,
                          suppress_health_check=list(HealthCheck),
                          phases=[Phase.explicit, Phase.generate, Phase.shrink])
                def check(case: schemathesis.Case) -> None:
                    nonlocal cases
                    cases += 1
                    response = case.call_and_validate(base_url=proc.base_url, session=http,
                                                      headers=headers, checks=CHECKS)
                    statuses[response.status_code] += 1

                check()
    print(f"\nschemathesis as {role}: {cases} cases over {operations} operations;"
          f" statuses {dict(sorted(statuses.items()))}")
    assert operations == sum(method in ("get", "post", "patch", "delete")
                             for path in SPEC["paths"].values() for method in path)
    assert not any(status >= 500 for status in statuses)
    # The token worked: some requests were served, not all refused as unauthenticated.
    assert statuses[200] > 0
