"""Per-stream latency: low (LL-HLS parts) or standard (whole segments).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03

``streams.latency``: "" follows the node (``ll_hls``), "low" or "standard" sets it
for the broadcasts that start from then on.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("streams", sa.Column("latency", sa.String(10), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("streams") as batch:
        batch.drop_column("latency")
