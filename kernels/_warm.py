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

**Bundles.** `gdn-tune warmup --bundle DIR` also writes the binaries, their entries and Triton's C
launchers into DIR, a folder a container image can bake in or a deployment can ship; a process with
`GDN_TUNE_BINARY_DIR=DIR` loads from it whatever its own cache lacks. A bundle's entries are named
after a fingerprint that holds across machines (the Triton wheel's RECORD: a sha256 of every file pip
installed, libtriton and the bundled ptxas among them; where Triton was not installed from a wheel,
the local one above), and its manifest is checked once per process against this one: Triton version,
fingerprint, target architecture, and a CUDA driver at least as new as the bundle's ptxas (major
version: a driver loads cubins of its own CUDA major version and older). A bundle that fails a check
is ignored with one warning naming what differs; a binary of another Triton, toolchain or GPU is
never loaded.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import json
import os
import shutil
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import triton
from triton import knobs

from ._files import write_text_atomically

FOLDER = "gdn_kernels-warm"  # inside Triton's cache folder, and inside a bundle
ENV_BINARY_DIR = "GDN_TUNE_BINARY_DIR"
BUNDLE_FORMAT = 1
MANIFEST = "manifest.json"
MODULES = "modules"  # a bundle's C modules (launchers, driver utilities), by Triton's cache key

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


def _file_stamp(path: Path, with_time: bool = True) -> str:
    try:
        stat = path.stat()
    except OSError:
        return "-"
    return f"{stat.st_size}:{stat.st_mtime_ns}" if with_time else str(stat.st_size)


def _sources_and_environment() -> bytes:
    """This package's sources and the environment that changes binaries: both fingerprints hold them."""
    from triton.runtime.jit import get_cache_invalidating_env_vars

    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    digest.update(repr([(name, os.environ.get(name)) for name in _TOOLCHAIN_ENV]).encode())
    digest.update(repr(sorted(get_cache_invalidating_env_vars().items())).encode())
    return digest.digest()


def _installation_stamps(with_time: bool) -> str:
    """libtriton and the bundled ptxas by size (and modification time: a rebuild changes it)."""
    files = (*_TRITON_DIR.glob("_C/libtriton*"), _PTXAS)
    return "|".join(f"{path.name}={_file_stamp(path, with_time)}" for path in files)


def _fingerprint_now() -> str:
    """What a binary depends on besides the launch: the kernels' sources (as this process imported
    them: computed at import), Triton's version and installation (libtriton and the bundled ptxas, by
    size and modification time: a rebuild changes them), the toolchain's environment and Triton's
    cache-invalidating variables (TRITON_DEFAULT_FP_FUSION, ...). About 1 ms."""
    digest = hashlib.sha256(f"{triton.__version__}|{_TRITON_DIR}".encode())
    digest.update(_installation_stamps(with_time=True).encode())
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


def _specialization_data(kernel: Any, compiled: Any, key: str) -> str | None:
    """Triton's own description of the launch (`serialize_specialization_data`, what
    `JITFunction.preload` reads): signature, constexprs, attributes, options and the in-memory key."""
    try:
        from triton.compiler import make_backend
        from triton.runtime.jit import get_full_name, serialize_specialization_data

        src = compiled.src
        options = make_backend(compiled.metadata.target).parse_options(compiled.metadata._asdict())
        return serialize_specialization_data(
            get_full_name(kernel.fn), src.signature, src.constants, src.attrs, options, key
        )
    except Exception:  # an entry without it still serves first launches; only preload skips it
        return None


def _entry(kernel: Any, compiled: Any, target: Any, files: list[Path], key: str) -> dict[str, Any]:
    from ._guard import specialisation_of_compiled

    return {
        "key": key,
        "specialization_data": _specialization_data(kernel, compiled, key),
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
    entry = _entry(kernel, compiled, target, _launch_files(compiled), key)
    # A reader sees the whole entry or none.
    write_text_atomically(
        _entry_path(Path(knobs.cache.dir), _FINGERPRINT, kernel, target, key), json.dumps(entry)
    )
    return True


def _load(kernel: Any, key: str, compile: dict[str, Any]) -> bool:
    """Put the warm binary of this launch into the kernel's in-memory cache, from Triton's cache folder
    or else the bundle; False when neither has it."""
    cache, _, target, _, _ = kernel.device_caches[compile["device"]]
    roots = [(Path(knobs.cache.dir), _FINGERPRINT)]
    bundle = _open_bundle(target)
    if bundle is not None:
        roots.append(bundle)
    for root, fingerprint in roots:
        try:
            entry = json.loads(_entry_path(root, fingerprint, kernel, target, key).read_text())
            folder = root / entry["folder"]
            group = {name: str(folder / name) for name in entry["files"]}
            if not all(os.path.exists(p) for p in group.values()):
                continue
            src = kernel.ASTSource(kernel, compile["signature"], compile["constants"], compile["configs"][0])
            compiled = kernel.CompiledKernel(src, group, entry["hash"])
        except Exception:  # no entry, a damaged or foreign one: the next root, then Triton's own path
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


def load_warm(kernel: Any, watch: Any = None, defer: bool = False, **run_kwargs: Any) -> bool:
    """Before the first launch of a specialisation: bind the arguments as the launch will and load its
    warm binary if there is one (else Triton compiles or loads it here, as the launch would have).
    With `defer`, a launch without a warm binary is left alone instead (nothing compiled or loaded)
    and False returned: the caller readies it with others (`_launch.compile_ahead`). True otherwise.

    `watch(how, compile)`, when given (the compile guard), hears how the binary is reached before
    Triton compiles anything: "warm", "cached" (Triton's disk cache), "compile", or "hidden" (another
    jit_cache_hook decides); an exception it raises stops the launch."""
    always = knobs.compilation.always_compile  # TRITON_ALWAYS_COMPILE: the user wants Triton to compile
    if always and watch is None:
        return True
    owner = threading.get_ident()
    deferred = False

    def hook(*, key: str, fn: Any, compile: dict[str, Any], is_manual_warmup: bool, **_: Any) -> bool:
        nonlocal deferred
        # Only this thread's warmup call: answering True to a real launch would skip that launch.
        if not (is_manual_warmup and fn.jit_function is kernel and threading.get_ident() == owner):
            return False
        if not always and _load(kernel, key, compile):
            if watch is not None:
                watch("warm", compile)
            return True
        if watch is not None:
            watch("compile" if always or not _in_triton_cache(kernel, compile) else "cached", compile)
        if defer and not always:
            deferred = True
            return True  # skip: no compile now
        return False

    with _cache_hook(hook) as installed:
        if not installed:  # someone else decides about compiles
            if watch is not None:
                watch("hidden", None)
            return True
        kernel.warmup(grid=(1,), **run_kwargs)
    return not deferred


@contextlib.contextmanager
def _cache_hook(hook: Any) -> Any:
    """Within the block, `hook` is Triton's process-wide jit_cache_hook (one at a time: `_lock`);
    yields False, installing nothing, where another hook is installed already."""
    with _lock:
        if knobs.runtime.jit_cache_hook is not None:
            yield False
            return
        knobs.runtime.jit_cache_hook = hook
        try:
            yield True
        finally:
            if knobs.runtime.jit_cache_hook is hook:
                knobs.runtime.jit_cache_hook = None


def _kernel_named(name: str) -> Any:
    """The JITFunction an entry names (`module.qualname`), from this package's modules only."""
    import importlib

    from triton.runtime.jit import JITFunction

    module, _, qualname = name.rpartition(".")
    if not module.startswith(__package__ + "."):
        return None
    try:
        kernel = getattr(importlib.import_module(module), qualname)
    except (ImportError, AttributeError):
        return None
    return kernel if isinstance(kernel, JITFunction) else None


def preload_warm(load_modules: bool = True) -> tuple[int, int, set[Any]]:
    """Load every warm binary that Triton's cache folder and the bundle hold for this process (its
    fingerprint) and the current device's target into the kernels' in-memory caches, with the
    binary loaded on the device and its C launcher (`load_modules`; False under the compile-only
    driver, which has no device): what each first launch would otherwise do in turn. Never compiles.
    Returns (binaries loaded, entries skipped: another target or fingerprint, or unreadable, the
    kernels loaded)."""
    from triton.runtime.driver import driver

    device = driver.active.get_current_device()
    target = driver.active.get_current_target()
    roots = [(Path(knobs.cache.dir), _FINGERPRINT)]
    bundle = _open_bundle(target)
    if bundle is not None:
        roots.append(bundle)
    loaded = skipped = 0
    kernels: set[Any] = set()
    for root, fingerprint in roots:
        for path in sorted((root / FOLDER).glob("*.json")):
            try:
                entry = json.loads(path.read_text())
                key, data = entry["key"], entry["specialization_data"]
                kernel = _kernel_named(entry["kernel"]) if entry["target"] == repr(target) else None
            except (OSError, ValueError, KeyError, TypeError):
                kernel = None
            # The entry's name holds the fingerprint: an entry of other sources or another Triton is
            # another file.
            if kernel is None or not data or _entry_path(root, fingerprint, kernel, target, key) != path:
                skipped += 1
                continue
            cache = kernel.device_caches[device][0]
            if key not in cache and not _preload_one(kernel, data):
                skipped += 1
                continue
            if load_modules:  # on failure its first launch loads it, and reports what fails, itself
                with contextlib.suppress(Exception):
                    cache[key]._init_handles()
            loaded += 1
            kernels.add(kernel)
    return loaded, skipped, kernels


def _preload_one(kernel: Any, specialization_data: str) -> bool:
    """Put one warm binary into `kernel`'s in-memory cache through Triton's `preload`, whose compile
    this hook answers from the entry (or skips: a preload never compiles)."""
    found = False
    owner = threading.get_ident()

    def hook(*, key: str, fn: Any, compile: dict[str, Any], is_manual_warmup: bool, **_: Any) -> bool:
        nonlocal found
        # Only this thread's preload: another thread's launch meanwhile takes Triton's own path.
        if not (is_manual_warmup and fn.jit_function is kernel and threading.get_ident() == owner):
            return False
        found = _load(kernel, key, compile)
        return True  # loaded, or skipped: never a compile

    with _cache_hook(hook) as installed:
        if not installed:
            return False
        try:
            kernel.preload(specialization_data)
        except Exception:
            return False
    return found


def warm_specialisations(kernel: Any, device: Any) -> list[dict[str, str]]:
    """The specialisations of `kernel` that warm entries (cache folder and bundle) hold for the target
    of `device`, as the compile guard describes them. Reads every entry: for error messages only."""
    _, _, target, _, _ = kernel.device_caches[device]
    name, wanted = f"{kernel.fn.__module__}.{kernel.fn.__qualname__}", repr(target)
    roots = [Path(knobs.cache.dir)]
    bundle = _open_bundle(target)
    if bundle is not None:
        roots.append(bundle[0])
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


# --------------------------------------------------------------------------------------------------
# Bundles


@functools.cache
def _triton_installation() -> str:
    """Triton's installation by content where pip recorded it (the RECORD of its wheel, which holds a
    sha256 of each file), else by the local stamps (a bundle then only matches this installation)."""
    from importlib import metadata

    for name in ("triton", "pytorch-triton", "pytorch-triton-rocm"):
        try:
            dist = metadata.distribution(name)
            record = dist.read_text("RECORD")
            same = (
                Path(str(dist.locate_file("triton/__init__.py"))).resolve() == Path(triton.__file__).resolve()
            )
        except (metadata.PackageNotFoundError, OSError):
            continue
        if record and same:
            # The sizes too: a libtriton rebuilt in place leaves RECORD as it was.
            digest = hashlib.sha256(record.encode() + _installation_stamps(with_time=False).encode())
            return f"wheel {name} {digest.hexdigest()}"
    return f"local {hashlib.sha256((str(_TRITON_DIR) + _installation_stamps(True)).encode()).hexdigest()}"


def _ptxas_version(arch: int) -> str:
    from triton.backends.nvidia.compiler import get_ptxas_version

    return get_ptxas_version(arch).strip().splitlines()[-1]


@functools.cache
def bundle_identity(arch: int) -> dict[str, Any]:
    """What a bundle of binaries for compute capability `arch` records and is checked against (once per
    process: reading RECORD is a few ms)."""
    installation = _triton_installation()
    sources = _SOURCES_AND_ENVIRONMENT.hex()
    # An overriding ptxas (TRITON_PTXAS_PATH) is outside the wheel: its version string stands for it.
    ptxas = _ptxas_version(arch) if any(os.environ.get(n) for n in _TOOLCHAIN_ENV[:2]) else ""
    fingerprint = hashlib.sha256(
        f"bundle {BUNDLE_FORMAT}|{triton.__version__}|{installation}|{sources}|{ptxas}".encode()
    ).hexdigest()
    return {
        "format": BUNDLE_FORMAT,
        "fingerprint": fingerprint,
        "triton": triton.__version__,
        "installation": installation,
        "sources_and_environment": sources,
    }


def _cuda_major(ptxas: str) -> int | None:
    """12 for "Build cuda_12.8.r12.8/compiler.35583870_0" or "Cuda compilation tools, release 12.8"."""
    for marker in ("cuda_", "release "):
        if marker in ptxas:
            head = ptxas.split(marker, 1)[1].split(".", 1)[0]
            if head.isdigit():
                return int(head)
    return None


def driver_cuda_version() -> int | None:
    """The CUDA driver's version (12080 for 12.8), or None without a driver."""
    import ctypes

    try:
        version = ctypes.c_int()
        if ctypes.CDLL("libcuda.so.1").cuDriverGetVersion(ctypes.byref(version)) == 0:
            return version.value
    except (OSError, AttributeError):
        pass
    return None


def bundle_refusal(manifest: Any, here: dict[str, Any], arch: int, driver: int | None) -> str | None:
    """Why a bundle with `manifest` must not be loaded by a process whose identity is `here`, for
    compute capability `arch` and CUDA driver version `driver`; None when it may."""
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        return f"not a bundle of format {BUNDLE_FORMAT} (no or another {MANIFEST})"
    if manifest.get("triton") != here["triton"]:
        return f"built with Triton {manifest.get('triton')}, this process runs Triton {here['triton']}"
    if manifest.get("arch") != arch:
        return f"built for compute capability {manifest.get('arch')}, this GPU is {arch}"
    if manifest.get("fingerprint") != here["fingerprint"]:
        differ = [
            what
            for what, field in (
                ("the Triton installation", "installation"),
                ("gdn_kernels' sources or the toolchain environment", "sources_and_environment"),
            )
            if manifest.get(field) != here[field]
        ]
        return f"its fingerprint differs from this process's in {'; '.join(differ) or 'the overriding ptxas'}"
    needed = _cuda_major(str(manifest.get("ptxas", "")))
    if driver is None:
        return "no CUDA driver found to check the bundle's binaries against"
    if needed is None or driver // 1000 < needed:
        return f"its binaries come from ptxas of CUDA {needed}; the driver is CUDA {driver // 1000}.{driver % 1000 // 10}"
    return None


_bundles: dict[int, tuple[Path, str] | None] = {}


def _read_manifest(root: str) -> Any:
    try:
        return json.loads((Path(root) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def _open_bundle(target: Any) -> tuple[Path, str] | None:
    """(folder, fingerprint) of $GDN_TUNE_BINARY_DIR's bundle where it may serve `target`, checked once
    per process and architecture."""
    arch = getattr(target, "arch", None)
    if arch in _bundles:
        return _bundles[arch]
    root = os.environ.get(ENV_BINARY_DIR, "").strip()
    opened = None
    if root and isinstance(arch, int):
        here = bundle_identity(arch)
        why = bundle_refusal(_read_manifest(root), here, arch, driver_cuda_version())
        if why is None:
            opened = (Path(root), here["fingerprint"])
        else:
            warnings.warn(f"{ENV_BINARY_DIR}={root} is not used: {why}", RuntimeWarning, stacklevel=2)
    _bundles[arch] = opened
    return opened


def _seed_modules() -> None:
    """Copy the bundle's C modules (a launcher per kernel signature, the driver's utilities) into
    Triton's cache, where a process's first CUDA use and first launches look for them; else each is a
    C compile, about 0.3 s. At import: the driver's utilities are built when Triton first meets the GPU,
    before any kernel's binary is looked up. Triton's cache names each module after a hash of its C
    source and the platform, and the file after the Python ABI, so a copy can only stand in for the
    very module Triton would build; still, only a bundle of this Triton installation is used."""
    root = os.environ.get(ENV_BINARY_DIR, "").strip()
    manifest = _read_manifest(root) if root else None
    if not isinstance(manifest, dict) or not (root_modules := Path(root) / MODULES).is_dir():
        return
    here = bundle_identity(0)
    if any(manifest.get(field) != here[field] for field in ("format", "triton", "installation")):
        return  # _open_bundle says why at the first launch
    from triton.runtime.cache import get_cache_manager

    for module in root_modules.glob("*/*"):
        # The folder is Triton's name for the module's cache entry: the base32 of the hex key that
        # get_cache_manager takes (and encodes again).
        name = module.parent.name
        try:
            key = base64.b32decode(name + "=" * (-len(name) % 8)).hex()
        except ValueError:
            continue  # not a folder Triton would have made: Triton builds that module itself
        manager = get_cache_manager(key)
        if manager.get_file(module.name) is None:
            try:
                manager.put(module.read_bytes(), module.name, binary=True)
            except OSError:  # a read-only cache: Triton builds them as it would have
                return


def add_to_bundle(root: Path, kernel: Any, compiled: Any, modules: list[Path]) -> bool:
    """Copy `compiled` (which `kernel` compiled in this process) and the C `modules` it launches with
    into the bundle at `root`, with an entry named by the bundle's fingerprint."""
    found = _launch_key(kernel, compiled)
    if found is None:
        return False
    key, target = found
    files = _launch_files(compiled)
    folder = root / files[0].parent.name
    folder.mkdir(parents=True, exist_ok=True)
    for path in files:
        _copy_atomically(path, folder / path.name)
    for module in modules:  # Triton's cache keeps each in a folder named after its key
        _copy_atomically(module, root / MODULES / module.parent.name / module.name)
    entry = _entry(kernel, compiled, target, files, key)
    fingerprint = bundle_identity(target.arch)["fingerprint"]
    write_text_atomically(_entry_path(root, fingerprint, kernel, target, key), json.dumps(entry))
    return True


def _copy_atomically(source: Path, destination: Path) -> None:
    if destination.exists():
        return
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(f".{destination.name}.{os.getpid()}.tmp")
    shutil.copyfile(source, partial)
    os.replace(partial, destination)


def write_bundle_manifest(root: Path, arch: int, variants: int, launchers: int) -> dict[str, Any]:
    """Close a bundle: the manifest that a loading process checks (written last: a bundle without one
    is refused, so a warmup that stopped half-way leaves nothing loadable)."""
    manifest = {
        **bundle_identity(arch),
        "arch": arch,
        "ptxas": _ptxas_version(arch),
        "variants": variants,
        "c_modules": launchers,
        "made": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_text_atomically(root / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return manifest


if os.environ.get(ENV_BINARY_DIR):
    try:
        _seed_modules()
    except Exception as error:  # a damaged bundle costs its C modules' compiles, never the import
        warnings.warn(f"{ENV_BINARY_DIR}: C modules not seeded: {error}", RuntimeWarning, stacklevel=1)
