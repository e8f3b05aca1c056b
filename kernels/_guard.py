"""The compile guard: after start-up, a launch that would make Triton compile a kernel is reported or refused.

A serving engine's CI sets `GDN_TUNE_COMPILE_GUARD=error` (or `warn`) and replays its traffic; a
compile then fails the call (or warns) with a message that names the kernel, its table key, its config
and the specialisation that no warm-up produced, so the CI proves that `gdn-tune warmup` (or the
engine's own warm-up) covered every path: gate dtype, cu_seqlens dtype, final state, state layout.

    GDN_TUNE_COMPILE_GUARD       off (default) | warn | error
    GDN_TUNE_COMPILE_GUARD_FROM  import (default) | seal

Start-up ends at the import of gdn_kernels (`import`: every binary must come from a warm-up's cache or
a bundle) or when the process calls `gdn_kernels.seal_compiles()` (`seal`: an engine whose own warm-up
may compile seals after it). `seal_compiles(loads=True)` also reports a first launch whose binary is
loaded from a cache: a path the engine's own warm-up did not run in this process.

What counts: a launch whose specialisation is in none of Triton's in-memory cache, a warm entry or
bundle (`_warm.py`), nor Triton's on-disk cache: Triton would compile it (seconds). The check runs at a
process's first launch of each specialisation (`_launch.launch`), never on later launches, and refuses
before Triton compiles. Kernels under TRITON_INTERPRET=1 never compile and are never reported.
"""

from __future__ import annotations

import os
import threading
import warnings
from dataclasses import dataclass
from typing import Any

ENV_MODE = "GDN_TUNE_COMPILE_GUARD"
ENV_FROM = "GDN_TUNE_COMPILE_GUARD_FROM"
MODES = ("off", "warn", "error")
STARTS = ("import", "seal")


class CompileGuardError(RuntimeError):
    """A kernel would compile after start-up while GDN_TUNE_COMPILE_GUARD=error."""


class CompileGuardWarning(UserWarning):
    """A kernel compiled after start-up while GDN_TUNE_COMPILE_GUARD=warn."""


@dataclass(frozen=True)
class Trip:
    """One launch the guard reported: what it would have cost and what it was."""

    what: str  # "compile", or with seal_compiles(loads=True) "load" (a binary from a cache)
    kernel: str  # spec name, or the function's name for a kernel no spec lists
    function: str
    config: str
    keys: tuple[str, ...]  # the table keys this process resolved to the config, latest first
    specialisation: str
    nearest: str  # how it differs from the nearest variant warmed or already launched

    @property
    def message(self) -> str:
        keys = ", ".join(self.keys) if self.keys else "none resolved to this config (a fixed config)"
        done = {
            ("compile", "error"): "would compile (refused)",
            ("compile", "warn"): "compiles",
        }.get((self.what, _mode), "loads a binary from a cache")
        return (
            f"gdn_kernels compile guard: {self.kernel} ({self.function}) {done} after start-up\n"
            f"  config: {self.config}\n"
            f"  table key: {keys}\n"
            f"  specialisation: {self.specialisation}\n"
            f"  {self.nearest}\n"
            f"  ({ENV_MODE}={_mode}: warm this call up with `gdn-tune warmup` and the deployment's calls)"
        )


def _read(name: str, allowed: tuple[str, ...]) -> str:
    # A misspelt value fails the import: a CI that believed the guard on while it was off proves nothing.
    value = os.environ.get(name, "").strip().lower() or allowed[0]
    if value not in allowed:
        raise ValueError(f"{name}={os.environ[name]!r}: expected one of {', '.join(allowed)}")
    return value


_mode = _read(ENV_MODE, MODES)
_sealed = _read(ENV_FROM, STARTS) == "import"
_loads = False
_trips: list[Trip] = []
_lock = threading.Lock()
_warned_hidden = False


def watching() -> bool:
    """Whether first launches must be classified: the guard is on and start-up is over."""
    return _sealed and _mode != "off"


def seal_compiles(*, loads: bool = False) -> None:
    """End start-up: from now on, with GDN_TUNE_COMPILE_GUARD=warn or error, a launch that would make
    Triton compile a kernel warns or raises CompileGuardError. With `loads`, so does the first launch of
    a specialisation this process has not run yet, even from a cache (a module load, milliseconds: a
    path the caller's warm-up did not take). An engine calls it at the end of its own warm-up."""
    global _sealed, _loads
    _sealed, _loads = True, _loads or loads


def compile_guard_trips() -> list[Trip]:
    """Every launch the guard reported in this process, in order (with `warn`, the CI's evidence)."""
    with _lock:
        return list(_trips)


def guard_watcher(kernel: Any, config: Any) -> Any:
    """What `_warm.load_warm` calls with how the first launch of `kernel` gets its binary: "warm" (a
    warm entry or bundle), "cached" (Triton's on-disk cache), "compile", or "hidden" (another
    jit_cache_hook is installed: the guard cannot see)."""

    def watch(how: str, compile: dict[str, Any] | None) -> None:
        if how == "hidden":
            _report_hidden()
        elif how == "compile" or _loads:
            _trip(Trip(how if how == "compile" else "load", *_describe(kernel, config, compile)))

    return watch


def _report_hidden() -> None:
    global _warned_hidden
    if not _warned_hidden:
        _warned_hidden = True
        warnings.warn(
            "gdn_kernels compile guard: another triton.knobs.runtime.jit_cache_hook is installed; "
            "first launches are not checked while it is",
            CompileGuardWarning,
            stacklevel=4,
        )


def _trip(trip: Trip) -> None:
    with _lock:
        _trips.append(trip)
    if _mode == "error":
        raise CompileGuardError(trip.message)
    warnings.warn(trip.message, CompileGuardWarning, stacklevel=5)


def _describe(kernel: Any, config: Any, compile: dict[str, Any] | None) -> tuple[Any, ...]:
    from ._registry import kernel_specs
    from ._tables import _lock as tables_lock
    from ._tables import _resolutions

    function = kernel.fn.__qualname__
    name = next((s.name for s in kernel_specs().values() for fn in s.jit_functions if fn is kernel), function)
    with tables_lock:
        keys = [
            f"{r.key.label} ({r.source})"
            for r in reversed(list(_resolutions.values()))
            if r.kernel == name and r.config == config
        ]
    ours = specialisation_of(kernel, compile) if compile else {}
    nearest = _nearest(kernel, compile, ours) if compile else "nearest: unknown"
    shown = ", ".join(f"{n}={v}" for n, v in ours.items())
    return name, function, config.label, tuple(dict.fromkeys(keys)), shown, nearest


def specialisation_of(kernel: Any, compile: dict[str, Any]) -> dict[str, str]:
    """What Triton compiles one launch as, parameter by parameter, readable: `*bf16/16` (a pointer,
    16-byte aligned), `i32/16` (an integer divisible by 16), `i32`, a constexpr's value; then the launch
    options (`num_warps`, `num_stages`). From a jit_cache_hook's `compile` argument."""
    return _specialisation(
        kernel,
        compile["signature"],
        compile["constants"],
        compile["configs"][0],
        compile["num_warps"],
        compile["num_stages"],
    )


def specialisation_of_compiled(kernel: Any, compiled: Any) -> dict[str, str]:
    """`specialisation_of` a binary of `kernel` (compiled or loaded: a CompiledKernel)."""
    src, metadata = compiled.src, compiled.metadata
    return _specialisation(
        kernel, src.signature, src.constants, src.attrs, metadata.num_warps, metadata.num_stages
    )


def _specialisation(
    kernel: Any, signature: dict, constants: dict, attrs: dict, num_warps: int, num_stages: int
) -> dict[str, str]:
    constants = {path[0]: value for path, value in constants.items() if len(path) == 1}
    aligned = {
        path[0]
        for path, values in attrs.items()
        if len(path) == 1 and ["tt.divisibility", 16] in [list(a) for a in values]
    }
    described = {}
    for i, name in enumerate(kernel.arg_names):
        kind = signature.get(name, "")
        if kind == "constexpr" or i in constants:
            described[name] = repr(getattr(constants.get(i), "value", constants.get(i)))
        else:
            described[name] = kind + ("/16" if i in aligned else "")
    described["num_warps"] = str(num_warps)
    described["num_stages"] = str(num_stages)
    return described


def _nearest(kernel: Any, compile: dict[str, Any], ours: dict[str, str]) -> str:
    """How `ours` differs from the closest specialisation of the same kernel and target that a warm
    entry records or this process already launched: the arguments the warm-up called differently."""
    from ._warm import warm_specialisations

    theirs = [*warm_specialisations(kernel, compile["device"]), *_launched(kernel, compile["device"])]
    if ours in theirs:
        return (
            "a warm entry or an earlier launch has these very arguments: its binary was built under other "
            "options or TRITON_* variables, or has left the cache"
        )
    if not theirs:
        return "nearest warmed variant: none of this kernel for this target"
    best = min(theirs, key=lambda t: sum(t.get(n) != v for n, v in ours.items()))
    differ = [f"{n}: {v} here, {best.get(n, '-')} warmed" for n, v in ours.items() if best.get(n) != v]
    return "differs from the nearest warmed variant in " + "; ".join(differ)


def _launched(kernel: Any, device: Any) -> list[dict[str, str]]:
    """Specialisations of `kernel` this process has run or loaded on `device` (Triton's in-memory cache)."""
    cache = kernel.device_caches[device][0]
    return [
        specialisation_of_compiled(kernel, compiled)
        for compiled in list(cache.values())
        if hasattr(compiled, "src") and hasattr(compiled, "metadata")
    ]
