"""Playback access and HLS encryption.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01

``streams.access`` (public | token | password), ``streams.password_hash`` (scrypt)
and ``streams.encryption`` (none | aes-128); ``broadcasts.key_seed``: the seed of a
broadcast's AES-128 keys, "" for a broadcast in the clear.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "streams", sa.Column("access", sa.String(10), nullable=False, server_default="public")
    )
    op.add_column(
        "streams", sa.Column("password_hash", sa.String(200), nullable=False, server_default="")
    )
    op.add_column(
        "streams", sa.Column("encryption", sa.String(10), nullable=False, server_default="none")
    )
    op.add_column(
        "broadcasts", sa.Column("key_seed", sa.String(64), nullable=False, server_default="")
    )


def downgrade() -> None:
    with op.batch_alter_table("broadcasts") as batch:
        batch.drop_column("key_seed")
    with op.batch_alter_table("streams") as batch:
        batch.drop_column("encryption")
        batch.drop_column("password_hash")
        batch.drop_column("access")
