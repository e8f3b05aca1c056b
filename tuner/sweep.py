"""The sweep: for every (kernel, key) of the chosen shapes, find the fastest correct config for a target.

1. Plan: the kernels' keys for the workloads (each kernel only for the phases it serves).
2. Open the sweep in the database. The same command again (same target, kernels and their hashes,
   keys, strategy, interpreter or not) reopens the same sweep, and every (problem, config) already
   measured is skipped: a sweep stopped by Ctrl-C, its budget, or SIGKILL continues where it stopped.
3. Compile every candidate (and the default) for the target over all CPU cores; what fails or does
   not fit the target's shared memory is recorded infeasible and never launched.
4. Measure, problem by problem, on one worker per GPU: the default config first (the table records its
   time beside the winner's), then what the strategy asks for. Each trial is committed as it finishes.
5. Pick: the top candidates and the default are re-timed interleaved, and the fastest of the top ones
   wins. Only a correct, deterministic trial can win (the database refuses anything else).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from gdn_kernels import Config, GpuTarget, KernelSpec, Key, Workload, target_by_name
from gdn_kernels._spec import unique_keys
from gdn_kernels._targets import TARGETS, target_for_device

from .compile_pool import CompileJob, compile_all
from .presets import preset_by_name
from .specs import available_specs, extra_spec_paths
from .storage import (
    DEFAULT_DB_URL,
    Measurement,
    ProblemModel,
    Storage,
    SweepStatus,
    TrialModel,
    TrialStatus,
    key_to_json,
)
from .strategies import Problem, Search, make_strategy
from .tables import CompileResult
from .worker import (
    DEFAULT_TRIAL_TIMEOUT_S,
    RetimeTask,
    TaskResult,
    TrialTask,
    WorkerPool,
    default_worker_count,
)

# Candidates re-timed interleaved before the pick. Neighbouring configs of these kernels often differ
# by 1 to 3 %, about the drift between two timing runs; re-timing the best three side by side is what
# makes the pick stable from one sweep to the next.
TOP_CANDIDATES = 3
# Replay budget of one trial on the GPU (see measure.CUDA_BUDGET_MS); under the interpreter the
# repetition count is fixed instead.
TRIAL_BUDGET_MS = 100.0
# What a sweep under the interpreter records as its GPU: a valid device name (tables check it).
INTERPRETER_GPU_NAME = "TRITON_INTERPRET CPU"


class GpuMismatchError(ValueError):
    """--gpu names a target that is not the GPU present (or there is none)."""


def present_gpu() -> tuple[str, tuple[int, int]] | None:
    """Name and compute capability of GPU 0, or None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_name(0), tuple(torch.cuda.get_device_capability(0))  # type: ignore[return-value]


def resolve_target(requested: str | GpuTarget, interpret: bool) -> tuple[GpuTarget, str]:
    """The target to sweep and the name of the GPU doing it.

    `--gpu auto` takes the present GPU's target. Without --interpret the named target must be the
    present GPU: the error says what was found and which name matches it. Under --interpret no GPU is
    needed (trials run on the CPU); configs are still compiled for the named target.
    """
    found = present_gpu()
    if isinstance(requested, GpuTarget):
        requested_name = requested.name
    else:
        requested_name = requested.lower()
    if requested_name == "auto":
        if found is None:
            raise GpuMismatchError(
                "--gpu auto: no CUDA GPU found; name a target (gdn-tune targets) and add --interpret "
                "to run the sweep on the CPU"
            )
        match = target_for_device(*found)
        if match is None:
            raise GpuMismatchError(
                f"--gpu auto: no target matches the GPU present, {found[0]} "
                f"(compute capability {found[1][0]}.{found[1][1]}); known targets: {', '.join(TARGETS)}"
            )
        return match, found[0]
    target = requested if isinstance(requested, GpuTarget) else target_by_name(requested_name)
    if interpret:
        return target, INTERPRETER_GPU_NAME
    if found is None:
        raise GpuMismatchError(
            f"--gpu {target.name}: no CUDA GPU found; run on a {target.name} or add --interpret"
        )
    match = target_for_device(*found)
    if match is None or match.name != target.name:
        hint = (
            f"--gpu {match.name} (or --gpu auto)"
            if match
            else f"none of the known targets ({', '.join(TARGETS)})"
        )
        raise GpuMismatchError(
            f"--gpu {target.name} does not match the GPU present: found {found[0]} "
            f"(compute capability {found[1][0]}.{found[1][1]}); it matches {hint}"
        )
    return target, found[0]


@dataclass(frozen=True)
class SweepProgress:
    """What a progress display shows; counts are of this run's trials."""

    phase: str  # "compile", "measure", "pick"
    done: int
    planned: int
    ok: int
    failed: int  # wrong, crashed or timed out
    infeasible: int
    problem: int  # 1-based index of the problem being measured (0 while compiling)
    problems: int
    label: str  # kernel and key being worked on
    elapsed_s: float
    eta_s: float | None


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

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Plan:
    spec: KernelSpec
    key: Key
    problem: ProblemModel | None = None
    trials: dict[Config, TrialModel] = field(default_factory=dict)
    feasible: list[Config] = field(default_factory=list)  # candidates that compiled, in space order
    default_feasible: bool = False
    new_trials: int = 0
    complete: bool = False  # searched to the end (not cut by the budget or Ctrl-C)

    @property
    def label(self) -> str:
        return f"{self.spec.name} {self.key.label}"


def plan_problems(specs: Sequence[KernelSpec], workloads: Sequence[Workload]) -> list[_Plan]:
    """One plan per (kernel, distinct key) of the workloads whose phase the kernel serves."""
    plans = []
    for spec in specs:
        keys = unique_keys(spec.key_for(w) for w in workloads if w.phase in spec.phases)
        plans += [_Plan(spec, key) for key in keys]
    return plans


def sweep_fingerprint(
    target: GpuTarget, gpu_name: str, interpret: bool, strategy: str, plans: Sequence[_Plan]
) -> str:
    """What makes two sweep commands the same work: target and GPU, the Triton and CUDA that compile
    the kernels, the kernels (by source hash) and keys, the strategy. Strategy options (a larger
    --trials) and the budget are left out on purpose: re-running with more of either continues the
    same sweep."""
    problems = sorted((p.spec.name, p.spec.source_hash(), key_to_json(p.key)) for p in plans)
    versions = _versions()
    stack = [gpu_name, versions["triton_version"], versions["cuda_version"]]
    text = json.dumps([target.name, *stack, interpret, strategy, problems], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _versions() -> dict[str, str | None]:
    import torch
    import triton

    return {
        "triton_version": triton.__version__,
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda,
    }


def _select_specs(kernels: Sequence[str] | None, extra_paths: Sequence[str]) -> list[KernelSpec]:
    specs = available_specs(extra_paths)
    if not kernels:
        return list(specs.values())
    unknown = [k for k in kernels if k not in specs]
    if unknown:
        raise ValueError(f"unknown kernel(s) {', '.join(unknown)}; known kernels: {', '.join(specs)}")
    return [specs[k] for k in dict.fromkeys(kernels)]


class _Run:
    """One invocation of a sweep: the state its loop shares, kept out of run_sweep's signature."""

    def __init__(self, storage: Storage, sweep_id: int, plans: list[_Plan], progress, deadline: float | None):
        self.storage = storage
        self.sweep_id = sweep_id
        self.plans = plans
        self.progress = progress
        self.deadline = deadline
        self.started = time.monotonic()
        self.counts: Counter[str] = Counter()
        self.planned = 0
        self.task_ids = iter(range(1, 1 << 62))
        self.compile_results: dict[tuple[int, Config], CompileResult] = {}
        self.measure_started: float | None = None
        self.measured_this_run = 0
        self.stopped: str | None = None

    def out_of_budget(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def report(self, phase: str, problem: int, label: str) -> None:
        if self.progress is None:
            return
        elapsed = time.monotonic() - self.started
        done = sum(self.counts.values())
        eta = None
        if phase == "measure" and self.measure_started is not None and self.measured_this_run:
            per_trial = (time.monotonic() - self.measure_started) / self.measured_this_run
            eta = per_trial * max(0, self.planned - done)
        failed = sum(self.counts[s] for s in (TrialStatus.WRONG, TrialStatus.CRASHED, TrialStatus.TIMEOUT))
        self.progress(
            SweepProgress(
                phase,
                done,
                self.planned,
                self.counts[TrialStatus.OK],
                failed,
                self.counts[TrialStatus.INFEASIBLE],
                problem,
                len(self.plans),
                label,
                elapsed,
                eta,
            )
        )

    def record(self, plan: _Plan, config: Config, measurement: Measurement) -> TrialModel:
        assert plan.problem is not None
        compiled = self.compile_results.get((plan.problem.id, config))
        if compiled is not None and measurement.compile_seconds is None:
            measurement = Measurement(
                **{
                    **asdict(measurement),
                    "compile_seconds": compiled.seconds,
                    "shared_bytes": compiled.shared_bytes,
                }
            )
        trial = self.storage.record_trial(plan.problem.id, config, measurement)
        plan.trials[config] = trial
        plan.new_trials += 1
        self.counts[trial.status] += 1
        return trial


def _measured_times(plan: _Plan) -> dict[Config, float | None]:
    return {c: (t.median_ms if t.status == TrialStatus.OK else None) for c, t in plan.trials.items()}


def _compile_phase(run: _Run, target: GpuTarget, extra_paths: Sequence[str], processes: int | None) -> int:
    """Compile every config not yet tried; record the infeasible ones. Returns the number of jobs."""
    jobs: list[CompileJob] = []
    plan_of: dict[CompileJob, _Plan] = {}
    for plan in run.plans:
        for config in dict.fromkeys([plan.spec.default, *plan.spec.space.candidates(plan.key)]):
            if config not in plan.trials:
                job = CompileJob(plan.spec.name, plan.key, config)
                jobs.append(job)
                plan_of[job] = plan
    compiled = 0

    def on_result(job: CompileJob, result: CompileResult) -> None:
        nonlocal compiled
        compiled += 1
        plan = plan_of[job]
        assert plan.problem is not None
        run.compile_results[(plan.problem.id, job.config)] = result
        if not result.ok:
            run.record(
                plan,
                job.config,
                Measurement(
                    TrialStatus.INFEASIBLE,
                    compile_seconds=result.seconds,
                    shared_bytes=result.shared_bytes,
                    error=result.error,
                ),
            )
        run.report("compile", 0, f"compiled {compiled}/{len(jobs)} configs for {target.name}")

    if jobs:
        compile_all(jobs, target.name, extra_paths, processes, on_result)
    for plan in run.plans:
        candidates = plan.spec.space.candidates(plan.key)
        usable = {c for c, t in plan.trials.items() if t.status != TrialStatus.INFEASIBLE}
        usable |= {c for c in candidates if c not in plan.trials}  # compiled fine, not measured yet
        plan.feasible = [c for c in candidates if c in usable]
        plan.default_feasible = plan.spec.default in usable
    return len(jobs)


def _planned_trials(plan: _Plan, strategy: str, settings: Mapping[str, Any]) -> int:
    """Trials this run will measure for `plan` (for TPE an upper bound: it may converge sooner)."""
    todo = {c for c in plan.feasible if c not in plan.trials}
    if plan.default_feasible and plan.spec.default not in plan.trials:
        todo.add(plan.spec.default)  # measured first, whatever the strategy
    if strategy == "tpe":  # the budget counts everything measured, the default included
        measured = sum(t.status != TrialStatus.INFEASIBLE for t in plan.trials.values())
        return min(len(todo), max(0, int(settings["trials"]) - measured))
    return len(todo)


def _await_one(pool: WorkerPool) -> TaskResult:
    while True:
        results = pool.collect(timeout_s=1.0)
        if results:
            (result,) = results
            return result


def _measure_problem(
    run: _Run, pool: WorkerPool, plan: _Plan, index: int, search_for: Callable[[_Plan], Search]
) -> bool:
    """Measure one problem until its search stops; True when it finished (not cut by the budget)."""
    assert plan.problem is not None

    def submit(config: Config) -> int:
        task_id = next(run.task_ids)
        pool.submit(TrialTask(task_id, plan.spec.name, plan.key, config, TRIAL_BUDGET_MS))
        return task_id

    def finish(result: TaskResult) -> None:
        assert isinstance(result.task, TrialTask) and result.measurement is not None
        run.record(plan, result.task.config, result.measurement)
        run.measured_this_run += 1
        run.report("measure", index, plan.label)

    # The default first, alone: the search then sees it as measured and never asks for it again.
    if plan.default_feasible and plan.spec.default not in plan.trials:
        if run.out_of_budget():
            return False
        submit(plan.spec.default)
        finish(_await_one(pool))

    search = search_for(plan)
    in_flight: dict[int, Config] = {}
    exhausted = False
    while True:
        while pool.idle and not exhausted and not run.out_of_budget():
            batch = search.ask(pool.idle)
            if not batch:
                exhausted = not in_flight
                break
            for config in batch:
                in_flight[submit(config)] = config
        if not in_flight:
            return exhausted  # else the budget ran out before the search did
        for result in pool.collect(timeout_s=1.0):
            config = in_flight.pop(result.task.task_id)
            finish(result)
            search.tell(
                config, result.measurement.median_ms if result.measurement.status == TrialStatus.OK else None
            )


def _needs_pick(run: _Run, plan: _Plan) -> bool:
    """A problem whose winner is missing or out of date (trials were added since it was picked)."""
    assert plan.problem is not None
    has_ok = any(t.status == TrialStatus.OK for t in plan.trials.values())
    return has_ok and (plan.new_trials > 0 or run.storage.winner(plan.problem.id) is None)


def _pick_winner(run: _Run, pool: WorkerPool, plan: _Plan, index: int, top_k: int) -> None:
    """Re-time the top candidates and the default interleaved; store the winner (none if no trial is ok)."""
    assert plan.problem is not None
    ok = sorted(
        (t for t in plan.trials.values() if t.status == TrialStatus.OK and t.median_ms is not None),
        key=lambda t: (t.median_ms, t.id),
    )
    if not ok or not _needs_pick(run, plan):
        return  # nothing correct, or picked by an earlier run from the same trials
    top = ok[:top_k]
    default_trial = plan.trials.get(plan.spec.default)
    default_ok = default_trial is not None and default_trial.status == TrialStatus.OK
    retimed = top + ([default_trial] if default_ok and default_trial not in top else [])
    times = {t.id: t.median_ms for t in retimed}
    if len(retimed) > 1:
        run.report("pick", index, f"{plan.label}: re-timing {len(retimed)} configs interleaved")
        pool.submit(
            RetimeTask(next(run.task_ids), plan.spec.name, plan.key, tuple(t.config for t in retimed))
        )
        result = _await_one(pool)
        if result.retimed_ms is not None:
            times = {t.id: ms for t, ms in zip(retimed, result.retimed_ms, strict=True)}
            run.storage.set_retimed(times)
        # A failed re-timing (a worker that died on a config that passed before) keeps the medians.
    winner = min(top, key=lambda t: (times[t.id], t.id))
    default_ms = times.get(default_trial.id) if default_ok and default_trial is not None else None
    run.storage.set_winner(plan.problem.id, winner.id, times[winner.id], default_ms)


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
) -> SweepSummary:
    """Sweep `kernels` (default: all) over `workloads` or a preset (default "default", under the
    interpreter "smoke") for `target`.

    `trials` is the TPE budget per problem (an error with the grid, which measures every candidate);
    `budget_s` stops asking for new trials once that much wall time has passed (the sweep is then
    "interrupted": the same command continues it). Ctrl-C stops as cleanly: finished trials stay, those
    in flight are dropped and measured again next time. Raises ValueError for bad arguments,
    GpuMismatchError when `target` is not the GPU present, StorageError for database failures.
    """
    started = time.monotonic()
    if workloads is not None and preset is not None:
        raise ValueError("give either workloads or a preset, not both")
    # The interpreter runs a real-size shape for minutes per trial: its default is the smoke preset.
    default_preset = "smoke" if interpret else "default"
    workloads = (
        tuple(workloads) if workloads is not None else preset_by_name(preset or default_preset).workloads
    )
    if not workloads:
        raise ValueError("workloads: nothing to sweep (no shapes given)")
    options = dict(strategy_options or {})
    if trials is not None:
        if strategy != "tpe":
            raise ValueError(
                f"trials: --trials sets the TPE budget; --strategy {strategy} measures every candidate"
            )
        options["trials"] = trials
    search_strategy = make_strategy(strategy, **options)
    if budget_s is not None and budget_s <= 0:
        raise ValueError(f"budget: must be positive, got {budget_s} s")
    if workers is not None and workers < 1:
        raise ValueError(f"workers: must be at least 1, got {workers}")

    gpu_target, gpu_name = resolve_target(target, interpret)
    extra_paths = extra_spec_paths(extra_specs)
    plans = plan_problems(_select_specs(kernels, extra_paths), workloads)
    if not plans:
        raise ValueError("no problems: none of the kernels serves the phases of these workloads")

    storage = Storage(db_url)
    sweep, resumed = storage.open_sweep(
        sweep_fingerprint(gpu_target, gpu_name, interpret, strategy, plans),
        target=gpu_target.name,
        gpu_name=gpu_name,
        compute_capability=f"{gpu_target.capability[0]}.{gpu_target.capability[1]}",
        interpret=interpret,
        strategy=strategy,
        strategy_options=json.dumps(search_strategy.settings, sort_keys=True),
        command=command,
        **_versions(),
    )
    deadline = None if budget_s is None else started + budget_s
    run = _Run(storage, sweep.id, plans, progress, deadline)
    for plan in plans:
        plan.problem = storage.ensure_problem(
            sweep.id, plan.spec.name, plan.key, plan.spec.source_hash(), plan.spec.default
        )
        plan.trials = {t.config: t for t in storage.trials(plan.problem.id)}
    skipped = sum(len(p.trials) for p in plans)

    def search_for(plan: _Plan) -> Search:
        assert plan.problem is not None
        name = f"gdn-tune/sweep{sweep.id}/{plan.spec.name}/{key_to_json(plan.key)}"
        return search_strategy.begin(Problem(name, tuple(plan.feasible), _measured_times(plan), db_url))

    worker_count = workers or default_worker_count(interpret)
    compile_jobs, compile_wall, measure_wall, replaced = 0, 0.0, 0.0, 0
    status = SweepStatus.FINISHED
    try:
        compile_started = time.monotonic()
        compile_jobs = _compile_phase(run, gpu_target, extra_paths, compile_processes)
        compile_wall = time.monotonic() - compile_started
        run.planned = sum(run.counts.values()) + sum(
            _planned_trials(p, strategy, search_strategy.settings) for p in plans
        )
        needs_workers = run.planned > sum(run.counts.values()) or any(_needs_pick(run, p) for p in plans)
        run.measure_started = time.monotonic()
        if needs_workers and not run.out_of_budget():
            with WorkerPool(worker_count, interpret, extra_paths, trial_timeout_s) as pool:
                for index, plan in enumerate(plans, 1):
                    plan.complete = _measure_problem(run, pool, plan, index, search_for)
                    if not plan.complete:
                        run.stopped = "budget"
                        break
                    _pick_winner(run, pool, plan, index, top_k)
                replaced = pool.replaced
        elif needs_workers:
            run.stopped = "budget"
        else:
            for plan in plans:
                plan.complete = True
        measure_wall = time.monotonic() - run.measure_started
    except KeyboardInterrupt:
        run.stopped = "interrupted"
    except BaseException:
        storage.close_sweep(sweep.id, SweepStatus.FAILED)
        raise
    if run.stopped is not None:
        status = SweepStatus.INTERRUPTED
        if run.measure_started is not None:
            measure_wall = time.monotonic() - run.measure_started
    storage.close_sweep(sweep.id, status)
    winners = sum(storage.winner(p.problem.id) is not None for p in plans if p.problem is not None)
    summary = SweepSummary(
        sweep_id=sweep.id,
        resumed=resumed,
        status=status.value,
        target=gpu_target.name,
        gpu_name=gpu_name,
        strategy=strategy,
        problems=len(plans),
        winners=winners,
        no_correct_config=[
            p.label
            for p in plans
            if p.complete and not any(t.status == TrialStatus.OK for t in p.trials.values())
        ],
        trials_this_run=dict(run.counts),
        trials_total=storage.trial_counts(sweep.id),
        skipped_already_done=skipped,
        compile_jobs=compile_jobs,
        compile_wall_s=round(compile_wall, 3),
        measure_wall_s=round(measure_wall, 3),
        elapsed_s=round(time.monotonic() - started, 3),
        trials_per_minute=round(60 * run.measured_this_run / measure_wall, 2) if measure_wall > 0 else None,
        workers=worker_count,
        workers_replaced=replaced,
        stopped=run.stopped,
    )
    storage.dispose()
    return summary
