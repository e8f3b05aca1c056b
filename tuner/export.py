"""Export: the winners of a target's sweeps become its tables, merged into what is already there.

For each kernel, the winners of every sweep of the target are gathered; where two sweeps solved the
same key, the later sweep's winner is kept, and a GPU sweep's always beats an interpreter sweep's. Winners found for another version of a kernel (its hash
differs from today's) are left out and reported: their configs were chosen for code that no longer
exists. The tables are written with `gdn_tune.tables.merge_into_table`: swept keys replaced, other keys
kept, deterministic bytes, atomic replace. `made_with` comes from the database (the latest contributing
sweep's GPU, versions and date), never from the clock, so exporting the same database twice gives the
same bytes.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gdn_kernels import GpuTarget, KernelSpec
from gdn_kernels._tables import TableEntry

from .results import WinnerRow, winners
from .specs import available_specs, extra_spec_paths
from .storage import Storage
from .tables import merge_entries, merge_into_table, read_entries, table_path, table_text


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


def _entries_by_kernel(
    rows: Sequence[WinnerRow], specs: Mapping[str, KernelSpec], result: ExportResult
) -> dict[str, tuple[list[TableEntry], list[WinnerRow]]]:
    by_kernel: dict[str, dict[Any, WinnerRow]] = {}
    # Later rows replace earlier ones: a later sweep's winner replaces an earlier one, and a GPU
    # sweep's winner always replaces an interpreter sweep's (whose times are CPU wall clock).
    for row in sorted(rows, key=lambda r: (not r.interpret, r.sweep_id)):
        spec = specs.get(row.kernel)
        if spec is None:
            result.skipped.append(f"{row.kernel} {row.key.label}: no such kernel any more")
            continue
        if row.kernel_hash != spec.source_hash():
            result.skipped.append(
                f"{row.kernel} {row.key.label} (sweep {row.sweep_id}): swept for kernel hash "
                f"{row.kernel_hash}, the kernel is now {spec.source_hash()}; sweep again"
            )
            continue
        by_kernel.setdefault(row.kernel, {})[row.key] = row
    return {
        kernel: (
            [TableEntry(r.key, r.config, r.time_ms, r.default_time_ms) for r in chosen.values()],
            list(chosen.values()),
        )
        for kernel, chosen in sorted(by_kernel.items())
    }


def export_tables(
    db_url: str,
    target: GpuTarget,
    out_dir: Path | str,
    dry_run: bool = False,
    per_device: bool = False,
    extra_specs: Sequence[str] = (),
) -> ExportResult:
    """Write `target`'s tables under `out_dir` from the winners in `db_url`; `dry_run` only computes the
    diff. `per_device` writes into the GPU's own folder (`sm90/NVIDIA_H200/`) instead of the arch's."""
    storage = Storage(db_url, must_exist=True)
    try:
        rows = winners(storage, target.name)
    finally:
        storage.dispose()
    specs = available_specs(extra_spec_paths(extra_specs))
    result = ExportResult(target.name, target.arch)
    if not rows:
        result.skipped.append(f"no winners for {target.name} in {storage.display_url}")
        return result
    for kernel, (entries, kernel_rows) in _entries_by_kernel(rows, specs, result).items():
        spec = specs[kernel]
        provenance = made_with(kernel_rows, spec.source_hash())
        device = provenance["gpu"] if per_device else None
        path = table_path(out_dir, target.arch, kernel, device)
        old_text = path.read_text(encoding="utf-8") if path.exists() else ""
        existing, problems = read_entries(path, spec)
        new_text = table_text(target.arch, spec, merge_entries(existing, entries), provenance)
        if not dry_run and new_text != old_text:
            merge_into_table(out_dir, target.arch, spec, entries, provenance, device)
        result.dropped += [str(p) for p in problems]
        result.files.append(
            {
                "path": str(path),
                "kernel": kernel,
                "swept_entries": len(entries),
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
