"""Recordings heal: which segments were re-made after a gap, and per-broadcast counts.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27

``segments.healed`` marks a segment first recorded as a gap (or not at all) and
re-made later. ``broadcasts.gaps`` / ``broadcasts.healed`` count them for ended
broadcasts; existing broadcasts get their gap count from their rows here.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "segments", sa.Column("healed", sa.Boolean(), nullable=False, server_default=sa.false())
    )
    op.add_column("broadcasts", sa.Column("gaps", sa.Integer(), nullable=False, server_default="0"))
    op.add_column(
        "broadcasts", sa.Column("healed", sa.Integer(), nullable=False, server_default="0")
    )
    segments = sa.table(
        "segments", sa.column("broadcast_id", sa.String()), sa.column("gap", sa.Boolean())
    )
    broadcasts = sa.table(
        "broadcasts", sa.column("id", sa.String()), sa.column("gaps", sa.Integer())
    )
    gaps = (
        sa.select(sa.func.count())
        .select_from(segments)
        .where(segments.c.broadcast_id == broadcasts.c.id, segments.c.gap.is_(True))
        .scalar_subquery()
    )
    op.execute(broadcasts.update().values(gaps=gaps))


def downgrade() -> None:
    with op.batch_alter_table("broadcasts") as batch:
        batch.drop_column("healed")
        batch.drop_column("gaps")
    with op.batch_alter_table("segments") as batch:
        batch.drop_column("healed")
