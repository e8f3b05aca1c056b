"""The sweep: for every (kernel, key) of the chosen shapes, find the fastest correct config for a target.

1. Plan: the kernels' keys for the workloads (each kernel only for the phases it serves).
2. Open the sweep in the database. The same command again (same target, kernels and their hashes,
   keys, strategy, interpreter or not) reopens the same sweep, and every (problem, config) already
   measured is skipped: a sweep stopped by Ctrl-C, its budget, or SIGKILL continues where it stopped.
3. Compile every candidate (and the default) for the target over all CPU cores; what fails or does
   not fit the target's shared memory is recorded infeasible and never launched.
4. Measure on one worker per GPU. Each worker claims a problem in the database and stays with it: the
   default config first (the table records its time beside the winner's), then what the strategy asks
   for. Each trial is committed as it finishes. A worker with nothing to hand out claims the next
   problem, or helps the problems in progress once none is left, so no GPU idles while work remains.
   Several processes (hosts) sharing a PostgreSQL database share the problems the same way.
5. Pick: the top candidates and the default are re-timed interleaved on one worker, and the fastest of
   the top ones wins. Only a correct, deterministic trial can win (the database refuses anything else).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import secrets
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from gdn_kernels import Config, GpuTarget, KernelSpec, Key, Workload, target_by_name
from gdn_kernels.tuning import BUCKET_FIELDS, TARGETS, target_for_device, unique_keys

from .compile import CompileJob, CompileResult, compile_all
from .constants import INTERPRETER_GPU_NAME
from .measure import charged
from .presets import preset_by_name
from .specs import available_specs, extra_spec_paths
from .storage import (
    DEFAULT_CLAIM_GRACE_S,
    DEFAULT_DB_URL,
    Claim,
    DuplicateTrialError,
    Measurement,
    ProblemModel,
    Storage,
    SweepStatus,
    TrialModel,
    TrialStatus,
    claimant_name,
    key_to_json,
)
from .strategies import Problem, Search, make_strategy
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
    claimant: str = ""  # this process in the database's claims and trials ("host:pid:tag")
    # Where the measuring time went: the workers' wall time by phase (summed over workers), and this
    # process's own work between their results.
    worker_seconds: dict[str, float] = field(default_factory=dict)
    sweep_seconds: dict[str, float] = field(default_factory=dict)
    strategy_failures: list[str] = field(default_factory=list)  # e.g. a TPE study not kept in the database

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
    stale_pick: bool = False  # taken over from a dead process, which may have measured after its pick

    @property
    def label(self) -> str:
        return f"{self.spec.name} {self.key.label}"

    @property
    def default(self) -> Config:
        """The default config of this key, one the space accepts (`KernelSpec.default_for`)."""
        return self.spec.default_for(self.key)


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

    def __init__(
        self,
        storage: Storage,
        sweep_id: int,
        plans: list[_Plan],
        progress: Callable[[SweepProgress], None] | None,
        deadline: float | None,
        claimant: str,
    ) -> None:
        self.storage = storage
        self.sweep_id = sweep_id
        self.plans = plans
        self.progress = progress
        self.deadline = deadline
        self.claimant = claimant
        self.started = time.monotonic()
        self.counts: Counter[str] = Counter()
        self.planned = 0
        self.task_ids = iter(range(1, 1 << 62))
        self.compile_results: dict[tuple[int, Config], CompileResult] = {}
        self.measure_started: float | None = None
        self.measured_this_run = 0
        self.stopped: str | None = None
        self.worker_seconds: Counter[str] = Counter()
        self.sweep_seconds: Counter[str] = Counter()

    def clock(self, name: str) -> contextlib.AbstractContextManager[None]:
        """Charge the block's wall time to `name` in this process's own time."""
        return charged(self.sweep_seconds, name)

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

    def record(self, plan: _Plan, config: Config, measurement: Measurement, worker: str) -> TrialModel:
        """Commit a trial; DuplicateTrialError when another process measured it (this one lost its claim)."""
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
        with self.clock("database"):
            trial = self.storage.record_trial(plan.problem.id, config, measurement, worker=worker)
        plan.trials[config] = trial
        plan.new_trials += 1
        self.counts[trial.status] += 1
        return trial


# Winners of neighbouring buckets handed to a search as its first configs (see neighbour_seeds).
NEIGHBOUR_SEEDS = 2


def neighbour_seeds(
    storage: Storage, plans: Sequence[_Plan], plan: _Plan, limit: int = NEIGHBOUR_SEEDS
) -> tuple[Config, ...]:
    """The winners already found for the same kernel and shape at the nearest other token (or
    sequence) buckets, nearest first, at most `limit` distinct configs. The best config of a bucket is
    often its neighbour's: a sampling search that tries those first cannot miss them (the anchors
    sweep's chunk_state winner at 2/8 heads was never sampled by a 16-trial search that lacked it)."""

    def shape(p: _Plan) -> tuple:
        return p.spec.name, tuple((k, v) for k, v in p.key.items if k not in BUCKET_FIELDS)

    def distance(p: _Plan) -> float:
        return sum(
            abs(math.log2(max(1, int(v))) - math.log2(max(1, int(plan.key[k]))))
            for k, v in p.key.items
            if k in BUCKET_FIELDS
        )

    mine = shape(plan)
    near = sorted(
        (distance(p), p.problem.id)
        for p in plans
        if p is not plan and p.problem is not None and shape(p) == mine
    )
    winners = storage.winning_configs([problem_id for _, problem_id in near])
    seeds = dict.fromkeys(winners[problem_id] for _, problem_id in near if problem_id in winners)
    return tuple(seeds)[:limit]


def _measured_times(plan: _Plan) -> dict[Config, float | None]:
    return {c: (t.median_ms if t.status == TrialStatus.OK else None) for c, t in plan.trials.items()}


def _compile_phase(run: _Run, target: GpuTarget, extra_paths: Sequence[str], processes: int | None) -> int:
    """Compile every config not yet tried, over all CPU cores; record what fails as infeasible. Returns
    the number of jobs.

    Infeasibility is a fact of (kernel, config, target, Triton), the same whichever process finds it, so
    it is recorded without a claim: another process that recorded it first leaves nothing to add.
    """
    jobs: list[CompileJob] = []
    plan_of: dict[CompileJob, _Plan] = {}
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
            _record_infeasible(run, plan, job.config)
        run.report(
            "compile", 0, f"compiled {compiled}/{len(jobs)} configs for {target.name}, {infeasible} fail"
        )

    if jobs:
        compile_all(jobs, target.name, extra_paths, processes, on_result)
    for plan in run.plans:
        _refresh_feasible(run, plan)
    return len(jobs)


def _record_infeasible(run: _Run, plan: _Plan, config: Config) -> None:
    assert plan.problem is not None
    result = run.compile_results[(plan.problem.id, config)]
    measurement = Measurement(
        TrialStatus.INFEASIBLE,
        compile_seconds=result.seconds,
        shared_bytes=result.shared_bytes,
        error=result.error,
    )
    with contextlib.suppress(DuplicateTrialError):  # recorded by another process first
        run.record(plan, config, measurement, worker=f"{run.claimant}/compile")


def _unrecorded_infeasible(run: _Run, plan: _Plan) -> list[Config]:
    """Configs that failed to compile and are not yet in the database."""
    assert plan.problem is not None
    pid = plan.problem.id
    configs = dict.fromkeys([plan.default, *plan.spec.space.candidates(plan.key)])
    return [
        c
        for c in configs
        if c not in plan.trials
        and (result := run.compile_results.get((pid, c))) is not None
        and not result.ok
    ]


def _refresh_feasible(run: _Run, plan: _Plan) -> None:
    """The candidates still worth measuring: not recorded infeasible and compiled fine."""
    assert plan.problem is not None
    pid = plan.problem.id

    def usable(config: Config) -> bool:
        trial = plan.trials.get(config)
        if trial is not None:
            return trial.status != TrialStatus.INFEASIBLE
        result = run.compile_results.get((pid, config))
        return result is None or result.ok

    plan.feasible = [c for c in plan.spec.space.candidates(plan.key) if usable(c)]
    plan.default_feasible = usable(plan.default)


def _planned_trials(plan: _Plan, strategy: str, settings: Mapping[str, Any]) -> int:
    """Trials this run will measure for `plan` (for TPE an upper bound: it may converge sooner)."""
    todo = {c for c in plan.feasible if c not in plan.trials}
    if plan.default_feasible and plan.default not in plan.trials:
        todo.add(plan.default)  # measured first, whatever the strategy
    if strategy == "tpe":  # the budget counts everything measured, the default included
        measured = sum(t.status != TrialStatus.INFEASIBLE for t in plan.trials.values())
        return min(len(todo), max(0, int(settings["trials"]) - measured))
    return len(todo)


def _needs_pick(run: _Run, plan: _Plan) -> bool:
    """A problem whose winner is missing or out of date: trials were added since it was picked (by this
    run, or by a process that died before its pick, which `plan.stale_pick` records)."""
    assert plan.problem is not None
    has_ok = any(t.status == TrialStatus.OK for t in plan.trials.values())
    return has_ok and (plan.new_trials > 0 or plan.stale_pick or run.storage.winner(plan.problem.id) is None)


def _has_work(run: _Run, plan: _Plan, strategy: str, settings: Mapping[str, Any]) -> bool:
    return bool(
        _unrecorded_infeasible(run, plan)
        or _planned_trials(plan, strategy, settings)
        or _needs_pick(run, plan)
    )


@dataclass
class _Active:
    """A problem this process holds a claim on, and where its measurement stands."""

    plan: _Plan
    index: int  # 1-based position among the plans, for the progress line
    stage: str = "default"  # "default" (measured first, alone), "search", "pick"
    search: Search | None = None
    in_flight: dict[int, Config | None] = field(default_factory=dict)  # task id -> config (None: re-timing)
    top: tuple[TrialModel, ...] = ()  # the candidates for the win, once the search is over
    retimed: tuple[TrialModel, ...] | None = None  # the top and the default, once their re-timing is sent

    @property
    def problem_id(self) -> int:
        assert self.plan.problem is not None
        return self.plan.problem.id


class _Scheduler:
    """Keeps every worker busy until no problem of the sweep is left, on this host or with others.

    Problems are claimed one at a time from the database (see Storage.claim_problem), and a worker
    stays with the problem it claimed (its inputs, reference and compiled kernels stay warm on that
    GPU) from the default config through the search to the re-timed pick. A worker whose problem has
    nothing to hand out (its default is in flight, or its last trials are) claims the next problem;
    when no problem is left to claim, idle workers help the problems still in progress, so no GPU idles
    while work remains. Claims are kept alive by a heartbeat every quarter of the grace period.
    """

    def __init__(
        self,
        run: _Run,
        pool: WorkerPool,
        candidates: set[int],
        search_for: Callable[[_Plan], Search],
        strategy: str,
        settings: Mapping[str, Any],
        grace_s: float,
        top_k: int,
    ) -> None:
        self.run = run
        self.pool = pool
        self.candidates = candidates  # problem ids this process may still have work on
        self.search_for = search_for
        self.strategy = strategy
        self.settings = settings
        self.grace_s = grace_s
        self.top_k = top_k
        self.plan_by_id = {p.problem.id: (i, p) for i, p in enumerate(run.plans, 1) if p.problem}
        self.active: dict[int, _Active] = {}
        self.home: dict[int, int] = {}  # worker index -> the problem it claimed
        self.task_owner: dict[int, int] = {}  # task id -> problem id
        self.last_heartbeat = time.monotonic()
        self.nothing_to_claim_until = 0.0  # no claimable problem: ask the database again after this

    # Claims ----------------------------------------------------------------------------------------
    @property
    def heartbeat_interval_s(self) -> float:
        # Four heartbeats per grace period: one late or lost beat never makes a live claim look dead.
        return self.grace_s / 4

    def _heartbeat_if_due(self) -> None:
        if not self.active or time.monotonic() - self.last_heartbeat < self.heartbeat_interval_s:
            return
        self.last_heartbeat = time.monotonic()
        held = self.run.storage.heartbeat(self.run.claimant, list(self.active))
        for problem_id in set(self.active) - held:
            self._abandon(problem_id)

    def _abandon(self, problem_id: int) -> None:
        """Drop a problem whose claim another process took over; its tasks in flight are discarded."""
        self.active.pop(problem_id, None)
        self.home = {w: p for w, p in self.home.items() if p != problem_id}

    def _claim(self) -> _Active | None:
        """Claim the next problem with work left, with its trials as the database has them now."""
        run = self.run
        while self.candidates and not run.out_of_budget() and time.monotonic() >= self.nothing_to_claim_until:
            free = self.candidates - set(self.active)
            with run.clock("database"):
                claim = run.storage.claim_problem(run.sweep_id, free, run.claimant, self.grace_s)
                if claim is None:
                    claim = self._claim_done(free)
            if claim is None:
                # Everything left is held by live processes; one may die, so look again soon.
                self.nothing_to_claim_until = time.monotonic() + min(1.0, self.grace_s / 4)
                return None
            index, plan = self.plan_by_id[claim.problem_id]
            self._reload(plan)
            plan.stale_pick = plan.stale_pick or claim.taken_over_from is not None
            for config in _unrecorded_infeasible(run, plan):
                _record_infeasible(run, plan, config)
            _refresh_feasible(run, plan)
            if not _has_work(run, plan, self.strategy, self.settings):
                self._finish(plan)
                continue
            active = _Active(plan, index)
            self.active[claim.problem_id] = active
            if not (plan.default_feasible and plan.default not in plan.trials):
                active.stage = "search"
                active.search = self.search_for(plan)
            return active
        return None

    def _claim_done(self, free: set[int]) -> Claim | None:
        """Of the problems other processes finished, drop those with nothing left for this run (read
        without claiming them: who finished a problem stays on record) and claim one that has (this
        run's TPE budget may be larger than theirs)."""
        storage = self.run.storage
        reopen = set()
        for problem_id in storage.done_problem_ids(self.run.sweep_id, free):
            plan = self.plan_by_id[problem_id][1]
            self._reload(plan)
            _refresh_feasible(self.run, plan)
            if _has_work(self.run, plan, self.strategy, self.settings):
                reopen.add(problem_id)
            else:
                plan.complete = True
                self.candidates.discard(problem_id)
        if not reopen:
            return None
        return storage.claim_problem(
            self.run.sweep_id, reopen, self.run.claimant, self.grace_s, include_done=True
        )

    def _reload(self, plan: _Plan) -> None:
        assert plan.problem is not None
        plan.trials = {t.config: t for t in self.run.storage.trials(plan.problem.id)}

    def _finish(self, plan: _Plan) -> None:
        assert plan.problem is not None
        self.run.storage.finish_problem(self.run.claimant, plan.problem.id)
        plan.complete = True
        self.candidates.discard(plan.problem.id)
        self._abandon(plan.problem.id)

    def release(self) -> None:
        """Give back what this process holds and has not finished (Ctrl-C, budget, an error)."""
        if self.active:
            self.run.storage.release_claims(self.run.claimant, list(self.active))
            self.active.clear()

    # Tasks -----------------------------------------------------------------------------------------
    def _next_task(self, active: _Active) -> TrialTask | RetimeTask | None:
        plan, run = active.plan, self.run
        if active.stage == "default":
            if active.in_flight or run.out_of_budget():
                return None  # the default is measured alone: the search then knows its time
            return self._trial_task(active, plan.default)
        if active.stage == "search":
            assert active.search is not None
            with run.clock("strategy"):
                batch = [] if run.out_of_budget() else active.search.ask(1)
            if batch:
                return self._trial_task(active, batch[0])
            if active.in_flight or run.out_of_budget():
                return None
            with run.clock("strategy"):
                active.search.finish()
            active.stage = "pick"
        if active.stage == "pick" and active.retimed is None:
            return self._pick(active)
        return None

    def _trial_task(self, active: _Active, config: Config) -> TrialTask:
        task = TrialTask(
            next(self.run.task_ids), active.plan.spec.name, active.plan.key, config, TRIAL_BUDGET_MS
        )
        active.in_flight[task.task_id] = config
        return task

    def _pick(self, active: _Active) -> RetimeTask | None:
        """The interleaved re-timing of the top candidates and the default; None when the pick needs no
        worker (nothing correct, picked before from the same trials, or one candidate), and then the
        problem is finished here."""
        plan = active.plan
        plan.complete = True  # searched to the end
        ok = sorted(
            (t for t in plan.trials.values() if t.status == TrialStatus.OK and t.median_ms is not None),
            key=lambda t: (t.median_ms, t.id),
        )
        if not ok or not _needs_pick(self.run, plan):
            self._finish(plan)
            return None
        active.top = tuple(ok[: self.top_k])
        default_trial = plan.trials.get(plan.default)
        default_ok = default_trial is not None and default_trial.status == TrialStatus.OK
        extra = (default_trial,) if default_ok and default_trial not in active.top else ()
        active.retimed = active.top + extra
        if len(active.retimed) == 1:
            self._store_winner(active, None)
            return None
        self.run.report(
            "pick", active.index, f"{plan.label}: re-timing {len(active.retimed)} configs interleaved"
        )
        configs = tuple(t.config for t in active.retimed)
        task = RetimeTask(next(self.run.task_ids), plan.spec.name, plan.key, configs)
        active.in_flight[task.task_id] = None
        return task

    def _store_winner(self, active: _Active, retimed_ms: tuple[float, ...] | None) -> None:
        """The fastest of the top candidates by the re-timing wins; the default's re-timed time is kept
        beside it."""
        plan, storage = active.plan, self.run.storage
        assert plan.problem is not None and active.retimed is not None
        times = {t.id: t.median_ms for t in active.retimed}
        if retimed_ms is not None:
            times = {t.id: ms for t, ms in zip(active.retimed, retimed_ms, strict=True)}
            storage.set_retimed(times)
        # A failed re-timing (a worker that died on a config that passed before) keeps the medians.
        winner = min(active.top, key=lambda t: (times[t.id], t.id))
        default_trial = plan.trials.get(plan.default)
        default_ok = default_trial is not None and default_trial.status == TrialStatus.OK
        default_ms = times.get(default_trial.id) if default_ok and default_trial is not None else None
        storage.set_winner(plan.problem.id, winner.id, times[winner.id], default_ms)
        self._finish(plan)

    def _fill(self) -> None:
        """Hand a task to every idle worker that can have one."""
        for worker in self.pool.idle_workers:
            task = None
            home = self.active.get(self.home.get(worker, -1))
            if home is not None:
                task = self._next_task(home)
            while task is None and (claimed := self._claim()) is not None:
                self.home[worker] = claimed.problem_id
                task = self._next_task(claimed)
            if task is None:  # nothing left to claim: help the problems in progress, least served first
                for active in sorted(self.active.values(), key=lambda a: len(a.in_flight)):
                    if (task := self._next_task(active)) is not None:
                        break
            if task is None:
                continue
            owner = next(a for a in self.active.values() if task.task_id in a.in_flight)
            self.task_owner[task.task_id] = owner.problem_id
            self.pool.submit(task, worker)

    def _on_result(self, result: TaskResult) -> None:
        self.run.worker_seconds.update(result.seconds)
        problem_id = self.task_owner.pop(result.task.task_id)
        active = self.active.get(problem_id)
        if active is None:
            return  # the problem was abandoned (its claim lapsed) while this ran
        active.in_flight.pop(result.task.task_id)
        if isinstance(result.task, RetimeTask):
            self._store_winner(active, result.retimed_ms)
            return
        assert result.measurement is not None
        worker = f"{self.run.claimant}/{self.pool.label(result.worker_index)}"
        try:
            self.run.record(active.plan, result.task.config, result.measurement, worker)
        except DuplicateTrialError:
            self._abandon(problem_id)
            return
        self.run.measured_this_run += 1
        self.run.report("measure", active.index, active.plan.label)
        with self.run.clock("strategy"):
            if active.stage == "default":
                active.stage = "search"
                active.search = self.search_for(active.plan)
            else:
                assert active.search is not None
                status = result.measurement.status
                active.search.tell(
                    result.task.config, result.measurement.median_ms if status == TrialStatus.OK else None
                )

    def run_until_done(self) -> None:
        """Measure until every candidate problem is done (here or elsewhere) or the budget runs out."""
        try:
            while True:
                self._heartbeat_if_due()
                self._fill()
                if self.pool.busy == 0:
                    if not self.candidates:
                        return
                    if self.run.out_of_budget():
                        self.run.stopped = "budget"
                        return
                    # Every problem left is held by another live process: wait for it to finish (or
                    # to die, and its claims to lapse).
                    time.sleep(max(0.0, min(1.0, self.nothing_to_claim_until - time.monotonic())))
                    continue
                with self.run.clock("waiting"):
                    results = self.pool.collect(timeout_s=min(1.0, self.heartbeat_interval_s))
                for result in results:
                    self._on_result(result)
        finally:
            self.release()


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
) -> SweepSummary:
    """Sweep `kernels` (default: all) over `workloads` or a preset (default "default", under the
    interpreter "smoke") for `target`, on `workers` worker processes (default: one per visible GPU).

    `trials` is the TPE budget per problem (an error with the grid, which measures every candidate);
    `budget_s` stops asking for new trials once that much wall time has passed (the sweep is then
    "interrupted": the same command continues it). Ctrl-C stops as cleanly: finished trials stay, those
    in flight are dropped and measured again next time. Any number of processes may run the same sweep
    on one database (PostgreSQL, for several hosts): they share its problems, and a problem whose
    process stopped heart-beating for `claim_grace_s` seconds is taken over. Raises ValueError for bad
    arguments, GpuMismatchError when `target` is not the GPU present, StorageError for database failures.
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
    if not claim_grace_s > 0:
        raise ValueError(f"claim_grace: must be positive, got {claim_grace_s} s")

    gpu_target, gpu_name = resolve_target(target, interpret)
    worker_count = workers or default_worker_count(interpret)
    if not interpret:
        _check_gpus(worker_count, gpu_name)
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
    run = _Run(storage, sweep.id, plans, progress, deadline, claimant_name(secrets.token_hex(3)))
    for plan in plans:
        plan.problem = storage.ensure_problem(
            sweep.id, plan.spec.name, plan.key, plan.spec.source_hash(), plan.default
        )
        plan.trials = {t.config: t for t in storage.trials(plan.problem.id)}
    skipped = sum(len(p.trials) for p in plans)

    def search_for(plan: _Plan) -> Search:
        assert plan.problem is not None
        name = f"gdn-tune/sweep{sweep.id}/{plan.spec.name}/{key_to_json(plan.key)}"
        with run.clock("database"):
            seeds = neighbour_seeds(run.storage, plans, plan)
        problem = Problem(name, tuple(plan.feasible), _measured_times(plan), storage.full_url, seeds)
        return search_strategy.begin(problem)

    settings = search_strategy.settings
    compile_jobs, compile_wall, measure_wall, replaced = 0, 0.0, 0.0, 0
    status = SweepStatus.FINISHED
    others_at_work = False
    pool: WorkerPool | None = None

    def start_workers() -> WorkerPool:
        with run.clock("starting workers"):
            return WorkerPool(worker_count, interpret, extra_paths, trial_timeout_s, wait=False)

    try:
        if any(p.done_at is None for p in storage.problems(sweep.id)):
            # Workers import torch and set up their GPU (3 to 5 s) while the CPUs compile, not after.
            pool = start_workers()
        compile_started = time.monotonic()
        compile_jobs = _compile_phase(run, gpu_target, extra_paths, compile_processes)
        compile_wall = time.monotonic() - compile_started
        candidates = {
            p.problem.id for p in plans if p.problem is not None and _has_work(run, p, strategy, settings)
        }
        for plan in plans:
            plan.complete = plan.problem is not None and plan.problem.id not in candidates
        run.planned = sum(run.counts.values()) + sum(  # infeasible ones are recorded while compiling
            len(_unrecorded_infeasible(run, p)) + _planned_trials(p, strategy, settings)
            for p in plans
            if p.problem is not None and p.problem.id in candidates
        )
        run.measure_started = time.monotonic()
        if candidates and not run.out_of_budget():
            pool = pool or start_workers()  # all problems were done, yet this run has more to measure
            with run.clock("starting workers"):
                pool.wait_ready()
            scheduler = _Scheduler(
                run, pool, candidates, search_for, strategy, settings, claim_grace_s, top_k
            )
            scheduler.run_until_done()
            replaced = pool.replaced
        elif candidates:
            run.stopped = "budget"
        measure_wall = time.monotonic() - run.measure_started
    except KeyboardInterrupt:
        run.stopped = "interrupted"
    except BaseException:
        storage.close_sweep(sweep.id, SweepStatus.FAILED)
        search_strategy.close(timeout_s=5.0)  # its failures would hide the error being raised
        raise
    finally:
        if pool is not None:
            pool.close()
    if run.stopped is not None:
        status = SweepStatus.INTERRUPTED
        if run.measure_started is not None:
            measure_wall = time.monotonic() - run.measure_started
        # Other processes still measuring this sweep will close it when they finish.
        ids = [p.problem.id for p in plans if p.problem is not None]
        others_at_work = storage.held_by_others(sweep.id, ids, run.claimant, claim_grace_s) > 0
    if not others_at_work:
        storage.close_sweep(sweep.id, status)
    strategy_failures = search_strategy.close()
    fresh = {p.id: p for p in storage.problems(sweep.id)}
    for plan in plans:
        assert plan.problem is not None
        if fresh[plan.problem.id].done_at is not None and not plan.complete:
            plan.complete = True  # finished by another process
            plan.trials = {t.config: t for t in storage.trials(plan.problem.id)}
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
        claimant=run.claimant,
        worker_seconds={k: round(v, 3) for k, v in sorted(run.worker_seconds.items())},
        sweep_seconds={k: round(v, 3) for k, v in sorted(run.sweep_seconds.items())},
        strategy_failures=strategy_failures,
    )
    storage.dispose()
    return summary


def _check_gpus(worker_count: int, gpu_name: str) -> None:
    """One worker per GPU, every GPU the same model: two trials timed on one GPU at once slow each
    other, and a pick compares times that must come from alike GPUs."""
    import torch

    visible = torch.cuda.device_count()
    if worker_count > visible:
        raise ValueError(
            f"workers: {worker_count} workers but {visible} GPU(s) visible; a worker needs a GPU of its "
            "own (two trials timed on one GPU at once slow each other)"
        )
    names = [torch.cuda.get_device_name(i) for i in range(worker_count)]
    others = sorted({n for n in names if n != gpu_name})
    if others:
        raise GpuMismatchError(
            f"the GPUs of this host differ: {gpu_name} and {', '.join(others)}; choose alike ones with "
            "CUDA_VISIBLE_DEVICES (a pick compares times across the workers' GPUs)"
        )
