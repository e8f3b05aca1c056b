"""Run-time config resolution: (kernel, device, key) → Config, cached, never benchmarked.

Tables are JSON files, `<root>/<arch>/[<device folder>/]<kernel>.json` (docs/tables.md). Lookup order
(DESIGN.md "The lookup key"): roots `$GDN_TUNE_CONFIG_DIR` then the shipped tables; within a root the
device folder (`sm90/NVIDIA_H200/`) then the arch folder. A key resolves to the exact entry, else the
entry of the nearest token bucket of the same shape, else the kernel's default. Each answer is cached
per (kernel, device, key), so a steady-state call costs one dict lookup.

Files are data: parsed with `json`, every field validated, nothing executed. A bad file or entry is
skipped with one `TableWarning` naming file, entry and field (its valid entries are still used), or
raises `TableError` under `GDN_TUNE_STRICT=1`. A config the current kernel rejects is never launched.
"""

from __future__ import annotations

import functools
import json
import math
import os
import threading
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._registry import KERNEL_NAMES
from ._spec import Config, KernelSpec, Key, declared_kernel_names
from ._targets import ARCHS, arch_for_capability

if TYPE_CHECKING:
    import torch


SCHEMA_VERSION = 1
ENV_ARCH = "GDN_TUNE_ARCH"
ENV_CONFIG_DIR = "GDN_TUNE_CONFIG_DIR"
ENV_STRICT = "GDN_TUNE_STRICT"

TOP_LEVEL_FIELDS = ("schema", "kernel", "arch", "made_with", "entries")
ENTRY_FIELDS = ("key", "config", "time_ms", "default_time_ms")
# Provenance every table records; other made_with fields may be added (scalars only).
MADE_WITH_FIELDS = ("gpu", "compute_capability", "triton", "torch", "cuda", "kernel_hash", "date")
# Optional provenance the tuner writes: whether the times are the interpreter's CPU wall clock (a file
# without it is read as made on the GPU it names), and the sweep that made the table.
MADE_WITH_OPTIONAL = {"interpret": bool, "sweep_id": int}
# Key fields that hold a count (heads, head dims, chunk size, token or sequence bucket): positive ints.
COUNT_KEY_FIELDS = frozenset({"B", "H", "HV", "K", "V", "BT", "T", "N"})
# Key fields that are buckets (powers of two); "nearest bucket" moves along these and keeps the rest.
BUCKET_FIELDS = ("T", "N")


class TableError(ValueError):
    """A table is missing or malformed and GDN_TUNE_STRICT=1 asks for an error instead of a warning."""


class TableWarning(UserWarning):
    """A table file or entry was skipped (or an arch has no tables); the kernel default is used instead."""


@functools.lru_cache(maxsize=256)  # a table repeats its few dtype names in every entry
def _is_safe_name(name: str, extra: str = "_") -> bool:
    return bool(name) and all((c.isascii() and c.isalnum()) or c in extra for c in name)


def device_folder_name(device_name: str) -> str:
    """The folder of one GPU model's tables: its device name with spaces as "_" ("NVIDIA_H200").

    Only ASCII letters, digits, "_", "-" and "." are allowed, and not "." or ".." alone, so a device
    name can never point the lookup outside the arch folder.
    """
    folder = device_name.strip().replace(" ", "_")
    if folder in (".", "..") or not _is_safe_name(folder, "_-."):
        raise ValueError(
            f"device name {device_name!r} cannot name a table folder (ASCII letters, digits, '_-.' only)"
        )
    return folder


@dataclass(frozen=True)
class TableEntry:
    """One row of a table: the config chosen for a key, with its measured time and the default's."""

    key: Key
    config: Config
    time_ms: float | None = None
    default_time_ms: float | None = None


# --------------------------------------------------------------------------------------------------
# Parsing and validation (shared with `gdn-tune check`, so the tuner checks what the runtime accepts)


@dataclass(frozen=True)
class TableProblem:
    """What is wrong, where: file, entry index (None for the file itself) and field ("config.BV")."""

    file: str
    entry: int | None
    field: str | None
    message: str

    def __str__(self) -> str:
        where = [self.file]
        if self.entry is not None:
            where.append(f"entry {self.entry}")
        if self.field is not None:
            where.append(f"field {self.field!r}")
        return f"{', '.join(where)}: {self.message}"


@dataclass(frozen=True)
class Table:
    """A parsed table: its valid entries by key, with each entry's index in the file."""

    file: str
    kernel: str
    arch: str
    made_with: Mapping[str, Any]
    entries: Mapping[Key, tuple[int, TableEntry]]

    @property
    def kernel_hash(self) -> str:
        return str(self.made_with["kernel_hash"])


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _parse_key(raw: object, spec: KernelSpec, bad: Any) -> Key | None:
    if not isinstance(raw, dict):
        bad("key", f"must be an object, got {_type_name(raw)}")
        return None
    ok = True
    for name in raw:
        if name not in spec.key_fields:
            ok = bad(f"key.{name}", f"unknown key field (known: {', '.join(spec.key_fields)})")
    for name in spec.key_fields:
        if name not in raw:
            ok = bad(f"key.{name}", "missing")
            continue
        value = raw[name]
        if name in COUNT_KEY_FIELDS:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                ok = bad(f"key.{name}", f"must be a positive integer, got {value!r}")
            elif name in BUCKET_FIELDS and value & (value - 1):
                ok = bad(f"key.{name}", f"a bucket must be a power of two, got {value}")
        elif "dtype" in name:
            if not isinstance(value, str) or not _is_safe_name(value):
                ok = bad(f"key.{name}", f"must be a dtype name such as 'bfloat16', got {value!r}")
        elif not isinstance(value, int | str) or (isinstance(value, str) and not _is_safe_name(value)):
            ok = bad(f"key.{name}", f"must be an integer, a boolean or a name, got {value!r}")
    return spec.key(**raw) if ok else None


def _parse_config(raw: object, key: Key | None, spec: KernelSpec, bad: Any) -> Config | None:
    if not isinstance(raw, dict):
        bad("config", f"must be an object, got {_type_name(raw)}")
        return None
    ok = True
    for name in raw:
        if name not in spec.space.names:
            ok = bad(f"config.{name}", f"unknown parameter (known: {', '.join(spec.space.names)})")
    for param in spec.space.params:
        if param.name not in raw:
            ok = bad(f"config.{param.name}", "missing")
        elif (reason := param.accepts(raw[param.name])) is not None:
            ok = bad(f"config.{param.name}", reason)
    if not ok:
        return None
    config = Config.from_dict(raw)
    # The space's own verdict has the last word (constraints such as "BV divides V"), so whatever
    # this parser accepts, `spec.space.problems` accepts too.
    if key is not None and (problems := spec.space.problems(config, key)):
        bad("config", "; ".join(problems))
        return None
    return config


def _parse_time(raw: dict, name: str, bad: Any, required: bool) -> float | None:
    value = raw.get(name)
    if value is None and not required:
        return None
    if not _is_number(value) or not math.isfinite(value) or value <= 0:
        bad(name, f"must be a positive number of milliseconds, got {value!r}")
        return None
    return float(value)


def _parse_entry(raw: object, spec: KernelSpec, bad: Any) -> TableEntry | None:
    if not isinstance(raw, dict):
        bad(None, f"an entry must be an object, got {_type_name(raw)}")
        return None
    problems_before = bad.count
    for name in raw:
        if name not in ENTRY_FIELDS:
            bad(name, f"unknown field (known: {', '.join(ENTRY_FIELDS)})")
    for name in ENTRY_FIELDS:
        if name not in raw:
            bad(name, "missing")
    key = _parse_key(raw["key"], spec, bad) if "key" in raw else None
    config = _parse_config(raw["config"], key, spec, bad) if "config" in raw else None
    time_ms = _parse_time(raw, "time_ms", bad, required=True) if "time_ms" in raw else None
    default_ms = _parse_time(raw, "default_time_ms", bad, required=False)
    if bad.count > problems_before or key is None or config is None:
        return None
    return TableEntry(key, config, time_ms, default_ms)


class _Collector:
    """Collects problems for one place in a file; calling it records one and returns False."""

    def __init__(self, problems: list[TableProblem], file: str, entry: int | None) -> None:
        self.problems, self.file, self.entry, self.count = problems, file, entry, 0

    def __call__(self, field: str | None, message: str) -> bool:
        self.problems.append(TableProblem(self.file, self.entry, field, message))
        self.count += 1
        return False


def _check_made_with(raw: object, bad: _Collector) -> None:
    if not isinstance(raw, dict):
        bad("made_with", f"must be an object, got {_type_name(raw)}")
        return
    for name in MADE_WITH_FIELDS:
        if name not in raw:
            bad(f"made_with.{name}", "missing")
    for name, value in raw.items():
        where = f"made_with.{name}"
        if name == "cuda":
            if value is not None and not isinstance(value, str):
                bad(where, f"must be a version string or null, got {value!r}")
        elif name in MADE_WITH_FIELDS and not isinstance(value, str):
            bad(where, f"must be a string, got {value!r}")
        elif name in MADE_WITH_OPTIONAL:
            kind = MADE_WITH_OPTIONAL[name]
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                bad(where, f"must be a {'boolean' if kind is bool else 'whole number'}, got {value!r}")
        elif not (value is None or isinstance(value, str | int | float)):
            bad(where, f"must be a string, number, boolean or null, got {_type_name(value)}")
        elif name == "gpu":
            try:
                device_folder_name(value)
            except ValueError as e:
                bad(where, f"path-like or invalid GPU name: {e}")
        elif name == "compute_capability":
            major, _, minor = value.partition(".")
            if not (major.isdigit() and minor.isdigit()):
                bad(where, f"must look like '9.0', got {value!r}")
        elif name == "kernel_hash" and not (value and all(c in "0123456789abcdef" for c in value)):
            bad(where, f"must be a lowercase hex digest, got {value!r}")
        elif name == "date":
            try:
                datetime.fromisoformat(value)
            except ValueError:
                bad(where, f"must be an ISO date such as '2026-01-31', got {value!r}")


def parse_table(
    data: object,
    file: str,
    specs: Mapping[str, KernelSpec],
    expected_kernel: str | None = None,
    expected_arch: str | None = None,
) -> tuple[Table | None, list[TableProblem]]:
    """Validate a decoded JSON document. Returns the table (None when the file as a whole is bad)
    and every problem found; entries with problems are left out of the table."""
    problems: list[TableProblem] = []
    bad = _Collector(problems, file, None)
    if not isinstance(data, dict):
        bad(None, f"a table must be a JSON object, got {_type_name(data)}")
        return None, problems
    for name in data:
        if name not in TOP_LEVEL_FIELDS:
            bad(name, f"unknown field (known: {', '.join(TOP_LEVEL_FIELDS)})")
    for name in TOP_LEVEL_FIELDS:
        if name not in data:
            bad(name, "missing")
    schema = data.get("schema")
    if "schema" in data and (isinstance(schema, bool) or schema != SCHEMA_VERSION):
        bad("schema", f"unknown schema version {schema!r}; this gdn_kernels reads schema {SCHEMA_VERSION}")
    kernel = data.get("kernel")
    spec = None
    if "kernel" in data:
        if not isinstance(kernel, str) or not _is_safe_name(kernel):
            bad("kernel", f"path-like or invalid kernel name {kernel!r} (letters, digits, '_' only)")
        elif kernel not in specs:
            bad("kernel", f"unknown kernel {kernel!r} (known: {', '.join(sorted(specs))})")
        elif expected_kernel is not None and kernel != expected_kernel:
            bad("kernel", f"the file is named for {expected_kernel!r} but holds {kernel!r}")
        else:
            spec = specs[kernel]
    arch = data.get("arch")
    if "arch" in data:
        if arch not in ARCHS:
            bad("arch", f"unknown arch {arch!r} (known: {', '.join(ARCHS)})")
        elif expected_arch is not None and arch != expected_arch:
            bad("arch", f"the file lies in the {expected_arch} folder but is for {arch}")
    if "made_with" in data:
        _check_made_with(data["made_with"], bad)
    raw_entries = data.get("entries")
    if "entries" in data and not isinstance(raw_entries, list):
        bad("entries", f"must be a list, got {_type_name(raw_entries)}")
    if problems or spec is None or not isinstance(raw_entries, list):
        return None, problems

    entries: dict[Key, tuple[int, TableEntry]] = {}
    for index, raw in enumerate(raw_entries):
        entry_bad = _Collector(problems, file, index)
        entry = _parse_entry(raw, spec, entry_bad)
        if entry is None:
            continue
        if entry.key in entries:
            entry_bad("key", f"duplicate of entry {entries[entry.key][0]} ({entry.key.label})")
            continue
        entries[entry.key] = (index, entry)
    return Table(file, spec.name, str(arch), dict(data["made_with"]), entries), problems


def load_table(
    path: Path,
    specs: Mapping[str, KernelSpec],
    expected_arch: str | None = None,
) -> tuple[Table | None, list[TableProblem]]:
    """Read and validate one table file; the kernel it must hold is named by the file (`<kernel>.json`)."""
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text)
    except (OSError, UnicodeDecodeError, RecursionError) as e:
        return None, [TableProblem(file, None, None, f"cannot read: {e}")]
    except json.JSONDecodeError as e:
        return None, [TableProblem(file, None, None, f"invalid JSON: {e}")]
    return parse_table(data, file, specs, expected_kernel=path.stem, expected_arch=expected_arch)


# --------------------------------------------------------------------------------------------------
# Where the tables for a device are


def strict_mode() -> bool:
    return os.environ.get(ENV_STRICT, "").strip().lower() in ("1", "true", "yes", "on")


def shipped_tables_dir() -> Path:
    """The tuned_configs folder shipped in the wheel (or beside the sources in a checkout)."""
    packaged = Path(__file__).resolve().parent / "tuned_configs"
    if packaged.is_dir():
        return packaged
    try:
        from importlib.resources import files

        return Path(str(files("gdn_kernels.tuned_configs")))
    except (ModuleNotFoundError, TypeError):
        return Path(__file__).resolve().parent.parent / "tuned_configs"


def shipped_archs() -> set[str]:
    """Architectures with at least one shipped table."""
    root = shipped_tables_dir()
    return {p.parent.name for p in root.glob("*/*.json")} | {
        p.parent.parent.name for p in root.glob("*/*/*.json")
    }


def table_roots() -> list[Path]:
    """Folders searched for tables, first match first: `$GDN_TUNE_CONFIG_DIR`, then the shipped tables."""
    roots = []
    if override := os.environ.get(ENV_CONFIG_DIR):
        roots.append(Path(override))
    roots.append(shipped_tables_dir())
    return roots


@dataclass(frozen=True)
class TablePlace:
    """Where a device's tables are: arch folder and device folder, or why there are none."""

    arch: str | None
    device_folder: str | None
    why_none: str = ""
    warn: bool = False  # whether "no tables" deserves a warning (an unknown GPU) or not (the CPU)


def _device_name(device: torch.device) -> str | None:
    if device.type != "cuda":
        return None
    import torch

    return torch.cuda.get_device_name(device)


def locate_tables(device: torch.device) -> TablePlace:
    """Where `device`'s tables are, found afresh (the resolution caches its answer per device)."""
    name = _device_name(device)
    folder = None
    if name is not None:
        try:
            folder = device_folder_name(name)
        except ValueError as e:
            _problem(f"device folder skipped: {e}")
    if arch := os.environ.get(ENV_ARCH, "").strip():
        if arch not in ARCHS:
            return TablePlace(
                None, None, f"{ENV_ARCH}={arch!r} is not a known arch ({', '.join(ARCHS)})", True
            )
        return TablePlace(arch, folder)
    if device.type != "cuda":
        # The interpreter (TRITON_INTERPRET=1) on CPU tensors: no GPU, so no table applies.
        override = os.environ.get(ENV_CONFIG_DIR)
        if override and device.type != "meta":  # meta tensors only compile (warmup names their arch)
            why = (
                f"{ENV_CONFIG_DIR}={override} is ignored on a {device.type} device: tables are chosen by "
                f"GPU architecture and a {device.type} device has none; set {ENV_ARCH} (e.g. sm90) to use "
                f"that arch's tables"
            )
            return TablePlace(None, None, why, warn=True)
        return TablePlace(None, None, f"{device.type} device, {ENV_ARCH} not set")
    import torch

    capability = torch.cuda.get_device_capability(device)
    arch = arch_for_capability(capability)
    if arch is None:
        cc = f"{capability[0]}.{capability[1]}"
        return TablePlace(None, None, f"no tables are made for compute capability {cc} ({name})", True)
    return TablePlace(arch, folder)


# --------------------------------------------------------------------------------------------------
# Resolution and its caches


@dataclass(frozen=True)
class Resolution:
    """How one (kernel, device, key) was resolved: from which file and entry, or why by default."""

    kernel: str
    device: str
    key: Key
    config: Config
    source: str  # "exact", "nearest" or "default"
    file: str | None = None
    entry: int | None = None
    entry_key: Key | None = None  # the entry's own key; its bucket differs from `key` when "nearest"
    reason: str = ""

    def describe(self) -> str:
        head = f"{self.kernel} [{self.device}] {self.key.label}: {self.config.label}"
        if self.source == "default":
            return f"{head} <- default ({self.reason})"
        via = f" via {self.entry_key.label}" if self.source == "nearest" and self.entry_key else ""
        return f"{head} <- {self.source}{via}, {self.file} entry {self.entry}"


_ResolvedKey = tuple[str, Any, tuple[tuple[str, Any], ...]]  # (kernel, torch.device, key.items)
_resolved: dict[_ResolvedKey, Config] = {}
_resolutions: dict[_ResolvedKey, Resolution] = {}
_places: dict[tuple[str, int | None], TablePlace] = {}
_loaded: dict[tuple[str, str], Table | None] = {}  # (file, kernel) → table, read once per process
_found: dict[tuple[str, str | None, str | None], list[Table]] = {}  # (kernel, arch, device folder)
_warned: set[str] = set()
_scanned: set[Path] = set()  # folders whose files were checked against the known kernels
_lock = threading.RLock()


def _problem(message: str) -> None:
    """A table problem: an error under GDN_TUNE_STRICT=1, else one warning per process per message."""
    if strict_mode():
        raise TableError(message)
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, TableWarning, stacklevel=4)


def _table(path: Path, spec: KernelSpec, arch: str) -> Table | None:
    cache_key = (str(path), spec.name)
    if cache_key not in _loaded:
        table, problems = load_table(path, {spec.name: spec}, expected_arch=arch)
        if problems and strict_mode():
            raise TableError("\n".join(map(str, problems)))
        for problem in problems:
            skipped = "entry skipped" if problem.entry is not None else "file skipped"
            _problem(f"{problem} ({skipped})")
        _loaded[cache_key] = table
    return _loaded[cache_key]


def _tables_for(spec: KernelSpec, place: TablePlace) -> list[Table]:
    """The kernel's tables for a device, highest priority first; found and read once per process."""
    cache_key = (spec.name, place.arch, place.device_folder)
    if cache_key not in _found:
        _found[cache_key] = _find_tables(spec, place)
    return _found[cache_key]


def _find_tables(spec: KernelSpec, place: TablePlace) -> list[Table]:
    assert place.arch is not None
    tables = []
    arch_has_tables = False
    override = os.environ.get(ENV_CONFIG_DIR)
    if override and not Path(override).is_dir():
        _problem(f"{ENV_CONFIG_DIR}={override} is not a folder; only the shipped tables are searched")
    for root in table_roots():
        arch_dir = root / place.arch
        if not arch_dir.is_dir():
            continue
        arch_has_tables = arch_has_tables or any(arch_dir.glob("*.json")) or any(arch_dir.glob("*/*.json"))
        folders = [arch_dir / place.device_folder, arch_dir] if place.device_folder else [arch_dir]
        for folder in folders:
            _report_unknown_kernels(folder)
            path = folder / f"{spec.name}.json"
            if path.is_file() and (table := _table(path, spec, place.arch)) is not None:
                tables.append(table)
    if not arch_has_tables:
        roots = ", ".join(map(str, table_roots()))
        _problem(f"no tables for {place.arch} in {roots}: every kernel runs its default config")
    elif not tables and strict_mode() and not spec.table_optional:
        raise TableError(f"no valid table for kernel {spec.name} on {place.arch}")
    return tables


def _report_unknown_kernels(folder: Path) -> None:
    """A table file no kernel reads (`chunk_stat.json`, a kernel since renamed) is a problem: a forward
    call looks only for its own kernel's file and would never see it. Once per folder per process."""
    if folder in _scanned or not folder.is_dir():
        return
    # The registry's kernels (by name: their modules need not be imported) and any other spec this
    # process declared (tests, --extra-specs).
    known = set(KERNEL_NAMES) | declared_kernel_names()
    for path in sorted(folder.glob("*.json")):
        if path.stem not in known:
            _problem(
                f"{path}: no kernel is named {path.stem!r} (known: {', '.join(sorted(known))}): "
                f"the file is never read (file skipped)"
            )
    _scanned.add(folder)  # after the loop: in strict mode every call raises until the file is gone


def _bucket_distance(spec_buckets: tuple[str, ...], wanted: Key, found: Key) -> float:
    return sum(
        abs(math.log2(max(1, int(found[f]))) - math.log2(max(1, int(wanted[f])))) for f in spec_buckets
    )


def _resolve_from_tables(spec: KernelSpec, key: Key, tables: list[Table], device: str) -> Resolution | None:
    for table in tables:
        hit = table.entries.get(key)
        if hit is not None and not spec.space.problems(hit[1].config, key):
            index, entry = hit
            return Resolution(spec.name, device, key, entry.config, "exact", table.file, index, entry.key)
    buckets = tuple(f for f in spec.key_fields if f in BUCKET_FIELDS)
    if not buckets:
        return None
    shape = [(k, v) for k, v in key.items if k not in buckets]
    best: tuple[tuple[float, tuple[int, ...], int], Table, int, TableEntry] | None = None
    for priority, table in enumerate(tables):
        for entry_key, (index, entry) in table.entries.items():
            if [(k, v) for k, v in entry_key.items if k not in buckets] != shape:
                continue
            # A neighbour's config must also suit this key (e.g. a block no larger than T).
            if spec.space.problems(entry.config, key):
                continue
            rank = (
                _bucket_distance(buckets, key, entry_key),
                tuple(int(entry_key[f]) for f in buckets),  # ties go to the smaller bucket
                priority,
            )
            if best is None or rank < best[0]:
                best = (rank, table, index, entry)
    if best is None:
        return None
    _, table, index, entry = best
    return Resolution(spec.name, device, key, entry.config, "nearest", table.file, index, entry.key)


def _resolve(spec: KernelSpec, key: Key, device: torch.device) -> Resolution:
    import torch

    device = torch.device(device)
    device_label = str(device)
    place = place_for(device)
    if place.arch is None:
        if place.warn:
            _problem(f"{place.why_none}: every kernel runs its default config")
        return Resolution(
            spec.name, device_label, key, spec.default_for(key), "default", reason=place.why_none
        )
    tables = _tables_for(spec, place)
    found = _resolve_from_tables(spec, key, tables, device_label)
    if found is None and spec.fallback_fields:
        stand_in = Key(tuple((f, dict(spec.fallback_fields).get(f, v)) for f, v in key.items))
        if stand_in != key and (found := _resolve_from_tables(spec, stand_in, tables, device_label)):
            found = replace(found, key=key, source="nearest")
    if found is not None:
        return found
    reason = f"no table for {spec.name} on {place.arch}" if not tables else "no entry of this shape"
    return Resolution(spec.name, device_label, key, spec.default_for(key), "default", reason=reason)


def preload_tables(device: torch.device) -> int:
    """Find `device`'s tables and read every kernel's (what each kernel's first resolution would do);
    returns how many tables were read. Problems are reported as a first resolution reports them."""
    import torch

    from ._registry import KERNEL_NAMES, spec_by_name

    place = place_for(torch.device(device))
    if place.arch is None:
        return 0
    with _lock:
        return sum(len(_tables_for(spec_by_name(name), place)) for name in KERNEL_NAMES)


def place_for(device: torch.device) -> TablePlace:
    """Where `device`'s tables are, found once per process (`locate_tables`) and then remembered."""
    place_key = (device.type, device.index)
    with _lock:
        place = _places.get(place_key)
        if place is None:
            place = _places[place_key] = locate_tables(device)
    return place


def resolve_config(spec: KernelSpec, key: Key, device: torch.device) -> Config:
    """The config a launch of `spec` uses for `key` on `device`: after the first call, one dict lookup."""
    # The cache key avoids `Key.__hash__` (a Python-level call, about 230 ns) and `device.type` (a new
    # string each time, about 340 ns): `key.items` and the device object hash in C, about 190 ns in all.
    config = _resolved.get((spec.name, device, key.items))
    if config is None:
        config = _resolve_and_cache(spec, key, device)
    return config


def _resolve_and_cache(spec: KernelSpec, key: Key, device: torch.device) -> Config:
    cache_key = (spec.name, device, key.items)
    with _lock:
        if cache_key in _resolved:
            return _resolved[cache_key]
        try:
            resolution = _resolve(spec, key, device)
        except TableError:
            raise
        except Exception as e:
            # A forward call never fails because of a table: anything unforeseen falls back to the
            # default (strict mode, for CI, still raises).
            if strict_mode():
                raise TableError(f"resolving {spec.name} {key.label}: {e!r}") from e
            _problem(f"resolving {spec.name} {key.label} failed ({e!r}); using the default config")
            resolution = Resolution(
                spec.name, str(device), key, spec.default_for(key), "default", reason=repr(e)
            )
        _resolutions[cache_key] = resolution
        _resolved[cache_key] = resolution.config
        return resolution.config


def resolution_report() -> list[Resolution]:
    """Every key resolved in this process, by kernel, device and key: where its config came from."""
    with _lock:
        rows = list(_resolutions.values())
    return sorted(rows, key=lambda r: (r.kernel, r.device, r.key.label))


def reset() -> None:
    """Forget every loaded table, resolution and warning (tests; after changing the environment)."""
    with _lock:
        _resolved.clear()
        _resolutions.clear()
        _places.clear()
        _loaded.clear()
        _found.clear()
        _warned.clear()
        _scanned.clear()


def forget_resolutions(device_type: str) -> None:
    """Forget where devices of `device_type` ("meta", "cuda") find their tables and what they resolved.

    Loaded tables stay loaded; the next launch on such a device locates its tables and resolves again.
    """
    with _lock:
        for place_key in [p for p in _places if p[0] == device_type]:
            del _places[place_key]
        for cache in (_resolved, _resolutions):
            for cache_key in [c for c in cache if getattr(c[1], "type", None) == device_type]:
                del cache[cache_key]


@contextmanager
def resolving_as(device_type: str, place: TablePlace) -> Iterator[None]:
    """Within the block, launches on a device of `device_type` (no index) resolve as one at `place`.

    The warmup resolves meta tensors as a GPU would: the meta device gets the GPU's place, and its
    resolutions are forgotten on both sides of the block so they never leak into, or come from,
    another use of that device type.
    """
    forget_resolutions(device_type)
    with _lock:
        _places[(device_type, None)] = place
    try:
        yield
    finally:
        forget_resolutions(device_type)
