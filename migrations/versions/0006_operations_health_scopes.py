"""operations: role health, token scopes and owners, DICOM re-send link

``role_health`` holds what ``melanoma-triage run`` last saw of each role (liveness probes,
process states). API tokens get a scope; every token made before this revision keeps the
rights it had (``admin``). ``job_owners`` records which token submitted a job (a ``submit``
token reads only its own jobs). ``dicom_instances.previous_job_id`` links a complete
instance to the rejected one that came first with the same SOP Instance UID.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05 17:00:00.000000
"""

from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('role_health',
    sa.Column('role', sa.String(length=32), nullable=False),
    sa.Column('probe_id', sa.String(length=36), nullable=True),
    sa.Column('probe_sent_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('answered_id', sa.String(length=36), nullable=True),
    sa.Column('answered_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('process_state', sa.String(length=16), nullable=True),
    sa.Column('restarts', sa.Integer(), server_default='0', nullable=False),
    sa.Column('detail', sa.String(length=200), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('role')
    )
    op.create_table('job_owners',
    sa.Column('job_id', sa.String(length=32), nullable=False),
    sa.Column('token_name', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], ),
    sa.PrimaryKeyConstraint('job_id', 'token_name')
    )
    with op.batch_alter_table('api_tokens', schema=None) as batch_op:
        batch_op.add_column(sa.Column('scope', sa.String(length=16), server_default='admin', nullable=False))
    with op.batch_alter_table('dicom_instances', schema=None) as batch_op:
        batch_op.add_column(sa.Column('previous_job_id', sa.String(length=32), nullable=True))
        batch_op.create_foreign_key('fk_dicom_instances_previous_job_id_jobs', 'jobs',
                                    ['previous_job_id'], ['id'])


def downgrade() -> None:
    with op.batch_alter_table('dicom_instances', schema=None) as batch_op:
        batch_op.drop_constraint('fk_dicom_instances_previous_job_id_jobs', type_='foreignkey')
        batch_op.drop_column('previous_job_id')
    with op.batch_alter_table('api_tokens', schema=None) as batch_op:
        batch_op.drop_column('scope')
    op.drop_table('job_owners')
    op.drop_table('role_health')
