"""The sweep database: identities, uniqueness, winners that must be ok, errors that name URL and operation."""

import sqlite3

import pytest

from gdn_kernels import Config, Key
from gdn_tune.storage import (
    Storage,
    StorageError,
    SweepStatus,
    config_from_json,
    config_to_json,
    key_from_json,
    key_to_json,
)
from gdn_tune.trial_result import Measurement, TrialStatus

KEY = Key((("dtype", "bfloat16"), ("HV", 4), ("T", 128)))
FAST = Config.of(BLOCK=256, num_warps=2, num_stages=1)
SLOW = Config.of(BLOCK=1024, num_warps=4, num_stages=1)
SWEEP_FIELDS = dict(
    target="h200",
    gpu_name="NVIDIA H200",
    compute_capability="9.0",
    triton_version="3.6.0",
    torch_version="2.13.0",
    cuda_version="12.8",
    interpret=False,
    strategy="grid",
    command="gdn-tune sweep --gpu h200",
)


@pytest.fixture
def storage() -> Storage:
    return Storage("sqlite://")


def _problem(storage: Storage):
    sweep, _ = storage.open_sweep("f" * 64, **SWEEP_FIELDS)
    return sweep, storage.ensure_problem(sweep.id, "gdn_gating", KEY, "abc123", SLOW)


def test_key_and_config_json_round_trip_and_are_canonical():
    assert key_from_json(key_to_json(KEY)) == KEY
    assert key_to_json(KEY) == '{"dtype":"bfloat16","HV":4,"T":128}'  # field order kept
    assert config_from_json(config_to_json(FAST)) == FAST
    # Same config built in another parameter order: the same identity string.
    assert config_to_json(Config.of(num_stages=1, num_warps=2, BLOCK=256)) == config_to_json(FAST)


def test_reopening_a_sweep_with_the_same_fingerprint_resumes_it(storage):
    first, resumed_first = storage.open_sweep("a" * 64, **SWEEP_FIELDS)
    storage.close_sweep(first.id, SweepStatus.INTERRUPTED)
    again, resumed_again = storage.open_sweep("a" * 64, **SWEEP_FIELDS)
    other, resumed_other = storage.open_sweep("b" * 64, **SWEEP_FIELDS)
    assert (resumed_first, resumed_again, resumed_other) == (False, True, False)
    assert again.id == first.id and again.status == SweepStatus.RUNNING
    assert other.id != first.id


def test_ensure_problem_is_idempotent(storage):
    sweep, problem = _problem(storage)
    same = storage.ensure_problem(sweep.id, "gdn_gating", KEY, "abc123", SLOW)
    other_key = storage.ensure_problem(sweep.id, "gdn_gating", KEY.replace(T=256), "abc123", SLOW)
    assert same.id == problem.id and other_key.id != problem.id
    assert problem.key == KEY and problem.default_config == SLOW
    assert [p.id for p in storage.problems(sweep.id)] == [problem.id, other_key.id]


def test_a_trial_is_unique_per_problem_and_config_and_the_error_names_url_and_operation(storage):
    _, problem = _problem(storage)
    storage.record_trial(problem.id, FAST, Measurement(TrialStatus.OK, median_ms=0.1))
    with pytest.raises(StorageError) as raised:
        storage.record_trial(problem.id, FAST, Measurement(TrialStatus.OK, median_ms=0.2))
    message = str(raised.value)
    assert "sqlite://" in message and f"record trial {FAST.label} of problem {problem.id}" in message
    (kept,) = storage.trials(problem.id)
    assert kept.median_ms == 0.1  # the failed insert was rolled back, the first trial kept


def test_trial_counts_by_status(storage):
    sweep, problem = _problem(storage)
    storage.record_trial(problem.id, FAST, Measurement(TrialStatus.OK, median_ms=0.1))
    storage.record_trial(problem.id, SLOW, Measurement(TrialStatus.WRONG, rel_error=0.5))
    storage.record_trial(problem.id, Config.of(BLOCK=64, num_warps=1, num_stages=1), Measurement("timeout"))
    assert storage.trial_counts(sweep.id) == {"ok": 1, "wrong": 1, "timeout": 1}


def test_an_unknown_status_is_refused(storage):
    _, problem = _problem(storage)
    with pytest.raises(ValueError, match="'fast'"):
        storage.record_trial(problem.id, FAST, Measurement("fast"))


def test_winner_must_be_an_ok_trial_and_is_replaced_not_duplicated(storage):
    _, problem = _problem(storage)
    wrong = storage.record_trial(problem.id, SLOW, Measurement(TrialStatus.WRONG, rel_error=0.5))
    ok = storage.record_trial(problem.id, FAST, Measurement(TrialStatus.OK, median_ms=0.1))
    with pytest.raises(StorageError, match="not an ok trial"):
        storage.set_winner(problem.id, wrong.id, 0.05, None)
    storage.set_winner(problem.id, ok.id, 0.1, 0.3)
    storage.set_winner(problem.id, ok.id, 0.09, 0.3)
    winner = storage.winner(problem.id)
    assert (winner.trial_id, winner.time_ms, winner.default_time_ms) == (ok.id, 0.09, 0.3)


def test_a_file_database_uses_wal_and_keeps_trials_across_connections(tmp_path):
    path = tmp_path / "sweep.db"
    first = Storage(f"sqlite:///{path}")
    _, problem = _problem(first)
    first.record_trial(problem.id, FAST, Measurement(TrialStatus.OK, median_ms=0.1))
    first.dispose()
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert [t.config for t in Storage(f"sqlite:///{path}").trials(problem.id)] == [FAST]


def test_an_unusable_url_is_a_storage_error_naming_it(tmp_path):
    with pytest.raises(StorageError, match="nosuchdb://x"):
        Storage("nosuchdb://x")
    missing_dir = tmp_path / "missing" / "sweep.db"
    with pytest.raises(StorageError, match=r"missing/sweep\.db: create or upgrade the tables failed"):
        Storage(f"sqlite:///{missing_dir}")


def test_read_commands_refuse_a_missing_sqlite_file_instead_of_creating_one(tmp_path):
    missing = tmp_path / "typo.db"
    with pytest.raises(StorageError, match=r"no database there"):
        Storage(f"sqlite:///{missing}", must_exist=True)
    assert not missing.exists()
