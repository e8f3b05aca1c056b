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
# The serving engines' decode paths (gates in the kernel, the packed projection, speculative decoding)
# keep [.., V, K] caches: vLLM's in the model's dtype by default (mamba_ssm_cache_dtype "auto", bf16),
# SGLang's in float32. Fewer batch buckets than the plain path: between them the nearest bucket's
# config serves (neighbouring buckets' winners differed by ≤ 5 % in the plain path's sweep).
SERVING_STATES = (("bfloat16", "vk"), ("float32", "vk"))
SERVING_SEQUENCES = (1, 4, 16, 64, 256, 512)
# Speculative decoding (MTP, EAGLE): 2 to 8 draft tokens per sequence, on smaller batches.
DRAFT_TOKENS = (2, 4, 8)
DRAFT_SEQUENCES = (1, 8, 64, 256)


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
    serving = [
        Workload(H, HV, K, V, tokens=n, sequences=n, phase=phase, state_dtype=dtype, state_layout=layout)
        for H, HV, K, V in heads
        for phase, states in (("decode_gated", SERVING_STATES), ("decode_packed", SERVING_STATES[:1]))
        for dtype, layout in states
        for n in SERVING_SEQUENCES
    ]
    speculative = [
        Workload(
            H,
            HV,
            K,
            V,
            tokens=n * s,
            sequences=n,
            phase="spec_decode",
            state_dtype="bfloat16",
            state_layout="vk",
        )
        for H, HV, K, V in heads
        for n in DRAFT_SEQUENCES
        for s in DRAFT_TOKENS
    ]
    return tuple(prefill + decode + serving + speculative)


PRESETS: dict[str, Preset] = {
    "default": Preset(
        "default", "every model below at TP 1, 2, 4, 8", model_workloads(list(MODELS.values()))
    ),
    **{name: Preset(name, f"{name} at TP 1, 2, 4, 8", model_workloads([m])) for name, m in MODELS.items()},
    # Every head configuration of the default preset at a few buckets, for the kernels whose sources
    # change: what one GPU sweeps in minutes, the nearest bucket's entry serving the rest.
    "sparse": Preset(
        "sparse",
        "every model's heads at TP 1-8, fewer buckets: prefill 1k/8k/32k tokens, decode 1/16/256 "
        "sequences, speculative 8 and 64 sequences × 4 tokens",
        tuple(
            w
            for w in model_workloads(list(MODELS.values()))
            if (w.phase == "prefill" and w.tokens in (1024, 8192, 32768))
            or (w.phase in ("decode", "decode_gated") and w.sequences in (1, 16, 256))
            or (w.phase == "decode_packed" and w.sequences in (1, 256))
            or (w.phase == "spec_decode" and w.sequences in (8, 64) and w.tokens == 4 * w.sequences)
        ),
    ),
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
            *(
                Workload(
                    H,
                    HV,
                    128,
                    128,
                    tokens=256,
                    sequences=256,
                    phase=phase,
                    state_dtype="bfloat16",
                    state_layout="vk",
                )
                for H, HV in ((16, 64), (2, 8))
                for phase in ("decode_gated", "decode_packed")
            ),
            Workload(
                16,
                64,
                128,
                128,
                tokens=256,
                sequences=64,
                phase="spec_decode",
                state_dtype="bfloat16",
                state_layout="vk",
            ),
        ),
    ),
    # Tiny shapes for CPU runs under TRITON_INTERPRET=1: a pipeline check, not a tuning run.
    "smoke": Preset(
        "smoke",
        "tiny shapes for CPU runs under the Triton interpreter",
        (
            Workload(1, 2, 32, 32, tokens=100, sequences=1),
            Workload(1, 2, 32, 32, tokens=3, sequences=3, phase="decode"),
            *(
                Workload(
                    1,
                    2,
                    32,
                    32,
                    tokens=3,
                    sequences=3,
                    phase=phase,
                    state_dtype="bfloat16",
                    state_layout="vk",
                )
                for phase in ("decode_gated", "decode_packed")
            ),
            Workload(
                1,
                2,
                32,
                32,
                tokens=6,
                sequences=3,
                phase="spec_decode",
                state_dtype="bfloat16",
                state_layout="vk",
            ),
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
