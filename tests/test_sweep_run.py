"""The sweep end to end on the CPU (Triton interpreter): trials and winners stored, export byte-identical
and accepted by `gdn-tune check`, resume after SIGKILL and Ctrl-C without duplicates, injected faults
recorded with the right status and never exported, GPU/target matching, TPE through the database.

Every sweep here runs real worker and compile processes; shapes are the smoke preset's, so the whole
file takes about two minutes on two cores.
"""

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import _fake_kernels as fake
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from gdn_kernels import Workload, kernel_specs
from gdn_kernels._tables import TableEntry
from gdn_tune.cli import main
from gdn_tune.presets import preset_by_name
from gdn_tune.results import TRIAL_COLUMNS
from gdn_tune.sweep import run_sweep
from gdn_tune.tables import write_table

GATING = kernel_specs()["gdn_gating"]
SMOKE_KEYS = sorted({GATING.key_for(w) for w in preset_by_name("smoke").workloads}, key=lambda k: k["T"])
GATING_TRIALS = sum(len(GATING.space.candidates(k)) for k in SMOKE_KEYS)  # the default is a candidate
FAKE_SPECS = "_fake_kernels:SPECS"


def _sweep_args(db: str, *extra: str) -> list[str]:
    return ["sweep", "--gpu", "h200", "--interpret", "--preset", "smoke", "--db", db, *extra]


def _invoke(args: list[str]):
    result = CliRunner().invoke(main, args)
    return result


def _sweep_json(db: str, *extra: str) -> dict:
    result = _invoke([*_sweep_args(db, *extra), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout[result.stdout.index("{") :])


def _rows(db_path: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(db_path) as connection:
        return connection.execute(sql).fetchall()


def _trial_count(db_path: Path) -> int:
    """Trials so far; 0 while the sweep has not created its tables yet."""
    try:
        return _rows(db_path, "SELECT COUNT(*) FROM tune_trials")[0][0] if db_path.exists() else 0
    except sqlite3.OperationalError:
        return 0


def _trials_by_problem(db_path: Path) -> dict[str, dict[str, tuple]]:
    """{key JSON: {config JSON: (status, median_ms, retimed_ms, rel_error)}}"""
    found: dict[str, dict[str, tuple]] = {}
    sql = (
        "SELECT p.key_json, t.config_json, t.status, t.median_ms, t.retimed_ms, t.rel_error "
        "FROM tune_trials t JOIN tune_problems p ON p.id = t.problem_id"
    )
    for key, config, *rest in _rows(db_path, sql):
        found.setdefault(key, {})[config] = tuple(rest)
    return found


@pytest.fixture(scope="module")
def smoke_db(tmp_path_factory) -> tuple[Path, str, dict]:
    """One grid sweep of gdn_gating over the smoke preset, through the CLI."""
    path = tmp_path_factory.mktemp("smoke") / "sweep.db"
    url = f"sqlite:///{path}"
    return path, url, _sweep_json(url, "--kernels", "gdn_gating")


def test_smoke_sweep_measures_every_candidate_and_picks_a_correct_winner(smoke_db):
    path, _, summary = smoke_db
    assert summary["status"] == "finished" and not summary["resumed"]
    assert summary["problems"] == summary["winners"] == len(SMOKE_KEYS) == 2
    assert summary["trials_this_run"] == {"ok": GATING_TRIALS}
    trials = _trials_by_problem(path)
    assert len(trials) == 2 and sum(map(len, trials.values())) == GATING_TRIALS
    for by_config in trials.values():
        assert all(
            status == "ok" and median > 0 and rel_error <= GATING.tolerance
            for status, median, _, rel_error in by_config.values()
        )
        retimed = {c for c, (_, _, r, _) in by_config.items() if r is not None}
        assert 3 <= len(retimed) <= 4  # top 3, plus the default when it is not among them
    winners = _rows(
        path,
        "SELECT p.key_json, t.config_json, w.time_ms, w.default_time_ms, p.default_config_json "
        "FROM tune_winners w JOIN tune_trials t ON t.id = w.trial_id JOIN tune_problems p ON p.id = w.problem_id",
    )
    assert len(winners) == 2
    for key, config, time_ms, default_ms, default_config in winners:
        by_config = trials[key]
        top3 = sorted(by_config, key=lambda c: by_config[c][1])[:3]
        # The winner is the fastest of the top 3 by the interleaved re-timing, and its time is that one.
        assert config == min(top3, key=lambda c: by_config[c][2])
        assert time_ms == by_config[config][2]
        assert default_ms == by_config[default_config][2]  # the default re-timed beside them
        assert json.loads(default_config) == GATING.default.as_dict()


def test_the_summary_says_where_the_measuring_time_went(smoke_db):
    _, _, summary = smoke_db
    workers, own = summary["worker_seconds"], summary["sweep_seconds"]
    # Every trial loads, checks, captures and times its config; each problem builds its bench once and
    # re-times its top candidates.
    assert set(workers) == {"setup", "load", "check", "capture", "timing", "retime"}
    # (No CUDA graph to capture under the interpreter: that phase may round to 0.)
    assert all(s > 0 for name, s in workers.items() if name != "capture")
    assert {"database", "strategy", "waiting"} <= set(own)
    # The workers' time is part of the measuring wall time the process waited through.
    assert sum(workers.values()) <= summary["measure_wall_s"]


def test_the_same_command_again_measures_nothing(smoke_db):
    path, url, _ = smoke_db
    before = _rows(path, "SELECT COUNT(*), MAX(id) FROM tune_trials")
    again = _sweep_json(url, "--kernels", "gdn_gating")
    assert again["resumed"] and again["status"] == "finished"
    assert again["trials_this_run"] == {} and again["skipped_already_done"] == GATING_TRIALS
    assert again["compile_jobs"] == 0 and again["winners"] == 2
    assert _rows(path, "SELECT COUNT(*), MAX(id) FROM tune_trials") == before
    assert _rows(path, "SELECT COUNT(*) FROM tune_sweeps") == [(1,)]


def test_export_is_byte_identical_twice_merges_and_passes_check(smoke_db, tmp_path):
    _, url, _ = smoke_db
    out = tmp_path / "tables"
    # An entry for a key this sweep did not touch must survive the export (made the same way: entries
    # of a GPU and of the interpreter never share a file, tests/test_export.py).
    kept = TableEntry(GATING.key(dtype="bfloat16", HV=64, T=8192), GATING.default, 0.02, 0.02)
    made_with = {
        "gpu": "TRITON_INTERPRET CPU",
        "compute_capability": "9.0",
        "triton": "3.6.0",
        "torch": "2.13.0",
        "cuda": None,
        "kernel_hash": GATING.source_hash(),
        "date": "2026-01-31",
    }
    table = write_table(out, "sm90", GATING, [kept], made_with)

    export = ["export", "--gpu", "h200", "--db", url, "--out", str(out), "--allow-interpreter-timings"]
    dry = _invoke([*export, "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "+    {" in dry.output and "would write" in dry.output
    assert [e["key"]["T"] for e in json.loads(table.read_text())["entries"]] == [8192]  # dry: untouched

    first = _invoke(export)
    assert first.exit_code == 0, first.output
    first_bytes = table.read_bytes()
    second = _invoke(export)
    assert second.exit_code == 0 and "unchanged" in second.output, second.output
    assert table.read_bytes() == first_bytes

    data = json.loads(first_bytes)
    assert sorted(e["key"]["T"] for e in data["entries"]) == sorted([8192, *(k["T"] for k in SMOKE_KEYS)])
    assert data["made_with"]["gpu"] == "TRITON_INTERPRET CPU" and data["made_with"]["interpret"] is True
    check = _invoke(["check", "--config-dir", str(out), "--strict", "--allow-interpreter-timings"])
    assert check.exit_code == 0, check.output


def test_a_default_its_space_rejects_at_the_shape_is_replaced_and_timed(tmp_path):
    # The smoke shapes have K = V = 32, where chunk_wu's default (BK = BV = 64) is outside its space:
    # it was recorded infeasible and report and summary showed no default time.
    url = f"sqlite:///{tmp_path / 'wu.db'}"
    _sweep_json(url, "--kernels", "chunk_wu")
    rows = json.loads(_invoke(["report", "--db", url, "--json"]).output)
    assert len(rows) == 1 and rows[0]["default_time_ms"] is not None and rows[0]["speedup"] is not None
    summary = _invoke(["summary", "--db", url, "--json", "--out", str(tmp_path / "SWEEP.md")])
    assert json.loads(summary.output)["kernels"]["chunk_wu"]["median_speedup"] is not None, summary.output
    assert _rows(tmp_path / "wu.db", "SELECT COUNT(*) FROM tune_trials WHERE status != 'ok'") == [(0,)]


def test_status_report_and_parquet_read_the_database(smoke_db, tmp_path):
    _, url, _ = smoke_db
    status = _invoke(["status", "--db", url, "--json"])
    assert status.exit_code == 0, status.output
    (row,) = json.loads(status.output)
    assert (row["status"], row["problems"], row["problems_with_winner"]) == ("finished", 2, 2)
    assert row["trials"] == {"ok": GATING_TRIALS}

    report = _invoke(["report", "--db", url, "--json"])
    assert report.exit_code == 0, report.output
    rows = json.loads(report.output)
    assert len(rows) == 2 and all(
        r["speedup"] == pytest.approx(r["default_time_ms"] / r["time_ms"]) for r in rows
    )
    png = _invoke(["report", "--db", url, "--png", str(tmp_path / "r.png")])
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert png.exit_code != 0 and "matplotlib" in png.output
    else:
        assert png.exit_code == 0 and (tmp_path / "r.png").stat().st_size > 0

    parquet = tmp_path / "trials.parquet"
    written = _invoke(["trials", "--parquet", str(parquet), "--db", url])
    assert written.exit_code == 0, written.output
    table = pq.read_table(parquet)
    assert table.column_names == list(TRIAL_COLUMNS) and table.num_rows == GATING_TRIALS
    assert sum(table.column("is_winner").to_pylist()) == 2


def test_sigkill_part_way_then_the_same_command_completes_without_duplicates(tmp_path):
    db_path = tmp_path / "killed.db"
    url = f"sqlite:///{db_path}"
    command = [
        sys.executable,
        "-c",
        "from gdn_tune.cli import main; main()",
        *_sweep_args(url, "--kernels", "gdn_gating"),
    ]
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            if _trial_count(db_path) >= 5:
                break
            time.sleep(0.2)
        assert process.poll() is None, "the sweep ended before it could be killed"
        process.send_signal(signal.SIGKILL)
        process.wait()
    finally:
        # Its workers notice the closed pipe and exit; the group kill only sweeps up stragglers.
        time.sleep(0.5)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    done_before = _rows(db_path, "SELECT COUNT(*) FROM tune_trials")[0][0]
    assert 5 <= done_before < GATING_TRIALS
    assert _rows(db_path, "SELECT status FROM tune_sweeps") == [("running",)]  # no chance to close it

    resumed = _sweep_json(url, "--kernels", "gdn_gating")
    assert resumed["resumed"] and resumed["status"] == "finished" and resumed["winners"] == 2
    assert resumed["skipped_already_done"] == done_before
    assert sum(resumed["trials_this_run"].values()) == GATING_TRIALS - done_before
    assert _rows(db_path, "SELECT COUNT(*), COUNT(DISTINCT problem_id || config_json) FROM tune_trials") == [
        (GATING_TRIALS, GATING_TRIALS)
    ]


def test_ctrl_c_keeps_finished_trials_and_the_next_run_completes(tmp_path):
    url = f"sqlite:///{tmp_path / 'interrupted.db'}"

    def interrupt_after_three(progress):
        if progress.phase == "measure" and progress.done >= 3:
            raise KeyboardInterrupt

    stopped = run_sweep(
        "h200",
        preset="smoke",
        kernels=["gdn_gating"],
        interpret=True,
        db_url=url,
        progress=interrupt_after_three,
    )
    assert (stopped.status, stopped.stopped) == ("interrupted", "interrupted")
    assert stopped.trials_total == {"ok": 3}
    seen = []
    finished = run_sweep(
        "h200", preset="smoke", kernels=["gdn_gating"], interpret=True, db_url=url, progress=seen.append
    )
    assert finished.resumed and finished.status == "finished"
    last = [p for p in seen if p.phase == "measure"][-1]
    assert last.done == last.planned == last.ok == GATING_TRIALS - 3  # the progress counts this run's work
    assert last.eta_s == 0
    assert finished.trials_total == {"ok": GATING_TRIALS} and finished.winners == 2


TIMED_0 = dict(kernels=["fake_timed_0"], extra_specs=["_fake_kernels:TIMED_SPECS"])
TIMED_0_TRIALS = 2 * len(fake.TIMED_BLOCKS)  # the smoke preset's two keys, every block


def _handed_out(monkeypatch) -> list:
    """The trial tasks the sweep hands to its workers from now on, in order."""
    from gdn_tune.worker import TrialTask, WorkerPool

    sent: list[TrialTask] = []
    submit = WorkerPool.submit

    def recording(self, task, worker_index=None):
        if isinstance(task, TrialTask):
            sent.append(task)
        return submit(self, task, worker_index)

    monkeypatch.setattr(WorkerPool, "submit", recording)
    return sent


def _trial_configs(db_path: Path) -> list[tuple[str, str]]:
    return _rows(
        db_path,
        "SELECT p.key_json, t.config_json FROM tune_trials t JOIN tune_problems p ON p.id = t.problem_id",
    )


def test_a_trial_queued_when_the_sweep_stops_is_measured_by_the_next_run(tmp_path, monkeypatch):
    db_path = tmp_path / "queued.db"
    url = f"sqlite:///{db_path}"

    def interrupt_after_three(progress):
        if progress.phase == "measure" and progress.done >= 3:
            raise KeyboardInterrupt

    sent = _handed_out(monkeypatch)
    stopped = run_sweep(
        "h200", preset="smoke", interpret=True, db_url=url, progress=interrupt_after_three, **TIMED_0
    )
    assert stopped.stopped == "interrupted" and stopped.trials_total == {"ok": 3}
    # The fourth trial was with the worker (queued while the third ran) and has no result.
    assert len(sent) == 4
    queued = sent[3]
    recorded = [(json.loads(k), json.loads(c)) for k, c in _trial_configs(db_path)]
    assert len(recorded) == 3 and (queued.key.as_dict(), queued.config.as_dict()) not in recorded

    sent.clear()
    finished = run_sweep("h200", preset="smoke", interpret=True, db_url=url, **TIMED_0)
    assert finished.status == "finished" and finished.winners == 2
    assert (queued.key, queued.config) in [(t.key, t.config) for t in sent]  # handed out again
    assert _rows(db_path, "SELECT COUNT(*), COUNT(DISTINCT problem_id || config_json) FROM tune_trials") == [
        (TIMED_0_TRIALS, TIMED_0_TRIALS)
    ]


def test_a_budget_lets_the_queued_trials_finish_and_records_them_as_measured(tmp_path, monkeypatch):
    from gdn_tune.sweep.state import SweepRun

    db_path = tmp_path / "budget_queued.db"
    url = f"sqlite:///{db_path}"
    # The budget runs out with the second result: the third was queued behind it by then.
    monkeypatch.setattr(SweepRun, "out_of_budget", lambda self: self.measured_this_run >= 2)
    stopped = run_sweep("h200", preset="smoke", interpret=True, db_url=url, **TIMED_0)
    assert (stopped.status, stopped.stopped) == ("interrupted", "budget")
    assert stopped.trials_total == {"ok": 3}  # the queued one measured and recorded as it came out
    monkeypatch.undo()
    finished = run_sweep("h200", preset="smoke", interpret=True, db_url=url, **TIMED_0)
    assert finished.status == "finished" and finished.winners == 2
    assert sum(finished.trials_this_run.values()) == TIMED_0_TRIALS - 3
    assert finished.trials_total == {"ok": TIMED_0_TRIALS}


@pytest.mark.parametrize(
    "interpret", [True, pytest.param(False, marks=pytest.mark.gpu)], ids=["interpret", "gpu"]
)
def test_injected_faults_are_recorded_with_their_status_and_never_exported(tmp_path, interpret):
    db_path = tmp_path / "faults.db"
    url = f"sqlite:///{db_path}"
    args = ["sweep", "--gpu", "auto" if not interpret else "h200", "--preset", "smoke", "--db", url]
    args += ["--interpret"] if interpret else []
    result = _invoke(
        [*args, "--kernels", "fake_faults", "--extra-specs", FAKE_SPECS, "--trial-timeout", "10", "--json"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout[result.stdout.index("{") :])
    assert summary["status"] == "finished" and summary["winners"] == 1
    assert summary["workers_replaced"] == 2  # the aborted one and the hung one
    # Each had the next trial queued behind the faulty one: run again on the fresh worker, and recorded
    # with its own status below, not as crashed or timed out.
    assert summary["queue_depth"] == 2 and summary["trials_requeued"] == 2
    statuses = {
        json.loads(c)["BLOCK"]: s for c, s in _rows(db_path, "SELECT config_json, status FROM tune_trials")
    }
    assert statuses == fake.EXPECTED_STATUS
    errors = dict(_rows(db_path, "SELECT status, error FROM tune_trials WHERE status != 'ok'"))
    assert "SIGABRT" in errors["crashed"] and "after 10 s" in errors["timeout"]

    out = tmp_path / "tables"
    target = summary["target"]
    exported = _invoke(
        ["export", "--gpu", target, "--db", url, "--out", str(out), "--extra-specs", FAKE_SPECS]
        + (["--allow-interpreter-timings"] if interpret else [])
    )
    assert exported.exit_code == 0, exported.output
    (entry,) = json.loads(next(out.glob("*/fake_faults.json")).read_text())["entries"]
    assert entry["config"]["BLOCK"] in fake.GOOD


def test_tpe_sweep_keeps_its_budget_and_its_study_in_the_database(tmp_path):
    db_path = tmp_path / "tpe.db"
    url = f"sqlite:///{db_path}"
    summary = _sweep_json(url, "--kernels", "gdn_gating", "--strategy", "tpe", "--trials", "5")
    assert summary["status"] == "finished" and summary["winners"] == 2
    per_problem = _rows(db_path, "SELECT problem_id, COUNT(*) FROM tune_trials GROUP BY problem_id")
    assert [count for _, count in per_problem] == [5, 5]  # the default counts toward the budget
    studies = [name for (name,) in _rows(db_path, "SELECT study_name FROM studies")]
    assert len(studies) == 2 and all(name.startswith("gdn-tune/sweep1/gdn_gating/") for name in studies)
    # A larger budget continues the same sweep and study; nothing is measured twice.
    more = _sweep_json(url, "--kernels", "gdn_gating", "--strategy", "tpe", "--trials", "7")
    assert more["resumed"] and sum(more["trials_this_run"].values()) == 4
    assert _rows(db_path, "SELECT COUNT(*) FROM studies") == [(2,)]


def test_a_budget_stops_the_sweep_as_interrupted(tmp_path):
    summary = run_sweep(
        "h200",
        preset="smoke",
        kernels=["fake_faults"],
        extra_specs=[FAKE_SPECS],
        interpret=True,
        db_url=f"sqlite:///{tmp_path / 'budget.db'}",
        budget_s=0.001,
    )
    assert (summary.status, summary.stopped, summary.winners) == ("interrupted", "budget", 0)
    assert summary.trials_total == {"infeasible": 1}  # compiling is done; nothing was launched


# --------------------------------------------------------------------------------------------------
# On the GPU host (skipped here): the same pipeline with CUDA graphs and events on real shapes.


@pytest.mark.gpu
def test_gpu_sweep_of_real_shapes_times_with_graphs_and_picks_correct_winners(tmp_path):
    url = f"sqlite:///{tmp_path / 'gpu.db'}"
    workloads = [Workload(16, 64, 128, 128, tokens=8192), Workload(2, 8, 128, 128, tokens=8192)]
    summary = run_sweep("auto", workloads=workloads, kernels=["gdn_gating"], db_url=url)
    print(json.dumps(summary.as_dict(), indent=2))  # trials per minute, compile vs measure time
    assert summary.status == "finished" and summary.winners == summary.problems == 2
    candidates = sum(len(GATING.space.candidates(GATING.key_for(w))) for w in workloads)
    assert summary.trials_total == {"ok": candidates}
    rows = _rows(
        tmp_path / "gpu.db",
        "SELECT t.repetitions, t.median_ms, t.min_ms, t.max_ms, t.retimed_ms, w.default_time_ms "
        "FROM tune_winners w JOIN tune_trials t ON t.id = w.trial_id",
    )
    for repetitions, median, low, high, retimed, default_ms in rows:
        assert repetitions >= 10 and 0 < low <= median <= high
        assert retimed is not None and default_ms is not None
