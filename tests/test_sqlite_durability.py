"""An event acknowledged to Wildix is never sent again, so on SQLite every connection that writes
syncs each commit (``synchronous=FULL``) unless the operator opts out with
``database.sqlite_sync: normal`` — shown on the pragma in effect in a running store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import Engine, text
from sqlalchemy.ext.asyncio import AsyncEngine

from relay.config import ConfigError, Settings, parse_config
from relay.registry import connector_types
from relay.runtime import running
from tests.support.relay import config_dict

FULL, NORMAL = 2, 1  # what `PRAGMA synchronous` answers


def settings(tmp_path: Path, **database: Any) -> Settings:
    data = config_dict(f"sqlite+aiosqlite:///{tmp_path}/relay.db", {"out": {"type": "log"}})
    data["database"].update(database)
    return parse_config(yaml.safe_dump(data), connector_types=connector_types(), env={})


async def pragma(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(text("PRAGMA synchronous"))).scalar_one())


def sync_pragma(engine: Engine) -> int:
    """Read on the engine's raw connection: through SQLAlchemy the inline engine would begin
    with BEGIN IMMEDIATE, which fails at once (no busy wait) while the running service writes."""
    conn = engine.raw_connection()
    try:
        return int(conn.cursor().execute("PRAGMA synchronous").fetchone()[0])
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("database", "expected"),
    [({}, FULL), ({"sqlite_sync": "full"}, FULL), ({"sqlite_sync": "normal"}, NORMAL)],
)
async def test_every_connection_of_a_running_store_syncs_as_configured(
    tmp_path: Path, database: dict[str, str], expected: int
) -> None:
    async with running(settings(tmp_path, **database), role="serve", dispatch=False) as rt:
        assert await pragma(rt.store.engine) == expected
        # the connections ingest actually commits on: the writer thread's and the loop's own
        backend = rt.store.backend
        assert sync_pragma(backend._sync_engine) == expected
        assert sync_pragma(backend._inline_engine) == expected


@pytest.mark.parametrize("value", ["off", "FULL", "extra", 2, True])
def test_a_bad_sqlite_sync_is_a_config_error_naming_the_key(tmp_path: Path, value: Any) -> None:
    with pytest.raises(ConfigError) as caught:
        settings(tmp_path, sqlite_sync=value)
    assert caught.value.path == "$.database.sqlite_sync"
    if isinstance(value, str):  # the values it takes are in the message
        assert "full|normal" in caught.value.message
