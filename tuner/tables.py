"""Tables on the tuner side: write tables, check, show and diff them (compiling an entry for its target
is `compile.compile_check`).

The tuner reads tables with the runtime's own reader (`gdn_kernels.tuning.load_table`: validation
lives there, so the tuner checks exactly what a serving process accepts); this module writes them and
reviews them for a release.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gdn_kernels.tuning import (
    ARCHS,
    SCHEMA_VERSION,
    GpuTarget,
    KernelSpec,
    Key,
    Table,
    TableEntry,
    TableProblem,
    arch_for_capability,
    device_folder_name,
    kernel_specs,
    load_table,
    shipped_tables_dir,
    unique_keys,
    write_text_atomically,
)

from .compile import compile_check
from .constants import INTERPRETER_GPU_NAME
from .presets import preset_by_name
from .sweep.target import target_for_table

# Times are written with 6 significant digits: CUDA-event timings of one kernel vary by more than
# 0.1 % between replays, so further digits are noise that would make identical sweeps differ in bytes.
TIME_DIGITS = 6


# --------------------------------------------------------------------------------------------------
# Writing tables


def _round_time(value: float | None) -> float | None:
    if value is None:
        return None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"a time must be a positive finite number of ms, got {value!r}")
    return float(f"{value:.{TIME_DIGITS}g}")


def _key_sort_value(key: Key) -> tuple[tuple[int, Any], ...]:
    # Numbers sort as numbers (128 before 1024), strings as strings; the spec's field order decides.
    return tuple((1, v) if isinstance(v, str) else (0, int(v)) for _, v in key.items)


def _entry_json(entry: TableEntry) -> dict[str, Any]:
    return {
        "key": entry.key.as_dict(),
        "config": entry.config.as_dict(),
        "time_ms": _round_time(entry.time_ms),
        "default_time_ms": _round_time(entry.default_time_ms),
    }


def table_text(
    arch: str, spec: KernelSpec, entries: Iterable[TableEntry], made_with: Mapping[str, Any]
) -> str:
    """The bytes of a table: one entry per line (reviewable diffs), sorted entries and fields."""
    rows = sorted(entries, key=lambda e: _key_sort_value(e.key))
    seen: set[Key] = set()
    for row in rows:
        if row.key in seen:
            raise ValueError(f"{spec.name}: two entries for key {row.key.label}")
        seen.add(row.key)
        if row.time_ms is None:
            raise ValueError(f"{spec.name}: entry {row.key.label} has no time_ms")
    # Every table says whether its times are GPU timings; `gdn-tune check` refuses one that does not.
    provenance = {"kernel_hash": spec.source_hash(), "interpret": is_interpreter_made(made_with), **made_with}
    header = [
        f'  "schema": {SCHEMA_VERSION}',
        f'  "kernel": {json.dumps(spec.name)}',
        f'  "arch": {json.dumps(arch)}',
        f'  "made_with": {json.dumps(provenance, sort_keys=True)}',
    ]
    lines = [json.dumps(_entry_json(r), sort_keys=True) for r in rows]
    body = ",\n".join(f"    {line}" for line in lines)
    entries_text = f'  "entries": [\n{body}\n  ]' if lines else '  "entries": []'
    return "{\n" + ",\n".join([*header, entries_text]) + "\n}\n"


def table_path(out_dir: Path | str, arch: str, kernel: str, device_name: str | None = None) -> Path:
    """`<out_dir>/<arch>/[<device folder>/]<kernel>.json`."""
    folder = Path(out_dir) / arch
    if device_name is not None:
        folder = folder / device_folder_name(device_name)
    return folder / f"{kernel}.json"


def write_table(
    out_dir: Path | str,
    arch: str,
    spec: KernelSpec,
    entries: Iterable[TableEntry],
    made_with: Mapping[str, Any],
    device_name: str | None = None,
) -> Path:
    """Write `spec`'s table for `arch` (for one GPU model when `device_name` is given); returns its path.

    Deterministic: the same entries and `made_with` give the same bytes. Atomic: the text goes to a
    temporary file in the same folder, then `os.replace` swaps it in, so a reader sees either the old
    table or the new one, and a failed write leaves the old file as it was.
    """
    _check_name("arch", arch)
    text = table_text(arch, spec, entries, made_with)
    path = table_path(out_dir, arch, spec.name, device_name)
    write_text_atomically(path, text)
    return path


def _check_name(what: str, name: str) -> None:
    if not name or not name.replace("_", "").isalnum():
        raise ValueError(f"{what} must be letters, digits and '_', got {name!r}")


class MixedProvenanceError(ValueError):
    """Entries measured on one GPU (or under the interpreter) would join a table made on another, whose
    `made_with` can name only one of them; nothing was written."""


def is_interpreter_made(made_with: Mapping[str, Any]) -> bool:
    """Whether a table's times are the interpreter's CPU wall clock: its `interpret` field, or for a
    file without one, the GPU name an interpreter sweep records (the meaning is the same)."""
    return bool(made_with.get("interpret", made_with.get("gpu") == INTERPRETER_GPU_NAME))


def provenance_source(made_with: Mapping[str, Any]) -> str:
    """What measured a table's entries, as a reader should see it: a GPU, or the interpreter on the CPU.
    Two tables' entries may share one file only when this is the same for both."""
    gpu = str(made_with.get("gpu"))
    return f"the Triton interpreter on the CPU ({gpu})" if is_interpreter_made(made_with) else gpu


def check_same_provenance(
    path: Path, existing: Table | None, swept_keys: Iterable[Key], made_with: Mapping[str, Any]
) -> None:
    """Raise MixedProvenanceError when writing entries made as `made_with` into `path` would keep
    entries of the existing table that another GPU, or the interpreter, measured."""
    if existing is None:
        return
    kept = set(existing.entries) - set(swept_keys)
    old, new = provenance_source(existing.made_with), provenance_source(made_with)
    if kept and old != new:
        raise MixedProvenanceError(
            f"{path}: its {len(kept)} other entries were measured on {old}, these on {new}; one table "
            f"records one GPU's provenance, so they cannot share it. Export into another --out (or "
            f"--per-device), or delete {path} to replace it"
        )


def merge_entries(existing: Iterable[TableEntry], swept: Iterable[TableEntry]) -> list[TableEntry]:
    """An export's entries: every swept key replaced by its new entry, the other keys kept as they were."""
    merged = {e.key: e for e in existing}
    merged.update({e.key: e for e in swept})
    return list(merged.values())


def read_existing(path: Path | str, spec: KernelSpec) -> tuple[Table | None, list[TableProblem]]:
    """An existing table (None when there is no file or it is unreadable as a whole), and what was left out."""
    path = Path(path)
    if not path.exists():
        return None, []
    return load_table(path, {spec.name: spec})


def read_entries(path: Path | str, spec: KernelSpec) -> tuple[list[TableEntry], list[TableProblem]]:
    """The valid entries of an existing table (none when there is no file), and what was left out."""
    table, problems = read_existing(path, spec)
    entries = [entry for _, entry in table.entries.values()] if table is not None else []
    return entries, problems


def merge_into_table(
    out_dir: Path | str,
    arch: str,
    spec: KernelSpec,
    swept: Iterable[TableEntry],
    made_with: Mapping[str, Any],
    device_name: str | None = None,
) -> tuple[Path, list[TableProblem]]:
    """Export: write `swept` into the existing table, replacing those keys and keeping the others.

    Entries of the old file that the current kernel rejects are dropped and returned as problems; the
    file's `made_with` becomes the new one (the kept entries keep their own times), so the kept entries
    must come from the same GPU: MixedProvenanceError otherwise, and nothing is written.
    """
    swept = list(swept)
    path = table_path(out_dir, arch, spec.name, device_name)
    existing, problems = read_existing(path, spec)
    check_same_provenance(path, existing, (e.key for e in swept), made_with)
    kept = [entry for _, entry in existing.entries.values()] if existing is not None else []
    written = write_table(out_dir, arch, spec, merge_entries(kept, swept), made_with, device_name)
    return written, problems


# --------------------------------------------------------------------------------------------------
# Reading a folder of tables (check, show, diff)


@dataclass(frozen=True)
class TableFile:
    """One table file found under a root, parsed: the table (None when the whole file is bad)."""

    arch: str
    device_folder: str | None
    path: Path
    table: Table | None
    problems: tuple[TableProblem, ...]

    @property
    def kernel(self) -> str:
        return self.table.kernel if self.table is not None else self.path.stem

    @property
    def place(self) -> str:
        return f"{self.arch}/{self.device_folder}" if self.device_folder else self.arch


def _arch_folders(root: Path, archs: Iterable[str] | None) -> tuple[list[str], list[str]]:
    """The archs to read, and problems with the root's folders (unknown arch folder names)."""
    if archs is not None:
        archs = list(archs)
        unknown = [a for a in archs if a not in ARCHS]
        if unknown:
            raise ValueError(f"unknown arch {', '.join(unknown)}; known: {', '.join(ARCHS)}")
        return archs, []
    found, problems = [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        if folder.name in ARCHS:
            found.append(folder.name)
        elif folder.name != "__pycache__":
            problems.append(f"{folder}: not an arch folder (known archs: {', '.join(ARCHS)})")
    return sorted(found, key=ARCHS.index), problems


def read_tables(
    root: Path | str,
    archs: Iterable[str] | None = None,
    specs: Mapping[str, KernelSpec] | None = None,
) -> list[TableFile]:
    """Every table under `root` for `archs` (default: every arch folder there), in a stable order."""
    root = Path(root)
    specs = kernel_specs() if specs is None else specs
    wanted, _ = _arch_folders(root, archs)
    files = []
    for arch in wanted:
        arch_dir = root / arch
        paths = sorted(arch_dir.glob("*.json")) + sorted(arch_dir.glob("*/*.json"))
        for path in paths:
            folder = path.parent.name if path.parent != arch_dir else None
            if folder is not None and _bad_device_folder(folder):
                problem = TableProblem(str(path), None, None, f"{folder!r} is not a valid device folder name")
                files.append(TableFile(arch, folder, path, None, (problem,)))
                continue
            table, problems = load_table(path, specs, expected_arch=arch)
            files.append(TableFile(arch, folder, path, table, tuple(problems)))
    return files


def _bad_device_folder(folder: str) -> bool:
    try:
        return device_folder_name(folder) != folder
    except ValueError:
        return True


# --------------------------------------------------------------------------------------------------
# check


@dataclass(frozen=True)
class FileCheck:
    path: str
    arch: str
    device_folder: str | None
    kernel: str
    entries: int  # valid entries
    stale: bool  # made for another version of the kernel (source or search space)
    problems: tuple[str, ...]  # validation problems, compile failures, staleness
    compiled: int  # entries compiled for the target
    max_shared_bytes: int | None


@dataclass(frozen=True)
class Coverage:
    arch: str
    kernel: str
    wanted: int
    covered: int
    missing: tuple[str, ...]  # key labels without an exact entry


@dataclass(frozen=True)
class CheckReport:
    root: str
    archs: tuple[str, ...]
    files: tuple[FileCheck, ...]
    coverage: tuple[Coverage, ...]
    problems: tuple[str, ...]  # everything wrong, one line each

    @property
    def ok(self) -> bool:
        return not self.problems


def _compile_entries(spec: KernelSpec, table: Table, target: GpuTarget) -> tuple[list[str], int, int | None]:
    failures, compiled, max_shared = [], 0, None
    for index, entry in sorted(table.entries.values(), key=lambda item: item[0]):
        result = compile_check(spec, entry.key, entry.config, target)
        compiled += 1
        if result.shared_bytes is not None:
            max_shared = max(max_shared or 0, result.shared_bytes)
        if not result.ok:
            failures.append(
                f"{table.file}, entry {index} ({entry.key.label}, {entry.config.label}): "
                f"fails on {target.name} ({target.arch}): {result.error}"
            )
    return failures, compiled, max_shared


def _provenance_problems(table_file: TableFile, allow_interpreter_timings: bool) -> list[str]:
    """What is wrong with where a table says its entries come from: a table for a GPU arch must record
    that its times are GPU timings (`made_with.interpret` false), of a GPU of that arch (and of the GPU
    its folder names); interpreter timings pass only when asked for."""
    table = table_file.table
    assert table is not None
    made = table.made_with
    where = f"{table.file}: made_with"
    problems = []
    if "interpret" not in made:
        problems.append(
            f"{where} does not record whether its times were measured on a GPU or under the interpreter "
            f"(no 'interpret' field), so its entries' provenance is unknown; export it again from its "
            f"sweep database"
        )
    elif made["interpret"] != (made.get("gpu") == INTERPRETER_GPU_NAME):
        problems.append(
            f"{where} contradicts itself: interpret is {str(made['interpret']).lower()} but the GPU is "
            f"{made.get('gpu')!r}; its entries' provenance is unknown"
        )
    if is_interpreter_made(made) and not allow_interpreter_timings:
        problems.append(
            f"{where} says its times are the Triton interpreter's CPU wall clock (interpret: true, GPU "
            f"{made.get('gpu')!r}), not GPU timings: no table for {table_file.arch} may ship them "
            f"(check --allow-interpreter-timings accepts them for pipeline tests)"
        )
    arch = arch_for_capability(tuple(int(part) for part in str(made["compute_capability"]).split(".")))
    if arch != table_file.arch:
        problems.append(
            f"{where}.compute_capability is {made['compute_capability']} ({arch or 'no known arch'}), "
            f"but the table is for {table_file.arch}"
        )
    if table_file.device_folder is not None and not is_interpreter_made(made):
        named = device_folder_name(str(made["gpu"]))
        if named != table_file.device_folder:
            problems.append(
                f"{where}.gpu is {made['gpu']!r} (folder {named}), but the table lies in the folder of "
                f"{table_file.device_folder}"
            )
    return problems


def check_tables(
    root: Path | str | None = None,
    archs: Iterable[str] | None = None,
    preset: str | None = None,
    compile_entries: bool = True,
    specs: Mapping[str, KernelSpec] | None = None,
    allow_interpreter_timings: bool = False,
) -> CheckReport:
    """Validate the tables under `root` (default: the shipped ones), compile every entry for its arch
    and check it fits the target's shared memory, flag tables made for another version of a kernel,
    check each table's provenance (GPU timings of that arch, unless `allow_interpreter_timings`), and
    count how many of a preset's keys have an exact entry. `archs` None: every arch folder there; an
    arch named explicitly with no tables at all is a problem."""
    root = Path(root) if root is not None else shipped_tables_dir()
    specs = kernel_specs() if specs is None else specs
    if not root.is_dir():
        raise ValueError(f"table folder {root} does not exist")
    chosen, problems = _arch_folders(root, archs)
    files = read_tables(root, chosen, specs)
    checks = []
    for table_file in files:
        file_problems = [str(p) for p in table_file.problems]
        table = table_file.table
        stale, compiled, max_shared = False, 0, None
        if table is not None:
            spec = specs[table.kernel]
            file_problems += _provenance_problems(table_file, allow_interpreter_timings)
            if table.kernel_hash != spec.source_hash():
                stale = True
                file_problems.append(
                    f"{table.file}: stale: made for kernel hash {table.kernel_hash}, "
                    f"{spec.name} is now {spec.source_hash()} (re-tune; entries the kernel rejects are skipped)"
                )
            if compile_entries:
                target = target_for_table(table_file.arch, table_file.device_folder)
                failures, compiled, max_shared = _compile_entries(spec, table, target)
                file_problems += failures
        checks.append(
            FileCheck(
                str(table_file.path),
                table_file.arch,
                table_file.device_folder,
                table_file.kernel,
                len(table.entries) if table is not None else 0,
                stale,
                tuple(file_problems),
                compiled,
                max_shared,
            )
        )
        problems += file_problems
    if archs is not None:
        for arch in chosen:
            if not any(f.arch == arch for f in files):
                problems.append(f"{root / arch}: no tables for {arch}")
    coverage = _coverage(files, chosen, preset, specs) if preset is not None else []
    for c in coverage:
        if c.covered < c.wanted:
            problems.append(
                f"{c.arch}/{c.kernel}: {c.wanted - c.covered} of {c.wanted} keys of preset {preset} "
                f"have no exact entry"
            )
    return CheckReport(str(root), tuple(chosen), tuple(checks), tuple(coverage), tuple(problems))


def _coverage(
    files: list[TableFile], archs: list[str], preset_name: str, specs: Mapping[str, KernelSpec]
) -> list[Coverage]:
    """For each arch and kernel, the preset's keys with an exact entry in the arch folder's table (the
    one every GPU of the arch falls back to)."""
    preset = preset_by_name(preset_name)
    rows = []
    for arch in archs:
        for spec in specs.values():
            wanted = unique_keys(spec.key_for(w) for w in preset.workloads if w.phase in spec.phases)
            table = next(
                (
                    f.table
                    for f in files
                    if f.arch == arch and f.device_folder is None and f.table and f.table.kernel == spec.name
                ),
                None,
            )
            have = table.entries if table is not None else {}
            missing = tuple(k.label for k in wanted if k not in have)
            rows.append(Coverage(arch, spec.name, len(wanted), len(wanted) - len(missing), missing))
    return rows


# --------------------------------------------------------------------------------------------------
# show


@dataclass(frozen=True)
class ShowRow:
    arch: str
    device_folder: str | None
    kernel: str
    key: dict[str, Any]
    config: dict[str, int]
    time_ms: float | None
    default_time_ms: float | None
    speedup: float | None  # default's time / the entry's time
    file: str
    entry: int


def _speedup(entry: TableEntry) -> float | None:
    if entry.time_ms is None or entry.default_time_ms is None:
        return None
    return entry.default_time_ms / entry.time_ms


def show_tables(
    root: Path | str | None = None,
    arch: str | None = None,
    kernel: str | None = None,
    specs: Mapping[str, KernelSpec] | None = None,
) -> tuple[list[ShowRow], list[TableProblem]]:
    """The valid entries under `root` (default: the shipped tables), for one arch and kernel when given,
    plus the problems of the entries and files left out. ValueError when there is nothing to show: no
    such folder, or no table file for the arch (or kernel) asked for, as `check` and `diff` refuse."""
    specs = kernel_specs() if specs is None else specs
    if kernel is not None and kernel not in specs:
        raise ValueError(f"unknown kernel {kernel!r}; known kernels: {', '.join(specs)}")
    root = Path(root) if root is not None else shipped_tables_dir()
    if not root.is_dir():
        raise ValueError(f"table folder {root} does not exist")
    files = [f for f in read_tables(root, [arch] if arch else None, specs) if kernel in (None, f.kernel)]
    if not files:
        what = " ".join(filter(None, (arch, kernel))) or "any arch"
        found = ", ".join(dict.fromkeys(f.arch for f in read_tables(root, None, specs))) or "none"
        raise ValueError(f"{root}: no tables for {what} (arch folders with tables there: {found})")
    rows, problems = [], []
    for table_file in files:
        problems += table_file.problems
        if table_file.table is None:
            continue
        table = table_file.table
        for index, entry in sorted(table.entries.values(), key=lambda item: _key_sort_value(item[1].key)):
            rows.append(
                ShowRow(
                    table_file.arch,
                    table_file.device_folder,
                    table.kernel,
                    entry.key.as_dict(),
                    entry.config.as_dict(),
                    entry.time_ms,
                    entry.default_time_ms,
                    _speedup(entry),
                    table.file,
                    index,
                )
            )
    return rows, problems


# --------------------------------------------------------------------------------------------------
# diff


@dataclass(frozen=True)
class DiffRow:
    change: str  # "added", "removed", "changed" (another config) or "retimed" (same config, new times)
    place: str  # "sm90" or "sm90/NVIDIA_H200"
    kernel: str
    key: dict[str, Any]
    config_a: dict[str, int] | None
    config_b: dict[str, int] | None
    time_ms_a: float | None
    time_ms_b: float | None
    speedup_a: float | None
    speedup_b: float | None


@dataclass(frozen=True)
class TableDiff:
    dir_a: str
    dir_b: str
    rows: tuple[DiffRow, ...]
    problems: tuple[str, ...]  # files or entries of either side that could not be compared

    def count(self, change: str) -> int:
        return sum(r.change == change for r in self.rows)


def _entries_by_place(files: list[TableFile]) -> dict[tuple[str, str, Key], TableEntry]:
    found = {}
    for table_file in files:
        if table_file.table is not None:
            for _, entry in table_file.table.entries.values():
                found[(table_file.place, table_file.kernel, entry.key)] = entry
    return found


def diff_tables(
    dir_a: Path | str, dir_b: Path | str, specs: Mapping[str, KernelSpec] | None = None
) -> TableDiff:
    """What changed from the tables in `dir_a` to those in `dir_b`, entry by entry (for a release review)."""
    for folder in (dir_a, dir_b):
        if not Path(folder).is_dir():
            raise ValueError(f"table folder {folder} does not exist")
    files_a, files_b = read_tables(dir_a, specs=specs), read_tables(dir_b, specs=specs)
    a, b = _entries_by_place(files_a), _entries_by_place(files_b)
    rows = []
    for place_key in sorted(a.keys() | b.keys(), key=lambda k: (k[0], k[1], _key_sort_value(k[2]))):
        old, new = a.get(place_key), b.get(place_key)
        if old is not None and new is not None:
            if old.config != new.config:
                change = "changed"
            elif (old.time_ms, old.default_time_ms) != (new.time_ms, new.default_time_ms):
                change = "retimed"
            else:
                continue
        else:
            change = "added" if old is None else "removed"
        place, kernel, key = place_key
        rows.append(
            DiffRow(
                change,
                place,
                kernel,
                key.as_dict(),
                old.config.as_dict() if old else None,
                new.config.as_dict() if new else None,
                old.time_ms if old else None,
                new.time_ms if new else None,
                _speedup(old) if old else None,
                _speedup(new) if new else None,
            )
        )
    problems = [str(p) for f in files_a + files_b for p in f.problems]
    return TableDiff(str(dir_a), str(dir_b), tuple(rows), tuple(problems))
