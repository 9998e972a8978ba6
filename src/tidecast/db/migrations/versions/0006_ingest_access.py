"""Per-stream ingest address rules: CIDR allow and deny lists.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01

``streams.ingest_allow`` / ``streams.ingest_deny`` hold space-separated CIDRs
checked after the global lists (``ingest/access.py``); empty means no rule.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    for column in ("ingest_allow", "ingest_deny"):
        op.add_column(
            "streams", sa.Column(column, sa.String(4000), nullable=False, server_default="")
        )


def downgrade() -> None:
    with op.batch_alter_table("streams") as batch:
        batch.drop_column("ingest_deny")
        batch.drop_column("ingest_allow")
