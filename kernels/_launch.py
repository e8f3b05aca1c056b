"""The one place kernels are launched, so a launch can be recorded instead of run.

Recording is how configs get compiled for a GPU that is not present: a launcher runs on meta tensors,
its launch is captured (kernel, argument types, constexprs, options), and `compile_for_target` hands
that to Triton's compiler with an explicit target. The hot path pays one global read for it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ._spec import Config


@dataclass
class LaunchRecord:
    kernel: Any  # triton JITFunction
    args: dict[str, Any]  # every argument of the kernel, constexprs included
    num_warps: int
    num_stages: int


_recorder: list[LaunchRecord] | None = None


def launch(kernel: Any, grid: tuple[int, ...], config: Config, **args: Any) -> None:
    """Launch `kernel` on `grid` with the config's block sizes, warps and stages."""
    blocks = config.block_params()
    if _recorder is not None:
        _recorder.append(LaunchRecord(kernel, {**args, **blocks}, config.num_warps, config.num_stages))
        return
    kernel[grid](**args, **blocks, num_warps=config.num_warps, num_stages=config.num_stages)


@contextmanager
def recording() -> Iterator[list[LaunchRecord]]:
    """Within the block, `launch` records instead of running. Not thread-safe; compile workers are processes."""
    global _recorder
    previous, _recorder = _recorder, []
    try:
        yield _recorder
    finally:
        _recorder = previous


_TRITON_DTYPES = {
    "torch.float32": "fp32",
    "torch.float16": "fp16",
    "torch.bfloat16": "bf16",
    "torch.float64": "fp64",
    "torch.int32": "i32",
    "torch.int64": "i64",
    "torch.int8": "i8",
    "torch.uint8": "u8",
    "torch.bool": "i1",
}


def _signature(record: LaunchRecord) -> tuple[dict[str, str], dict[str, Any]]:
    signature: dict[str, str] = {}
    constexprs: dict[str, Any] = {}
    for p in record.kernel.params:
        value = record.args.get(p.name, p.default if p.has_default else None)
        if p.is_constexpr or value is None:
            signature[p.name] = "constexpr"
            constexprs[p.name] = value
        elif hasattr(value, "dtype") and hasattr(value, "data_ptr"):
            signature[p.name] = "*" + _TRITON_DTYPES[str(value.dtype)]
        elif isinstance(value, bool):
            signature[p.name] = "i1"
        elif isinstance(value, int):
            signature[p.name] = "i64" if abs(value) >= 2**31 else "i32"
        elif isinstance(value, float):
            signature[p.name] = "fp32"
        else:
            raise TypeError(f"{record.kernel.__name__}: cannot type argument {p.name}={value!r}")
    return signature, constexprs


def compile_for_target(record: LaunchRecord, cc: int) -> Any:
    """Compile a recorded launch for compute capability `cc` (90 for sm90); no GPU needed."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature, constexprs = _signature(record)
    source = ASTSource(record.kernel, signature=signature, constexprs=constexprs)
    options = {"num_warps": record.num_warps, "num_stages": record.num_stages}
    return triton.compile(source, target=GPUTarget("cuda", cc, 32), options=options)
