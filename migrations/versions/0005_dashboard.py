"""manual_retries: who retried a delivery by hand, and when (attempt numbers keep counting);
attempts by start time, covering what the dashboard's charts read

Revision ID: 0005_dashboard
Revises: 0004_rate_buckets
Create Date: 2026-12-07 18:40:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_dashboard"
down_revision: str | Sequence[str] | None = "0004_rate_buckets"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "manual_retries",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("delivery_id", _ID, nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("requested_by", sa.String(length=100), nullable=True),
        sa.Column("after_attempt_id", _ID, nullable=True),
        sa.Column("number_base", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["delivery_id"],
            ["deliveries.id"],
            name=op.f("fk_manual_retries_delivery_id_deliveries"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_manual_retries")),
    )
    with op.batch_alter_table("manual_retries", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_manual_retries_delivery_id"), ["delivery_id"], unique=False
        )
    with op.batch_alter_table("attempts", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_attempts_started_at_delivery_id_outcome_duration_ms"),
            ["started_at", "delivery_id", "outcome", "duration_ms"],
            unique=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("attempts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_attempts_started_at_delivery_id_outcome_duration_ms"))
    with op.batch_alter_table("manual_retries", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_manual_retries_delivery_id"))
    op.drop_table("manual_retries")
