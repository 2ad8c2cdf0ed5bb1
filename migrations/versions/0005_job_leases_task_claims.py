"""job leases and send bookkeeping; task claims

Jobs get the running attempt's lease (renewed by a heartbeat; once past, the worker is
taken for dead and the job is sent again) and a record of the messages sent for them (the
reconciler re-sends at most once per stale period). ``task_claims`` holds the ids of task
messages already run, so a redelivered retraining message does nothing.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28 13:00:00.000000
"""

from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('lease_expires_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('last_sent_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('sent_count', sa.Integer(), server_default='0', nullable=False))
    op.create_table('task_claims',
    sa.Column('task_id', sa.String(length=64), nullable=False),
    sa.Column('task_name', sa.String(length=64), nullable=False),
    sa.Column('claimed_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('task_id')
    )


def downgrade() -> None:
    op.drop_table('task_claims')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('sent_count')
        batch_op.drop_column('last_sent_at')
        batch_op.drop_column('lease_expires_at')
