"""purges: studies and result objects deleted by retention or an admin stay indexed, marked

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.add_column(sa.Column("purged_at", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("purge_reason", sa.Text(), nullable=True))
    with op.batch_alter_table("results", schema=None) as batch_op:
        batch_op.add_column(sa.Column("purged_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("results", schema=None) as batch_op:
        batch_op.drop_column("purged_at")
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.drop_column("purge_reason")
        batch_op.drop_column("purged_at")
