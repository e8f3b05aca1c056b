"""Shapes to tune for: the GDN layers of real models, at each tensor-parallel degree, over token buckets.

Real inference calls use bf16 q/k/v, a float32 gate and int32 cu_seqlens; the workloads say so, so the
tuned keys are the keys production looks up.
"""

from __future__ import annotations

from dataclasses import dataclass

from gdn_kernels import Workload


@dataclass(frozen=True)
class ModelShape:
    name: str
    H: int  # query/key heads of a GDN layer, unsharded
    HV: int  # value heads
    K: int = 128
    V: int = 128


MODELS: dict[str, ModelShape] = {
    m.name: m
    for m in (
        ModelShape("qwen3-next-80b-a3b", 16, 32),
        ModelShape("qwen3.5-35b-a3b", 16, 32),
        ModelShape("qwen3.5-122b-a10b", 16, 64),
        ModelShape("qwen3.5-397b-a17b", 16, 64),
    )
}
TENSOR_PARALLEL = (1, 2, 4, 8)
# Prefill: 64 tokens (one chunk) to 32768 (a long prompt); each power of two is a bucket.
PREFILL_TOKENS = tuple(2**i for i in range(6, 16))
# Decode: batches of 1 to 512 sequences, one token each.
DECODE_SEQUENCES = tuple(2**i for i in range(10))


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    workloads: tuple[Workload, ...]


def model_workloads(models: list[ModelShape], tp: tuple[int, ...] = TENSOR_PARALLEL) -> tuple[Workload, ...]:
    heads = sorted({(m.H // t, m.HV // t, m.K, m.V) for m in models for t in tp if m.H % t == 0})
    prefill = [Workload(H, HV, K, V, tokens=n, sequences=1) for H, HV, K, V in heads for n in PREFILL_TOKENS]
    decode = [
        Workload(H, HV, K, V, tokens=n, sequences=n, phase="decode")
        for H, HV, K, V in heads
        for n in DECODE_SEQUENCES
    ]
    return tuple(prefill + decode)


PRESETS: dict[str, Preset] = {
    "default": Preset(
        "default", "every model below at TP 1, 2, 4, 8", model_workloads(list(MODELS.values()))
    ),
    **{name: Preset(name, f"{name} at TP 1, 2, 4, 8", model_workloads([m])) for name, m in MODELS.items()},
    # The benchmark cases of flash-linear-attention's reference figures (ANCHORS.md): the first
    # shapes to tune on a new GPU, since every release is measured on them.
    "anchors": Preset(
        "anchors",
        "the prefill and decode cases the project is benchmarked on (K = V = 128)",
        (
            *(Workload(H, HV, 128, 128, tokens=8192) for H, HV in ((16, 64), (16, 32), (2, 8))),
            Workload(16, 64, 128, 128, tokens=32768),
            Workload(16, 64, 128, 128, tokens=8192, sequences=64),
            *(Workload(16, 64, 128, 128, tokens=n, sequences=n, phase="decode") for n in (1, 32, 256)),
            Workload(2, 8, 128, 128, tokens=256, sequences=256, phase="decode"),
        ),
    ),
    # Tiny shapes for CPU runs under TRITON_INTERPRET=1: a pipeline check, not a tuning run.
    "smoke": Preset(
        "smoke",
        "tiny shapes for CPU runs under the Triton interpreter",
        (
            Workload(1, 2, 32, 32, tokens=100, sequences=1),
            Workload(1, 2, 32, 32, tokens=3, sequences=3, phase="decode"),
        ),
    ),
}


class UnknownPresetError(ValueError):
    pass


def deployment_workloads(model: str, tp: int) -> tuple[Workload, ...]:
    """The prefill and decode workloads of one GPU of `model` served at tensor-parallel degree `tp`: its
    GDN layer's heads divided by `tp`, over the token and sequence buckets above."""
    if model not in MODELS:
        raise UnknownPresetError(f"unknown model {model!r}; known models: {', '.join(MODELS)}")
    shape = MODELS[model]
    if tp not in TENSOR_PARALLEL or shape.H % tp or shape.HV % tp:
        degrees = ", ".join(str(t) for t in TENSOR_PARALLEL if shape.H % t == 0 and shape.HV % t == 0)
        raise UnknownPresetError(f"--tp {tp}: {model} is sharded at TP {degrees}")
    return model_workloads([shape], (tp,))


def preset_by_name(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise UnknownPresetError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}") from None
