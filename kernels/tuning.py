"""gdn_kernels.tuning: the runtime's surface for tools (the tuner, the warmup, table checks).

Serving code needs only `gdn_kernels`; tools that make, check or warm the tables need more of the
runtime: how a table is read and validated, where a device finds its tables, how a launch is recorded
or compiled for a target without a GPU, and the warm cache a first launch loads. They import it from
here, never from the private modules (`gdn_kernels._*`), so those stay free to change shape.

Importing this module is as light as `gdn_kernels`: the names of `_launch` and `_warm` import torch
and triton, so they are imported on first access, as the kernel entry points are.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._files import FileWriteError, make_folder, replaced_atomically, write_text_atomically
from ._registry import kernel_specs, spec_by_name
from ._spec import (
    Config,
    KernelSpec,
    Key,
    Workload,
    compare_outputs,
    sequence_bucket,
    token_bucket,
    unique_keys,
)
from ._tables import (
    BUCKET_FIELDS,
    ENV_ARCH,
    SCHEMA_VERSION,
    Resolution,
    Table,
    TableEntry,
    TablePlace,
    TableProblem,
    device_folder_name,
    forget_resolutions,
    load_table,
    locate_tables,
    resolution_report,
    resolving_as,
    shipped_archs,
    shipped_tables_dir,
)
from ._targets import (
    ARCHS,
    TARGETS,
    GpuTarget,
    UnknownTargetError,
    arch_for_capability,
    target_by_name,
    target_for_device,
)

if TYPE_CHECKING:
    from ._launch import LaunchRecord, compile_for_target, recording
    from ._warm import MODULES, add_to_bundle, remember, write_bundle_manifest

# Public name → the private module that defines it; these import torch and triton, so on first access.
_LAZY = {
    "LaunchRecord": "_launch",
    "compile_for_target": "_launch",
    "recording": "_launch",
    "MODULES": "_warm",
    "add_to_bundle": "_warm",
    "remember": "_warm",
    "write_bundle_manifest": "_warm",
}

__all__ = [
    "ARCHS",
    "BUCKET_FIELDS",
    "ENV_ARCH",
    "MODULES",
    "SCHEMA_VERSION",
    "TARGETS",
    "Config",
    "FileWriteError",
    "GpuTarget",
    "KernelSpec",
    "Key",
    "LaunchRecord",
    "Resolution",
    "Table",
    "TableEntry",
    "TablePlace",
    "TableProblem",
    "UnknownTargetError",
    "Workload",
    "add_to_bundle",
    "arch_for_capability",
    "compare_outputs",
    "compile_for_target",
    "device_folder_name",
    "forget_resolutions",
    "kernel_specs",
    "load_table",
    "locate_tables",
    "make_folder",
    "recording",
    "remember",
    "replaced_atomically",
    "resolution_report",
    "resolving_as",
    "sequence_bucket",
    "shipped_archs",
    "shipped_tables_dir",
    "spec_by_name",
    "target_by_name",
    "target_for_device",
    "token_bucket",
    "unique_keys",
    "write_bundle_manifest",
    "write_text_atomically",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__package__}.{module}"), name)
    globals()[name] = value  # later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
