"""Every tunable kernel, by name. Adding a kernel means adding its module here."""

from __future__ import annotations

import importlib
from functools import cache

from ._spec import KernelSpec

# Modules that define `SPECS: tuple[KernelSpec, ...]`, in pipeline order.
_MODULES = (
    "gating",
    "gdn_prep",
    "l2norm",
    "chunk_kkt_solve",
    "chunk_wu",
    "chunk_state",
    "chunk_output",
    "chunk_fused",
    "fused_recurrent",
)

# The names of the kernels those modules define, in the same order. The table lookup checks a folder's
# file names against them (a file no kernel reads is reported): importing every kernel module to learn
# the names would cost a serving process's first forward call about 30 ms (Triton decorating each
# kernel). `kernel_specs()` checks that the two agree.
KERNEL_NAMES = (
    "gdn_gating",
    "gdn_prep",
    "l2norm",
    "chunk_kkt_solve",
    "chunk_wu",
    "chunk_state",
    "chunk_output",
    "chunk_fused",
    "fused_recurrent",
    "fused_recurrent_gated",
    "packed_decode",
    "spec_decode",
)


class UnknownKernelError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


@cache
def kernel_specs() -> dict[str, KernelSpec]:
    specs: dict[str, KernelSpec] = {}
    for module in _MODULES:
        for spec in importlib.import_module(f"{__package__}.{module}").SPECS:
            assert spec.name not in specs, f"duplicate kernel name {spec.name}"
            specs[spec.name] = spec
    assert tuple(specs) == KERNEL_NAMES, (
        f"_registry.KERNEL_NAMES lists {KERNEL_NAMES}, the modules {tuple(specs)}"
    )
    return specs


def spec_by_name(name: str) -> KernelSpec:
    specs = kernel_specs()
    if name not in specs:
        raise UnknownKernelError(f"unknown kernel {name!r}; known kernels: {', '.join(specs)}")
    return specs[name]
