"""Alembic's environment for gdn-tune's own tables (tune_*), run only through `upgrade_schema`.

The connection comes from the caller, already inside a transaction (and, on PostgreSQL, holding the
migration lock), so every revision of one upgrade commits or rolls back together. The revision is kept in
its own version table: Optuna keeps its TPE studies in the same database and versions its schema with
Alembic's default table, `alembic_version`.
"""

from alembic import context

from gdn_tune.migrations import VERSION_TABLE
from gdn_tune.storage import BaseModel

context.configure(
    connection=context.config.attributes["connection"],
    target_metadata=BaseModel.metadata,
    version_table=VERSION_TABLE,
    render_as_batch=True,  # SQLite alters tables by copying them; batch mode does that for it
)
with context.begin_transaction():
    context.run_migrations()
