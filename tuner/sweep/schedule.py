"""Scheduling a sweep's measurements: which problem each GPU worker measures next, claims on problems
shared with other processes, and the re-timed pick of a problem's winner."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gdn_kernels import Config

from ..storage import Claim, DuplicateTrialError, TrialModel
from ..strategies import Search
from ..trial_result import TrialStatus
from ..worker import RetimeTask, TaskResult, TrialTask, WorkerPool
from .plan import Plan
from .state import SweepRun, has_work, needs_pick, record_infeasible, refresh_feasible, unrecorded_infeasible

# Candidates re-timed interleaved before the pick. Neighbouring configs of these kernels often differ
# by 1 to 3 %, about the drift between two timing runs; re-timing the best three side by side is what
# makes the pick stable from one sweep to the next.
TOP_CANDIDATES = 3
# Replay budget of one trial on the GPU (see measure.CUDA_BUDGET_MS); under the interpreter the
# repetition count is fixed instead.
TRIAL_BUDGET_MS = 100.0


@dataclass
class _Active:
    """A problem this process holds a claim on, and where its measurement stands."""

    plan: Plan
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


class Scheduler:
    """Keeps every worker busy until no problem of the sweep is left, on this host or with others.

    Problems are claimed one at a time from the database (see Storage.claim_problem), and a worker
    stays with the problem it claimed (its inputs, reference and compiled kernels stay warm on that
    GPU) from the default config through the search to the re-timed pick. A worker whose problem has
    nothing to hand out (its default is in flight, or its last trials are) claims the next problem;
    when no problem is left to claim, idle workers help the problems still in progress, so no GPU idles
    while work remains. A busy worker is also handed the next task of its problem, queued behind the one
    it measures (up to the pool's queue depth), so this process's round trip between two trials (commit,
    strategy) overlaps the GPU's work. Claims are kept alive by a heartbeat every quarter of the grace
    period.
    """

    def __init__(
        self,
        run: SweepRun,
        pool: WorkerPool,
        candidates: set[int],
        search_for: Callable[[Plan], Search],
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
            for config in unrecorded_infeasible(run, plan):
                record_infeasible(run, plan, config)
            refresh_feasible(run, plan)
            if not has_work(run, plan, self.strategy, self.settings):
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
            refresh_feasible(self.run, plan)
            if has_work(self.run, plan, self.strategy, self.settings):
                reopen.add(problem_id)
            else:
                plan.complete = True
                self.candidates.discard(problem_id)
        if not reopen:
            return None
        return storage.claim_problem(
            self.run.sweep_id, reopen, self.run.claimant, self.grace_s, include_done=True
        )

    def _reload(self, plan: Plan) -> None:
        assert plan.problem is not None
        plan.trials = {t.config: t for t in self.run.storage.trials(plan.problem.id)}

    def _finish(self, plan: Plan) -> None:
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
        if not ok or not needs_pick(self.run, plan):
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
        """Hand a task to every worker with room for one: the idle workers first, then one more to each
        busy worker, queued behind the trial it measures (see worker.QUEUE_DEPTH)."""
        for queued in range(self.pool.queue_depth):
            for worker in self.pool.with_room(queued):
                task = self._queued_task(worker) if queued else self._first_task(worker)
                if task is None:
                    continue
                owner = next(a for a in self.active.values() if task.task_id in a.in_flight)
                self.task_owner[task.task_id] = owner.problem_id
                self.pool.submit(task, worker)

    def _first_task(self, worker: int) -> TrialTask | RetimeTask | None:
        """A task for an idle worker: from its problem, else from a problem it claims, else (nothing left
        to claim) from the problem in progress with the fewest tasks in flight."""
        task = None
        home = self.active.get(self.home.get(worker, -1))
        if home is not None:
            task = self._next_task(home)
        while task is None and (claimed := self._claim()) is not None:
            self.home[worker] = claimed.problem_id
            task = self._next_task(claimed)
        if task is None:
            for active in sorted(self.active.values(), key=lambda a: len(a.in_flight)):
                if (task := self._next_task(active)) is not None:
                    break
        return task

    def _queued_task(self, worker: int) -> TrialTask | RetimeTask | None:
        """A task to queue behind a busy worker's, of the same problem: its inputs and reference stay
        warm on that GPU. Claiming and helping are for workers that ran out of work."""
        last = self.pool.tasks(worker)[-1]
        active = self.active.get(self.task_owner.get(last.task_id, -1))
        return None if active is None else self._next_task(active)

    def _on_result(self, result: TaskResult) -> None:
        self.run.worker_seconds.update(result.seconds)
        self.run.busy_seconds[self.pool.label(result.worker_index)] += sum(result.seconds.values())
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
