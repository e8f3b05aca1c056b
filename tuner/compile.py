"""Compiling a config for a target, with or without its GPU: the one home of the sweep's compile check,
its compile pool, and the compiles of `gdn-tune warmup`.

- `compile_check(spec, key, config, target)`: whether a config compiles for a target and fits its shared
  memory. The sweep runs it on every candidate before any GPU time; `gdn-tune check` on every entry.
- `Variant` and `compile_variant`: one compilation (a recorded launch, in JSON-able form) into Triton's
  cache, as a launch would make it. Warm-up compiles its plan's variants this way.
- Compile workers, the one protocol of every compile made in another process. A worker
  (`python -m gdn_tune.compile --worker`) starts without TRITON_INTERPRET, so it compiles GPU code
  whatever its parent runs under; it prints a ready line, then answers each JSON request read from
  stdin with one line on stdout that starts with RESULT_PREFIX (anything else a compiler prints is
  passed on to stderr). A request is a compile check (`check_request`) or a variant
  (`variant_request`). `run_on_workers` spreads requests over N workers; a worker that dies takes only
  the request it was answering down, and a fresh one takes its place.
- `compile_all(jobs, target)`: the sweep's compile phase, compile checks over all CPU cores.

Compiling needs no GPU (Triton's compiler with an explicit target), so this is the same on the GPU host
and on a laptop; Triton's on-disk cache makes a resumed sweep's second pass cheap.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

from triton.runtime.jit import JITFunction

from gdn_kernels.tuning import (
    BUCKET_FIELDS,
    Config,
    GpuTarget,
    KernelSpec,
    Key,
    LaunchRecord,
    compile_for_target,
    recording,
)

# Triton 3.6 specialises an integer argument on divisibility by 16 (and == 1).
INT_ALIGNMENT = 16
# What starts each line of a compile worker's stdout that carries an answer; anything else a compiler
# prints is passed on.
RESULT_PREFIX = "@@gdn-compile "
READY = "ready"


# --------------------------------------------------------------------------------------------------
# Compile checks: does a config compile for a target and fit its shared memory?


@dataclass(frozen=True)
class CompileResult:
    """Whether a config compiles for a target and fits its shared memory; `error` says why not."""

    ok: bool
    shared_bytes: int | None  # the largest need of the launches, None when nothing compiled
    error: str | None
    seconds: float


def _first_lines(error: BaseException | str, limit: int = 400) -> str:
    """A compile error in a few hundred characters: Triton's messages can run to pages of MLIR."""
    text = (error if isinstance(error, str) else f"{type(error).__name__}: {error}").strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


# Compiled launches by (Triton's specialisation of the launch, cc): keys that differ only in a runtime
# size (most token buckets) compile to the same binary, so `check` compiles it once, and a config that
# fails is not compiled again for the next key.
_compiled: dict[tuple[Any, ...], int | str] = {}


def _compile_shared_bytes(record: LaunchRecord, cc: int) -> int | str:
    """Shared memory the launch needs on `cc`, as the launch would compile there, or why it does not compile.

    Both paths compile through `compile_for_target`, as `gdn-tune warmup` does: the kernel's JIT entry
    specialises the arguments as a launch does, which changes the kernel (chunk_state BV=128 w8 s4 needs
    66316 bytes compiled from argument types alone, 246540 as launched on an H200).
    """
    interpreted = not isinstance(record.kernel, JITFunction)
    # An interpreted kernel has no parameter list; a JITFunction of the same Python function has.
    jit = _as_jit(record) if interpreted else record
    try:
        variant = describe_launch(jit, record.kernel.__name__)
    except (TypeError, ValueError) as e:  # e.g. a pointer off 16-byte alignment: no Variant says that
        if interpreted:
            return f"cannot pass the launch to the compile worker: {e}"
        variant = None
    memo_key = (specialisation_key(variant), cc) if variant is not None else None
    if memo_key is not None and memo_key in _compiled:
        return _compiled[memo_key]
    if interpreted:
        assert variant is not None
        outcome = _compile_in_worker(variant, cc)
    else:
        try:
            outcome = int(compile_for_target(record, cc).metadata.shared)
        except Exception as e:
            outcome = _first_lines(e)
    if memo_key is not None:
        _compiled[memo_key] = outcome
    return outcome


def _as_jit(record: LaunchRecord) -> LaunchRecord:
    """An interpreted launch as a GPU process makes it: a JITFunction of the same Python function, and
    INTERPRETED=False (kernels take the interpreter's workarounds as that constexpr, which launchers
    set from TRITON_INTERPRET=1 at import; compiled with it set, chunk_state BV=128 w8 s4 needs 65536
    bytes instead of 246540)."""
    args = record.args | ({"INTERPRETED": False} if "INTERPRETED" in record.args else {})
    return LaunchRecord(JITFunction(record.kernel.fn), args, record.num_warps, record.num_stages)


# Under TRITON_INTERPRET=1 (CPU runs, CI) `@triton.jit` makes InterpretedFunctions, which Triton's
# compiler cannot take, and the variable is read when a kernel is decorated. So those launches are
# compiled by a compile worker, started without it, which imports the kernel's module afresh. One worker
# serves the whole process: its start (importing torch and triton) costs about 4 s on this CPU.
_interpreted_worker: CompileWorker | None = None
_interpreted_worker_lock = threading.Lock()


def _compile_in_worker(variant: Variant, cc: int) -> int | str:
    global _interpreted_worker
    with _interpreted_worker_lock:
        if _interpreted_worker is None or not _interpreted_worker.alive:
            _interpreted_worker = CompileWorker(worker_environment(None))
        answer = _interpreted_worker.request(variant_request(variant, cc))
    if answer is None:
        return "the compile worker died"
    compiled = variant_result(variant, answer)
    if compiled.error is not None:
        return _first_lines(compiled.error)
    assert compiled.shared_bytes is not None
    return compiled.shared_bytes


def compile_check(spec: KernelSpec, key: Key, config: Config, target: GpuTarget) -> CompileResult:
    """Compile every launch `spec` makes for `key` with `config` for `target`; check shared memory.

    Inputs live on the "meta" device, so no memory is touched and no GPU is needed: the launcher's
    launches are recorded and compiled by `compile_for_target`, with the specialisation a launch on
    the target gets (shared memory depends on it), under a driver that names the target.
    """
    start = time.perf_counter()

    def result(ok: bool, shared: int | None, error: str | None) -> CompileResult:
        return CompileResult(ok, shared, error, time.perf_counter() - start)

    problems = spec.space.problems(config, key)
    if problems:
        return result(False, None, "invalid config: " + "; ".join(problems))
    try:
        inputs = spec.make_inputs(key, "meta", 0)
        outputs = spec.make_outputs(inputs)
        with recording() as records:
            spec.launch(inputs, outputs, config)
    except Exception as e:  # a launcher that cannot even build its launch is a failed config
        return result(False, None, f"launcher failed: {_first_lines(e)}")
    if not records:
        return result(False, None, "the launcher recorded no kernel launch")
    shared = 0
    for record in records:
        outcome = _compile_shared_bytes(record, target.cc)
        if isinstance(outcome, str):
            return result(False, None, f"{record.kernel.__name__} does not compile: {outcome}")
        shared = max(shared, outcome)
    if shared > target.shared_memory_per_block:
        return result(
            False,
            shared,
            f"needs {shared} bytes of shared memory, {target.name} has {target.shared_memory_per_block}",
        )
    return result(True, shared, None)


# --------------------------------------------------------------------------------------------------
# Variants: one compilation, described so that another process can make it


@dataclass(frozen=True)
class Variant:
    """One compilation: a kernel function, its arguments as Triton specialises them, warps and stages.

    `args` holds (name, description) in the kernel's parameter order: a tensor is ("tensor", dtype), a
    runtime integer or float ("int", value) or ("float", value) (the value stands for its
    specialisation class, all the compiler sees of it); constexprs, None and bools are kept as is.
    """

    kernel: str  # spec name (gdn_gating, chunk_state, ...)
    module: str  # where the @triton.jit function lives
    function: str
    args: tuple[tuple[str, Any], ...]
    num_warps: int
    num_stages: int

    @property
    def label(self) -> str:
        shown = [f"{n}={v}" for n, v in self.args if v is not None and not isinstance(v, tuple)]
        # Runtime integers by their specialisation class, which is what tells two variants apart.
        for n, v in self.args:
            if _runtime_arg(v, "int") and (v[1] == 1 or v[1] % INT_ALIGNMENT == 0):
                shown.append(f"{n}=1" if v[1] == 1 else f"{n}%16=0")
        return f"{self.function}[w{self.num_warps} s{self.num_stages}]({','.join(shown)})"

    def as_dict(self) -> dict[str, Any]:
        return {
            "kernel": self.kernel,
            "module": self.module,
            "function": self.function,
            "args": [[n, v] for n, v in self.args],
            "num_warps": self.num_warps,
            "num_stages": self.num_stages,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Variant:
        args = tuple((n, tuple(v) if isinstance(v, list) else v) for n, v in raw["args"])
        return cls(raw["kernel"], raw["module"], raw["function"], args, raw["num_warps"], raw["num_stages"])


def _runtime_arg(value: Any, kind: str) -> bool:
    """Whether an argument description is a runtime argument of `kind` ("tensor", "int", "float")."""
    return isinstance(value, tuple) and len(value) == 2 and value[0] == kind


def _describe_arg(param: Any, value: Any) -> Any:
    """What the compiler sees of one argument, in JSON-able form (see `Variant`)."""
    if hasattr(value, "data_ptr") and hasattr(value, "dtype"):
        if value.data_ptr() % INT_ALIGNMENT:
            raise ValueError(f"argument {param.name}: a recorded pointer is not 16-byte aligned")
        return ("tensor", str(value.dtype).removeprefix("torch."))
    if param.is_constexpr or value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return ("int", value)
    if isinstance(value, float):
        return ("float", value)
    raise TypeError(f"argument {param.name}: cannot describe {value!r} for a warmup")


def specialisation_key(variant: Variant) -> tuple:
    """A dedup key at least as fine as Triton's specialisation: two variants with one key compile once."""

    def cls(value: Any) -> Any:
        if _runtime_arg(value, "int"):
            number = value[1]
            width = "i32" if -(2**31) <= number < 2**31 else "i64"
            return ("int", width, number == 1, number % INT_ALIGNMENT == 0)
        if _runtime_arg(value, "float"):
            return ("float",)  # Triton never specialises a runtime float
        return value

    return (
        variant.module,
        variant.function,
        tuple((n, cls(v)) for n, v in variant.args),
        variant.num_warps,
        variant.num_stages,
    )


@dataclass(frozen=True)
class VariantResult:
    label: str
    kernel: str
    status: str  # "compiled" (now), "cached" (already in the cache), "failed"
    seconds: float
    shared_bytes: int | None = None
    error: str | None = None
    # Triton's C launcher for the kernel's signature: "built" (or found) in the cache, or why not.
    launcher: str = ""
    c_modules: int = 0  # C module files (launcher, driver utilities) found for a bundle


def _rebuild_args(variant: Variant) -> dict[str, Any]:
    import torch

    return {
        name: (
            torch.empty(1, dtype=getattr(torch, value[1]), device="meta")
            if _runtime_arg(value, "tensor")
            else value[1]
            if _runtime_arg(value, "int") or _runtime_arg(value, "float")
            else value
        )
        for name, value in variant.args
    }


def describe_launch(record: Any, kernel: str) -> Variant:
    """The variant a recorded launch compiles (`kernel` names its spec), in JSON-able form."""
    jit = record.kernel
    args = tuple(
        (p.name, _describe_arg(p, record.args.get(p.name, p.default if p.has_default else None)))
        for p in jit.params
    )
    return Variant(kernel, jit.fn.__module__, jit.fn.__name__, args, record.num_warps, record.num_stages)


def compile_variant(variant: Variant, capability: int, bundle: str | None = None) -> VariantResult:
    """Compile one variant for `capability` as a launch would (`compile_for_target`: the kernel's JIT
    warmup under a compile-only driver); Triton's listener says if it was cached. With `bundle`, the
    binary and its C launcher are also copied into that bundle folder (`add_to_bundle`)."""
    import importlib

    import triton

    from gdn_kernels.tuning import LaunchRecord, add_to_bundle, compile_for_target, remember

    seen: list[bool] = []
    triton.knobs.compilation.listener = lambda **kw: seen.append(bool(kw["cache_hit"]))
    started = time.monotonic()
    try:
        kernel = getattr(importlib.import_module(variant.module), variant.function)
        record = LaunchRecord(kernel, _rebuild_args(variant), variant.num_warps, variant.num_stages)
        compiled = compile_for_target(record, capability)
    except Exception as e:  # a compiler error is reported per variant; the others still compile
        error = f"{type(e).__name__}: {e}"
        return VariantResult(variant.label, variant.kernel, "failed", time.monotonic() - started, error=error)
    finally:
        triton.knobs.compilation.listener = None
    # No listener call: the worker compiled an identical specialisation earlier (in-memory cache).
    status = "compiled" if seen and not seen[0] else "cached"
    # A first launch of it then skips Triton's cache key. Should the entry not be written, the binary
    # is in the cache all the same; only the shortcut to it is lost.
    with contextlib.suppress(OSError):
        remember(kernel, compiled)
    launcher, modules = build_launcher(compiled)
    if bundle is not None:
        from pathlib import Path

        try:
            add_to_bundle(Path(bundle), kernel, compiled, modules)
        except OSError as e:  # the variant is in the cache; the bundle lacks it and says so
            error = f"not bundled: {type(e).__name__}: {e}"
            return VariantResult(
                variant.label, variant.kernel, "failed", time.monotonic() - started, error=error
            )
    seconds = time.monotonic() - started
    return VariantResult(
        variant.label,
        variant.kernel,
        status,
        seconds,
        int(compiled.metadata.shared),
        launcher=launcher,
        c_modules=len(modules),
    )


def build_launcher(compiled: Any) -> tuple[str, list[Any]]:
    """Build, into Triton's cache, the C launcher Triton makes at a kernel's first launch in a process
    (one C compile per argument signature, about 0.3 s each, which the compile itself does not do), and
    the driver's own C utilities, built at a process's first CUDA use. Returns "built" and the two
    modules' files, or why not and no file: both link against libcuda, which a machine without the
    GPU's driver lacks; its first launches then build them, as they would without warmup."""
    from pathlib import Path

    try:
        from triton.backends.nvidia.driver import CudaLauncher, CudaUtils

        utils = CudaUtils()  # one per process: cached, so the second call costs a file lookup
        launcher = CudaLauncher(compiled.src, compiled.metadata)
    except Exception as e:
        return f"not built: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": "), []
    # A C extension's functions hold their module as __self__; its file is where Triton's cache keeps it.
    modules = [
        getattr(getattr(f, "__self__", None), "__file__", None) for f in (utils.load_binary, launcher.launch)
    ]
    return "built", [Path(m) for m in modules if m]


# --------------------------------------------------------------------------------------------------
# Compile workers: the one protocol of compiles in another process (see the module doc)


def worker_environment(cache_dir: str | None) -> dict[str, str]:
    """A compile worker's environment: this one, without TRITON_INTERPRET (workers compile for the GPU
    whatever the parent runs under), with `cache_dir` as Triton's cache when given, and this process's
    import path (spec modules loaded from extra paths must import in the worker too)."""
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    if cache_dir:
        env["TRITON_CACHE_DIR"] = str(cache_dir)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    return env


def variant_request(variant: Variant, capability: int, bundle: str | None = None) -> dict[str, Any]:
    """Compile `variant` for `capability` (with `bundle`, into that bundle folder too)."""
    return {"variant": variant.as_dict(), "capability": capability, "bundle": bundle}


def variant_result(variant: Variant, answer: dict[str, Any]) -> VariantResult:
    if "raised" in answer:
        return VariantResult(variant.label, variant.kernel, "failed", 0.0, error=answer["raised"])
    return VariantResult(**answer["result"])


def check_request(
    kernel: str, key: Key, config: Config, target: str, extra_specs: Sequence[str] = ()
) -> dict:
    """`compile_check` of the spec called `kernel` (registry or `extra_specs`) for the target called `target`."""
    return {
        "check": {
            "kernel": kernel,
            "key": [list(item) for item in key.items],
            "config": dict(config.params),
            "target": target,
            "extra_specs": list(extra_specs),
        }
    }


def check_result(answer: dict[str, Any]) -> CompileResult:
    if "raised" in answer:
        return CompileResult(False, None, f"compile check raised {answer['raised']}", 0.0)
    return CompileResult(**answer["result"])


_worker_specs: dict[tuple[str, ...], dict[str, KernelSpec]] = {}


def _answer(request: dict[str, Any]) -> dict[str, Any]:
    """A worker's answer to one request: {"result": ...}, or {"raised": "Error: message"}."""
    try:
        if "variant" in request:
            variant = Variant.from_dict(request["variant"])
            return {"result": asdict(compile_variant(variant, request["capability"], request["bundle"]))}
        from gdn_kernels import target_by_name

        from .specs import available_specs

        check = request["check"]
        extra = tuple(check["extra_specs"])
        if extra not in _worker_specs:
            _worker_specs[extra] = available_specs(extra)
        specs = _worker_specs[extra]
        key = Key(tuple((name, value) for name, value in check["key"]))
        config = Config.from_dict(check["config"])
        result = compile_check(specs[check["kernel"]], key, config, target_by_name(check["target"]))
        return {"result": asdict(result)}
    except Exception as e:  # reported per request; the worker answers the next one
        return {"raised": f"{type(e).__name__}: {e}"}


def _worker_main() -> None:
    """`python -m gdn_tune.compile --worker`: answer the requests read from stdin, one JSON per line."""
    # Ctrl-C reaches the whole process group; the parent stops its workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    out = sys.stdout
    out.write(RESULT_PREFIX + json.dumps(READY) + "\n")
    out.flush()
    for line in sys.stdin:
        if line.strip():
            out.write(RESULT_PREFIX + json.dumps(_answer(json.loads(line))) + "\n")
            out.flush()


class CompileWorker:
    """One compile worker process, answering one request at a time."""

    def __init__(self, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gdn_tune.compile", "--worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
            bufsize=1,
        )
        self.ready = False

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def _read(self) -> Any:
        """The next answer line's content; None when the worker died first."""
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith(RESULT_PREFIX):
                return json.loads(line[len(RESULT_PREFIX) :])
            sys.stderr.write(line)
        return None

    def wait_ready(self) -> bool:
        """Whether the worker started (imported what it needs and said so)."""
        if not self.ready:
            self.ready = self._read() == READY
        return self.ready

    def request(self, request: dict[str, Any]) -> dict[str, Any] | None:
        """The answer, or None when the worker died on it (a compiler crash) or before it."""
        assert self.process.stdin is not None
        if not self.wait_ready():
            return None
        try:
            self.process.stdin.write(json.dumps(request) + "\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            return None
        answer = self._read()
        return answer if isinstance(answer, dict) else None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            if self.process.stdin:
                self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()


Item = TypeVar("Item")


def run_on_workers(
    batches: Sequence[Sequence[Item]],
    workers: int,
    env: dict[str, str],
    request_of: Callable[[Item], dict[str, Any]],
    on_answer: Callable[[Item, dict[str, Any] | None, int | None], None],
) -> None:
    """Send each item's request to one of `workers` compile workers, the items of one batch in order on
    one worker; `on_answer(item, answer, None)`, or `(item, None, exit_code)` when the worker died on it
    (a fresh one then takes its place). `on_answer` runs in the caller's thread, one answer at a time.
    An exception there or in the caller (Ctrl-C) kills the workers, and no answer follows it.
    RuntimeError when workers die on start, before any answer."""
    if not batches:
        return
    pending: queue.Queue[Sequence[Item]] = queue.Queue()
    for batch in batches:
        pending.put(batch)
    answers: queue.Queue[tuple[Item, dict[str, Any] | None, int | None] | None] = queue.Queue()
    stopping = threading.Event()
    lock = threading.Lock()
    live: set[CompileWorker] = set()
    start_failures: list[str] = []

    def retire(worker: CompileWorker) -> None:
        worker.close()
        with lock:
            live.discard(worker)

    def started() -> CompileWorker | None:
        worker = CompileWorker(env)
        with lock:
            live.add(worker)
        if worker.wait_ready():
            return worker
        retire(worker)
        with lock:
            start_failures.append(f"exit code {worker.process.returncode}")
        return None

    def serve() -> None:
        worker = started()
        try:
            while worker is not None and not stopping.is_set():
                try:
                    batch = list(pending.get_nowait())
                except queue.Empty:
                    return
                while batch and worker is not None and not stopping.is_set():
                    item = batch.pop(0)
                    answer = worker.request(request_of(item))
                    if answer is None:
                        retire(worker)
                        if stopping.is_set():
                            return  # killed by the caller, not by the item
                    answers.put((item, answer, None if answer is not None else worker.process.returncode))
                    if answer is None:
                        worker = started()
                if batch:  # no worker to finish it here; another may
                    pending.put(batch)
        finally:
            if worker is not None:
                retire(worker)
            answers.put(None)  # this thread is done

    threads = [threading.Thread(target=serve, daemon=True) for _ in range(max(1, workers))]
    for thread in threads:
        thread.start()
    try:
        running = len(threads)
        while running:
            got = answers.get()
            if got is None:
                running -= 1
            else:
                on_answer(*got)
    except BaseException:
        stopping.set()
        with lock:
            for worker in list(live):
                worker.kill()
        raise
    for thread in threads:
        thread.join()
    if not pending.empty():
        raise RuntimeError(f"compile workers die before compiling anything ({start_failures[0]})")


# --------------------------------------------------------------------------------------------------
# The compile pool: the sweep's compile checks over all CPU cores


@dataclass(frozen=True)
class CompileJob:
    kernel: str
    key: Key
    config: Config


def _shape_class(job: CompileJob) -> tuple:
    """Jobs alike but for their token or sequence bucket. Those almost always compile to the same binary
    (a count is a runtime argument), so they go to one worker one after the other: the first compiles,
    the others find its binary in Triton's cache (or the worker's own memo) instead of all compiling it
    at once, each from scratch, on different cores."""
    return (job.kernel, job.config, tuple((k, v) for k, v in job.key.items if k not in BUCKET_FIELDS))


def compile_all(
    jobs: Sequence[CompileJob],
    target_name: str,
    extra_paths: Sequence[str] = (),
    processes: int | None = None,
    on_result: Callable[[CompileJob, CompileResult], None] | None = None,
) -> dict[CompileJob, CompileResult]:
    """CompileResult of every job, compiled on `processes` compile workers (default: one per CPU core).
    A job whose worker dies on it (a launcher that aborts) is recorded as not compiling."""
    classes: dict[tuple, list[CompileJob]] = {}
    for job in dict.fromkeys(jobs):
        classes.setdefault(_shape_class(job), []).append(job)
    results: dict[CompileJob, CompileResult] = {}

    def on_answer(job: CompileJob, answer: dict[str, Any] | None, _exit_code: int | None) -> None:
        if answer is None:
            results[job] = CompileResult(
                False, None, "compiling this config killed the compiling process", 0.0
            )
        else:
            results[job] = check_result(answer)
        if on_result is not None:
            on_result(job, results[job])

    if classes:
        workers = max(1, min(processes or os.cpu_count() or 1, len(classes)))
        run_on_workers(
            list(classes.values()),
            workers,
            worker_environment(None),
            lambda job: check_request(job.kernel, job.key, job.config, target_name, extra_paths),
            on_answer,
        )
    return results


if __name__ == "__main__":
    if sys.argv[1:] == ["--worker"]:
        _worker_main()
    else:
        sys.exit("usage: python -m gdn_tune.compile --worker (started by the sweep, check and warmup)")
