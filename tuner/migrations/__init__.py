"""The schema of gdn-tune's tables, created and migrated with Alembic when a database is opened.

`upgrade_schema` brings any database to the newest revision this release knows: an empty one gets every
table, one made by an older release gets the revisions it lacks, one made by release 0.1.0 (tables, no
version table: that release created them directly) is first stamped at revision 0001. A database
already at a revision newer than this release knows is refused: this release could misread it.

On PostgreSQL the upgrade holds a transaction-level advisory lock, so two sweep processes started at the
same moment on an empty database do not both create the tables: the second waits, then finds them there.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection, Engine

# Alembic's default `alembic_version` is Optuna's: its TPE studies live in the same database.
VERSION_TABLE = "tune_alembic_version"
FIRST_REVISION = "0001"  # the tables of release 0.1.0, which had no version table
# Key of the PostgreSQL advisory lock held while upgrading: any constant no other tool of the database
# uses; these are the bytes of "gdntune" read as a big-endian integer.
MIGRATION_LOCK_KEY = int.from_bytes(b"gdntune", "big")
# Held while Optuna creates its own tables: its RDBStorage checks then creates, and two processes doing
# that at once on an empty PostgreSQL database collide ("duplicate key value violates unique constraint
# pg_type_typname_nsp_index").
OPTUNA_SCHEMA_LOCK_KEY = int.from_bytes(b"gdnoptu", "big")


class SchemaError(RuntimeError):
    """The database's schema is one this release cannot use."""


def alembic_config(connection: Connection | None = None) -> AlembicConfig:
    """The Alembic configuration of gdn-tune's migrations, bound to `connection` when given."""
    config = AlembicConfig()
    config.set_main_option("script_location", str(Path(__file__).parent))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(connection: Connection) -> str | None:
    """The revision the database is at; None for a database without gdn-tune's version table."""
    return MigrationContext.configure(
        connection, opts={"version_table": VERSION_TABLE}
    ).get_current_revision()


def upgrade_schema(engine: Engine, revision: str = "head") -> str:
    """Bring the database to `revision` (default: the newest); returns the revision it is at."""
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(sa.select(sa.func.pg_advisory_xact_lock(MIGRATION_LOCK_KEY)))
        tables = set(sa.inspect(connection).get_table_names())
        config = alembic_config(connection)
        known = {script.revision for script in ScriptDirectory.from_config(config).walk_revisions()}
        at = current_revision(connection)
        if at is not None and at not in known:
            raise SchemaError(
                f"the database's schema is at revision {at}, which this gdn-tune does not know (its newest "
                f"is {head_revision()}): it was made by a newer release; upgrade gdn-tune"
            )
        if at is None and "tune_sweeps" in tables:
            command.stamp(config, FIRST_REVISION)  # made by 0.1.0, which created the tables directly
        command.upgrade(config, revision)
        return current_revision(connection) or ""


@contextmanager
def optuna_schema_lock(url: str) -> Iterator[None]:
    """On PostgreSQL, hold a session-level advisory lock for the block (Optuna's RDBStorage creating its
    tables inside it); elsewhere nothing: SQLite has one writing process."""
    from gdn_tune.storage import database_url

    parsed = database_url(url)
    if parsed.get_backend_name() != "postgresql":
        yield
        return
    engine = sa.create_engine(parsed, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as connection:
            connection.execute(sa.select(sa.func.pg_advisory_lock(OPTUNA_SCHEMA_LOCK_KEY)))
            connection.commit()
            try:
                yield
            finally:
                connection.execute(sa.select(sa.func.pg_advisory_unlock(OPTUNA_SCHEMA_LOCK_KEY)))
                connection.commit()
    finally:
        engine.dispose()
