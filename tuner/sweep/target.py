"""Target resolution: the one place where a `--gpu` name, the word "auto", a present GPU or an arch
folder of the tables becomes a GPU target.

- `parse_target`: a `--gpu` name (any case) or "auto", as every command takes it.
- `resolve_target` and `check_gpus`: the target a sweep measures, which must be the GPU present.
- `local_place` and `target_place`: where the tables of the local GPU, or of a named target, are read
  from, and what warm-up compiles for.
- `target_for_table`: the target a table's entries are compiled for, from its arch and device folder.
"""

from __future__ import annotations

import os
from typing import Literal

from gdn_kernels import GpuTarget, target_by_name
from gdn_kernels.tuning import TARGETS, TablePlace, target_for_device

from ..constants import INTERPRETER_GPU_NAME

AUTO = "auto"


def parse_target(name: str | GpuTarget, allow_auto: bool = False) -> GpuTarget | Literal["auto"]:
    """The target called `name` (any case), or "auto" where allowed; UnknownTargetError (a ValueError)
    lists the known names."""
    if isinstance(name, GpuTarget):
        return name
    if allow_auto and name.lower() == AUTO:
        return AUTO
    return target_by_name(name)


class GpuMismatchError(ValueError):
    """--gpu names a target that is not the GPU present (or there is none)."""


def present_gpu() -> tuple[str, tuple[int, int]] | None:
    """Name and compute capability of GPU 0, or None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_name(0), tuple(torch.cuda.get_device_capability(0))  # type: ignore[return-value]


def resolve_target(requested: str | GpuTarget, interpret: bool) -> tuple[GpuTarget, str]:
    """The target to sweep and the name of the GPU doing it.

    `--gpu auto` takes the present GPU's target. Without --interpret the named target must be the
    present GPU: the error says what was found and which name matches it. Under --interpret no GPU is
    needed (trials run on the CPU); configs are still compiled for the named target.
    """
    found = present_gpu()
    parsed = parse_target(requested, allow_auto=True)
    if parsed == AUTO:
        if found is None:
            raise GpuMismatchError(
                "--gpu auto: no CUDA GPU found; name a target (gdn-tune targets) and add --interpret "
                "to run the sweep on the CPU"
            )
        match = target_for_device(*found)
        if match is None:
            raise GpuMismatchError(
                f"--gpu auto: no target matches the GPU present, {found[0]} "
                f"(compute capability {found[1][0]}.{found[1][1]}); known targets: {', '.join(TARGETS)}"
            )
        return match, found[0]
    target = parsed
    assert isinstance(target, GpuTarget)
    if interpret:
        return target, INTERPRETER_GPU_NAME
    if found is None:
        raise GpuMismatchError(
            f"--gpu {target.name}: no CUDA GPU found; run on a {target.name} or add --interpret"
        )
    match = target_for_device(*found)
    if match is None or match.name != target.name:
        hint = (
            f"--gpu {match.name} (or --gpu auto)"
            if match
            else f"none of the known targets ({', '.join(TARGETS)})"
        )
        raise GpuMismatchError(
            f"--gpu {target.name} does not match the GPU present: found {found[0]} "
            f"(compute capability {found[1][0]}.{found[1][1]}); it matches {hint}"
        )
    return target, found[0]


def check_gpus(worker_count: int, gpu_name: str) -> None:
    """One worker per GPU, every GPU the same model: two trials timed on one GPU at once slow each
    other, and a pick compares times that must come from alike GPUs."""
    import torch

    visible = torch.cuda.device_count()
    if worker_count > visible:
        raise ValueError(
            f"workers: {worker_count} workers but {visible} GPU(s) visible; a worker needs a GPU of its "
            "own (two trials timed on one GPU at once slow each other)"
        )
    names = [torch.cuda.get_device_name(i) for i in range(worker_count)]
    others = sorted({n for n in names if n != gpu_name})
    if others:
        raise GpuMismatchError(
            f"the GPUs of this host differ: {gpu_name} and {', '.join(others)}; choose alike ones with "
            "CUDA_VISIBLE_DEVICES (a pick compares times across the workers' GPUs)"
        )


def local_place(device_index: int | None = None) -> tuple[TablePlace, int, str]:
    """(tables place, compute capability as 90, description) of the local GPU, as production resolves it."""
    import torch

    from gdn_kernels.tuning import locate_tables

    if not torch.cuda.is_available():
        raise ValueError("--gpu auto needs a CUDA GPU; on a machine without one name the target (--gpu h200)")
    device = torch.device("cuda", torch.cuda.current_device() if device_index is None else device_index)
    place = locate_tables(device)
    major, minor = torch.cuda.get_device_capability(device)
    if place.arch is None:
        raise ValueError(f"no tables apply to this GPU: {place.why_none}")
    return (
        place,
        major * 10 + minor,
        f"{place.arch} ({place.device_folder or torch.cuda.get_device_name(device)})",
    )


def target_place(target_name: str | GpuTarget, device_name: str | None = None) -> tuple[TablePlace, int, str]:
    """(tables place, compute capability, description) of a named target, for a machine without it.

    `device_name` ("NVIDIA H200") selects the device folder of the tables as that GPU would.
    """
    from gdn_kernels.tuning import ENV_ARCH, device_folder_name

    target = parse_target(target_name)
    assert isinstance(target, GpuTarget)
    folder = device_folder_name(device_name) if device_name else None
    arch = os.environ.get(ENV_ARCH, "").strip() or target.arch
    return TablePlace(arch, folder), target.cc, f"{arch} ({folder or target.name})"


def target_for_table(arch: str, device_folder: str | None) -> GpuTarget:
    """The target a table's entries are compiled for: its GPU model when the folder names one, else the
    arch's target with the least shared memory (a config must fit every GPU of the arch)."""
    candidates = [t for t in TARGETS.values() if t.arch == arch]
    if device_folder is not None:
        named = [t for t in candidates if t.device_name_marker.lower() in device_folder.lower()]
        candidates = named or candidates
    return min(candidates, key=lambda t: (t.shared_memory_per_block, t.name))
