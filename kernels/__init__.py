"""gdn_kernels: Gated Delta Net kernels whose configs come from static tables, never from autotuning.

Imports torch and triton only; serving processes load this module.
"""

from ._guard import CompileGuardError, CompileGuardWarning, compile_guard_trips, seal_compiles
from ._registry import kernel_specs, spec_by_name
from ._spec import Config, KernelSpec, Key, Workload
from ._targets import TARGETS, GpuTarget, target_by_name
from .chunk import chunk_gated_delta_rule
from .fused_recurrent import fused_recurrent_gated_delta_rule
from .gating import fused_gdn_gating
from .gdn_prep import gdn_prefill_prep
from .l2norm import l2norm

__version__ = "0.1.0"

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
    "seal_compiles",
    "spec_by_name",
    "target_by_name",
]
