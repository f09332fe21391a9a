"""circuits: a circuit breaker per connector, shared by every process, and its history

Revision ID: 0003_circuits
Revises: 0002_ops
Create Date: 2026-12-07 18:40:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_circuits"
down_revision: str | Sequence[str] | None = "0002_ops"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _when(name: str, nullable: bool = True) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "circuits",
        sa.Column("connector", sa.String(length=100), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("cool_down", sa.Float(), nullable=False),
        _when("opened_at"),
        _when("probe_at"),
        sa.Column("probe_by", sa.String(length=100), nullable=True),
        _when("probe_until"),
        sa.Column("manual", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        _when("updated_at", nullable=False),
        sa.PrimaryKeyConstraint("connector", name=op.f("pk_circuits")),
    )
    op.create_table(
        "circuit_transitions",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("connector", sa.String(length=100), nullable=False),
        _when("at", nullable=False),
        sa.Column("from_state", sa.String(length=16), nullable=False),
        sa.Column("to_state", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("worker", sa.String(length=100), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_circuit_transitions")),
    )
    with op.batch_alter_table("circuit_transitions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_circuit_transitions_connector_id"), ["connector", "id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("circuit_transitions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_circuit_transitions_connector_id"))
    op.drop_table("circuit_transitions")
    op.drop_table("circuits")
