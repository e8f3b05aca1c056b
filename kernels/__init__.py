"""gdn_kernels: Gated Delta Net kernels whose configs come from static tables, never from autotuning.

Imports torch and triton only; serving processes load this module.

The kernel entry points are imported on first use: importing torch and triton takes about 3 s, and
`gdn-tune --help` or `gdn-tune targets` need only the light names (targets, specs, keys), which import
nothing but the standard library.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from ._guard import CompileGuardError, CompileGuardWarning, compile_guard_trips, seal_compiles
from ._registry import kernel_specs, spec_by_name
from ._spec import Config, KernelSpec, Key, Workload
from ._targets import TARGETS, GpuTarget, target_by_name

if TYPE_CHECKING:
    from ._preload import preload
    from .chunk import chunk_gated_delta_rule
    from .fused_recurrent import fused_recurrent_gated_delta_rule
    from .gating import fused_gdn_gating
    from .gdn_prep import gdn_prefill_prep
    from .l2norm import l2norm

__version__ = "0.1.0"

# Public name → the module that defines it; these import torch and triton, so on first access.
_LAZY = {
    "chunk_gated_delta_rule": "chunk",
    "fused_recurrent_gated_delta_rule": "fused_recurrent",
    "fused_gdn_gating": "gating",
    "gdn_prefill_prep": "gdn_prep",
    "l2norm": "l2norm",
    "preload": "_preload",
}

__all__ = [
    "TARGETS",
    "CompileGuardError",
    "CompileGuardWarning",
    "Config",
    "GpuTarget",
    "KernelSpec",
    "Key",
    "Workload",
    "__version__",
    "chunk_gated_delta_rule",
    "compile_guard_trips",
    "fused_gdn_gating",
    "fused_recurrent_gated_delta_rule",
    "gdn_prefill_prep",
    "kernel_specs",
    "l2norm",
    "preload",
    "seal_compiles",
    "spec_by_name",
    "target_by_name",
]


class _Package(types.ModuleType):
    """The package, whose submodule `l2norm` shares its name with the public function `l2norm`.

    Importing a submodule binds it as an attribute of its package; for `gdn_kernels.l2norm` that would
    hide the function behind the module (`from gdn_kernels import l2norm` would give the module). So
    the lazy names are never bound to a submodule: they stay what `__getattr__` resolves them to.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _LAZY and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)

    def __getattr__(self, name: str) -> Any:
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
        super().__setattr__(name, value)  # later lookups are plain attribute reads
        return value

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(_LAZY))


sys.modules[__name__].__class__ = _Package
