"""Engine factory and schema management (Alembic)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Literal

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine as sa_create_engine
from sqlalchemy import event, inspect, text
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool, SingletonThreadPool

MIGRATIONS = Path(str(resources.files("relay.migrations")))
VERSION_TABLE = "alembic_version"


class SchemaOutOfDate(RuntimeError):
    pass


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


SqliteSync = Literal["full", "normal"]
_SYNC_PRAGMA: dict[str, str] = {"full": "FULL", "normal": "NORMAL"}
_SYNC_OPTION = "relay_sqlite_sync"  # an engine execution option: the twins below read it


def _sqlite_pragmas(
    engine: Engine,
    *,
    synchronous: SqliteSync = "full",
    busy_timeout_ms: int = 10000,
    checkpoint: bool = True,
) -> None:
    """One file, several connections: WAL lets readers run beside the writer, and busy_timeout
    turns "database is locked" into a short wait. ``synchronous=FULL`` (the default) syncs the WAL
    at every commit, so an event acknowledged to Wildix, which never sends it again, survives a
    power cut or an OS crash; a batch of events shares that one sync. ``NORMAL`` (the operator's
    opt-out, ``database.sqlite_sync``) syncs only at checkpoints: a commit survives a crash of
    relay but the last acknowledged events can vanish in a power cut. bench/README.md has the cost.
    """

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA synchronous={_SYNC_PRAGMA[synchronous]}")
        if not checkpoint:
            cur.execute("PRAGMA wal_autocheckpoint=0")
        cur.close()


def sqlite_sync(engine: AsyncEngine) -> SqliteSync:
    """The durability an aiosqlite engine was made with, for the engines that write beside it."""
    return engine.sync_engine.get_execution_options().get(_SYNC_OPTION, "full")


def create_sync_engine(url: URL, *, synchronous: SqliteSync = "full") -> Engine:
    """The plain-driver twin of an aiosqlite engine, for the store's writer thread."""
    engine = sa_create_engine(url.set(drivername="sqlite"))
    _sqlite_pragmas(engine, synchronous=synchronous)
    return engine


def create_inline_engine(url: URL, *, synchronous: SqliteSync = "full") -> Engine:
    """A plain-driver SQLite engine for short write transactions run on the event loop itself.

    It must never make the loop wait: ``BEGIN IMMEDIATE`` takes the write lock up front and,
    with no busy timeout, fails at once when another connection holds it (the caller then
    goes to the writer thread, which may wait). It never checkpoints the WAL either (a
    checkpoint copies pages and syncs the file): the store runs those off the loop.
    """
    engine = sa_create_engine(url.set(drivername="sqlite"), poolclass=SingletonThreadPool)
    _sqlite_pragmas(engine, synchronous=synchronous, busy_timeout_ms=0, checkpoint=False)

    @event.listens_for(engine, "connect")
    def _manual_begin(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # the driver's own deferred BEGIN stays out

    @event.listens_for(engine, "begin")
    def _begin_immediate(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def create_engine(
    url: str, *, pool_size: int = 10, echo: bool = False, sqlite_sync: SqliteSync = "full"
) -> AsyncEngine:
    """``sqlite_sync`` is ``database.sqlite_sync``; PostgreSQL's durability is its own setting."""
    if is_sqlite(url):
        if sqlite_sync not in _SYNC_PRAGMA:
            raise ValueError(f"sqlite_sync must be one of {sorted(_SYNC_PRAGMA)}")
        pool = NullPool if ":memory:" in url else None
        engine = create_async_engine(
            url, echo=echo, poolclass=pool, execution_options={_SYNC_OPTION: sqlite_sync}
        )
        _sqlite_pragmas(engine.sync_engine, synchronous=sqlite_sync)
        return engine
    return create_async_engine(
        url, echo=echo, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True
    )


def alembic_config() -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def _current(conn: Connection) -> str | None:
    """Read ``alembic_version`` directly: Alembic's ``MigrationContext`` logs two INFO lines each
    time it is made, and ``/readyz`` asks on every probe."""
    if not inspect(conn).has_table(VERSION_TABLE):
        return None
    rows = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()
    if len(rows) > 1:
        raise RuntimeError(f"{VERSION_TABLE} holds several revisions: {sorted(rows)}")
    return rows[0] if rows else None


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        return await conn.run_sync(_current)


async def accepts_writes(engine: AsyncEngine, *, wait: float = 2.0) -> None:
    """Raise unless the database takes a write now (a read-only file, a read-only PostgreSQL
    replica or transaction default, a full disk…): readiness is about storing events, not only
    reading. A one-row no-op update, rolled back, so nothing is written and the lock is brief;
    it waits at most ``wait`` seconds for a lock another writer holds (a probe must answer
    sooner than the load balancer gives up on it)."""
    ms = int(wait * 1000)
    async with engine.connect() as conn:
        sqlite = conn.dialect.name == "sqlite"
        previous = (await conn.execute(text("PRAGMA busy_timeout"))).scalar() if sqlite else None
        try:
            if sqlite:
                await conn.execute(text(f"PRAGMA busy_timeout = {ms}"))
            else:
                await conn.execute(text(f"SET LOCAL lock_timeout = '{ms}ms'"))
            await conn.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = version_num"))
        finally:
            await conn.rollback()
            if sqlite:
                await conn.execute(text(f"PRAGMA busy_timeout = {int(previous or 0)}"))


async def migrate(engine: AsyncEngine, revision: str = "head") -> None:
    def upgrade(conn: Connection) -> None:
        cfg = alembic_config()
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)

    async with engine.begin() as conn:
        await conn.run_sync(upgrade)


async def ensure_schema(engine: AsyncEngine, *, auto_migrate: bool) -> None:
    """Refuse to run on an old schema, or bring it to head when allowed."""
    current, head = await current_revision(engine), head_revision()
    if current == head:
        return
    if auto_migrate:
        await migrate(engine)
        return
    raise SchemaOutOfDate(
        f"database schema is at {current or 'nothing'}, this relay needs {head}: "
        "run `relay migrate` first"
    )
