"""Tables on the tuner side: compile a config for a target, write tables, check, show and diff them.

The runtime reads tables with `gdn_kernels._tables` (validation lives there, so the tuner checks
exactly what a serving process accepts); this module writes them and reviews them for a release.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gdn_kernels._launch import compile_for_target, recording
from gdn_kernels._spec import Config, KernelSpec, Key
from gdn_kernels._tables import (
    SCHEMA_VERSION,
    TableEntry,
    device_folder_name,
)
from gdn_kernels._targets import GpuTarget

# Times are written with 6 significant digits: CUDA-event timings of one kernel vary by more than
# 0.1 % between replays, so further digits are noise that would make identical sweeps differ in bytes.
TIME_DIGITS = 6


# --------------------------------------------------------------------------------------------------
# Compiling a config for a target (no GPU needed)


@dataclass(frozen=True)
class CompileResult:
    """Whether a config compiles for a target and fits its shared memory; `error` says why not."""

    ok: bool
    shared_bytes: int | None  # the largest need of the launches, None when nothing compiled
    error: str | None
    seconds: float


def _first_lines(error: BaseException, limit: int = 400) -> str:
    """A compile error in a few hundred characters: Triton's messages can run to pages of MLIR."""
    text = f"{type(error).__name__}: {error}".strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def compile_check(spec: KernelSpec, key: Key, config: Config, target: GpuTarget) -> CompileResult:
    """Compile every launch `spec` makes for `key` with `config` for `target`; check shared memory.

    Inputs live on the "meta" device, so no memory is touched and no GPU is needed: the launcher's
    launches are recorded and handed to Triton's compiler with an explicit GPUTarget.
    """
    start = time.perf_counter()

    def result(ok: bool, shared: int | None, error: str | None) -> CompileResult:
        return CompileResult(ok, shared, error, time.perf_counter() - start)

    problems = spec.space.problems(config, key)
    if problems:
        return result(False, None, "invalid config: " + "; ".join(problems))
    try:
        inputs = spec.make_inputs(key, "meta", 0)
        outputs = spec.make_outputs(inputs)
        with recording() as records:
            spec.launch(inputs, outputs, config)
    except Exception as e:  # a launcher that cannot even build its launch is a failed config
        return result(False, None, f"launcher failed: {_first_lines(e)}")
    if not records:
        return result(False, None, "the launcher recorded no kernel launch")
    shared = 0
    for record in records:
        try:
            compiled = compile_for_target(record, target.cc)
        except Exception as e:
            return result(False, None, f"{record.kernel.__name__} does not compile: {_first_lines(e)}")
        shared = max(shared, int(compiled.metadata.shared))
    if shared > target.shared_memory_per_block:
        return result(
            False,
            shared,
            f"needs {shared} bytes of shared memory, {target.name} has {target.shared_memory_per_block}",
        )
    return result(True, shared, None)


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
    provenance = {"kernel_hash": spec.source_hash(), **made_with}
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
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return path


def _check_name(what: str, name: str) -> None:
    if not name or not name.replace("_", "").isalnum():
        raise ValueError(f"{what} must be letters, digits and '_', got {name!r}")


def merge_entries(existing: Iterable[TableEntry], swept: Iterable[TableEntry]) -> list[TableEntry]:
    """An export's entries: every swept key replaced by its new entry, the other keys kept as they were."""
    merged = {e.key: e for e in existing}
    merged.update({e.key: e for e in swept})
    return list(merged.values())
