"""The state one invocation of a sweep shares between its compile phase and its scheduler: the plans,
the compile results, this run's trial counts and progress, and how a trial is recorded."""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from gdn_kernels import Config

from ..compile import CompileResult
from ..measure import charged
from ..storage import DuplicateTrialError, Storage, TrialModel
from ..trial_result import Measurement, TrialStatus
from .plan import Plan, planned_trials


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


class SweepRun:
    """One invocation of a sweep: the state its loop shares, kept out of run_sweep's signature."""

    def __init__(
        self,
        storage: Storage,
        sweep_id: int,
        plans: list[Plan],
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
        self.busy_seconds: Counter[str] = Counter()  # by worker label ("gpu3"): its time on trials
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

    def record(self, plan: Plan, config: Config, measurement: Measurement, worker: str) -> TrialModel:
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


def record_infeasible(run: SweepRun, plan: Plan, config: Config) -> None:
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


def unrecorded_infeasible(run: SweepRun, plan: Plan) -> list[Config]:
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


def refresh_feasible(run: SweepRun, plan: Plan) -> None:
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


def needs_pick(run: SweepRun, plan: Plan) -> bool:
    """A problem whose winner is missing or out of date: trials were added since it was picked (by this
    run, or by a process that died before its pick, which `plan.stale_pick` records)."""
    assert plan.problem is not None
    has_ok = any(t.status == TrialStatus.OK for t in plan.trials.values())
    return has_ok and (plan.new_trials > 0 or plan.stale_pick or run.storage.winner(plan.problem.id) is None)


def has_work(run: SweepRun, plan: Plan, strategy: str, settings: Mapping[str, Any]) -> bool:
    return bool(
        unrecorded_infeasible(run, plan) or planned_trials(plan, strategy, settings) or needs_pick(run, plan)
    )
