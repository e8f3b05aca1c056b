"""The run of a sweep, step by step (see the package doc): check the arguments, resolve the target,
plan, open the sweep in the database, compile, measure, close, summarise."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from gdn_kernels import GpuTarget, Workload

from ..compile import CompileJob, CompileResult, compile_all
from ..presets import preset_by_name
from ..specs import available_specs, extra_spec_paths, select_specs
from ..storage import DEFAULT_CLAIM_GRACE_S, DEFAULT_DB_URL, Storage, SweepStatus, claimant_name, key_to_json
from ..strategies import Problem, Search, Strategy, make_strategy
from ..trial_result import TrialStatus
from ..worker import DEFAULT_TRIAL_TIMEOUT_S, QUEUE_DEPTH, WorkerPool, default_worker_count
from .plan import (
    Plan,
    measured_times,
    neighbour_seeds,
    plan_problems,
    planned_trials,
    stack_versions,
    sweep_fingerprint,
)
from .schedule import TOP_CANDIDATES, Scheduler
from .state import (
    SweepProgress,
    SweepRun,
    has_work,
    record_infeasible,
    refresh_feasible,
    unrecorded_infeasible,
)
from .target import check_gpus, resolve_target


@dataclass
class SweepSummary:
    sweep_id: int
    resumed: bool
    status: str
    target: str
    gpu_name: str
    strategy: str
    problems: int
    winners: int
    no_correct_config: list[str]  # problems searched to the end without one correct config
    trials_this_run: dict[str, int]
    trials_total: dict[str, int]
    skipped_already_done: int
    compile_jobs: int
    compile_wall_s: float
    measure_wall_s: float
    elapsed_s: float
    trials_per_minute: float | None
    workers: int
    workers_replaced: int
    stopped: str | None = None  # "interrupted" (Ctrl-C) or "budget"
    claimant: str = ""  # this process in the database's claims and trials ("host:pid:tag")
    # Where the measuring time went: the workers' wall time by phase (summed over workers), and this
    # process's own work between their results.
    worker_seconds: dict[str, float] = field(default_factory=dict)
    sweep_seconds: dict[str, float] = field(default_factory=dict)
    # Per worker ("gpu3"): its time on trials (setup to timing, all of worker_seconds) and that time's
    # share of measure_wall_s. A share well under 1 on a GPU is time the GPU waited for this process.
    busy_seconds: dict[str, float] = field(default_factory=dict)
    busy_share: dict[str, float] = field(default_factory=dict)
    queue_depth: int = QUEUE_DEPTH
    trials_requeued: int = 0  # queued behind a trial whose worker died or hung, and run on a fresh one
    strategy_failures: list[str] = field(default_factory=list)  # e.g. a TPE study not kept in the database

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _compile_phase(
    run: SweepRun, target: GpuTarget, extra_paths: Sequence[str], processes: int | None
) -> int:
    """Compile every config not yet tried, over all CPU cores; record what fails as infeasible. Returns
    the number of jobs.

    Infeasibility is a fact of (kernel, config, target, Triton), the same whichever process finds it, so
    it is recorded without a claim: another process that recorded it first leaves nothing to add.
    """
    jobs: list[CompileJob] = []
    plan_of: dict[CompileJob, Plan] = {}
    for plan in run.plans:
        for config in dict.fromkeys([plan.default, *plan.spec.space.candidates(plan.key)]):
            if config not in plan.trials:
                job = CompileJob(plan.spec.name, plan.key, config)
                jobs.append(job)
                plan_of[job] = plan
    compiled = 0
    infeasible = 0

    def on_result(job: CompileJob, result: CompileResult) -> None:
        nonlocal compiled, infeasible
        compiled += 1
        infeasible += not result.ok
        plan = plan_of[job]
        assert plan.problem is not None
        run.compile_results[(plan.problem.id, job.config)] = result
        if not result.ok:
            record_infeasible(run, plan, job.config)
        run.report(
            "compile", 0, f"compiled {compiled}/{len(jobs)} configs for {target.name}, {infeasible} fail"
        )

    if jobs:
        compile_all(jobs, target.name, extra_paths, processes, on_result)
    for plan in run.plans:
        refresh_feasible(run, plan)
    return len(jobs)


def run_sweep(
    target: str | GpuTarget = "auto",
    *,
    workloads: Sequence[Workload] | None = None,
    preset: str | None = None,
    kernels: Sequence[str] | None = None,
    strategy: str = "grid",
    strategy_options: Mapping[str, Any] | None = None,
    trials: int | None = None,
    budget_s: float | None = None,
    db_url: str = DEFAULT_DB_URL,
    workers: int | None = None,
    interpret: bool = False,
    progress: Callable[[SweepProgress], None] | None = None,
    extra_specs: Sequence[str] = (),
    trial_timeout_s: float = DEFAULT_TRIAL_TIMEOUT_S,
    top_k: int = TOP_CANDIDATES,
    command: str = "",
    compile_processes: int | None = None,
    claim_grace_s: float = DEFAULT_CLAIM_GRACE_S,
    queue_depth: int = QUEUE_DEPTH,
) -> SweepSummary:
    """Sweep `kernels` (default: all) over `workloads` or a preset (default "default", under the
    interpreter "smoke") for `target`, on `workers` worker processes (default: one per visible GPU).

    `trials` is the TPE budget per problem (an error with the grid, which measures every candidate);
    `budget_s` stops asking for new trials once that much wall time has passed (the sweep is then
    "interrupted": the same command continues it). Ctrl-C stops as cleanly: finished trials stay, those
    in flight are dropped and measured again next time. Any number of processes may run the same sweep
    on one database (PostgreSQL, for several hosts): they share its problems, and a problem whose
    process stopped heart-beating for `claim_grace_s` seconds is taken over. Each worker holds up to
    `queue_depth` tasks (see worker.QUEUE_DEPTH; 1: the next only once the last result is in). Raises ValueError for bad
    arguments, GpuMismatchError when `target` is not the GPU present, StorageError for database failures.
    """
    started = time.monotonic()
    workloads = _workloads(workloads, preset, interpret)
    search_strategy = _strategy(strategy, strategy_options, trials)
    _check_limits(budget_s, workers, claim_grace_s, queue_depth)

    gpu_target, gpu_name = resolve_target(target, interpret)
    worker_count = workers or default_worker_count(interpret)
    if not interpret:
        check_gpus(worker_count, gpu_name)
    extra_paths = extra_spec_paths(extra_specs)
    plans = plan_problems(list(select_specs(kernels, available_specs(extra_paths)).values()), workloads)
    if not plans:
        raise ValueError("no problems: none of the kernels serves the phases of these workloads")

    storage = Storage(db_url)
    fingerprint = sweep_fingerprint(gpu_target, gpu_name, interpret, strategy, plans)
    sweep, resumed = storage.open_sweep(
        fingerprint,
        target=gpu_target.name,
        gpu_name=gpu_name,
        compute_capability=f"{gpu_target.capability[0]}.{gpu_target.capability[1]}",
        interpret=interpret,
        strategy=strategy,
        strategy_options=json.dumps(search_strategy.settings, sort_keys=True),
        command=command,
        **stack_versions(),
    )
    deadline = None if budget_s is None else started + budget_s
    run = SweepRun(storage, sweep.id, plans, progress, deadline, claimant_name(secrets.token_hex(3)))
    skipped = _load_problems(run)

    def start_workers() -> WorkerPool:
        with run.clock("starting workers"):
            return WorkerPool(
                worker_count, interpret, extra_paths, trial_timeout_s, wait=False, queue_depth=queue_depth
            )

    measured = _Phases()
    try:
        _compile_and_measure(
            run, measured, gpu_target, extra_paths, compile_processes, start_workers, search_strategy,
            strategy, claim_grace_s, top_k,
        )  # fmt: skip
    except KeyboardInterrupt:
        run.stopped = "interrupted"
    except BaseException:
        storage.close_sweep(sweep.id, SweepStatus.FAILED)
        search_strategy.close(timeout_s=5.0)  # its failures would hide the error being raised
        raise
    finally:
        if measured.pool is not None:
            measured.pool.close()
    status = _close(run, measured, claim_grace_s)
    strategy_failures = search_strategy.close()
    _reload_finished_elsewhere(run)
    busy = {label: run.busy_seconds[label] for label in measured.labels} | dict(run.busy_seconds)
    summary = SweepSummary(
        sweep_id=sweep.id,
        resumed=resumed,
        status=status.value,
        target=gpu_target.name,
        gpu_name=gpu_name,
        strategy=strategy,
        problems=len(plans),
        winners=sum(storage.winner(p.problem.id) is not None for p in plans if p.problem is not None),
        no_correct_config=[
            p.label
            for p in plans
            if p.complete and not any(t.status == TrialStatus.OK for t in p.trials.values())
        ],
        trials_this_run=dict(run.counts),
        trials_total=storage.trial_counts(sweep.id),
        skipped_already_done=skipped,
        compile_jobs=measured.compile_jobs,
        compile_wall_s=round(measured.compile_wall, 3),
        measure_wall_s=round(measured.measure_wall, 3),
        elapsed_s=round(time.monotonic() - started, 3),
        trials_per_minute=(
            round(60 * run.measured_this_run / measured.measure_wall, 2)
            if measured.measure_wall > 0
            else None
        ),
        workers=worker_count,
        workers_replaced=measured.replaced,
        stopped=run.stopped,
        claimant=run.claimant,
        worker_seconds={k: round(v, 3) for k, v in sorted(run.worker_seconds.items())},
        sweep_seconds={k: round(v, 3) for k, v in sorted(run.sweep_seconds.items())},
        busy_seconds={k: round(v, 3) for k, v in busy.items()},
        busy_share={
            k: round(v / measured.measure_wall, 3) for k, v in busy.items() if measured.measure_wall > 0
        },
        queue_depth=queue_depth,
        trials_requeued=measured.requeued,
        strategy_failures=strategy_failures,
    )
    storage.dispose()
    return summary


# --------------------------------------------------------------------------------------------------
# The steps of run_sweep


def _workloads(
    workloads: Sequence[Workload] | None, preset: str | None, interpret: bool
) -> tuple[Workload, ...]:
    if workloads is not None and preset is not None:
        raise ValueError("give either workloads or a preset, not both")
    # The interpreter runs a real-size shape for minutes per trial: its default is the smoke preset.
    default_preset = "smoke" if interpret else "default"
    chosen = tuple(workloads) if workloads is not None else preset_by_name(preset or default_preset).workloads
    if not chosen:
        raise ValueError("workloads: nothing to sweep (no shapes given)")
    return chosen


def _strategy(name: str, strategy_options: Mapping[str, Any] | None, trials: int | None) -> Strategy:
    options = dict(strategy_options or {})
    if trials is not None:
        if name != "tpe":
            raise ValueError(
                f"trials: --trials sets the TPE budget; --strategy {name} measures every candidate"
            )
        options["trials"] = trials
    return make_strategy(name, **options)


def _check_limits(
    budget_s: float | None, workers: int | None, claim_grace_s: float, queue_depth: int
) -> None:
    if budget_s is not None and budget_s <= 0:
        raise ValueError(f"budget: must be positive, got {budget_s} s")
    if workers is not None and workers < 1:
        raise ValueError(f"workers: must be at least 1, got {workers}")
    if not claim_grace_s > 0:
        raise ValueError(f"claim_grace: must be positive, got {claim_grace_s} s")
    if queue_depth < 1:
        raise ValueError(f"queue_depth: must be at least 1, got {queue_depth}")


def _load_problems(run: SweepRun) -> int:
    """Each plan's problem row and the trials already recorded for it; returns how many there are."""
    for plan in run.plans:
        plan.problem = run.storage.ensure_problem(
            run.sweep_id, plan.spec.name, plan.key, plan.spec.source_hash(), plan.default
        )
        plan.trials = {t.config: t for t in run.storage.trials(plan.problem.id)}
    return sum(len(p.trials) for p in run.plans)


@dataclass
class _Phases:
    """What the compile and measure phases did, and the worker pool they started (closed by the caller)."""

    pool: WorkerPool | None = None
    compile_jobs: int = 0
    compile_wall: float = 0.0
    measure_wall: float = 0.0
    replaced: int = 0
    requeued: int = 0
    labels: tuple[str, ...] = ()  # the workers' devices, "gpu3": each has a busy share, 0 if it got no task


def _compile_and_measure(
    run: SweepRun,
    phases: _Phases,
    target: GpuTarget,
    extra_paths: Sequence[str],
    compile_processes: int | None,
    start_workers: Callable[[], WorkerPool],
    search_strategy: Strategy,
    strategy: str,
    claim_grace_s: float,
    top_k: int,
) -> None:
    """Compile what is not yet tried, then measure the problems with work left until done or out of
    budget. Fills `phases` as it goes, so an interruption keeps what was done."""
    storage, settings = run.storage, search_strategy.settings
    if any(p.done_at is None for p in storage.problems(run.sweep_id)):
        # Workers import torch and set up their GPU (3 to 5 s) while the CPUs compile, not after.
        phases.pool = start_workers()
    compile_started = time.monotonic()
    phases.compile_jobs = _compile_phase(run, target, extra_paths, compile_processes)
    phases.compile_wall = time.monotonic() - compile_started
    candidates = {
        p.problem.id for p in run.plans if p.problem is not None and has_work(run, p, strategy, settings)
    }
    for plan in run.plans:
        plan.complete = plan.problem is not None and plan.problem.id not in candidates
    run.planned = sum(run.counts.values()) + sum(  # infeasible ones are recorded while compiling
        len(unrecorded_infeasible(run, p)) + planned_trials(p, strategy, settings)
        for p in run.plans
        if p.problem is not None and p.problem.id in candidates
    )
    run.measure_started = time.monotonic()
    if candidates and not run.out_of_budget():
        phases.pool = (
            phases.pool or start_workers()
        )  # all problems were done, yet this run has more to measure
        with run.clock("starting workers"):
            phases.pool.wait_ready()
        phases.labels = tuple(phases.pool.label(i) for i in range(phases.pool.size))

        def search_for(plan: Plan) -> Search:
            assert plan.problem is not None
            name = f"gdn-tune/sweep{run.sweep_id}/{plan.spec.name}/{key_to_json(plan.key)}"
            with run.clock("database"):
                seeds = neighbour_seeds(storage, run.plans, plan)
            problem = Problem(name, tuple(plan.feasible), measured_times(plan), storage.full_url, seeds)
            return search_strategy.begin(problem)

        scheduler = Scheduler(
            run, phases.pool, candidates, search_for, strategy, settings, claim_grace_s, top_k
        )
        scheduler.run_until_done()
        phases.replaced, phases.requeued = phases.pool.replaced, phases.pool.requeued
    elif candidates:
        run.stopped = "budget"
    phases.measure_wall = time.monotonic() - run.measure_started


def _close(run: SweepRun, phases: _Phases, claim_grace_s: float) -> SweepStatus:
    """Close the sweep in the database, unless it stopped here while other processes still measure it
    (they close it when they finish). Returns this run's status."""
    if run.stopped is None:
        run.storage.close_sweep(run.sweep_id, SweepStatus.FINISHED)
        return SweepStatus.FINISHED
    if run.measure_started is not None:
        phases.measure_wall = time.monotonic() - run.measure_started
    ids = [p.problem.id for p in run.plans if p.problem is not None]
    if run.storage.held_by_others(run.sweep_id, ids, run.claimant, claim_grace_s) == 0:
        run.storage.close_sweep(run.sweep_id, SweepStatus.INTERRUPTED)
    return SweepStatus.INTERRUPTED


def _reload_finished_elsewhere(run: SweepRun) -> None:
    """Problems another process finished while this one ran: complete, with the trials it recorded."""
    fresh = {p.id: p for p in run.storage.problems(run.sweep_id)}
    for plan in run.plans:
        assert plan.problem is not None
        if fresh[plan.problem.id].done_at is not None and not plan.complete:
            plan.complete = True
            plan.trials = {t.config: t for t in run.storage.trials(plan.problem.id)}
