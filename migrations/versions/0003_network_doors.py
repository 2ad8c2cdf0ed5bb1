"""network doors: dicom instances, api tokens, idempotency keys

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28 10:00:00.000000
"""

from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('api_tokens',
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('token_sha256', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('name'),
    sa.UniqueConstraint('token_sha256')
    )
    op.create_table('dicom_instances',
    sa.Column('sop_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('job_id', sa.String(length=32), nullable=False),
    sa.Column('sop_class_uid', sa.String(length=64), nullable=False),
    sa.Column('calling_ae_title', sa.String(length=16), nullable=True),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], ),
    sa.PrimaryKeyConstraint('sop_instance_uid')
    )
    op.create_index('ix_dicom_instances_job_id', 'dicom_instances', ['job_id'], unique=False)
    op.create_table('idempotency_keys',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('token_name', sa.String(length=64), nullable=False),
    sa.Column('key', sa.String(length=255), nullable=False),
    sa.Column('request_sha256', sa.String(length=64), nullable=False),
    sa.Column('job_id', sa.String(length=32), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('token_name', 'key', name='uq_idempotency_keys_token_key')
    )
    # A re-sent DICOM instance is looked up by its SOP Instance UID.
    op.create_index('ix_images_sop_instance_uid', 'images', ['sop_instance_uid'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_images_sop_instance_uid', table_name='images')
    op.drop_table('idempotency_keys')
    op.drop_index('ix_dicom_instances_job_id', table_name='dicom_instances')
    op.drop_table('dicom_instances')
    op.drop_table('api_tokens')
