"""Where a process's first forward call spends its time, phase by phase, for each cache state.

    python scripts/profile_first_call.py [--cases dp-8k tp1-next tp8] [--states cold warm cached bundle guard]
                                         [--cprofile 25] [--json out.json]
    python scripts/profile_first_call.py --cpu [--cases dp-8k]      # host-side phases only, no GPU

On the GPU host, for each case (the cold-start cases of bench_cold_start.py: 8192 tokens, K = V = 128,
bf16, initial and final state, int32 cu_seqlens) and each state, a fresh child process imports torch,
sets up CUDA, imports gdn_kernels, builds the inputs, then makes the first `chunk_gated_delta_rule`
call (to the end of its GPU work) and two more. States:

    cold     empty Triton cache, nothing warmed: Triton compiles the chain's kernels one after another
    warm     after `gdn-tune warmup --shape <case>` into that cache (warm entries, launchers built)
    cached   the same cache without gdn_kernels' warm entries: Triton's own disk-cache path
    bundle   an empty cache and GDN_TUNE_BINARY_DIR, a bundle another warmup wrote (a fresh container)
    guard    warm, with GDN_TUNE_COMPILE_GUARD=error (what the guard costs a warmed first call)

The first call is timed by wrapping the functions it goes through; each phase is the time spent in
its functions minus the wrapped functions they call, so the phases and "rest" add up to the call:

    tables        first resolution of each kernel's key (table files read and validated)
    launch plans  gdn_kernels._launch._LaunchPlan.of (specialisation and argument code per kernel)
    cuda driver   Triton's CUDA driver set-up (CudaUtils, libcuda lookup), once per process
    binders       Triton's per-kernel binder (JITFunction.create_binder)
    warm probe    gdn_kernels._warm.load_warm: binding the arguments and Triton's cache hook
    warm entries  reading warm entries and building CompiledKernel (metadata, cubin): _warm._load
    bundle check  opening GDN_TUNE_BINARY_DIR once (manifest, fingerprint, driver version)
    guard check   the guard's lookup of Triton's disk cache (only where no warm entry applied)
    compile       triton.compiler.compile: a compile, or a disk-cache load (cached state)
    triton_key    Triton's hash of its own installation, inside compile (once per process)
    C modules     loading (or building) Triton's C launchers and driver utilities
    C builds      C compiles of those (a miss of the cache: 0.3 s each)
    module load   CompiledKernel._init_handles less the launcher: cuModuleLoadData, function handle
    gc            Python's garbage collector, wherever a collection lands (calls: collections; a full
                  one traverses every object torch and triton made, tens of ms on these hosts)
    rest          everything else: launchers' Python, torch ops and allocations, launches, GPU work

and beside them: the GPU time of the call (CUDA events) against the third call's, and the memory the
caching allocator reserved during the call (new cudaMalloc segments), with how long a fresh allocation
of that many bytes takes. With --cprofile N the child also prints cProfile's top N functions of the
first call. Results go to stdout, to --json, and to $OUT/first_call.json and $OUT/first_call.txt when
$OUT is set.

--cpu times what it can without a GPU, in this process's children: the host-side phases of the first
launch of each kernel of the chain (tables, launch plans, binders, warm probe, warm entries) under
Triton's compile-only driver for sm90, and each kernel's compile time one after another, i.e. what the
cold first call spends compiling and the least a concurrent compile of the chain could take (its
slowest kernel).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

SCRIPTS = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPTS))
from bench_cold_start import COLD_CASES, warm  # noqa: E402

STATES = ("cold", "warm", "cached", "bundle", "guard")
RESULT_PREFIX = "@@first-call "
PHASES = (
    "tables",
    "launch plans",
    "cuda driver",
    "binders",
    "warm probe",
    "warm entries",
    "bundle check",
    "guard check",
    "compile",
    "triton_key",
    "C modules",
    "C builds",
    "module load",
    "gc",
)


class PhaseClock:
    """Exclusive time per phase: a wrapped function's time less that of wrapped functions it calls."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._stack: list[list[float]] = []

    def wrap(self, phase: str, function: Callable) -> Callable:
        def timed(*args: Any, **kwargs: Any) -> Any:
            self._stack.append([0.0])
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                spent = time.perf_counter() - started
                inner = self._stack.pop()[0]
                self.seconds[phase] += spent - inner
                self.calls[phase] += 1
                if self._stack:
                    self._stack[-1][0] += spent

        return timed

    def watch_gc(self) -> None:
        """Collections as a phase of their own: the garbage collector runs wherever allocations
        happen to trigger it, and would otherwise count in the phase it interrupts."""
        import gc

        def timed(stage: str, info: dict) -> None:
            if stage == "start":
                self._stack.append([0.0, time.perf_counter()])
                return
            inner, started = self._stack.pop()
            spent = time.perf_counter() - started
            self.seconds["gc"] += spent - inner
            self.calls["gc"] += 1
            if self._stack:
                self._stack[-1][0] += spent

        gc.callbacks.append(timed)

    def patch(self, phase: str, owner: Any, name: str) -> None:
        original = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)
        if isinstance(original, classmethod | staticmethod):
            bound = getattr(owner, name)
            setattr(owner, name, staticmethod(self.wrap(phase, bound)))
        else:
            setattr(owner, name, self.wrap(phase, original))

    def report(self) -> dict[str, dict[str, float]]:
        return {p: {"s": self.seconds[p], "calls": self.calls[p]} for p in PHASES if self.calls[p]}


def _instrument(clock: PhaseClock) -> None:
    """Wrap the functions a first call goes through (see the module doc), before any kernel launches."""
    import triton
    import triton.compiler
    import triton.runtime.build as build
    import triton.runtime.cache as cache
    from triton.backends.nvidia import driver as nvidia
    from triton.compiler.compiler import CompiledKernel
    from triton.runtime.jit import JITFunction

    from gdn_kernels import _launch, _tables, _warm, kernel_specs

    clock.patch("tables", _tables, "_resolve_and_cache")
    clock.patch("launch plans", _launch._LaunchPlan, "of")
    clock.patch("cuda driver", nvidia.CudaDriver, "__init__")
    # Each kernel makes its binder through a factory bound when it was decorated, not the class's.
    for kernel in {id(fn): fn for spec in kernel_specs().values() for fn in spec.jit_functions}.values():
        if isinstance(kernel, JITFunction):
            kernel.device_caches.default_factory = clock.wrap("binders", kernel.device_caches.default_factory)
    clock.patch("warm probe", _launch, "load_warm")
    clock.patch("warm entries", _warm, "_load")
    clock.patch("bundle check", _warm, "_open_bundle")
    clock.patch("guard check", _warm, "_in_triton_cache")
    clock.patch("compile", triton.compiler, "compile")  # create_binder imports it from there
    clock.patch("triton_key", cache, "triton_key")
    clock.patch("C modules", nvidia, "compile_module_from_src")
    clock.patch("C builds", build, "_build")
    clock.patch("module load", CompiledKernel, "_init_handles")
    clock.patch("C modules", nvidia.CudaLauncher, "__init__")
    clock.watch_gc()


def child(case: str, cprofile: int) -> None:
    """In the fresh process: imports, CUDA, inputs, then three calls; the first one phase by phase."""
    started = time.perf_counter()
    import torch

    import_torch_s = time.perf_counter() - started
    t = time.perf_counter()
    torch.cuda.init()
    torch.empty(1, device="cuda")
    torch.cuda.synchronize()
    cuda_s = time.perf_counter() - t
    t = time.perf_counter()
    import gdn_kernels

    import_ours_s = time.perf_counter() - t
    from bench_kernels import PREFILL_CASES, prefill_inputs

    _, H, HV, lengths = next(c for c in PREFILL_CASES if c[0] == case)
    x = prefill_inputs(H, HV, lengths)
    torch.cuda.synchronize()
    clock = PhaseClock()
    _instrument(clock)
    calls = []
    profile = None
    with torch.inference_mode():
        for i in range(3):
            stats = torch.cuda.memory_stats()
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            if i == 0 and cprofile:
                import cProfile

                profile = cProfile.Profile()
                profile.enable()
            t = time.perf_counter()
            begin.record()
            out = gdn_kernels.chunk_gated_delta_rule(**x)
            end.record()
            torch.cuda.synchronize()
            seconds = time.perf_counter() - t
            if profile is not None and i == 0:
                profile.disable()
            after = torch.cuda.memory_stats()
            del out
            calls.append(
                {
                    "seconds": seconds,
                    "gpu_ms": begin.elapsed_time(end),
                    "new_segments": after["segment.all.allocated"] - stats["segment.all.allocated"],
                    "reserved_mb": (
                        after["reserved_bytes.all.allocated"] - stats["reserved_bytes.all.allocated"]
                    )
                    / 2**20,
                }
            )
            if i == 0:
                phases = clock.report()
    # How long fresh cudaMallocs of the first call's reserved bytes take, released to the driver first.
    torch.cuda.empty_cache()
    t = time.perf_counter()
    probe = torch.empty(int(calls[0]["reserved_mb"] * 2**20), dtype=torch.uint8, device="cuda")
    torch.cuda.synchronize()
    malloc_s = time.perf_counter() - t
    del probe
    if profile is not None:
        import pstats

        pstats.Stats(profile, stream=sys.stderr).sort_stats("cumulative").print_stats(cprofile)
    result = {
        "import_torch_s": import_torch_s,
        "cuda_init_s": cuda_s,
        "import_gdn_kernels_s": import_ours_s,
        "phases": phases,
        "calls": calls,
        "malloc_probe_s": malloc_s,
    }
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def run_state(case: str, state: str, cprofile: int) -> dict:
    """Prepare the state's caches, run the child, return its report (with the warmup's wall time)."""
    with tempfile.TemporaryDirectory(prefix="first-call-") as root:
        cache, other, bundle = Path(root, "cache"), Path(root, "other"), Path(root, "bundle")
        env = dict(os.environ, TRITON_CACHE_DIR=str(cache), PYTHONUNBUFFERED="1")
        env.pop("TRITON_INTERPRET", None)
        warmup_s = None
        if state in ("warm", "cached", "guard"):
            warmup_s = warm(case, str(cache), None)
        if state == "cached":
            shutil.rmtree(cache / "gdn_kernels-warm", ignore_errors=True)
        if state == "bundle":
            warmup_s = warm(case, str(other), None, ["--bundle", str(bundle)])
            env["GDN_TUNE_BINARY_DIR"] = str(bundle)
        if state == "guard":
            env["GDN_TUNE_COMPILE_GUARD"] = "error"
        done = subprocess.run(
            [sys.executable, __file__, "--child", case, str(cprofile)],
            capture_output=True,
            text=True,
            env=env,
            timeout=1800,
        )
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if done.returncode != 0 or not lines:
        raise RuntimeError(
            f"{case} {state} failed (exit {done.returncode}):\n{(done.stdout + done.stderr)[-4000:]}"
        )
    if cprofile:
        print(done.stderr, file=sys.stderr)
    return {"case": case, "state": state, "warmup_s": warmup_s, **json.loads(lines[-1][len(RESULT_PREFIX) :])}


def table(rows: list[dict]) -> str:
    """One column per (case, state): the process's set-up, the first call by phase, then the rest."""
    heads = [f"{r['case']}/{r['state']}" for r in rows]
    width = max(12, *(len(h) for h in heads))
    lines = [f"{'seconds':<28}" + "".join(f"{h:>{width + 2}}" for h in heads)]

    def line(label: str, values: list[str]) -> None:
        lines.append(f"{label:<28}" + "".join(f"{v:>{width + 2}}" for v in values))

    line("warmup (before the process)", [f"{r['warmup_s']:.1f}" if r["warmup_s"] else "-" for r in rows])
    line("import torch", [f"{r['import_torch_s']:.3f}" for r in rows])
    line("CUDA context", [f"{r['cuda_init_s']:.3f}" for r in rows])
    line("import gdn_kernels", [f"{r['import_gdn_kernels_s']:.3f}" for r in rows])
    lines.append("first call:")
    for phase in PHASES:
        values = [r["phases"].get(phase) for r in rows]
        if any(values):
            line(f"  {phase}", [f"{v['s']:.4f} ({v['calls']})" if v else "-" for v in values])
    rest = [r["calls"][0]["seconds"] - sum(v["s"] for v in r["phases"].values()) for r in rows]
    line("  rest", [f"{v:.4f}" for v in rest])
    line("  = first call", [f"{r['calls'][0]['seconds']:.4f}" for r in rows])
    line("  GPU time, ms", [f"{r['calls'][0]['gpu_ms']:.2f}" for r in rows])
    line(
        "  new segments / MB",
        [f"{r['calls'][0]['new_segments']} / {r['calls'][0]['reserved_mb']:.0f}" for r in rows],
    )
    line("  malloc of that MB", [f"{r['malloc_probe_s']:.4f}" for r in rows])
    line("second call", [f"{r['calls'][1]['seconds']:.4f}" for r in rows])
    line("third call", [f"{r['calls'][2]['seconds']:.4f}" for r in rows])
    line("  GPU time, ms", [f"{r['calls'][2]['gpu_ms']:.2f}" for r in rows])
    lines.append("(phase: seconds (calls); goal: first call <= 0.05 s after warmup, <= 2 s cold)")
    return "\n".join(lines)


def cpu_breakdown(case: str) -> dict:
    """--cpu: host-side first-launch phases of the chain for sm90 with a warmed cache, and each
    kernel's compile time with a cold one; both in fresh child processes."""
    with tempfile.TemporaryDirectory(prefix="first-call-cpu-") as root:
        cache = Path(root, "cache")
        env = dict(os.environ, TRITON_CACHE_DIR=str(cache))
        env.pop("TRITON_INTERPRET", None)
        run = lambda mode: subprocess.run(
            [sys.executable, __file__, "--cpu-child", case, mode],
            capture_output=True,
            text=True,
            env=env,
            timeout=1800,
        )
        results = {}
        for mode in ("cold", "warm"):
            if mode == "warm":
                warm(case, str(cache), None, ["--gpu", "h200"])  # no GPU here: name the target
            done = run(mode)
            lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
            if done.returncode != 0 or not lines:
                raise RuntimeError(f"--cpu {mode} failed:\n{(done.stdout + done.stderr)[-4000:]}")
            results[mode] = json.loads(lines[-1][len(RESULT_PREFIX) :])
    return {"case": case, **results}


def cpu_child(case: str, mode: str) -> None:
    """The chain's launches recorded on meta tensors (h200 tables), then each first launch through
    `prepare_first_launch` under the compile-only driver: cold, it compiles; warm, it loads."""
    import torch
    from bench_kernels import PREFILL_CASES

    import gdn_kernels
    from gdn_kernels._launch import _LaunchPlan, compile_only_driver, prepare_first_launch, recording
    from gdn_kernels.tuning import resolving_as
    from gdn_tune.sweep.target import target_place

    _, H, HV, lengths = next(c for c in PREFILL_CASES if c[0] == case)
    T, N, meta = sum(lengths), len(lengths), torch.device("meta")
    empty = lambda *shape, dt=torch.bfloat16: torch.empty(*shape, dtype=dt, device=meta)
    clock = PhaseClock()
    _instrument(clock)  # the CUDA-only phases never happen here
    place, cc, _ = target_place("h200")
    per_kernel = []
    t = time.perf_counter()
    with resolving_as("meta", place):
        with recording() as records:
            gdn_kernels.chunk_gated_delta_rule(
                empty(1, T, H, 128),
                empty(1, T, H, 128),
                empty(1, T, HV, 128),
                empty(1, T, HV, dt=torch.float32),
                empty(1, T, HV, dt=torch.float32),
                initial_state=empty(N, HV, 128, 128, dt=torch.float32),
                output_final_state=True,
                cu_seqlens=empty(N + 1, dt=torch.int32),
            )
        recorded_s = time.perf_counter() - t
        for r in records:
            started = time.perf_counter()
            with compile_only_driver(cc):
                _LaunchPlan.of(r.kernel)  # as launch() makes it (timed: _instrument wrapped it)
                prepare_first_launch(r.kernel, r.config, r.args)
            per_kernel.append({"kernel": r.kernel.fn.__name__, "s": time.perf_counter() - started})
    result = {"mode": mode, "record_s": recorded_s, "phases": clock.report(), "kernels": per_kernel}
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def cpu_table(report: dict) -> str:
    lines = [
        f"--cpu, {report['case']}: host-side first launches for sm90 (compile-only driver, meta tensors)"
    ]
    for mode in ("warm", "cold"):
        r = report[mode]
        total = sum(k["s"] for k in r["kernels"])
        lines.append(
            f"{mode}: {len(r['kernels'])} first launches in {total:.4f} s (calls recorded in {r['record_s']:.4f} s)"
        )
        for phase, v in r["phases"].items():
            lines.append(f"  {phase:<14} {v['s']:.4f} s ({v['calls']})")
        lines.append("  per kernel: " + ", ".join(f"{k['kernel']} {k['s']:.3f}" for k in r["kernels"]))
    cold = [k["s"] for k in report["cold"]["kernels"]]
    lines.append(
        f"cold compiles: {sum(cold):.1f} s one after another; the slowest kernel alone {max(cold):.1f} s "
        f"({max(cold) / sum(cold):.0%}): the floor of compiling the chain concurrently"
    )
    return "\n".join(lines)


def _write_out(text: str, data: Any) -> None:
    out = os.environ.get("OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        Path(out, "first_call.txt").write_text(text + "\n")
        Path(out, "first_call.json").write_text(json.dumps(data, indent=2))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=list(COLD_CASES), choices=COLD_CASES)
    parser.add_argument("--states", nargs="+", default=list(STATES), choices=STATES)
    parser.add_argument("--cprofile", type=int, default=0, metavar="N", help="print cProfile's top N")
    parser.add_argument("--cpu", action="store_true", help="host-side phases only, no GPU (see above)")
    parser.add_argument("--json", help="write every measurement here")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--cpu-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]))
        return 0
    if args.cpu_child:
        cpu_child(*args.cpu_child)
        return 0
    if args.cpu:
        reports = [cpu_breakdown(case) for case in args.cases]
        text = "\n\n".join(cpu_table(r) for r in reports)
        data: Any = reports
    else:
        rows = []
        for case in args.cases:
            for state in args.states:
                rows.append(run_state(case, state, args.cprofile))
                first = rows[-1]["calls"][0]
                print(f"{case} {state}: first call {first['seconds']:.3f} s", flush=True)
        text, data = table(rows), rows
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(data, indent=2))
    with contextlib.suppress(OSError):
        _write_out(text, data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
