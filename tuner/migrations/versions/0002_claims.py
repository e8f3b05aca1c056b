"""Several sweep processes on one database: problem claims with heartbeats, one sweep per fingerprint,
and the worker that measured each trial.

- tune_problems gets claimed_by / claimed_at / heartbeat_at / done_at: a process claims a problem
  (SELECT ... FOR UPDATE SKIP LOCKED), refreshes heartbeat_at while it works, and sets done_at when
  the problem's search and pick are over. A claim whose heartbeat is older than the grace period
  belongs to a dead process and goes back to the pool.
- tune_sweeps.fingerprint becomes unique, so two processes starting the same command at once open
  one sweep (the second insert fails and reads the first's row). Release 0.1.0 never wrote two rows of
  one fingerprint from one process; rows two of its processes raced into are kept, the older renamed
  "superseded <id> by <id>" (the newest is the one 0.1.0 resumed).
- tune_trials.worker names the process and worker (GPU) that measured the trial.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tune_problems") as batch:
        batch.add_column(sa.Column("claimed_by", sa.String(128), nullable=True))
        batch.add_column(sa.Column("claimed_at", sa.DateTime(), nullable=True))
        batch.add_column(sa.Column("heartbeat_at", sa.DateTime(), nullable=True))
        batch.add_column(sa.Column("done_at", sa.DateTime(), nullable=True))
    with op.batch_alter_table("tune_trials") as batch:
        batch.add_column(sa.Column("worker", sa.String(160), nullable=True))

    sweeps = sa.table("tune_sweeps", sa.column("id", sa.Integer), sa.column("fingerprint", sa.String))
    connection = op.get_bind()
    newest: dict[str, int] = {}
    rows = connection.execute(sa.select(sweeps.c.id, sweeps.c.fingerprint).order_by(sweeps.c.id)).all()
    for sweep_id, fingerprint in rows:
        newest[fingerprint] = sweep_id
    for sweep_id, fingerprint in rows:
        if newest[fingerprint] != sweep_id:
            connection.execute(
                sweeps.update()
                .where(sweeps.c.id == sweep_id)
                .values(fingerprint=f"superseded {sweep_id} by {newest[fingerprint]}")
            )
    op.drop_index("ix_tune_sweeps_fingerprint", table_name="tune_sweeps")
    op.create_index("ix_tune_sweeps_fingerprint", "tune_sweeps", ["fingerprint"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_tune_sweeps_fingerprint", table_name="tune_sweeps")
    op.create_index("ix_tune_sweeps_fingerprint", "tune_sweeps", ["fingerprint"])
    with op.batch_alter_table("tune_trials") as batch:
        batch.drop_column("worker")
    with op.batch_alter_table("tune_problems") as batch:
        for column in ("done_at", "heartbeat_at", "claimed_at", "claimed_by"):
            batch.drop_column(column)
