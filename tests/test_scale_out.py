"""Scaling a sweep out: several workers on one host (SQLite), several processes on one PostgreSQL
database, and the schema migrations that let a database outlive a release.

The PostgreSQL tests start a real server (Debian's `postgresql` package, see _postgres.py) once for the
module; they are skipped only where its binaries are absent, and .ci/run installs them. Sweeps here tune
the TIMED_SPECS of _fake_kernels, whose fastest config is known in advance, so "the same winners as one
worker" is checked against the truth rather than against another noisy run.
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import _fake_kernels as fake
import pytest
import sqlalchemy as sa
from _postgres import PostgresCluster, postgres_bin_dir
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from gdn_kernels import Config, Key
from gdn_tune.migrations import FIRST_REVISION, VERSION_TABLE, head_revision, upgrade_schema
from gdn_tune.storage import BaseModel, Storage, StorageError
from gdn_tune.sweep import run_sweep
from gdn_tune.trial_result import Measurement, TrialStatus

TESTS = Path(__file__).parent
TIMED = "_fake_kernels:TIMED_SPECS"
TIMED_KERNELS = [s.name for s in fake.TIMED_SPECS]
TIMED_PROBLEMS = 2 * len(fake.TIMED_SPECS)  # the smoke preset's two keys, T 128 and T 64
TIMED_TRIALS = TIMED_PROBLEMS * len(fake.TIMED_BLOCKS)  # grid: every block, the default among them
GRACE_S = 3.0
KEY = Key((("T", 128),))
CONFIG = Config.of(BLOCK=256, num_warps=1, num_stages=1)


@pytest.fixture(scope="module")
def postgres():
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL binaries not found (Debian: apt-get install -y postgresql)")
    cluster = PostgresCluster(bin_dir)
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def empty_db(request, tmp_path) -> str:
    """URL of a new, empty database of each kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'sweep.db'}"
    return request.getfixturevalue("postgres").new_database()


def _execute(url: str, sql: str, **params) -> list[tuple]:
    engine = sa.create_engine(url)
    try:
        with engine.begin() as connection:
            result = connection.execute(sa.text(sql), params)
            return [tuple(r) for r in result] if result.returns_rows else []
    finally:
        engine.dispose()


def _insert_first_release_rows(url: str) -> None:
    """A sweep, a problem and a trial as release 0.1.0 wrote them (ids 1: the database is new)."""
    _execute(
        url,
        "INSERT INTO tune_sweeps (fingerprint, target, gpu_name, compute_capability, triton_version, "
        "torch_version, interpret, strategy, strategy_options, command, started_at, status) VALUES "
        "(:fp, 'h200', 'NVIDIA H200', '9.0', '3.6.0', '2.13.0', false, 'grid', '{}', 'old', "
        "'2026-01-01 00:00:00', 'finished')",
        fp="f" * 64,
    )
    _execute(
        url,
        "INSERT INTO tune_problems (sweep_id, kernel, key_json, kernel_hash, default_config_json) "
        "VALUES (1, 'gdn_gating', :key, 'abc', :config)",
        key='{"T":128}',
        config=json.dumps(CONFIG.as_dict(), sort_keys=True, separators=(",", ":")),
    )
    _execute(
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


# Schema ------------------------------------------------------------------------------------------


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
        _execute(empty_db, f"DROP TABLE {VERSION_TABLE}")
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
        _execute(
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
    _execute(url, f"UPDATE {VERSION_TABLE} SET version_num = '9999'")
    with pytest.raises(
        StorageError, match=r"revision 9999, which this gdn-tune does not know.*newer release"
    ):
        Storage(url)


# Claims ------------------------------------------------------------------------------------------


def _sweep_with_problems(storage: Storage, count: int) -> tuple[int, list[int]]:
    sweep, _ = storage.open_sweep(
        "c" * 64,
        target="h200",
        gpu_name="x",
        compute_capability="9.0",
        triton_version="3",
        torch_version="2",
        cuda_version=None,
        interpret=True,
        strategy="grid",
        command="",
    )
    ids = [
        storage.ensure_problem(sweep.id, "k", KEY.replace(T=64 << i), "h", CONFIG).id for i in range(count)
    ]
    return sweep.id, ids


def test_claims_are_exclusive_until_their_heartbeat_stops(empty_db):
    storage = Storage(empty_db)
    sweep_id, (first, second) = _sweep_with_problems(storage, 2)
    grace = 1.0
    a = storage.claim_problem(sweep_id, [first, second], "A", grace)
    b = storage.claim_problem(sweep_id, [first, second], "B", grace)
    assert (a.problem_id, a.taken_over_from, b.problem_id) == (first, None, second)
    assert storage.claim_problem(sweep_id, [first, second], "C", grace) is None  # both held
    assert storage.held_by_others(sweep_id, [first, second], "C", grace) == 2

    time.sleep(0.6)
    assert storage.heartbeat("A", [first]) == {first}  # A lives on; B has gone quiet
    time.sleep(0.6)
    taken = storage.claim_problem(sweep_id, [first, second], "C", grace)
    assert (taken.problem_id, taken.taken_over_from) == (second, "B")
    assert storage.heartbeat("B", [second]) == set()  # B learns it lost the problem
    assert not storage.finish_problem("B", second)
    assert storage.finish_problem("C", second)

    storage.release_claims("A", [first])  # Ctrl-C: back to the pool at once, no grace to wait
    assert storage.claim_problem(sweep_id, [first, second], "D", grace).problem_id == first
    # A finished problem is claimed again only when asked for (a larger budget has more to do on it).
    assert storage.done_problem_ids(sweep_id, [first, second]) == {second}
    storage.finish_problem("D", first)
    assert storage.claim_problem(sweep_id, [first, second], "E", grace) is None
    again = storage.claim_problem(sweep_id, [second], "E", grace, include_done=True)
    assert (again.problem_id, again.taken_over_from) == (second, None)


# Several workers, one process, SQLite ------------------------------------------------------------


def _winners(url: str) -> dict[tuple[str, int], int]:
    """{(kernel, T): winning BLOCK}"""
    rows = _execute(
        url,
        "SELECT p.kernel, p.key_json, t.config_json FROM tune_winners w "
        "JOIN tune_trials t ON t.id = w.trial_id JOIN tune_problems p ON p.id = w.problem_id",
    )
    return {(k, json.loads(key)["T"]): json.loads(config)["BLOCK"] for k, key, config in rows}


def _expected_winners() -> dict[tuple[str, int], int]:
    return {
        (f"fake_timed_{i}", T): fake.timed_winner(i, T)
        for i in range(len(fake.TIMED_SPECS))
        for T in (128, 64)
    }


def _trial_rows(url: str) -> list[tuple[str, int, int, str, str]]:
    """(kernel, T, BLOCK, status, worker) of every trial."""
    rows = _execute(
        url,
        "SELECT p.kernel, p.key_json, t.config_json, t.status, t.worker FROM tune_trials t "
        "JOIN tune_problems p ON p.id = t.problem_id",
    )
    return [(k, json.loads(key)["T"], json.loads(c)["BLOCK"], s, w) for k, key, c, s, w in rows]


def _assert_every_trial_once(url: str) -> list[tuple[str, int, int, str, str]]:
    rows = _trial_rows(url)
    measured = sorted((k, T, block) for k, T, block, _, _ in rows)
    expected = sorted((k, T, b) for k in TIMED_KERNELS for T in (128, 64) for b in fake.TIMED_BLOCKS)
    assert measured == expected  # none lost, none twice
    assert {status for *_, status, _ in rows} == {"ok"}
    return rows


@pytest.mark.parametrize("workers", [1, 3], ids=["workers1", "workers3"])
def test_several_workers_share_the_problems_on_sqlite_with_the_winners_of_one(tmp_path, workers):
    url = f"sqlite:///{tmp_path / 'workers.db'}"
    summary = run_sweep(
        "h200",
        preset="smoke",
        kernels=TIMED_KERNELS,
        extra_specs=[TIMED],
        interpret=True,
        workers=workers,
        db_url=url,
        compile_processes=1,
    )
    assert (summary.status, summary.problems, summary.winners) == ("finished", TIMED_PROBLEMS, TIMED_PROBLEMS)
    assert summary.trials_this_run == {"ok": TIMED_TRIALS}
    rows = _assert_every_trial_once(url)
    assert _winners(url) == _expected_winners()
    # Every worker (pseudo-device cpu0, cpu1, ...) measured: each claimed a problem of its own at once.
    assert {w.rsplit("/", 1)[1] for *_, w in rows} == {f"cpu{i}" for i in range(workers)}
    done = _execute(
        url,
        "SELECT COUNT(*) FROM tune_problems WHERE done_at IS NOT NULL AND claimed_by = :c",
        c=summary.claimant,
    )
    assert done == [(TIMED_PROBLEMS,)]


# Several processes, one PostgreSQL database ------------------------------------------------------


def _start_sweep(url: str, log: Path, *extra: str) -> subprocess.Popen:
    """`gdn-tune sweep` in a process group of its own (so a SIGKILL can take its workers too)."""
    command = [
        sys.executable,
        "-c",
        "from gdn_tune.cli import main; main()",
        *("sweep", "--gpu", "h200", "--interpret", "--preset", "smoke", "--db", url),
        *("--kernels", ",".join(TIMED_KERNELS), "--extra-specs", TIMED, "--workers", "1"),
        *("--claim-grace", str(GRACE_S), "--json", *extra),
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    with log.open("w") as out:
        return subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )


def _summary(process: subprocess.Popen, log: Path, timeout: float = 150) -> dict:
    assert process.wait(timeout=timeout) == 0, log.read_text()[-3000:]
    text = log.read_text()
    return json.loads(text[text.index("{\n") :])


def _kill_group(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def test_two_processes_share_one_sweep_on_postgres(postgres, tmp_path):
    url = postgres.new_database()
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    processes = [_start_sweep(url, log) for log in logs]
    try:
        # While they run: claims are kept alive (heartbeats, a quarter of the grace period apart).
        beats: set[int] = set()
        while any(p.poll() is None for p in processes):
            time.sleep(0.1)
            with contextlib.suppress(sa.exc.ProgrammingError):  # no tables yet
                beats |= {
                    problem_id
                    for (problem_id,) in _execute(
                        url,
                        "SELECT id FROM tune_problems WHERE done_at IS NULL AND heartbeat_at > claimed_at",
                    )
                }
        summaries = [_summary(p, log) for p, log in zip(processes, logs, strict=True)]
    finally:
        for process in processes:
            _kill_group(process)
    assert summaries[0]["sweep_id"] == summaries[1]["sweep_id"]  # the second joined the first's sweep
    assert {s["status"] for s in summaries} == {"finished"}
    assert all(s["winners"] == TIMED_PROBLEMS for s in summaries)
    rows = _assert_every_trial_once(url)
    by_process = {s["claimant"]: sum(s["trials_this_run"].values()) for s in summaries}
    assert sum(by_process.values()) == TIMED_TRIALS and min(by_process.values()) > 0, by_process
    # A problem's trials all come from the one process that claimed it.
    for kernel, T in _expected_winners():
        owners = {w.rsplit("/", 1)[0] for k, t, *_, w in rows if (k, t) == (kernel, T)}
        assert len(owners) == 1, (kernel, T, owners)
    assert _winners(url) == _expected_winners()
    assert beats, "no claim was ever refreshed by a heartbeat"
    assert _execute(url, "SELECT COUNT(*) FROM tune_sweeps") == [(1,)]
    assert _execute(url, "SELECT COUNT(*) FROM tune_problems WHERE done_at IS NULL") == [(0,)]


def _claimants(url: str) -> set[str]:
    """Processes that recorded a trial so far."""
    with contextlib.suppress(sa.exc.ProgrammingError):  # no tables yet
        return {w.rsplit("/", 1)[0] for (w,) in _execute(url, "SELECT DISTINCT worker FROM tune_trials")}
    return set()


def test_a_killed_process_claims_are_completed_by_the_other_after_the_grace_period(postgres, tmp_path):
    url = postgres.new_database()
    victim = _start_sweep(url, tmp_path / "victim.log")
    survivor = _start_sweep(url, tmp_path / "survivor.log")
    try:
        # Both measuring, and the victim holding a problem half measured (trials in, not done): kill it.
        half_measured = (
            "SELECT p.id, p.claimed_by, p.heartbeat_at FROM tune_problems p "
            "WHERE p.done_at IS NULL AND p.claimed_by LIKE :victim AND (SELECT COUNT(*) FROM tune_trials t "
            f"WHERE t.problem_id = p.id) BETWEEN :least AND {len(fake.TIMED_BLOCKS) - 1}"
        )
        victim_claims: list[tuple] = []
        deadline = time.monotonic() + 120
        while not victim_claims and time.monotonic() < deadline and victim.poll() is None:
            time.sleep(0.05)
            if len(_claimants(url)) == 2:
                victim_claims = _execute(url, half_measured, victim=f"%:{victim.pid}:%", least=1)
        assert victim_claims, "the two processes never measured at once with the victim mid-problem"
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait()
        # Read after the kill (its last heartbeat), before the grace period lets the survivor take over.
        victim_claims = _execute(url, half_measured, victim=f"%:{victim.pid}:%", least=0)
        victim_trials = [r for r in _trial_rows(url) if f":{victim.pid}:" in r[4]]
        summary = _summary(survivor, tmp_path / "survivor.log")
    finally:
        _kill_group(victim)
        _kill_group(survivor)

    assert summary["status"] == "finished" and summary["winners"] == TIMED_PROBLEMS
    rows = _assert_every_trial_once(url)  # the victim's trials kept, none measured twice
    assert victim_trials and set(victim_trials) <= set(rows)
    assert victim_claims
    for problem_id, _, last_heartbeat in victim_claims:
        ((claimed_by, claimed_at, done_at),) = _execute(
            url, "SELECT claimed_by, claimed_at, done_at FROM tune_problems WHERE id = :i", i=problem_id
        )
        assert claimed_by == summary["claimant"] and done_at is not None
        # Taken over only once the grace period had run out (both times are the server's clock).
        assert (claimed_at - last_heartbeat).total_seconds() >= GRACE_S
    assert _winners(url) == _expected_winners()


def test_tpe_keeps_its_study_in_the_same_postgres_database(postgres):
    url = postgres.new_database()
    summary = run_sweep(
        "h200",
        preset="smoke",
        kernels=["fake_timed_0"],
        extra_specs=[TIMED],
        strategy="tpe",
        trials=2,
        interpret=True,
        db_url=url.replace("postgresql+psycopg://", "postgresql://"),  # the driver is filled in
        compile_processes=1,
    )
    assert summary.status == "finished" and summary.winners == 2
    assert _execute(url, "SELECT problem_id, COUNT(*) FROM tune_trials GROUP BY problem_id ORDER BY 1") == [
        (1, 2),
        (2, 2),
    ]
    studies = [name for (name,) in _execute(url, "SELECT study_name FROM studies ORDER BY 1")]
    assert len(studies) == 2 and all(
        n.startswith(f"gdn-tune/sweep{summary.sweep_id}/fake_timed_0/") for n in studies
    )


def test_status_shows_the_processes_measuring_a_sweep(tmp_path):
    from click.testing import CliRunner

    from gdn_tune.cli import main

    url = f"sqlite:///{tmp_path / 'status.db'}"
    storage = Storage(url)
    sweep_id, (first, second, third) = _sweep_with_problems(storage, 3)
    storage.claim_problem(sweep_id, [first], "hostA:11:aa", GRACE_S)
    storage.claim_problem(sweep_id, [second], "hostB:22:bb", GRACE_S)
    storage.claim_problem(sweep_id, [third], "hostB:22:bb", GRACE_S)
    storage.finish_problem("hostA:11:aa", first)

    result = CliRunner().invoke(main, ["status", "--db", url, "--json"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.output)
    assert row["problems_done"] == 1
    ((claim),) = row["claims"]  # hostA finished its problem: only hostB is measuring
    assert (claim["claimant"], claim["problems"]) == ("hostB:22:bb", 2) and 0 <= claim["heartbeat_age_s"] < 60
    text = CliRunner().invoke(main, ["status", "--db", url])
    assert "measuring: hostB:22:bb, 2 problem(s), last heartbeat" in text.output, text.output


@pytest.mark.parametrize(
    "gpus, workers, message",
    [
        (["NVIDIA H200"] * 2, 3, r"3 workers but 2 GPU\(s\) visible"),
        (["NVIDIA H200", "NVIDIA H100 80GB HBM3"], 2, "the GPUs of this host differ"),
    ],
    ids=["more-workers-than-gpus", "mixed-gpus"],
)
def test_gpu_workers_need_one_gpu_each_of_one_model(monkeypatch, gpus, workers, message):
    import torch

    from gdn_tune.sweep.target import check_gpus

    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(gpus))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: gpus[i])
    with pytest.raises(ValueError, match=message):
        check_gpus(workers, gpus[0])
    check_gpus(1, gpus[0])  # one worker on the first GPU is fine


# On the GPU host (skipped here) ------------------------------------------------------------------


@pytest.mark.gpu
def test_every_visible_gpu_gets_a_worker_and_the_problems_are_shared(tmp_path):
    """`--workers auto` on real shapes: one worker per visible GPU, each measuring (run with 2+ GPUs
    visible; prints trials per minute for the scaling figures, which the lead records)."""
    import torch

    from gdn_kernels import Workload

    url = f"sqlite:///{tmp_path / 'gpus.db'}"
    workloads = [Workload(h, 4 * h, 128, 128, tokens=t) for h in (2, 4, 8, 16) for t in (1024, 8192)]
    summary = run_sweep("auto", workloads=workloads, kernels=["gdn_gating"], db_url=url)
    print(json.dumps(summary.as_dict(), indent=2))
    gpus = torch.cuda.device_count()
    assert summary.workers == gpus and summary.status == "finished"
    assert summary.winners == summary.problems == len(workloads)
    rows = _execute(
        url,
        "SELECT worker, COUNT(*), COUNT(DISTINCT problem_id || config_json) FROM tune_trials GROUP BY worker",
    )
    measured_on = {worker.rsplit("/", 1)[1] for worker, _, _ in rows if not worker.endswith("/compile")}
    assert len(measured_on) == min(gpus, len(workloads)), measured_on
    assert all(count == distinct for _, count, distinct in rows)


def test_workers_start_while_the_caller_works_and_close_even_if_never_waited_for():
    from gdn_tune.worker import WorkerPool

    started = time.monotonic()
    pool = WorkerPool(2, interpret=True, wait=False)
    assert time.monotonic() - started < 2.0  # spawned, not waited for (a worker takes seconds)
    assert pool.size == 0 and pool.idle_workers == []
    pool.wait_ready()
    assert pool.size == 2 and pool.idle_workers == [0, 1]
    pool.close()
    assert pool.size == 0

    never_ready = WorkerPool(2, interpret=True, wait=False)
    processes = [w.process for w in never_ready._starting]
    never_ready.close()  # before they are ready: killed, none left running
    assert all(not p.is_alive() for p in processes)
