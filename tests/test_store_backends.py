"""The store's backends: one module per database, the only place a database is told from
another, and the named SQL they run, loaded from relay/store/sql/ as the wheel carries it."""

from __future__ import annotations

import ast
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import relay
from relay.ingest.accept import group_commit
from relay.store import db
from relay.store.named_sql import available, parse, queries
from relay.store.postgres import PgBackend
from relay.store.records import BACKENDS, Store
from relay.store.sqlite import SqliteBackend
from relay.store.states import ACTIVE, DeliveryState

RELAY = Path(relay.__file__).parent
STORE = RELAY / "store"
# the backend module that runs each database's named SQL
BACKEND_MODULES = {"sqlite": STORE / "sqlite.py", "postgresql": STORE / "postgres.py"}
# where comparing dialect names is the point: the backends, the engine set-up, and SQLAlchemy's
# own per-dialect hook in a column type
ALLOWED = {
    (STORE / "sqlite.py", None),
    (STORE / "postgres.py", None),
    (STORE / "db.py", None),
    (STORE / "tables.py", "process_bind_param"),
}
DIALECT_NAMES = {"sqlite", "postgresql", "postgres", "asyncpg", "aiosqlite"}
STATE_NAMES = {state.value for state in DeliveryState}


def test_the_package_carries_each_backends_sql() -> None:
    assert sorted(available()) == [
        "ingest.postgresql",
        "ingest.sqlite",
        "queue.postgresql",
        "queue.sqlite",
        "rate.postgresql",  # SQLite's single process keeps its rate buckets in memory
    ]


@pytest.mark.parametrize("name", available())
def test_every_named_query_parses_and_its_backend_runs_it(name: str) -> None:
    named = queries(name)
    assert named, f"{name}.sql names no query"
    database = name.split(".")[-1]
    source = BACKEND_MODULES[database].read_text()
    assert f'queries("{name}")' in source
    for query, sql in named.items():
        assert f'["{query}"]' in source, f"{name}.sql: {query} is not used by its backend"
        assert "{state" not in sql, f"{name}.sql: {query} names a state that is not spelled"
        assert not sql.rstrip().endswith(";")


def test_query_names_are_unique_per_database() -> None:
    for database in BACKEND_MODULES:
        names = [q for name in available() if name.endswith(database) for q in queries(name)]
        assert len(names) == len(set(names)), names


def test_the_loader_spells_states_and_refuses_what_it_cannot_read() -> None:
    text = (
        "-- a file's introduction: not a query\n\n"
        "-- pick: one query\n-- more about it: still its comment\n"
        "SELECT 1 FROM deliveries WHERE state = {state:pending}\n"
        "  AND other IN ({states:active}) AND x = '{}';\n\n"
        "-- second: another\nSELECT {rows};\n"
    )
    named = parse(text)
    assert list(named) == ["pick", "second"]
    active = ", ".join(f"'{state}'" for state in ACTIVE)
    assert named["pick"] == (
        "SELECT 1 FROM deliveries WHERE state = 'pending'\n"
        f"  AND other IN ({active}) AND x = '{{}}'"
    )
    assert named["second"] == "SELECT {rows}"  # left for the backend
    with pytest.raises(ValueError, match="named twice"):
        parse("-- a: x\nSELECT 1;\n\n-- a: y\nSELECT 2;\n")
    with pytest.raises(ValueError, match="unknown state"):
        parse("-- a: x\nSELECT {state:waiting};\n")
    with pytest.raises(ValueError, match="no SQL"):
        parse("-- a: x\n-- nothing else\n")


def _dialect_comparisons(path: Path) -> list[str]:
    """Comparisons (and prefix tests) of a dialect name in one module, outside ALLOWED."""
    tree = ast.parse(path.read_text(), str(path))
    found: list[str] = []

    def names_dialect(node: ast.AST) -> bool:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value.split("+")[0] in DIALECT_NAMES
        if isinstance(node, ast.Attribute):
            return node.attr == "dialect" or (
                node.attr == "name"
                and isinstance(node.value, ast.Attribute)
                and node.value.attr == "dialect"
            )
        if isinstance(node, ast.Name):
            return node.id == "dialect"
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return any(names_dialect(e) for e in node.elts)
        return False

    def visit(node: ast.AST, function: str | None) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            function = node.name
        if (path, None) in ALLOWED or (path, function) in ALLOWED:
            return
        if isinstance(node, ast.Compare) and any(
            names_dialect(side) for side in [node.left, *node.comparators]
        ):
            found.append(f"{path}:{node.lineno}")
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in {"startswith", "endswith"}
            and any(names_dialect(arg) for arg in node.args)
        ):
            found.append(f"{path}:{node.lineno}")
        for child in ast.iter_child_nodes(node):
            visit(child, function)

    visit(tree, None)
    return found


def test_only_the_backends_tell_one_database_from_another() -> None:
    found = [hit for path in sorted(RELAY.rglob("*.py")) for hit in _dialect_comparisons(path)]
    assert found == [], f"dialect branches outside the store's backends: {found}"


def test_the_dialect_scan_sees_a_branch(tmp_path: Path) -> None:
    """The scan above catches the kinds of branch the backends replaced."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "def f(store, engine, url):\n"
        '    if store.dialect == "sqlite":\n'
        "        return 1\n"
        '    if engine.dialect.name in ("postgresql",):\n'
        "        return 2\n"
        '    return url.startswith("sqlite")\n'
    )
    assert len(_dialect_comparisons(probe)) == 3


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    engine = db.create_engine(db_url)
    if db.is_sqlite(db_url):
        await db.migrate(engine)
    store = Store(engine)
    yield store
    await store.close()


async def test_the_store_picks_its_backend_once_and_ingest_takes_its_shape(
    store: Store, db_url: str
) -> None:
    expected = SqliteBackend if db.is_sqlite(db_url) else PgBackend
    assert type(store.backend) is expected
    assert BACKENDS[store.engine.dialect.name] is expected
    writer = group_commit(store)
    assert writer.concurrency == expected.ingest.concurrency
    assert writer.max_batch == expected.ingest.max_batch
