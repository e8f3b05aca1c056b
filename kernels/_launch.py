"""The one place kernels are launched, so a launch can be recorded instead of run, and run cheaply.

Recording is how configs get compiled for a GPU that is not present: a launcher runs on meta tensors,
its launch is captured (kernel, arguments, constexprs, options), and `compile_for_target` hands that
to the kernel's JIT entry under a driver that names the target and launches nothing. The hot path pays one global read for it.

Running: Triton's `kernel[grid](**args)` binds and specialises every argument, builds a cache key with
`str(options)`, reads several knobs and wraps the launch in hook calls on every call. After the first
launch of a (kernel, config, specialisation), `launch` calls the compiled kernel's launcher directly
instead. Before that first launch, a binary `gdn-tune warmup` compiled is loaded without Triton's
per-process cache key (`_warm.py`). The specialisation key holds what Triton's cache key holds: each
argument's specialisation as Triton's binder computes it (dtype and 16-byte alignment of pointers;
integers equal to 1, divisible by 16, their width; None), each constexpr's value, the config, and the
current device; two launches with equal keys run the same binary, so the direct call is exactly what
Triton would run.
Launch hooks (Triton's profiler) and the interpreter always take Triton's own path.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import triton
from triton import knobs
from triton.runtime.jit import JITFunction

from . import _guard
from ._spec import Config
from ._warm import load_warm


@dataclass
class LaunchRecord:
    kernel: Any  # triton JITFunction
    args: dict[str, Any]  # every argument of the kernel, constexprs included
    num_warps: int
    num_stages: int
    config: Config | None = None  # the config the launch was given (block sizes are also in args)


_recorder: list[LaunchRecord] | None = None


def launch(kernel: Any, grid: tuple[int, ...], config: Config, **args: Any) -> None:
    """Launch `kernel` on `grid` with the config's block sizes, warps and stages."""
    if _recorder is not None and _recorder_thread == threading.get_ident():
        _recorder.append(
            LaunchRecord(
                kernel, {**args, **config.block_params()}, config.num_warps, config.num_stages, config
            )
        )
        return
    plan = _plans.get(kernel)
    if plan is None:
        plan = _plans[kernel] = _LaunchPlan.of(kernel)
    if plan.direct:
        device = _current_device()
        key = (config.params, device, plan.specialisation(args))
        binary = plan.binaries.get(key)
        if binary is not None and not _hooks_installed():
            run, prefix, function, metadata = binary
            run(
                grid[0],
                grid[1] if len(grid) > 1 else 1,
                grid[2] if len(grid) > 2 else 1,
                _current_stream(device),
                function,
                *prefix,
                metadata,
                None,  # launch metadata: only hooks read it
                None,  # enter hook
                None,  # exit hook
                *plan.positional(args),
            )
            return
        if binary is None:  # this process's first launch of it
            prepare_first_launch(kernel, config, args)
        compiled = kernel[grid](**args, **_options(config))
        if hasattr(compiled, "packed_metadata"):
            plan.binaries[key] = _binary_of(compiled)
        return
    if _guard.watching() and isinstance(kernel, JITFunction):
        # Without the direct path no memo tells a first launch apart: each launch is checked, a
        # warmup call that finds the binary in memory (about 20 µs) once it has run.
        prepare_first_launch(kernel, config, args)
    kernel[grid](**args, **_options(config))


def _options(config: Config) -> dict[str, int]:
    return {**config.block_params(), "num_warps": config.num_warps, "num_stages": config.num_stages}


def prepare_first_launch(kernel: Any, config: Config, args: dict[str, Any]) -> None:
    """Before a process's first launch of a specialisation: load its warm binary (`_warm.py`) and, with
    the compile guard on and start-up over, report or refuse a launch that would compile (`_guard.py`).
    Inside an entry point that `compiles_ahead`, the first launch of a call that finds no warm binary
    readies every kernel the call launches instead, compiling the cold ones side by side."""
    watch = _guard.guard_watcher(kernel, config) if _guard.watching() else None
    chain = _chain
    ahead = chain is not None and chain[0] is not None and watch is None and chain[3] == threading.get_ident()
    run_kwargs = {**args, **_options(config)}  # recorded args hold the block sizes too
    if not load_warm(kernel, watch, defer=ahead, **run_kwargs):
        # No warm binary: ready the call's every kernel now, this one among them.
        from ._tables import place_for

        entry, chain[0] = chain[0], None
        compile_ahead(entry, chain[1], chain[2], place_for(torch.device("cuda", _current_device())))


def _binary_of(compiled: Any) -> tuple[Any, tuple, Any, Any]:
    """(run, its arguments before the metadata, function handle, packed metadata) of a compiled kernel.

    Triton's CudaLauncher.__call__ only allocates scratch memory (none for these kernels) before
    calling its C `launch`; that is called directly when the kernel needs no scratch (about 1 µs less).
    """
    launcher = compiled.run
    c_launch = getattr(launcher, "launch", None)
    no_scratch = not getattr(launcher, "global_scratch_size", 1) and not getattr(
        launcher, "profile_scratch_size", 1
    )
    if c_launch is not None and no_scratch:
        prefix = (launcher.launch_cooperative_grid, launcher.launch_pdl, None, None)
        return c_launch, prefix, compiled.function, compiled.packed_metadata
    return launcher, (), compiled.function, compiled.packed_metadata


class _LaunchPlan:
    """Per kernel: how to build the specialisation key and the launcher's positional arguments.

    Both are generated once per kernel as straight-line functions over the argument dict. The key
    holds, for each non-constexpr argument, Triton's own specialisation of it (`native_specialize_impl`,
    the C++ function its binder calls, with the same per-parameter flags), and each constexpr's value.
    """

    def __init__(
        self,
        direct: bool,
        specialisation: Callable[[dict[str, Any]], tuple] | None = None,
        positional: Callable[[dict[str, Any]], tuple] | None = None,
    ) -> None:
        self.direct = direct
        self.specialisation = specialisation
        self.positional = positional
        self.binaries: dict[tuple, tuple[Any, Any, Any]] = {}

    @classmethod
    def of(cls, kernel: Any, backend: Any = None) -> _LaunchPlan:
        # The interpreter's kernels (TRITON_INTERPRET=1) are no JITFunction and return no binary.
        if not isinstance(kernel, JITFunction) or _specialise is None:
            return cls(direct=False)
        if backend is None:
            from triton.compiler import make_backend
            from triton.runtime.driver import driver

            backend = make_backend(driver.active.get_current_target())
        key_terms, positional_terms = [], []
        namespace: dict[str, Any] = {"_specialise": _specialise, "_backend": backend}
        for i, p in enumerate(kernel.params):
            default = f"_default{i}"
            namespace[default] = p.default if p.has_default else None
            value = f"a.get({p.name!r}, {default})"
            if p.is_constexpr:
                # Block sizes come from the config (part of the key); launcher ignores constexpr slots.
                key_terms.append(value)
                positional_terms.append("None")
            else:
                flags = f"{p.is_const}, {not p.do_not_specialize}, {not p.do_not_specialize_on_alignment}"
                key_terms.append(f"_specialise(_backend, {value}, {flags})")
                positional_terms.append(value)
        source = (
            f"def specialisation(a):\n    return ({', '.join(key_terms)},)\n"
            f"def positional(a):\n    return ({', '.join(positional_terms)},)\n"
        )
        exec(source, namespace)
        return cls(True, namespace["specialisation"], namespace["positional"])


_plans: dict[Any, _LaunchPlan] = {}

# Whether kernels run under Triton's interpreter (TRITON_INTERPRET=1: the CPU tests and smoke sweeps).
# Kernels that work around the interpreter's gaps take it as a constexpr, so compiled binaries never
# contain those branches; each kernel module says which gaps it works around.
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"

# The direct path calls Triton internals (the binder's C++ specialisation, the launcher's argument
# order), verified on 3.6 only; other versions always launch through `kernel[grid]`, and so does
# every launch with GDN_KERNELS_DIRECT_LAUNCH=0 (to rule the direct path out when debugging).
_specialise = None
if triton.__version__.startswith("3.6.") and os.environ.get("GDN_KERNELS_DIRECT_LAUNCH", "1") != "0":
    from triton._C.libtriton import native_specialize_impl as _specialise


def _import_what_the_binder_imports() -> None:
    """Triton's argument specialiser (behind every launch, ours or `kernel[grid]`) imports 40 modules
    on its first call in a process (gluon, the code generator, tensor descriptors): 0.11 s on a CPU
    core here, which the first launch of a process paid. One call on an integer (which needs no
    backend) does it at import instead; under the interpreter nothing specialises."""
    try:
        from triton._C.libtriton import native_specialize_impl
    except ImportError:  # before 3.6 the binder is Python, and imports nothing lazily
        return
    native_specialize_impl(None, 1, False, True, True)


if not INTERPRETED:
    _import_what_the_binder_imports()

# torch.cuda.current_device() without its lazy-init check (CUDA is up once a kernel has launched).
_current_device = getattr(torch._C, "_cuda_getDevice", torch.cuda.current_device)
# Absent from CPU-only builds of torch, where no kernel takes the direct path.
_current_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)


def _hooks_installed() -> bool:
    enter, exit_ = knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook
    return bool(getattr(enter, "calls", enter) or getattr(exit_, "calls", exit_))


def cdiv(a: int, b: int) -> int:
    """Ceil division for grids and sizes on the host. `triton.cdiv` is a constexpr_function there: its
    wrapper costs about 4 µs a call against 0.05 µs for this, several times per forward call."""
    return -(-a // b)


def is_recording() -> bool:
    """Whether `launch` records now in this thread (inside `recording()`): meta-tensor callers then
    launch anyway."""
    return _recorder is not None and _recorder_thread == threading.get_ident()


_recorder_thread: int | None = None  # the thread that records: other threads' launches run meanwhile


@contextmanager
def recording() -> Iterator[list[LaunchRecord]]:
    """Within the block, `launch` in this thread records instead of running (one thread records at a
    time; launches of other threads run as usual)."""
    global _recorder, _recorder_thread
    previous = _recorder, _recorder_thread
    _recorder, _recorder_thread = [], threading.get_ident()
    try:
        yield _recorder
    finally:
        _recorder, _recorder_thread = previous


# --------------------------------------------------------------------------------------------------
# Compiling a call's kernels side by side (the cold first call)
#
# Without warm binaries, a prefill call's first launch in a process compiles its kernels one after
# another, each at its own first launch, and builds each one's C launcher: 6.7-7.8 s at dp-8k on the
# H200 host. An entry point marked `compiles_ahead` instead, at the first launch of a call whose
# binary is neither in memory nor warm (a warmed call pays nothing for it), runs its own host code once
# more under `recording()`, on meta stand-ins of its tensors (no kernel runs, no device memory is
# taken; nothing here reads a device value on the host, so the launches recorded are the call's), and
# compiles the launches that have no binary yet side by side: every recorded launch goes to Triton's
# `AsyncCompileMode`, binaries that warm entries or Triton's cache hold load in this thread, the rest
# compile, with their C launchers, in a pool of threads. With GDN_KERNELS_COMPILE_AHEAD=processes
# (where the OS can fork) each cold launch first compiles in a child process of its own, forked from
# this one (no interpreter start-up, no imports), into Triton's disk cache with its C launcher; the
# child touches no GPU and leaves by os._exit, and the pool then only loads. Measured on an H100 host
# (docs/benchmarks.md §1b), both take 2.7-3.4 s at 8192 tokens, against 6.6-8.2 s one compile after
# another: the longest compile (kkt + solve, 1.5-1.6 s) and Triton's per-process key (0.4 s) bound
# it. Processes keep the compiles off this process's GIL, which a serving engine's other threads may
# hold. The call then goes on and finds every binary in memory. The compile guard, when on, sees each
# launch as before (no compile ahead then). GDN_KERNELS_COMPILE_AHEAD=0 turns it off.

ENV_COMPILE_AHEAD = "GDN_KERNELS_COMPILE_AHEAD"
# How long the children of one call may take before they are killed and their launches compile
# in this process instead.
CHILD_COMPILE_TIMEOUT_S = 300.0


# The entry-point call in progress, [entry, args, kwargs, thread id]: a list, not an object, because
# it is made on every call (a class with __init__ costs about 0.25 µs more on the 2-core CPU). Its
# entry becomes None once the call's kernels were readied.
_chain: list[Any] | None = None


def compiles_ahead(entry: Callable[..., Any]) -> Callable[..., Any]:
    """Mark an entry point whose host code launches its kernels without side effects of its own (no
    in-place torch op, no host read of a device value): its first launch that needs a binary readies
    the call's every kernel at once (`compile_ahead`). About 0.4 µs a call on the 2-core CPU."""
    if INTERPRETED or os.environ.get(ENV_COMPILE_AHEAD, "1") == "0":
        return entry

    @functools.wraps(entry)
    def call(*args: Any, **kwargs: Any) -> Any:
        global _chain
        if _chain is not None:  # an entry point inside another, or another thread's call
            return entry(*args, **kwargs)
        _chain = [entry, args, kwargs, threading.get_ident()]
        try:
            return entry(*args, **kwargs)
        finally:
            _chain = None

    return call


def _on_meta(value: Any) -> Any:
    """A tensor's stand-in on the meta device (shape, strides, dtype; its storage offset, which is
    its data pointer there, so alignment specialises as the tensor's); anything else as it is."""
    if not isinstance(value, torch.Tensor):
        return value
    storage = torch.empty(
        value.untyped_storage().nbytes() // value.element_size(), dtype=value.dtype, device="meta"
    )
    return storage.as_strided(value.shape, value.stride(), value.storage_offset())


class _CompileThenLauncher:
    """The executor AsyncCompileMode submits compiles to: each task compiles, then builds the kernel's
    C launcher (a C compile, about 0.3 s, that the first launch would otherwise make in the caller's
    thread); the launch then loads it from Triton's cache."""

    def __init__(self, pool: Any, launcher_cls: Any) -> None:
        self.pool, self.launcher_cls = pool, launcher_cls

    def submit(self, compile_fn: Callable[[], Any]) -> Any:
        return self.pool.submit(self._compile, compile_fn)

    def _compile(self, compile_fn: Callable[[], Any]) -> Any:
        kernel = compile_fn()
        if self.launcher_cls is not None:
            # On failure the first launch builds it, and reports what fails, itself.
            with contextlib.suppress(Exception):
                self.launcher_cls(kernel.src, kernel.metadata)
        return kernel


def compile_ahead(entry: Callable[..., Any], args: tuple, kwargs: dict[str, Any], place: Any) -> int:
    """Ready every kernel launch of `entry(*args, **kwargs)`, whose configs come from the tables at
    `place` (`_tables.place_for` the call's device), for its first launch: warm binaries and Triton's
    disk cache load here, the rest compile side by side in a thread pool, each with its C launcher.
    Returns how many launches it handed to the pool (compiles, and loads from Triton's disk cache,
    which go the same way). The call is recorded on meta stand-ins of its tensors, resolving as the
    device would, so it allocates no device memory. Best effort: a launch it cannot ready (a compile
    error, a call that fails to record) is left to its own first launch, which then compiles, or
    raises, as before."""
    from triton.runtime.driver import driver

    from ._tables import resolving_as

    try:
        meta_args = tuple(_on_meta(a) for a in args)
        meta_kwargs = {k: _on_meta(v) for k, v in kwargs.items()}
        with resolving_as("meta", place), recording() as records:
            entry(*meta_args, **meta_kwargs)
    except Exception:
        return 0
    if not records:
        return 0
    from concurrent.futures import ThreadPoolExecutor

    launcher_cls = getattr(driver.active, "launcher_cls", None)
    if hasattr(os, "fork") and os.environ.get(ENV_COMPILE_AHEAD) == "processes":
        cold = [r for r in records if _needs_compile(r)]
        if len(cold) > 1:  # one compile gains nothing from a child
            _compile_in_children(cold, driver.active.get_current_target().arch, launcher_cls)
    jobs = min(len(records), os.cpu_count() or 1)
    try:
        with (
            ThreadPoolExecutor(jobs, thread_name_prefix="gdn_kernels-compile") as pool,
            triton.AsyncCompileMode(_CompileThenLauncher(pool, launcher_cls), ignore_errors=True) as compiles,
        ):
            for record in records:
                try:
                    load_warm(
                        record.kernel,
                        None,
                        **record.args,
                        num_warps=record.num_warps,
                        num_stages=record.num_stages,
                    )
                except Exception:
                    continue
            waited = len(compiles.raw_futures)
    except RuntimeError:  # another AsyncCompileMode is active in this context: leave it to the launches
        return 0
    return waited


def _needs_compile(record: LaunchRecord) -> bool:
    """Whether the recorded launch would compile: its binary is neither in memory, nor warm (a warm one
    is loaded now), nor in Triton's disk cache."""
    hows: list[str] = []
    try:
        load_warm(
            record.kernel,
            lambda how, _compile: hows.append(how),
            defer=True,
            **record.args,
            num_warps=record.num_warps,
            num_stages=record.num_stages,
        )
    except Exception:
        return False  # its own launch reports what is wrong
    return "compile" in hows


def _compile_in_children(records: list[LaunchRecord], cc: int, launcher_cls: Any) -> int:
    """Compile each record for compute capability `cc` into Triton's disk cache, with its C launcher,
    in a forked child of its own, all at once; wait for them (killing any still running after
    CHILD_COMPILE_TIMEOUT_S). Returns how many succeeded. A child that fails leaves its launch to
    compile in this process, which then reports the error."""
    import signal
    import warnings

    children = []
    with warnings.catch_warnings():
        # Python warns on fork in a process with threads: the child runs only the compile, on no lock
        # another thread may hold but the compile-only driver's, which it replaces.
        warnings.simplefilter("ignore", DeprecationWarning)
        for record in records:
            try:
                pid = os.fork()
            except OSError:
                break
            if pid == 0:  # the child
                code = 1
                try:
                    global _compile_only_lock
                    _compile_only_lock = threading.Lock()
                    compiled = compile_for_target(record, cc)
                    if launcher_cls is not None:
                        launcher_cls(compiled.src, compiled.metadata)
                    code = 0
                finally:
                    os._exit(code)
            children.append(pid)
    deadline = time.monotonic() + CHILD_COMPILE_TIMEOUT_S
    succeeded = 0
    for pid in children:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                succeeded += os.waitstatus_to_exitcode(status) == 0
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                break
            time.sleep(0.005)
    return succeeded


# Launches compile under a driver that names the target and launches nothing, as a device of its own
# (Triton keeps its binder and in-memory kernels per device) that no CUDA index can equal. The driver
# is process-wide: the lock keeps two compiles from swapping it under each other.
_compile_only_lock = threading.Lock()


class _CompileOnlyDriver:
    """What `JITFunction.run(warmup=True)` asks of a driver: the target, a device and its stream."""

    def __init__(self, cc: int) -> None:
        self.cc = cc

    def get_current_target(self) -> Any:
        from triton.backends.compiler import GPUTarget

        return GPUTarget("cuda", self.cc, 32)

    def get_current_device(self) -> str:
        return f"compile-only sm{self.cc}"

    def get_current_stream(self, device: Any = None) -> int:
        return 0


@contextmanager
def compile_only_driver(cc: int) -> Iterator[None]:
    """Within the block, Triton's JIT compiles for compute capability `cc` and touches no GPU.

    A launch in another thread inside the block would see this driver: hold no block while kernels run.
    """
    from triton.runtime import driver

    with _compile_only_lock:
        previous = driver._active  # not `driver.active`: that creates the default, and fails without a GPU
        driver.set_active(_CompileOnlyDriver(cc))
        try:
            yield
        finally:
            driver._active = previous


def compile_for_target(record: LaunchRecord, cc: int) -> Any:
    """Compile a recorded launch for compute capability `cc` (90 for sm90) as a launch there would; no
    GPU needed.

    It goes through the kernel's own JIT entry, `JITFunction.warmup` (`run(warmup=True)`), so the binder
    specialises the arguments exactly as a launch does: pointers on 16-byte alignment (a meta tensor's
    data pointer is its offset, so views keep theirs), integers on `== 1` and divisibility by 16. A bare
    `triton.compile` of the argument types gets none of that, and compiles another kernel: chunk_state
    BV=128 w8 s4 at T=8192 needs 66316 bytes of shared memory that way, 246540 as launched on an H200.
    Compiled kernels go to Triton's on-disk cache under the cache key a launch uses.
    """
    with compile_only_driver(cc):
        return record.kernel.warmup(
            **record.args, grid=(1,), num_warps=record.num_warps, num_stages=record.num_stages
        )
