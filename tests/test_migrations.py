"""The sweep database's schema migrations (gdn_tune/migrations): they build exactly the models, upgrade a
database of an older release and read its rows back, and refuse one from a newer release. On SQLite and
on a real PostgreSQL server (see conftest.py's postgres fixture)."""

import json

import pytest
import sqlalchemy as sa
from _helpers import execute_sql
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from gdn_kernels import Config, Key
from gdn_tune.migrations import FIRST_REVISION, VERSION_TABLE, head_revision, upgrade_schema
from gdn_tune.storage import BaseModel, Storage, StorageError
from gdn_tune.trial_result import Measurement, TrialStatus

KEY = Key((("T", 128),))
CONFIG = Config.of(BLOCK=256, num_warps=1, num_stages=1)
GRACE_S = 3.0


def _insert_first_release_rows(url: str) -> None:
    """A sweep, a problem and a trial as release 0.1.0 wrote them (ids 1: the database is new)."""
    execute_sql(
        url,
        "INSERT INTO tune_sweeps (fingerprint, target, gpu_name, compute_capability, triton_version, "
        "torch_version, interpret, strategy, strategy_options, command, started_at, status) VALUES "
        "(:fp, 'h200', 'NVIDIA H200', '9.0', '3.6.0', '2.13.0', false, 'grid', '{}', 'old', "
        "'2026-01-01 00:00:00', 'finished')",
        fp="f" * 64,
    )
    execute_sql(
        url,
        "INSERT INTO tune_problems (sweep_id, kernel, key_json, kernel_hash, default_config_json) "
        "VALUES (1, 'gdn_gating', :key, 'abc', :config)",
        key='{"T":128}',
        config=json.dumps(CONFIG.as_dict(), sort_keys=True, separators=(",", ":")),
    )
    execute_sql(
        url,
        "INSERT INTO tune_trials (problem_id, config_json, status, median_ms, finished_at) VALUES "
        "(1, :config, 'ok', 0.25, '2026-01-01 00:00:01')",
        config=json.dumps(CONFIG.as_dict(), sort_keys=True, separators=(",", ":")),
    )


def _schema_differences(storage: Storage) -> list:
    def ours(name, type_, *_):  # Alembic's own version table is not a model
        return not (type_ == "table" and name == VERSION_TABLE)

    with storage.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True, "include_name": ours})
        return compare_metadata(context, BaseModel.metadata)


def test_migrations_build_exactly_the_models(empty_db):
    storage = Storage(empty_db)
    assert storage.schema_revision == head_revision()
    assert _schema_differences(storage) == []


@pytest.mark.parametrize("version_table", [True, False], ids=["at-0001", "made-by-0.1.0"])
def test_a_database_of_the_first_revision_is_upgraded_and_its_rows_read_back(empty_db, version_table):
    engine = sa.create_engine(empty_db)
    assert upgrade_schema(engine, FIRST_REVISION) == FIRST_REVISION
    engine.dispose()
    if not version_table:  # release 0.1.0 created its tables directly, with no version table
        execute_sql(empty_db, f"DROP TABLE {VERSION_TABLE}")
    _insert_first_release_rows(empty_db)

    storage = Storage(empty_db)  # upgrades on open
    assert storage.schema_revision == head_revision() != FIRST_REVISION
    (sweep,) = storage.sweeps()
    (problem,) = storage.problems(sweep.id)
    (trial,) = storage.trials(problem.id)
    assert (sweep.fingerprint, problem.key, trial.config, trial.median_ms) == ("f" * 64, KEY, CONFIG, 0.25)
    assert (problem.claimed_by, problem.done_at, trial.worker) == (None, None, None)
    # The old rows work with the new columns: claim, measure, finish.
    assert storage.claim_problem(sweep.id, [problem.id], "host:1:a", GRACE_S).problem_id == problem.id
    slow = Config.of(BLOCK=512, num_warps=1, num_stages=1)
    storage.record_trial(problem.id, slow, Measurement(TrialStatus.OK, median_ms=0.5), worker="host:1:a/cpu0")
    assert storage.finish_problem("host:1:a", problem.id)
    assert _schema_differences(storage) == []


def test_duplicate_fingerprints_of_an_old_race_keep_the_newest_sweep(tmp_path):
    url = f"sqlite:///{tmp_path / 'race.db'}"
    upgrade_schema(sa.create_engine(url), FIRST_REVISION)
    for sweep_id in (1, 2):
        execute_sql(
            url,
            "INSERT INTO tune_sweeps (id, fingerprint, target, gpu_name, compute_capability, triton_version, "
            "torch_version, interpret, strategy, strategy_options, command, started_at, status) VALUES "
            "(:id, :fp, 'h200', 'x', '9.0', '3', '2', 0, 'grid', '{}', '', '2026-01-01', 'running')",
            id=sweep_id,
            fp="a" * 64,
        )
    storage = Storage(url)
    assert [(s.id, s.fingerprint) for s in storage.sweeps()] == [(1, "superseded 1 by 2"), (2, "a" * 64)]
    reopened, resumed = storage.open_sweep("a" * 64, target="h200")
    assert resumed and reopened.id == 2


def test_a_database_from_a_newer_release_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path / 'newer.db'}"
    Storage(url).dispose()
    execute_sql(url, f"UPDATE {VERSION_TABLE} SET version_num = '9999'")
    with pytest.raises(
        StorageError, match=r"revision 9999, which this gdn-tune does not know.*newer release"
    ):
        Storage(url)
