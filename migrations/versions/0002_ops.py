"""event_numbers: the phone numbers each event mentions (search, erasure), backfilled

Revision ID: 0002_ops
Revises: 0001
Create Date: 2026-11-30 09:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from relay.wildix.numbers import in_raw

revision: str = "0002_ops"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BATCH = 1000


def upgrade() -> None:
    op.create_table(
        "event_numbers",
        sa.Column("number", sa.String(length=32), nullable=False),
        sa.Column("event_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.ForeignKeyConstraint(
            ["event_id"],
            ["events.id"],
            name=op.f("fk_event_numbers_event_id_events"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("number", "event_id", name=op.f("pk_event_numbers")),
    )
    with op.batch_alter_table("event_numbers", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_event_numbers_event_id"), ["event_id"], unique=False)
    _backfill()


def _backfill() -> None:
    """Events stored before this revision must be findable (and erasable) by number too."""
    conn = op.get_bind()
    events = sa.table("events", sa.column("id"), sa.column("raw"))
    numbers = sa.table("event_numbers", sa.column("number"), sa.column("event_id"))
    last = 0
    while True:
        rows = conn.execute(
            sa.select(events.c.id, events.c.raw)
            .where(events.c.id > last)
            .order_by(events.c.id)
            .limit(_BATCH)
        ).all()
        if not rows:
            return
        found = [{"number": n, "event_id": row.id} for row in rows for n in in_raw(bytes(row.raw))]
        if found:
            conn.execute(numbers.insert(), found)
        last = rows[-1].id


def downgrade() -> None:
    with op.batch_alter_table("event_numbers", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_event_numbers_event_id"))
    op.drop_table("event_numbers")
