"""The tables of gdn-tune 0.1.0, the release before migrations: sweeps, problems, trials, winners.

A database that release made has these tables and no version table; `upgrade_schema` stamps it at this
revision and upgrades it from here. Written out in full (never imported from the models), so the
revision stays what that release created whatever the models become.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tune_sweeps",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("target", sa.String(32), nullable=False),
        sa.Column("gpu_name", sa.String(128), nullable=False),
        sa.Column("compute_capability", sa.String(8), nullable=False),
        sa.Column("triton_version", sa.String(32), nullable=False),
        sa.Column("torch_version", sa.String(64), nullable=False),
        sa.Column("cuda_version", sa.String(32), nullable=True),
        sa.Column("interpret", sa.Boolean(), nullable=False),
        sa.Column("strategy", sa.String(16), nullable=False),
        sa.Column("strategy_options", sa.Text(), nullable=False),
        sa.Column("command", sa.Text(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.CheckConstraint("status IN ('running', 'finished', 'interrupted', 'failed')", name="sweep_status"),
    )
    op.create_index("ix_tune_sweeps_fingerprint", "tune_sweeps", ["fingerprint"])
    op.create_table(
        "tune_problems",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "sweep_id", sa.Integer(), sa.ForeignKey("tune_sweeps.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("kernel", sa.String(64), nullable=False),
        sa.Column("key_json", sa.String(512), nullable=False),
        sa.Column("kernel_hash", sa.String(32), nullable=False),
        sa.Column("default_config_json", sa.String(512), nullable=False),
        sa.UniqueConstraint("sweep_id", "kernel", "key_json", name="problem_per_sweep"),
    )
    op.create_index("ix_tune_problems_sweep_id", "tune_problems", ["sweep_id"])
    op.create_table(
        "tune_trials",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "problem_id",
            sa.Integer(),
            sa.ForeignKey("tune_problems.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("config_json", sa.String(512), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("median_ms", sa.Float(), nullable=True),
        sa.Column("min_ms", sa.Float(), nullable=True),
        sa.Column("max_ms", sa.Float(), nullable=True),
        sa.Column("spread_ms", sa.Float(), nullable=True),
        sa.Column("repetitions", sa.Integer(), nullable=True),
        sa.Column("retimed_ms", sa.Float(), nullable=True),
        sa.Column("rel_error", sa.Float(), nullable=True),
        sa.Column("compile_seconds", sa.Float(), nullable=True),
        sa.Column("shared_bytes", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("finished_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("problem_id", "config_json", name="trial_per_problem_config"),
        sa.CheckConstraint(
            "status IN ('ok', 'infeasible', 'wrong', 'crashed', 'timeout')", name="trial_status"
        ),
    )
    op.create_index("ix_tune_trials_problem_id", "tune_trials", ["problem_id"])
    op.create_table(
        "tune_winners",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "problem_id",
            sa.Integer(),
            sa.ForeignKey("tune_problems.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column(
            "trial_id", sa.Integer(), sa.ForeignKey("tune_trials.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("time_ms", sa.Float(), nullable=False),
        sa.Column("default_time_ms", sa.Float(), nullable=True),
        sa.Column("chosen_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("problem_id", name="winner_per_problem"),
    )


def downgrade() -> None:
    for table in ("tune_winners", "tune_trials", "tune_problems", "tune_sweeps"):
        op.drop_table(table)
