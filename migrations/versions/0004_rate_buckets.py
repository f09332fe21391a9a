"""rate_buckets: token buckets every process of a PostgreSQL cluster shares

Revision ID: 0004_rate_buckets
Revises: 0003_circuits
Create Date: 2026-12-07 18:40:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_rate_buckets"
down_revision: str | Sequence[str] | None = "0003_circuits"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "rate_buckets",
        sa.Column("connector", sa.String(length=100), nullable=False),
        sa.Column("bucket", sa.String(length=255), nullable=False),
        sa.Column("tat", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("connector", "bucket", name=op.f("pk_rate_buckets")),
    )


def downgrade() -> None:
    op.drop_table("rate_buckets")
