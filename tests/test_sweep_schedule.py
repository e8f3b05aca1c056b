"""Scheduling a sweep that is scaled out (gdn_tune.sweep.schedule, Storage's claims): several workers on
one host (SQLite), several processes on one PostgreSQL database, claims that lapse when their process
dies, and `gdn-tune status` showing who measures.

The PostgreSQL tests start a real server (Debian's `postgresql` package, see _postgres.py and the
postgres fixture in conftest.py) once per module; they are skipped only where its binaries are absent,
and .ci/run installs them. Sweeps here tune the TIMED_SPECS of _fake_kernels, whose fastest config is
known in advance, so "the same winners as one worker" is checked against the truth rather than against
another noisy run. The schema migrations are tested in test_migrations.py.
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
from _helpers import execute_sql

from gdn_kernels import Config, Key
from gdn_tune.storage import Storage
from gdn_tune.sweep import run_sweep

TESTS = Path(__file__).parent
TIMED = "_fake_kernels:TIMED_SPECS"
TIMED_KERNELS = [s.name for s in fake.TIMED_SPECS]
TIMED_PROBLEMS = 2 * len(fake.TIMED_SPECS)  # the smoke preset's two keys, T 128 and T 64
TIMED_TRIALS = TIMED_PROBLEMS * len(fake.TIMED_BLOCKS)  # grid: every block, the default among them
GRACE_S = 3.0
KEY = Key((("T", 128),))
CONFIG = Config.of(BLOCK=256, num_warps=1, num_stages=1)


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
    rows = execute_sql(
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
    rows = execute_sql(
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
    done = execute_sql(
        url,
        "SELECT COUNT(*) FROM tune_problems WHERE done_at IS NOT NULL AND claimed_by = :c",
        c=summary.claimant,
    )
    assert done == [(TIMED_PROBLEMS,)]


# A queue of tasks per worker ---------------------------------------------------------------------


def _sweep_recording_queues(monkeypatch, url: str, queue_depth: int, workers: int):
    """A grid sweep of two TIMED kernels; returns its summary and, for each result the sweep process
    took in, how many tasks its worker still held at that moment (the next ones, already handed over)."""
    from gdn_tune.sweep.schedule import Scheduler

    held: list[int] = []
    on_result = Scheduler._on_result

    def recording(self, result):
        held.append(len(self.pool.tasks(result.worker_index)))
        on_result(self, result)

    monkeypatch.setattr(Scheduler, "_on_result", recording)
    summary = run_sweep(
        "h200",
        preset="smoke",
        kernels=TIMED_KERNELS[:2],
        extra_specs=[TIMED],
        interpret=True,
        workers=workers,
        db_url=url,
        compile_processes=1,
        queue_depth=queue_depth,
    )
    monkeypatch.undo()  # the next sweep's recording wraps the scheduler's own method, not this one
    return summary, held


def _results(url: str) -> set[tuple[str, int, int, str]]:
    return {(k, T, block, status) for k, T, block, status, _ in _trial_rows(url)}


def test_with_queue_depth_2_a_worker_has_its_next_trial_before_the_last_result_is_processed(
    tmp_path, monkeypatch
):
    one_url, two_url = (f"sqlite:///{tmp_path / name}" for name in ("depth1.db", "depth2.db"))
    one, held_one = _sweep_recording_queues(monkeypatch, one_url, queue_depth=1, workers=2)
    two, held_two = _sweep_recording_queues(monkeypatch, two_url, queue_depth=2, workers=2)
    problems = 2 * 2
    # Depth 1: the next task goes out only once the result is processed. Depth 2: a problem's default
    # is measured alone and its re-timing waits for every trial, but its search trials come in while
    # the next one is already with the worker (per problem of 4 configs: the first two of 3).
    assert set(held_one) == {0}
    assert max(held_two) == 1 and held_two.count(1) >= problems, held_two
    # The same trials, statuses and winners either way.
    for summary in (one, two):
        assert (summary.status, summary.winners, summary.trials_requeued) == ("finished", problems, 0)
        assert summary.trials_this_run == {"ok": problems * len(fake.TIMED_BLOCKS)}
    assert (one.queue_depth, two.queue_depth) == (1, 2)
    assert _results(one_url) == _results(two_url)
    expected = {k: v for k, v in _expected_winners().items() if k[0] in TIMED_KERNELS[:2]}
    assert _winners(one_url) == _winners(two_url) == expected
    # Each worker's time on trials, as a share of the measuring wall time.
    for summary in (one, two):
        assert list(summary.busy_share) == ["cpu0", "cpu1"]
        assert all(0 < share <= 1 for share in summary.busy_share.values()), summary.busy_share


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
                    for (problem_id,) in execute_sql(
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
    assert execute_sql(url, "SELECT COUNT(*) FROM tune_sweeps") == [(1,)]
    assert execute_sql(url, "SELECT COUNT(*) FROM tune_problems WHERE done_at IS NULL") == [(0,)]


def _claimants(url: str) -> set[str]:
    """Processes that recorded a trial so far."""
    with contextlib.suppress(sa.exc.ProgrammingError):  # no tables yet
        return {w.rsplit("/", 1)[0] for (w,) in execute_sql(url, "SELECT DISTINCT worker FROM tune_trials")}
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
                victim_claims = execute_sql(url, half_measured, victim=f"%:{victim.pid}:%", least=1)
        assert victim_claims, "the two processes never measured at once with the victim mid-problem"
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait()
        # Read after the kill (its last heartbeat), before the grace period lets the survivor take over.
        victim_claims = execute_sql(url, half_measured, victim=f"%:{victim.pid}:%", least=0)
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
        ((claimed_by, claimed_at, done_at),) = execute_sql(
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
    assert execute_sql(
        url, "SELECT problem_id, COUNT(*) FROM tune_trials GROUP BY problem_id ORDER BY 1"
    ) == [
        (1, 2),
        (2, 2),
    ]
    studies = [name for (name,) in execute_sql(url, "SELECT study_name FROM studies ORDER BY 1")]
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
    rows = execute_sql(
        url,
        "SELECT worker, COUNT(*), COUNT(DISTINCT problem_id || config_json) FROM tune_trials GROUP BY worker",
    )
    measured_on = {worker.rsplit("/", 1)[1] for worker, _, _ in rows if not worker.endswith("/compile")}
    assert len(measured_on) == min(gpus, len(workloads)), measured_on
    assert all(count == distinct for _, count, distinct in rows)
