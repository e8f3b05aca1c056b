"""Kernels that `gdn-tune warmup` compiled, loaded at their first launch without Triton's compile path.

After a warmup, Triton's on-disk cache holds every binary a deployment launches, but a fresh process
still reaches each one through `compile()`, whose cache key starts with `triton_key()`: a hash of
Triton's own installation (its Python files and the 500 MB libtriton), computed once per process, about
0.35 s on the H200 host, before the first kernel can be found. So the warmup also writes, for each
binary, a small entry named after what a launch knows without that hash: this package's sources, the
Triton installation (version, libtriton and ptxas by size and time), the toolchain's environment and
Triton's cache-invalidating variables, the kernel, the target, and Triton's in-memory cache key of the
launch (argument specialisation, constexprs, options). A first launch looks
its entry up and hands Triton the binary as `compile()` would on a cache hit, through the JIT's
`jit_cache_hook` (called before a compile; answering True skips it). Anything unexpected (no entry, a
file gone, another hook installed) leaves the launch to Triton's own path: a warm entry can make the
first launch faster, never different.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any

import triton
from triton import knobs

from ._files import write_text_atomically

FOLDER = "gdn_kernels-warm"  # inside Triton's cache folder

# Environment that changes Triton's binaries without being among its cache-invalidating variables
# (those are read below): another ptxas or its options, another libdevice.
_TOOLCHAIN_ENV = (
    "TRITON_PTXAS_PATH",
    "TRITON_PTXAS_BLACKWELL_PATH",
    "PTXAS_OPTIONS",
    "TRITON_LIBDEVICE_PATH",
)
_TRITON_DIR = Path(triton.__file__).parent
_PTXAS = _TRITON_DIR / "backends" / "nvidia" / "bin" / "ptxas"


def _file_stamp(path: Path) -> str:
    try:
        stat = path.stat()
    except OSError:
        return "-"
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def _sources_and_environment() -> bytes:
    """This package's sources and the environment that changes binaries."""
    from triton.runtime.jit import get_cache_invalidating_env_vars

    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    digest.update(repr([(name, os.environ.get(name)) for name in _TOOLCHAIN_ENV]).encode())
    digest.update(repr(sorted(get_cache_invalidating_env_vars().items())).encode())
    return digest.digest()


def _installation_stamps() -> str:
    """libtriton and the bundled ptxas by size and modification time (a rebuild changes them)."""
    files = (*_TRITON_DIR.glob("_C/libtriton*"), _PTXAS)
    return "|".join(f"{path.name}={_file_stamp(path)}" for path in files)


def _fingerprint_now() -> str:
    """What a binary depends on besides the launch: the kernels' sources (as this process imported
    them: computed at import), Triton's version and installation (libtriton and the bundled ptxas, by
    size and modification time: a rebuild changes them), the toolchain's environment and Triton's
    cache-invalidating variables (TRITON_DEFAULT_FP_FUSION, ...). About 1 ms."""
    digest = hashlib.sha256(f"{triton.__version__}|{_TRITON_DIR}".encode())
    digest.update(_installation_stamps().encode())
    digest.update(_SOURCES_AND_ENVIRONMENT)
    return digest.hexdigest()


# As this process imported the sources and found the environment (a later change applies to neither).
_SOURCES_AND_ENVIRONMENT = _sources_and_environment()
_FINGERPRINT = _fingerprint_now()
# One warm load at a time: the hook below is process-wide while it is installed.
_lock = threading.Lock()


def _entry_path(root: Path, fingerprint: str, kernel: Any, target: Any, key: str) -> Path:
    name = f"{fingerprint}|{kernel.fn.__module__}.{kernel.fn.__qualname__}|{target!r}|{key}"
    return root / FOLDER / f"{hashlib.sha256(name.encode()).hexdigest()}.json"


def _launch_key(kernel: Any, compiled: Any) -> tuple[str, Any] | None:
    """(Triton's in-memory cache key, target) under which `kernel` holds `compiled`, or None."""
    for cache, _, target, _, _ in kernel.device_caches.values():
        key = next((k for k, v in cache.items() if v is compiled), None)
        if key is not None:
            return key, target
    return None


def _launch_files(compiled: Any) -> list[Path]:
    """The files a launch reads: the metadata and the binary. Triton's group also holds the IR of every
    stage (ttir, ttgir, llir, ptx, source: 200 KB for gdn_gating), which CompiledKernel would read
    as text at each first launch for nothing but `asm` lookups."""
    from triton.compiler import make_backend

    binary = "." + make_backend(compiled.metadata.target).binary_ext
    return [Path(p) for p in compiled.metadata_group.values() if Path(p).suffix in (".json", binary)]


def _entry(kernel: Any, compiled: Any, target: Any, files: list[Path]) -> dict[str, Any]:
    from ._guard import specialisation_of_compiled

    return {
        "hash": compiled.hash,
        "folder": files[0].parent.name,  # named after the hash, encoded, by Triton's cache manager
        "files": sorted(p.name for p in files),
        "kernel": f"{kernel.fn.__module__}.{kernel.fn.__qualname__}",
        "target": repr(target),
        # Read only by the compile guard, to say how a launch nobody warmed differs from those warmed.
        "specialisation": specialisation_of_compiled(kernel, compiled),
    }


def remember(kernel: Any, compiled: Any) -> bool:
    """Write the warm entry of `compiled`, which `kernel` compiled in this process; False when the
    kernel's in-memory cache does not hold it (nothing to name it by)."""
    found = _launch_key(kernel, compiled)
    if found is None:
        return False
    key, target = found
    entry = _entry(kernel, compiled, target, _launch_files(compiled))
    # A reader sees the whole entry or none.
    write_text_atomically(
        _entry_path(Path(knobs.cache.dir), _FINGERPRINT, kernel, target, key), json.dumps(entry)
    )
    return True


def _load(kernel: Any, key: str, compile: dict[str, Any]) -> bool:
    """Put the warm binary of this launch into the kernel's in-memory cache; False when there is none."""
    cache, _, target, _, _ = kernel.device_caches[compile["device"]]
    roots = [(Path(knobs.cache.dir), _FINGERPRINT)]
    for root, fingerprint in roots:
        try:
            entry = json.loads(_entry_path(root, fingerprint, kernel, target, key).read_text())
            folder = root / entry["folder"]
            group = {name: str(folder / name) for name in entry["files"]}
            if not all(os.path.exists(p) for p in group.values()):
                continue
            src = kernel.ASTSource(kernel, compile["signature"], compile["constants"], compile["configs"][0])
            compiled = kernel.CompiledKernel(src, group, entry["hash"])
        except Exception:  # no entry, a damaged or foreign one: Triton's own path decides
            continue
        cache[key] = compiled
        listener = knobs.compilation.listener
        if listener is not None:  # as Triton reports a disk-cache hit
            listener(
                src=src,
                metadata=compiled.metadata._asdict(),
                metadata_group=group,
                times=None,
                cache_hit=True,
            )
        return True
    return False


def _in_triton_cache(kernel: Any, compile: dict[str, Any]) -> bool:
    """Whether Triton's on-disk cache holds this launch's binary: the lookup `compile()` starts with
    (its cache key, which hashes Triton's installation once per process, then the group file)."""
    from triton.runtime.cache import get_cache_key, get_cache_manager
    from triton.runtime.jit import get_cache_invalidating_env_vars

    _, _, _, backend, _ = kernel.device_caches[compile["device"]]
    src = kernel.ASTSource(kernel, compile["signature"], compile["constants"], compile["configs"][0])
    # The launch's full options, as JSON (tuples became lists), as Triton's own preload reads them.
    raw = json.loads(compile["specialization_data"])["options"]
    options = {
        k: tuple(tuple(x) if isinstance(x, list) else x for x in v) if isinstance(v, list) else v
        for k, v in raw.items()
    }
    options = backend.parse_options({**options, **src.parse_options()})
    key = get_cache_key(src, backend, options, get_cache_invalidating_env_vars())
    metadata = f"{src.name[:150]}.json"
    group = get_cache_manager(hashlib.sha256(key.encode()).hexdigest()).get_group(metadata) or {}
    return metadata in group


def load_warm(kernel: Any, watch: Any = None, **run_kwargs: Any) -> None:
    """Before the first launch of a specialisation: bind the arguments as the launch will and load its
    warm binary if there is one (else Triton compiles or loads it here, as the launch would have).

    `watch(how, compile)`, when given (the compile guard), hears how the binary is reached before
    Triton compiles anything: "warm", "cached" (Triton's disk cache), "compile", or "hidden" (another
    jit_cache_hook decides); an exception it raises stops the launch."""
    always = knobs.compilation.always_compile  # TRITON_ALWAYS_COMPILE: the user wants Triton to compile
    if always and watch is None:
        return
    owner = threading.get_ident()

    def hook(*, key: str, fn: Any, compile: dict[str, Any], is_manual_warmup: bool, **_: Any) -> bool:
        # Only this thread's warmup call: answering True to a real launch would skip that launch.
        if not (is_manual_warmup and fn.jit_function is kernel and threading.get_ident() == owner):
            return False
        if not always and _load(kernel, key, compile):
            if watch is not None:
                watch("warm", compile)
            return True
        if watch is not None:
            watch("compile" if always or not _in_triton_cache(kernel, compile) else "cached", compile)
        return False

    with _lock:
        if knobs.runtime.jit_cache_hook is not None:  # someone else decides about compiles
            if watch is not None:
                watch("hidden", None)
            return
        knobs.runtime.jit_cache_hook = hook
        try:
            kernel.warmup(grid=(1,), **run_kwargs)
        finally:
            if knobs.runtime.jit_cache_hook is hook:
                knobs.runtime.jit_cache_hook = None


def warm_specialisations(kernel: Any, device: Any) -> list[dict[str, str]]:
    """The specialisations of `kernel` that warm entries hold for the target of `device`, as the compile
    guard describes them. Reads every entry: for error messages only."""
    _, _, target, _, _ = kernel.device_caches[device]
    name, wanted = f"{kernel.fn.__module__}.{kernel.fn.__qualname__}", repr(target)
    roots = [Path(knobs.cache.dir)]
    found = []
    for root in roots:
        for path in sorted((root / FOLDER).glob("*.json")):
            try:
                entry = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if entry.get("kernel") == name and entry.get("target") == wanted and "specialisation" in entry:
                found.append(entry["specialisation"])
    return found
