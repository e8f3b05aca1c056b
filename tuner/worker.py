"""GPU workers: one process per GPU, fed a short queue of tasks, replaced when they die or hang.

A kernel that reads out of bounds ends in an illegal-address error that poisons its CUDA context for
good, or in an abort that ends the process; a bad loop bound hangs the GPU. None of that may end a sweep
of thousands of trials, so trials run in spawned worker processes and the sweep's process only waits:
a worker whose process ends mid-trial has its trial recorded as crashed (with the exit code or signal),
one still busy past the trial timeout is killed and its trial recorded as timed out, and either way a
fresh worker takes its place. Workers hand results back over a pipe; only the sweep's process writes
the database, so SQLite never reports "database is locked".

Each worker is sent up to `queue_depth` tasks at once (default QUEUE_DEPTH): the first runs, the others
wait in its pipe, so the worker starts its next trial the moment it sends a result instead of idling
while the sweep's process commits that result and asks the strategy for more. Tasks queued behind one
that killed or hung its worker never ran to an answer: the fresh worker runs them again, in order.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import time
import traceback
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing import get_context
from multiprocessing.connection import Connection, wait
from typing import Any

from gdn_kernels import Config, Key

from .trial_result import Measurement, TrialStatus

# A worker imports torch and triton (2 to 4 s) and, on a GPU, creates a CUDA context (~1 s): a worker
# that is not ready in this long will not be.
WORKER_START_TIMEOUT_S = 300.0
# First trial of a problem on a worker includes the float64 reference and the JIT compile of the config
# for the real GPU (5 to 30 s for the state recurrence); the rest take well under a second.
DEFAULT_TRIAL_TIMEOUT_S = 180.0
# Tasks a worker holds at once, the running one included. Two hide the sweep process's round trip
# between trials (the result's commit, the strategy's ask: milliseconds to tens of ms) behind the GPU
# work of the next trial; more would only hold trials that a TPE search could have chosen better with
# the results in. 1 hands out the next task only after the last result is in.
QUEUE_DEPTH = 2


@contextmanager
def child_environment(**changes: str | None) -> Iterator[None]:
    """Environment for processes started inside the block (None removes a variable).

    Spawned children inherit os.environ at start, and whatever their bootstrap imports is decorated by
    Triton then: TRITON_INTERPRET must be right before the child starts, not set by the child later.
    """
    saved = {name: os.environ.get(name) for name in changes}
    try:
        _set_environment(changes)
        yield
    finally:
        _set_environment(saved)


def _set_environment(values: dict[str, str | None]) -> None:
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@dataclass(frozen=True)
class TrialTask:
    """Check and time one config."""

    task_id: int
    kernel: str
    key: Key
    config: Config
    budget_ms: float


@dataclass(frozen=True)
class RetimeTask:
    """Time several configs interleaved, for the final pick."""

    task_id: int
    kernel: str
    key: Key
    configs: tuple[Config, ...]


Task = TrialTask | RetimeTask


@dataclass(frozen=True)
class TaskResult:
    task: Task
    measurement: Measurement | None = None  # of a TrialTask
    retimed_ms: tuple[float, ...] | None = None  # of a RetimeTask, in the order of its configs
    worker_replaced: bool = False  # the worker died or hung on this task
    worker_exits: bool = False  # the worker ends itself after sending this (its CUDA context is unusable)
    worker_index: int = -1  # the worker that ran it (or died or hung on it); set by the pool
    seconds: dict[str, float] = field(default_factory=dict)  # the worker's wall time on it, by phase


def _short_traceback(error: BaseException, limit: int = 2000) -> str:
    text = "".join(traceback.format_exception(error))
    return text if len(text) <= limit else "..." + text[-limit:]


def _classify_exception(error: BaseException) -> TrialStatus:
    # Triton raises OutOfResources when a config needs more shared memory or registers than the GPU
    # has: a property of the config, like a compile failure, not a crash.
    return TrialStatus.INFEASIBLE if type(error).__name__ == "OutOfResources" else TrialStatus.CRASHED


def _serve(conn: Connection, extra_spec_paths: tuple[str, ...], device_name: str) -> None:
    """A worker's life: load the specs, say ready, answer tasks until told to stop."""
    # Ctrl-C goes to the whole process group; the sweep's process decides what stops, not the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import torch

    from .measure import ProblemBench, measure_trial
    from .specs import available_specs

    specs = available_specs(extra_spec_paths)
    device = torch.device(device_name)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.cuda.init()
    conn.send("ready")
    bench: ProblemBench | None = None
    started = time.perf_counter()
    while True:
        try:
            task = conn.recv()
        except EOFError:
            return
        if task is None:
            return
        try:
            if bench is None or (bench.spec.name, bench.key) != (task.kernel, task.key):
                bench = None  # free the previous problem's inputs before allocating the next
                started = time.perf_counter()
                bench = ProblemBench(specs[task.kernel], task.key, device)
            if isinstance(task, TrialTask):
                result = TaskResult(task, measurement=measure_trial(bench, task.config, task.budget_ms))
            else:
                result = TaskResult(task, retimed_ms=tuple(bench.retime(task.configs)))
        except Exception as e:
            # An illegal address leaves the CUDA context unusable for every later trial: on a GPU the
            # worker ends after any error, and the pool starts a fresh one.
            exits = device.type == "cuda"
            failed = Measurement(_classify_exception(e), error=_short_traceback(e))
            seconds = bench.take_seconds() if bench is not None else {"setup": time.perf_counter() - started}
            conn.send(TaskResult(task, measurement=failed, worker_exits=exits, seconds=seconds))
            if exits:
                return
            continue
        conn.send(dataclasses.replace(result, seconds=bench.take_seconds()))


@dataclass
class _Worker:
    index: int
    device: str
    label: str  # which GPU (or CPU slot under the interpreter) it measures on, for the trial's record
    process: Any
    conn: Connection
    tasks: deque[Task] = field(default_factory=deque)  # sent and not answered, in order: the first runs
    started: float = field(default=0.0)  # when the first of `tasks` began (about: the last answer came)


class WorkerStartError(RuntimeError):
    pass


class WorkerPool:
    """`count` worker processes (one per GPU, or CPU workers under the interpreter).

    With `wait=False` the processes start and the constructor returns at once: a worker imports torch
    and sets up its GPU (seconds) while the caller does other work (the sweep compiles); `wait_ready`
    then waits for them. Without, the constructor waits. Each worker holds up to `queue_depth` tasks.
    """

    def __init__(
        self,
        count: int,
        interpret: bool,
        extra_spec_paths: tuple[str, ...] = (),
        trial_timeout_s: float = DEFAULT_TRIAL_TIMEOUT_S,
        wait: bool = True,
        queue_depth: int = QUEUE_DEPTH,
    ) -> None:
        if count < 1:
            raise ValueError(f"workers must be at least 1, got {count}")
        if queue_depth < 1:
            raise ValueError(f"queue depth must be at least 1, got {queue_depth}")
        self.interpret = interpret
        self.extra_spec_paths = tuple(extra_spec_paths)
        self.trial_timeout_s = trial_timeout_s
        self.queue_depth = queue_depth
        self.replaced = 0
        self.requeued = 0  # tasks sent again to a fresh worker after the one before them failed
        self._context = get_context("spawn")
        self._workers: list[_Worker] = []
        self._starting: list[_Worker] = []
        try:
            for i in range(count):
                self._starting.append(self._spawn(i))
        except BaseException:
            self._kill_starting()
            raise
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        """Wait until every started worker is ready; WorkerStartError (all killed) if one is not."""
        try:
            while self._starting:
                self._await_ready(self._starting[0])
                self._workers.append(self._starting.pop(0))
        except BaseException:
            self._kill_starting()
            raise

    def _kill_starting(self) -> None:
        for worker in self._starting:
            worker.process.kill()
            worker.process.join()
            worker.conn.close()
        self._starting = []

    def _gpu(self, index: int) -> str:
        # Each worker sees only its own GPU, as cuda:0: the index-th of those this process may use.
        visible = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
        return visible[index] if index < len(visible) else str(index)

    def label(self, index: int) -> str:
        """What worker `index` measures on: "gpu<N>" (N as the host numbers it), "cpu<index>" under the
        interpreter (a pseudo-device: every CPU worker shares the same cores)."""
        return f"cpu{index}" if self.interpret else f"gpu{self._gpu(index)}"

    def _spawn(self, index: int) -> _Worker:
        device = "cpu" if self.interpret else "cuda:0"
        parent_conn, child_conn = self._context.Pipe()
        process = self._context.Process(
            target=_serve,
            args=(child_conn, self.extra_spec_paths, device),
            name=f"gdn-tune-worker-{index}",
            daemon=True,
        )
        # Under the interpreter a worker sees no GPU at all. A sweep compiles every trial's config by
        # design: a compile guard the shell exported for serving would fail each one.
        with child_environment(
            TRITON_INTERPRET="1" if self.interpret else None,
            CUDA_VISIBLE_DEVICES="" if self.interpret else self._gpu(index),
            GDN_TUNE_COMPILE_GUARD=None,
        ):
            process.start()
        child_conn.close()
        return _Worker(index, device, self.label(index), process, parent_conn)

    def _await_ready(self, worker: _Worker) -> None:
        deadline = time.monotonic() + WORKER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if worker.conn.poll(0.1):
                try:
                    if worker.conn.recv() == "ready":
                        return
                except EOFError:
                    break
            if not worker.process.is_alive():
                break
        worker.process.kill()
        worker.process.join()
        raise WorkerStartError(
            f"worker {worker.index} did not start (exit code {worker.process.exitcode}); "
            "its error is printed above"
        )

    def _replace(self, worker: _Worker) -> None:
        if worker.process.is_alive():
            worker.process.kill()
        worker.process.join()
        worker.conn.close()
        fresh = self._spawn(worker.index)
        self._await_ready(fresh)
        self._workers[self._workers.index(worker)] = fresh
        self.replaced += 1
        # What was queued behind the failed task never ran, or ran in a process whose answer is lost:
        # the fresh worker runs it again, and the failure stays with the task that caused it.
        for task in worker.tasks:
            self._send(fresh, task)
        self.requeued += len(worker.tasks)

    @property
    def size(self) -> int:
        return len(self._workers)

    @property
    def idle(self) -> int:
        return sum(not w.tasks for w in self._workers)

    @property
    def idle_workers(self) -> list[int]:
        """Indices of the workers waiting for a task."""
        return [w.index for w in self._workers if not w.tasks]

    @property
    def busy(self) -> int:
        return self.size - self.idle

    def tasks(self, worker_index: int) -> tuple[Task, ...]:
        """The tasks worker `worker_index` holds, in order: the first is running, the others wait."""
        return tuple(next(w for w in self._workers if w.index == worker_index).tasks)

    def with_room(self, queued: int) -> list[int]:
        """Indices of the workers holding exactly `queued` tasks, when that leaves room for another."""
        if queued >= self.queue_depth:
            return []
        return [w.index for w in self._workers if len(w.tasks) == queued]

    def submit(self, task: Task, worker_index: int | None = None) -> int:
        """Hand `task` to worker `worker_index` (default: the first idle one), behind the tasks it holds;
        returns its index."""
        if worker_index is None:
            room = [w for w in self._workers if not w.tasks]
        else:
            room = [w for w in self._workers if w.index == worker_index and len(w.tasks) < self.queue_depth]
        if not room:
            raise RuntimeError("no idle worker" if worker_index is None else f"worker {worker_index} is full")
        self._send(room[0], task)
        return room[0].index

    @staticmethod
    def _send(worker: _Worker, task: Task) -> None:
        if not worker.tasks:
            worker.started = time.monotonic()
        worker.tasks.append(task)
        worker.conn.send(task)

    def collect(self, timeout_s: float = 1.0) -> list[TaskResult]:
        """Results that arrived within `timeout_s`, including trials of workers that died or hung."""
        busy = [w for w in self._workers if w.tasks]
        if not busy:
            return []
        now = time.monotonic()
        next_deadline = min(w.started + self.trial_timeout_s for w in busy) - now
        waitables = [w.conn for w in busy] + [w.process.sentinel for w in busy]
        ready = set(wait(waitables, timeout=max(0.0, min(timeout_s, next_deadline))))
        results: list[TaskResult] = []
        for worker in busy:
            if worker.conn in ready or worker.process.sentinel in ready:
                results.extend(self._answers(worker))
            elif time.monotonic() - worker.started > self.trial_timeout_s:
                timeout = f"worker still busy after {self.trial_timeout_s:g} s; killed"
                results.append(
                    TaskResult(
                        worker.tasks.popleft(),
                        Measurement(TrialStatus.TIMEOUT, error=timeout),
                        worker_replaced=True,
                        worker_index=worker.index,
                    )
                )
                self._replace(worker)
        return results

    def _answers(self, worker: _Worker) -> list[TaskResult]:
        """What `worker` sent, in the order of its tasks; and if its process ended, the task it died on."""
        # Looked at before reading: whatever a process sent before it ended is in the pipe by then.
        ended = not worker.process.is_alive()
        results: list[TaskResult] = []
        while worker.tasks and (result := self._receive(worker)) is not None:
            worker.tasks.popleft()
            worker.started = time.monotonic()  # the next task began when this answer was sent
            results.append(dataclasses.replace(result, worker_index=worker.index))
            if result.worker_exits:
                self._replace(worker)
                return results
        if ended:
            worker.process.join(timeout=5)
            if worker.tasks:  # it ended without answering the one it was running
                died = TaskResult(
                    worker.tasks.popleft(),
                    self._died(worker),
                    worker_replaced=True,
                    worker_index=worker.index,
                )
                results.append(died)
            self._replace(worker)
        return results

    @staticmethod
    def _receive(worker: _Worker) -> TaskResult | None:
        try:
            return worker.conn.recv() if worker.conn.poll() else None
        except (EOFError, OSError):
            return None

    @staticmethod
    def _died(worker: _Worker) -> Measurement:
        code = worker.process.exitcode
        if code is not None and code < 0:
            try:
                how = f"killed by {signal.Signals(-code).name}"
            except ValueError:
                how = f"killed by signal {-code}"
        else:
            how = f"exited with code {code}"
        return Measurement(TrialStatus.CRASHED, error=f"worker process {how} during the trial")

    def close(self) -> None:
        """Stop every worker; a busy one is killed (its trials, running or queued, are simply not recorded)."""
        self._kill_starting()  # never waited for: nothing to hand over
        for worker in self._workers:
            if not worker.tasks and worker.process.is_alive():
                with contextlib.suppress(OSError):  # it may have died since
                    worker.conn.send(None)
        deadline = time.monotonic() + 5
        for worker in self._workers:
            worker.process.join(timeout=max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            worker.conn.close()
        self._workers = []

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def default_worker_count(interpret: bool) -> int:
    """One per GPU; under the interpreter one (the CPU test machines have two cores)."""
    if interpret:
        return 1
    import torch

    return max(1, torch.cuda.device_count())


__all__ = [
    "DEFAULT_TRIAL_TIMEOUT_S",
    "QUEUE_DEPTH",
    "RetimeTask",
    "TaskResult",
    "TrialTask",
    "WorkerPool",
    "WorkerStartError",
    "default_worker_count",
]
