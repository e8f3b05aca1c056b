"""GPU workers (gdn_tune.worker): started without waiting, closed cleanly even before they are ready."""

import time


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
