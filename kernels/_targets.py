"""GPU targets the tables are made for, and how a present GPU maps to one.

Shared memory is the opt-in maximum per block (cudaDevAttrMaxSharedMemoryPerBlockOptin), the bound a
config's shared-memory need is checked against before it is ever launched.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GpuTarget:
    name: str  # what `--gpu` takes
    arch: str  # folder of tuned_configs/
    capability: tuple[int, int]
    shared_memory_per_block: int  # bytes, opt-in maximum
    sm_count: int
    device_name_marker: str  # substring of torch.cuda.get_device_name() that identifies it

    @property
    def cc(self) -> int:
        """Compute capability as Triton's GPUTarget takes it (9.0 -> 90)."""
        return self.capability[0] * 10 + self.capability[1]


TARGETS: dict[str, GpuTarget] = {
    t.name: t
    for t in (
        GpuTarget("a100", "sm80", (8, 0), 166_912, 108, "A100"),
        GpuTarget("h100", "sm90", (9, 0), 232_448, 132, "H100"),
        GpuTarget("h200", "sm90", (9, 0), 232_448, 132, "H200"),
        GpuTarget("b200", "sm100", (10, 0), 232_448, 148, "B200"),
        GpuTarget("rtx5090", "sm120", (12, 0), 101_376, 170, "5090"),
    )
}

ARCH_BY_CAPABILITY: dict[tuple[int, int], str] = {t.capability: t.arch for t in TARGETS.values()}
ARCHS: tuple[str, ...] = tuple(sorted(set(ARCH_BY_CAPABILITY.values()), key=lambda a: int(a[2:])))


class UnknownTargetError(ValueError):
    pass


def target_by_name(name: str) -> GpuTarget:
    """The target called `name` (case-insensitive); the error lists the known names."""
    try:
        return TARGETS[name.lower()]
    except KeyError:
        raise UnknownTargetError(
            f"unknown GPU target {name!r}; known targets: {', '.join(TARGETS)}"
        ) from None


def target_for_device(device_name: str, capability: tuple[int, int]) -> GpuTarget | None:
    """The target matching a present GPU, by its name first, then by compute capability alone."""
    for target in TARGETS.values():
        if target.device_name_marker.lower() in device_name.lower() and target.capability == capability:
            return target
    return None


def arch_for_capability(capability: tuple[int, int]) -> str | None:
    return ARCH_BY_CAPABILITY.get(tuple(capability))
