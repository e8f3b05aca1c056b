"""Compile every candidate for the target before any GPU time, over all CPU cores.

A config that does not compile, or needs more shared memory than the target has, is known infeasible
here and is never launched. Compiling needs no GPU (Triton's compiler with an explicit GPUTarget), so this
phase is the same on the GPU host and on a laptop; Triton's on-disk cache makes a resumed sweep's
second pass cheap.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing import get_context

from gdn_kernels import Config, Key

from .tables import CompileResult


@dataclass(frozen=True)
class CompileJob:
    kernel: str
    key: Key
    config: Config


@contextmanager
def child_environment(**changes: str | None) -> Iterator[None]:
    """Environment for processes started inside the block (None removes a variable).

    Spawned children inherit os.environ at start, and whatever their bootstrap imports is decorated by
    Triton then: TRITON_INTERPRET must be right before the child starts, not set by the child later.
    """
    saved = {name: os.environ.get(name) for name in changes}
    try:
        for name, value in changes.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


_specs: dict | None = None


def _load(extra_paths: Sequence[str]) -> None:
    global _specs
    # Ctrl-C reaches the whole process group; the sweep's process shuts the pool down itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from .specs import available_specs

    _specs = available_specs(extra_paths)


def _compile_one(job: CompileJob, target_name: str) -> CompileResult:
    from gdn_kernels import target_by_name

    from .tables import compile_check

    assert _specs is not None
    return compile_check(_specs[job.kernel], job.key, job.config, target_by_name(target_name))


def compile_all(
    jobs: Sequence[CompileJob],
    target_name: str,
    extra_paths: Sequence[str] = (),
    processes: int | None = None,
    on_result: Callable[[CompileJob, CompileResult], None] | None = None,
) -> dict[CompileJob, CompileResult]:
    """CompileResult of every job, compiled in `processes` processes (default: one per CPU core)."""
    results: dict[CompileJob, CompileResult] = {}
    pending = list(dict.fromkeys(jobs))
    processes = max(1, min(processes or os.cpu_count() or 1, len(pending) or 1))
    if pending:
        pending = _run_pool(pending, target_name, extra_paths, processes, results, on_result)
    # A process died (a launcher that aborts) and took every config in flight with it: compile those
    # one at a time, so only the config that kills its process is recorded as infeasible.
    for job in pending:
        left = _run_pool([job], target_name, extra_paths, 1, results, on_result)
        if left and not results:
            # Nothing ever compiled: the processes die on start, not on a config.
            raise RuntimeError(
                f"compile processes die before compiling anything (first job {job.kernel} {job.config.label})"
            )
        if left:
            results[job] = CompileResult(
                False, None, "compiling this config killed the compiling process", 0.0
            )
            if on_result is not None:
                on_result(job, results[job])
    return results


def _shape_class(job: CompileJob) -> tuple:
    """Jobs alike but for their token or sequence bucket. Those almost always compile to the same binary
    (a count is a runtime argument), so the first of a class is compiled alone and the others after it,
    from Triton's cache, instead of all at once, each from scratch, on different cores."""
    from gdn_kernels.tuning import BUCKET_FIELDS

    return (job.kernel, job.config, tuple((k, v) for k, v in job.key.items if k not in BUCKET_FIELDS))


def _run_pool(
    jobs: list[CompileJob],
    target_name: str,
    extra_paths: Sequence[str],
    processes: int,
    results: dict[CompileJob, CompileResult],
    on_result: Callable[[CompileJob, CompileResult], None] | None,
) -> list[CompileJob]:
    """Compile `jobs` in one pool; returns the jobs a broken pool left without a result."""
    executor = ProcessPoolExecutor(
        processes, mp_context=get_context("spawn"), initializer=_load, initargs=(tuple(extra_paths),)
    )
    unfinished: list[CompileJob] = []
    followers: dict[tuple, list[CompileJob]] = {}
    leaders: list[CompileJob] = []
    for job in jobs:
        shape_class = _shape_class(job)
        if shape_class in followers:
            followers[shape_class].append(job)
        else:
            followers[shape_class] = []
            leaders.append(job)
    futures: dict[Future, CompileJob] = {}

    def submit(batch: list[CompileJob]) -> set[Future]:
        # Children are spawned during submit: compile them as real GPU code, never interpreted.
        with child_environment(TRITON_INTERPRET=None):
            new = {executor.submit(_compile_one, job, target_name): job for job in batch}
        futures.update(new)
        return set(new)

    try:
        waiting = submit(leaders)
        while waiting:
            done, waiting = wait(waiting, return_when=FIRST_COMPLETED)
            for future in done:
                job = futures[future]
                after = followers.pop(_shape_class(job), [])  # a leader is done: its class follows
                try:
                    results[job] = future.result()
                except BrokenProcessPool:
                    unfinished += [job, *after]
                    continue
                except Exception as e:
                    results[job] = CompileResult(
                        False, None, f"compile check raised {type(e).__name__}: {e}", 0.0
                    )
                if on_result is not None:
                    on_result(job, results[job])
                try:
                    waiting |= submit(after)
                except BrokenProcessPool:
                    unfinished += after
    except BaseException:
        executor.shutdown(wait=False, cancel_futures=True)
        raise
    executor.shutdown(wait=True)
    return unfinished
