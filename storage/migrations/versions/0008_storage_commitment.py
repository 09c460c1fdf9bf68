"""deliveries: the Storage Commitment transaction that asked the destination to commit them

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("transaction_uid", sa.String(length=64), nullable=True))
        batch_op.create_index("ix_deliveries_transaction", ["transaction_uid"])


def downgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_deliveries_transaction")
        batch_op.drop_column("transaction_uid")
