"""Export: the winners of a target's sweeps become its tables, merged into what is already there.

For each kernel, the winners of every sweep of the target are gathered; where two sweeps solved the
same key, the later sweep's winner is kept, and a GPU sweep's always beats an interpreter sweep's.
Winners found for another version of a kernel (its hash differs from today's) are left out and
reported: their configs were chosen for code that no longer exists.

A table records one provenance (`made_with`: the GPU, versions and sweep), so what it holds must come
from that GPU. Interpreter winners are left out unless `--allow-interpreter-timings` asks for them
(their times are CPU wall clock), and an export that would put entries of two GPUs, or of a GPU and the
interpreter, into one file is refused before anything is written.

Files are written as `gdn_tune.tables.merge_into_table` writes them: swept keys replaced, other keys
kept, deterministic bytes, atomic replace. `made_with` comes from the database (the latest contributing
sweep's GPU, versions and date), never from the clock, so exporting the same database twice gives the
same bytes.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gdn_kernels import GpuTarget, KernelSpec, Key
from gdn_kernels.tuning import TableEntry, make_folder, write_text_atomically

from .errors import ExportRefused, UnknownSweepError
from .results import WinnerRow, winners
from .specs import available_specs, extra_spec_paths
from .storage import Storage
from .tables import (
    MixedProvenanceError,
    check_same_provenance,
    merge_entries,
    provenance_source,
    read_existing,
    table_path,
    table_text,
)


@dataclass
class ExportResult:
    """What an export wrote (or, dry, would write)."""

    target: str
    arch: str
    files: list[dict[str, Any]] = field(default_factory=list)  # path, kernel, swept entries, changed
    skipped: list[str] = field(default_factory=list)  # winners left out, and why
    dropped: list[str] = field(default_factory=list)  # entries of old files the kernel now rejects
    diff: str = ""  # unified diff of every file, old → new

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "arch": self.arch,
            "files": self.files,
            "skipped": self.skipped,
            "dropped": self.dropped,
            "diff": self.diff,
        }


def made_with(rows: Sequence[WinnerRow], kernel_hash: str) -> dict[str, Any]:
    """Provenance of a kernel's table: the latest sweep that contributed to it."""
    latest = max(rows, key=lambda r: (r.sweep_date, r.sweep_id))
    return {
        "gpu": latest.gpu_name,
        "compute_capability": latest.compute_capability,
        "triton": latest.triton_version,
        "torch": latest.torch_version,
        "cuda": latest.cuda_version,
        "kernel_hash": kernel_hash,
        "date": latest.sweep_date.date().isoformat(),
        "sweep_id": latest.sweep_id,
        "interpret": latest.interpret,  # true: times are CPU wall clock, not GPU timings
    }


def _sweep_list(rows: Sequence[WinnerRow]) -> str:
    return ", ".join(str(i) for i in sorted({r.sweep_id for r in rows}))


def _current_rows(
    rows: Sequence[WinnerRow], specs: Mapping[str, KernelSpec], result: ExportResult
) -> list[WinnerRow]:
    """The winners found for today's version of a kernel; the others are reported in `result.skipped`."""
    current = []
    for row in rows:
        spec = specs.get(row.kernel)
        if spec is None:
            result.skipped.append(f"{row.kernel} {row.key.label}: no such kernel any more")
        elif row.kernel_hash != spec.source_hash():
            result.skipped.append(
                f"{row.kernel} {row.key.label} (sweep {row.sweep_id}): swept for kernel hash "
                f"{row.kernel_hash}, the kernel is now {spec.source_hash()}; sweep again"
            )
        else:
            current.append(row)
    return current


def _without_interpreter_rows(
    rows: list[WinnerRow], target: GpuTarget, result: ExportResult
) -> list[WinnerRow]:
    """Interpreter winners are left out unless asked for: their times are the CPU's wall clock (tens of
    ms where the GPU takes µs), and a table for a real arch would rank and report them as GPU timings."""
    interpreted = [r for r in rows if r.interpret]
    kept = [r for r in rows if not r.interpret]
    if interpreted and not kept:
        raise ExportRefused(
            f"every winner of {target.name} comes from a sweep run under the Triton interpreter (sweep "
            f"{_sweep_list(interpreted)}): its times are CPU wall clock, not GPU timings, and must not enter "
            f"{target.arch} tables. Sweep on the GPU, or pass --allow-interpreter-timings to write them "
            f"anyway (for pipeline checks; never into tables that ship)"
        )
    if interpreted:
        result.skipped.append(
            f"{len(interpreted)} winners of interpreter sweep(s) {_sweep_list(interpreted)} left out (CPU "
            f"wall-clock times; --allow-interpreter-timings exports them)"
        )
    return kept


@dataclass
class _FilePlan:
    """One table the export writes: its kernel, GPU folder, swept entries and their provenance."""

    spec: KernelSpec
    device: str | None
    entries: list[TableEntry]
    made_with: dict[str, Any]


def _file_plans(
    rows: Sequence[WinnerRow], specs: Mapping[str, KernelSpec], per_device: bool
) -> list[_FilePlan]:
    """The winners grouped into files: per kernel (and per GPU with `per_device`), one winner per key.

    Within a file a later sweep's winner replaces an earlier one, and a GPU sweep's an interpreter
    sweep's. A file records one GPU in its made_with, so winners of two GPUs (or of a GPU and the
    interpreter) for one file are refused, never merged under the later one's name.
    """
    chosen: dict[tuple[str, str | None], dict[Key, WinnerRow]] = {}
    for row in sorted(rows, key=lambda r: (not r.interpret, r.sweep_id)):
        device = row.gpu_name if per_device else None
        chosen.setdefault((row.kernel, device), {})[row.key] = row
    plans = []
    for (kernel, device), by_key in sorted(chosen.items(), key=lambda item: (item[0][0], item[0][1] or "")):
        kept = list(by_key.values())
        sources: dict[str, list[WinnerRow]] = {}
        for row in kept:
            sources.setdefault(provenance_source(_row_provenance(row)), []).append(row)
        if len(sources) > 1:
            found = "; ".join(f"{source} (sweep {_sweep_list(r)})" for source, r in sorted(sources.items()))
            raise ExportRefused(
                f"{kernel}: its winners were measured on {found}; one table records one GPU's provenance. "
                f"Export with --per-device, or pick the sweeps with --sweep"
            )
        spec = specs[kernel]
        entries = [TableEntry(r.key, r.config, r.time_ms, r.default_time_ms) for r in kept]
        plans.append(_FilePlan(spec, device, entries, made_with(kept, spec.source_hash())))
    return plans


def _row_provenance(row: WinnerRow) -> dict[str, Any]:
    return {"gpu": row.gpu_name, "interpret": row.interpret}


def export_tables(
    db_url: str,
    target: GpuTarget,
    out_dir: Path | str,
    dry_run: bool = False,
    per_device: bool = False,
    extra_specs: Sequence[str] = (),
    allow_interpreter_timings: bool = False,
    sweep_ids: Collection[int] = (),
) -> ExportResult:
    """Write `target`'s tables under `out_dir` from the winners in `db_url` (of `sweep_ids` when given);
    `dry_run` only computes the diff. `per_device` writes into the GPU's own folder (`sm90/NVIDIA_H200/`)
    instead of the arch's.

    Raises ExportRefused, before writing anything, when the winners all come from interpreter sweeps
    (unless `allow_interpreter_timings`), when one file would get winners of two GPUs, or when an existing
    file holds entries another GPU measured; UnknownSweepError when a sweep of `sweep_ids` has no winners.
    """
    storage = Storage(db_url, must_exist=True)
    try:
        rows = winners(storage, target.name)
    finally:
        storage.dispose()
    if sweep_ids:
        missing = sorted(set(sweep_ids) - {r.sweep_id for r in rows})
        if missing:
            known = _sweep_list(rows) or "none"
            raise UnknownSweepError(
                f"--sweep {', '.join(map(str, missing))}: no winners of {target.name} in such a sweep "
                f"(sweeps of {target.name} with winners: {known})"
            )
        rows = [r for r in rows if r.sweep_id in sweep_ids]
    specs = available_specs(extra_spec_paths(extra_specs))
    result = ExportResult(target.name, target.arch)
    if not rows:
        result.skipped.append(f"no winners for {target.name} in {storage.display_url}")
        return result
    rows = _current_rows(rows, specs, result)
    if not allow_interpreter_timings:
        rows = _without_interpreter_rows(rows, target, result)
    planned = []
    for plan in _file_plans(rows, specs, per_device):
        path = table_path(out_dir, target.arch, plan.spec.name, plan.device)
        existing, problems = read_existing(path, plan.spec)
        try:
            check_same_provenance(path, existing, (e.key for e in plan.entries), plan.made_with)
        except MixedProvenanceError as e:
            raise ExportRefused(str(e)) from None
        kept = [entry for _, entry in existing.entries.values()] if existing is not None else []
        old_text = path.read_text(encoding="utf-8") if path.exists() else ""
        new_text = table_text(target.arch, plan.spec, merge_entries(kept, plan.entries), plan.made_with)
        planned.append((plan, path, old_text, new_text))
        result.dropped += [str(p) for p in problems]
    # Every refusal is raised above, and every folder made here, before the first file is written.
    for _, path, old_text, new_text in planned:
        if not dry_run and new_text != old_text:
            make_folder(path)
    for plan, path, old_text, new_text in planned:
        if not dry_run and new_text != old_text:
            write_text_atomically(path, new_text)
        result.files.append(
            {
                "path": str(path),
                "kernel": plan.spec.name,
                "swept_entries": len(plan.entries),
                "changed": new_text != old_text,
            }
        )
        result.diff += "".join(
            difflib.unified_diff(
                old_text.splitlines(keepends=True),
                new_text.splitlines(keepends=True),
                fromfile=f"{path} (now)" if old_text else "/dev/null",
                tofile=f"{path} (exported)",
            )
        )
    return result
