"""Kernels that `gdn-tune warmup` compiled, loaded at their first launch without Triton's compile path.

After a warmup, Triton's on-disk cache holds every binary a deployment launches, but a fresh process
still reaches each one through `compile()`, whose cache key starts with `triton_key()`: a hash of
Triton's own installation (its Python files and the 500 MB libtriton), computed once per process, about
0.35 s on the H200 host, before the first kernel can be found. So the warmup also writes, for each
binary, a small entry named after what a launch knows without that hash: this package's sources, the
Triton version and its cache-invalidating environment variables, the kernel, the target, and Triton's
in-memory cache key of the launch (argument specialisation, constexprs, options). A first launch looks
its entry up and hands Triton the binary as `compile()` would on a cache hit, through the JIT's
`jit_cache_hook` (called before a compile; answering True skips it). Anything unexpected (no entry, a
file gone, another hook installed) leaves the launch to Triton's own path: a warm entry can make the
first launch faster, never different.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import triton
from triton import knobs

FOLDER = "gdn_kernels-warm"  # inside Triton's cache folder


@functools.cache
def _fingerprint() -> str:
    """What a binary depends on besides the launch: the kernels' sources and Triton's version and
    cache-invalidating environment (TRITON_DEFAULT_FP_FUSION, ...). Read once per process (~1 ms)."""
    from triton.runtime.jit import get_cache_invalidating_env_vars

    digest = hashlib.sha256(f"{triton.__version__}|{triton.__file__}".encode())
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    digest.update(repr(sorted(get_cache_invalidating_env_vars().items())).encode())
    return digest.hexdigest()


def _entry_path(kernel: Any, target: Any, key: str) -> Path:
    name = f"{_fingerprint()}|{kernel.fn.__module__}.{kernel.fn.__qualname__}|{target!r}|{key}"
    return Path(knobs.cache.dir) / FOLDER / f"{hashlib.sha256(name.encode()).hexdigest()}.json"


def remember(kernel: Any, compiled: Any) -> bool:
    """Write the warm entry of `compiled`, which `kernel` compiled in this process; False when the
    kernel's in-memory cache does not hold it (nothing to name it by)."""
    for cache, _, target, _, _ in kernel.device_caches.values():
        key = next((k for k, v in cache.items() if v is compiled), None)
        if key is None:
            continue
        path = _entry_path(kernel, target, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        paths = [Path(p) for p in compiled.metadata_group.values()]
        # The folder Triton's cache manager keeps them in (named after the hash, encoded), and the files.
        entry = {
            "hash": compiled.hash,
            "folder": paths[0].parent.name,
            "files": sorted(p.name for p in paths),
        }
        fd, temp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(entry, f)
        os.replace(temp, path)  # a reader sees the whole entry or none
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
    except (OSError, ValueError, KeyError, TypeError):
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
    previous = knobs.runtime.jit_cache_hook
    if previous is not None:  # someone else decides about compiles: leave it to them
        return

    def hook(*, key: str, fn: Any, compile: dict[str, Any], **_: Any) -> bool:
        return fn.jit_function is kernel and _load(kernel, key, compile)

    knobs.runtime.jit_cache_hook = hook
    try:
        kernel.warmup(grid=(1,), **run_kwargs)
    finally:
        knobs.runtime.jit_cache_hook = previous
