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


def _file_stamp(path: Path) -> str:
    try:
        stat = path.stat()
    except OSError:
        return "-"
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def _fingerprint_now() -> str:
    """What a binary depends on besides the launch: the kernels' sources (as this process imported
    them: computed at import), Triton's version and installation (libtriton and the bundled ptxas, by
    size and modification time: a rebuild changes them), the toolchain's environment and Triton's
    cache-invalidating variables (TRITON_DEFAULT_FP_FUSION, ...). About 1 ms."""
    from triton.runtime.jit import get_cache_invalidating_env_vars

    triton_dir = Path(triton.__file__).parent
    digest = hashlib.sha256(f"{triton.__version__}|{triton_dir}".encode())
    for path in (*triton_dir.glob("_C/libtriton*"), triton_dir / "backends" / "nvidia" / "bin" / "ptxas"):
        digest.update(f"{path.name}={_file_stamp(path)}".encode())
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    digest.update(repr([(name, os.environ.get(name)) for name in _TOOLCHAIN_ENV]).encode())
    digest.update(repr(sorted(get_cache_invalidating_env_vars().items())).encode())
    return digest.hexdigest()


_FINGERPRINT = _fingerprint_now()
# One warm load at a time: the hook below is process-wide while it is installed.
_lock = threading.Lock()


def _entry_path(kernel: Any, target: Any, key: str) -> Path:
    name = f"{_FINGERPRINT}|{kernel.fn.__module__}.{kernel.fn.__qualname__}|{target!r}|{key}"
    return Path(knobs.cache.dir) / FOLDER / f"{hashlib.sha256(name.encode()).hexdigest()}.json"


def remember(kernel: Any, compiled: Any) -> bool:
    """Write the warm entry of `compiled`, which `kernel` compiled in this process; False when the
    kernel's in-memory cache does not hold it (nothing to name it by)."""
    for cache, _, target, _, _ in kernel.device_caches.values():
        key = next((k for k, v in cache.items() if v is compiled), None)
        if key is None:
            continue
        path = _entry_path(kernel, target, key)
        paths = [Path(p) for p in compiled.metadata_group.values()]
        # The folder Triton's cache manager keeps them in (named after the hash, encoded), and the files.
        entry = {
            "hash": compiled.hash,
            "folder": paths[0].parent.name,
            "files": sorted(p.name for p in paths),
        }
        write_text_atomically(path, json.dumps(entry))  # a reader sees the whole entry or none
        return True
    return False


def _load(kernel: Any, key: str, compile: dict[str, Any]) -> bool:
    """Put the warm binary of this launch into the kernel's in-memory cache; False when there is none."""
    cache, _, target, _, _ = kernel.device_caches[compile["device"]]
    try:
        entry = json.loads(_entry_path(kernel, target, key).read_text())
        folder = Path(knobs.cache.dir) / entry["folder"]
        group = {name: str(folder / name) for name in entry["files"]}
        if not all(os.path.exists(p) for p in group.values()):
            return False
        src = kernel.ASTSource(kernel, compile["signature"], compile["constants"], compile["configs"][0])
        compiled = kernel.CompiledKernel(src, group, entry["hash"])
    except Exception:  # a damaged or foreign entry: Triton's own path decides
        return False
    cache[key] = compiled
    listener = knobs.compilation.listener
    if listener is not None:  # as Triton reports a disk-cache hit
        listener(
            src=src, metadata=compiled.metadata._asdict(), metadata_group=group, times=None, cache_hit=True
        )
    return True


def load_warm(kernel: Any, **run_kwargs: Any) -> None:
    """Before the first launch of a specialisation: bind the arguments as the launch will and load its
    warm binary if there is one (else Triton compiles or loads it here, as the launch would have)."""
    if knobs.compilation.always_compile:  # TRITON_ALWAYS_COMPILE: the user wants Triton to compile
        return
    owner = threading.get_ident()

    def hook(*, key: str, fn: Any, compile: dict[str, Any], is_manual_warmup: bool, **_: Any) -> bool:
        # Only this thread's warmup call: answering True to a real launch would skip that launch.
        mine = is_manual_warmup and fn.jit_function is kernel and threading.get_ident() == owner
        return mine and _load(kernel, key, compile)

    with _lock:
        if knobs.runtime.jit_cache_hook is not None:  # someone else decides about compiles
            return
        knobs.runtime.jit_cache_hook = hook
        try:
            kernel.warmup(grid=(1,), **run_kwargs)
        finally:
            if knobs.runtime.jit_cache_hook is hook:
                knobs.runtime.jit_cache_hook = None
