"""Where one call's GPU time goes: its CUDA work under torch.profiler, summed by kernel name.

Nothing here knows a pipeline's stages: whatever kernels a call launches (fused, added, renamed) come
back as rows, named as a reader would write them (`chunk_state_kernel`, not `_chunk_state_kernel` or a
demangled C++ signature). Used by scripts/bench_kernels.py (`--stages-breakdown`).
"""

from __future__ import annotations

import re

# Kineto's activity types that are work on the GPU; others on the device timeline (user annotations,
# CUPTI overhead records) would count the same time twice or count the profiler itself.
GPU_WORK = ("kernel", "gpu_memcpy", "gpu_memset")
# Triton < 3.0 appended its argument specialisation to a kernel's name: `_kernel_0d1d2d3de4c`.
_TRITON_SIGNATURE = re.compile(r"_(?:\d+[cde]+){2,}$")


def kernel_name(raw: str) -> str:
    """A profiler's kernel name as a reader writes it: no `void`, namespaces, template arguments,
    parameter lists, Triton signature suffixes or leading underscores."""
    name = raw.strip().removeprefix("void ").replace("(anonymous namespace)::", "")
    name = re.split(r"[<(]", name, maxsplit=1)[0].strip()  # templates, parameters, "(Device -> Device)"
    name = name.rsplit("::", 1)[-1]
    name = _TRITON_SIGNATURE.sub("", name)
    return name.lstrip("_") or raw.strip()


def kernel_breakdown(fn, calls: int = 1) -> dict:
    """Profile `calls` calls of `fn` (warm it first) with CUDA activity only and sum the GPU work by
    kernel name: {"total_ms", "launches", "dropped", "kernels": [{"kernel", "launches", "ms", "share"}]},
    per call, largest first. `dropped` counts records with a negative duration (CUPTI has handed back
    corrupt timestamps at a session's start), left out of the sums."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    sums: dict[str, list] = {}
    dropped = 0
    for event in prof.events():
        if event.device_type != torch.autograd.DeviceType.CUDA:
            continue
        kind = getattr(event, "activity_type", None)
        if isinstance(kind, str) and kind and kind not in GPU_WORK:
            continue
        us = event.time_range.end - event.time_range.start
        if us < 0:
            dropped += 1
            continue
        entry = sums.setdefault(kernel_name(event.name), [0, 0.0])
        entry[0] += 1
        entry[1] += us
    total_us = sum(us for _, us in sums.values())
    kernels = [
        {
            "kernel": name,
            "launches": count / calls,
            "ms": us / calls / 1e3,
            "share": us / total_us if total_us else 0.0,
        }
        for name, (count, us) in sorted(sums.items(), key=lambda item: -item[1][1])
    ]
    return {
        "total_ms": total_us / calls / 1e3,
        "launches": sum(count for count, _ in sums.values()) / calls,
        "dropped": dropped,
        "kernels": kernels,
    }


def format_breakdown(title: str, breakdown: dict, indent: str = "  ") -> str:
    """The breakdown as a small table: kernel, launches, ms, % of the total."""
    lines = [
        f"{indent}{title}: {breakdown['total_ms']:.4f} ms of GPU work in {breakdown['launches']:g} launches"
        + (f" ({breakdown['dropped']} corrupt records left out)" if breakdown["dropped"] else "")
    ]
    lines.append(f"{indent}  {'kernel':<48} {'launches':>8} {'ms':>9} {'%':>6}")
    for row in breakdown["kernels"]:
        lines.append(
            f"{indent}  {row['kernel'][:48]:<48} {row['launches']:>8g} {row['ms']:>9.4f} {100 * row['share']:>5.1f}%"
        )
    return "\n".join(lines)
