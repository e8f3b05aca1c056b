"""GPU workers (gdn_tune.worker): started without waiting, closed cleanly even before they are ready; a
queue of tasks per worker, and the tasks queued behind one that kills or hangs its worker run again on
the fresh one."""

import time

import _fake_kernels as fake
import pytest

from gdn_kernels import Config
from gdn_tune.worker import TrialTask, WorkerPool

FAKE_SPECS = ("_fake_kernels:SPECS",)


def test_workers_start_while_the_caller_works_and_close_even_if_never_waited_for():
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


def _trial(task_id: int, block: int) -> TrialTask:
    config = Config.of(BLOCK=block, num_warps=1, num_stages=1)
    return TrialTask(task_id, fake.SPEC.name, fake.SPEC.key(T=64), config, budget_ms=1.0)


def _collect_all(pool: WorkerPool, count: int, timeout_s: float = 60.0) -> list:
    results = []
    deadline = time.monotonic() + timeout_s
    while len(results) < count and time.monotonic() < deadline:
        results += pool.collect(timeout_s=0.5)
    return results


def test_a_worker_holds_its_queue_depth_of_tasks_and_answers_them_in_order():
    with WorkerPool(1, interpret=True, extra_spec_paths=FAKE_SPECS, queue_depth=2) as pool:
        assert pool.with_room(0) == [0]
        pool.submit(_trial(1, 256), 0)
        assert pool.with_room(0) == [] and pool.with_room(1) == [0]
        pool.submit(_trial(2, 512), 0)  # queued behind the first, before its result is in
        assert [t.task_id for t in pool.tasks(0)] == [1, 2] and pool.with_room(2) == []
        with pytest.raises(RuntimeError, match="worker 0 is full"):
            pool.submit(_trial(3, 256), 0)
        results = _collect_all(pool, 2)
    assert [(r.task.task_id, r.measurement.status) for r in results] == [(1, "ok"), (2, "ok")]
    assert (pool.replaced, pool.requeued) == (0, 0)

    with WorkerPool(1, interpret=True, extra_spec_paths=FAKE_SPECS, queue_depth=1) as pool:
        pool.submit(_trial(1, 256), 0)
        assert pool.with_room(1) == []
        with pytest.raises(RuntimeError, match="worker 0 is full"):  # depth 1: one task at a time
            pool.submit(_trial(2, 512), 0)


@pytest.mark.parametrize("fault", [fake.ABORT, fake.HANG], ids=["abort", "hang"])
def test_a_task_queued_behind_one_that_kills_its_worker_runs_again_on_the_fresh_one(fault):
    with WorkerPool(1, interpret=True, extra_spec_paths=FAKE_SPECS, trial_timeout_s=5.0) as pool:
        pool.submit(_trial(1, 256), 0)  # a problem's first trial builds its inputs: outside the timeout
        assert [r.measurement.status for r in _collect_all(pool, 1)] == ["ok"]
        pool.submit(_trial(2, fault), 0)
        pool.submit(_trial(3, 512), 0)  # waits in the pipe of the worker that dies or hangs
        results = _collect_all(pool, 2)
        assert pool.idle_workers == [0]  # nothing left behind in the fresh worker
    # The failure is the faulty trial's alone; the queued one is measured as if nothing had happened.
    assert [(r.task.task_id, r.measurement.status) for r in results] == [
        (2, fake.EXPECTED_STATUS[fault]),
        (3, "ok"),
    ]
    assert results[0].worker_replaced and not results[1].worker_replaced
    assert (pool.replaced, pool.requeued) == (1, 1)
