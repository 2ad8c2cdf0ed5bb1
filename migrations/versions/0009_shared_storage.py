"""storage shared through the database: blobs; retention purges

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05 18:10:00.000000
"""

from alembic import op
import sqlalchemy as sa


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('blobs',
    sa.Column('key', sa.String(length=512), nullable=False),
    sa.Column('data', sa.LargeBinary(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('size_bytes', sa.BigInteger(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('key')
    )
    op.create_table('archive_purges',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('image_id', sa.String(length=32), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=True),
    sa.Column('location', sa.Text(), nullable=False),
    sa.Column('retention_days', sa.Integer(), nullable=False),
    sa.Column('purged_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['image_id'], ['images.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('archive_purges', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_archive_purges_image_id'), ['image_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('archive_purges', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_archive_purges_image_id'))
    op.drop_table('archive_purges')
    op.drop_table('blobs')
