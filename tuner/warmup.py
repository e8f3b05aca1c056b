"""`gdn-tune warmup`: compile, into Triton's on-disk cache, every kernel variant a deployment will launch.

A variant is what Triton compiles once per process: one @triton.jit function with one set of
constexprs (the table's config among them), argument dtypes, argument specialisation (pointers
16-byte aligned or not, integers equal to 1 or divisible by 16) and launch options. Production's first
call of a new variant compiles it (seconds) unless Triton's on-disk cache already holds it, in which
case it loads the binary (milliseconds). This module fills that cache before the server starts.

How, and why this way rather than calling the public functions on real GPU tensors:

1. **Plan** (`plan_warmup`, one process). For each workload of the presets, the *public functions* a
   model calls (`fused_gdn_gating`, `gdn_prefill_prep`, `chunk_gated_delta_rule` with the call profile's
   flags, `fused_recurrent_gated_delta_rule`) run on meta tensors inside `gdn_kernels.tuning.recording()`.
   The tables resolve exactly as for the local GPU (same arch and device folder), so every launch is
   recorded with production's config, constexprs, dtypes and flags, by production's own code: nothing
   is rebuilt by hand. Triton specialises integer arguments on `== 1` and on divisibility by 16, and a
   token bucket holds counts of every residue, so each bucket is called with its top 16 counts (and 1
   where the bucket holds it); the launches are then deduplicated (a few hundred variants for the
   default preset instead of one per call).
2. **Compile** (`run_warmup`, `--jobs` compile workers, `gdn_tune.compile`'s one protocol). Each variant goes through Triton's own JIT entry,
   `JITFunction.warmup(...)` (`run(warmup=True)`: the same binder, specialisation and cache key as a
   launch, minus the launch), by `gdn_kernels.tuning.compile_for_target`, which the sweep's compile
   check shares: it compiles under a compile-only driver that reports the target GPU and touches no
   CUDA. Workers need no context and no GPU memory, start in about a second, scale with CPU cores, and a machine without the GPU can fill a cache for it. Meta tensors have data pointer 0,
   i.e. 16-byte aligned, as every tensor the public functions allocate or make contiguous is (the
   CUDA caching allocator aligns to 512 bytes).

3. **Beyond the binary.** A process's first launch of a kernel also builds Triton's C launcher for its
   argument signature and, once, the driver's C utilities (C compiles, ~0.3 s each), and computes
   Triton's cache key, whose hash of Triton's installation costs ~0.35 s per process. Each worker
   builds the launchers into the cache (where libcuda is installed: on the GPU host) and writes a warm
   entry per binary (`gdn_kernels.tuning.remember`) that a first launch loads without that key. On the
   H200 the first forward call after warmup went from 1.9-2.1 s to 0.13-0.15 s.

4. **A deployment's terms, and beyond the cache.** `--model NAME --tp N` plans a model's shapes at its
   tensor-parallel degree with every call profile of `SERVING_CALLS` (the paths serving engines take);
   `--bundle DIR` also copies each binary, its warm entry and the C launchers into a folder that a
   fresh process loads through `GDN_TUNE_BINARY_DIR` (keyed by Triton installation, architecture and
   driver: `gdn_kernels.tuning.add_to_bundle`); `GDN_TUNE_COMPILE_GUARD=error` in the server then
   proves the warmup covered every call (the compile guard, `gdn_kernels.seal_compiles`).

Calling the public functions on real tensors in each worker would be exact by construction but costs a
CUDA context per process (about 500 MB each), real inputs (32768 tokens × 64 heads: GBs of h), and
compiles each shared variant once per process that meets it. The recorded path is verified instead:
`tests/test_warmup.py` (CPU: a variant warmed from meta tensors is a cache hit for the same call on real
tensors; GPU: production calls after `gdn-tune warmup` compile nothing) and `scripts/bench_cold_start.py`
(first forward call after warmup, with Triton's compilation listener counting cache misses).

What a plan cannot know: the strides of views a model passes where a kernel takes strides (the prep
kernel's `a`/`b` row stride is specialised on divisibility by 16: a model passing a [T, 2·HV] split at
HV = 8 gets stride 16 where the plan assumed 8), and flags a deployment sets differently from the call
profile. Such a call compiles its variant on first use, as without warmup; name the right profile.
Triton's cache key also covers its cache-invalidating environment variables (TRITON_DEFAULT_FP_FUSION,
TRITON_DISABLE_LINE_INFO, ...): run the warmup with the server's environment.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from gdn_kernels import Key, Workload, kernel_specs
from gdn_kernels.tuning import TablePlace, sequence_bucket, token_bucket

from .compile import (
    INT_ALIGNMENT,
    Variant,
    VariantResult,
    describe_launch,
    run_on_workers,
    specialisation_key,
    variant_request,
    variant_result,
    worker_environment,
)
from .specs import select_specs


@dataclass(frozen=True)
class CallProfile:
    """How a deployment calls the kernels. Each flag changes which variants compile.

    The defaults are a serving engine's calls (vLLM's Qwen3-Next and Qwen3.5 layers, ANCHORS.md):
    prefill packs prompts with int32 cu_seqlens, starts from a cached state, writes the final state
    and normalises q, k in the call; decode updates a state cache in place through slot indices.
    """

    varlen: bool = True  # prefill passes cu_seqlens (B == 1)
    initial_state: bool = True  # prefill passes initial_state
    output_final_state: bool = True
    qk_l2norm: bool = True  # use_qk_l2norm_in_kernel, prefill and decode
    beta_dtype: str = "float32"  # or the q/k/v dtype (chunk_gated_delta_rule accepts both)
    decode_state_cache: bool = True  # decode: ssm_state_indices into a cache, inplace_final_state
    index_dtype: str = "int32"  # cu_seqlens and ssm_state_indices: int32 (vLLM) or int64 (torch's default)
    gate_dtype: str = "float32"  # g as passed: float32, or the model's dtype (the kernels cast it)
    decode_varlen: bool = True  # decode passes cu_seqlens ([1, N] tokens) rather than [N, 1] batches

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def check(self) -> None:
        for name, allowed in (
            ("beta_dtype", ("float32", "bfloat16", "float16")),
            ("index_dtype", ("int32", "int64")),
            ("gate_dtype", ("float32", "bfloat16", "float16")),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"{name.replace('_', ' ')} must be {', '.join(allowed)}, got {getattr(self, name)!r}"
                )


# The calls serving engines make, one profile each: `gdn-tune warmup --model` warms their union, so a
# deployment's warm-up covers each path its engine may take. This is the one place to add a path: a
# state layout ("kv"/"vk") or state dtype becomes a CallProfile field and a row here once the public
# functions take it; a new public entry point (a fused-gating decode) becomes a call in
# `_prefill_calls`/`_decode_calls`. Rows that launch the same variants cost nothing (they deduplicate).
SERVING_CALLS: tuple[tuple[str, CallProfile], ...] = (
    # vLLM: packed prompts from cached states, final states written back; decode in place in the cache.
    ("vllm", CallProfile()),
    # vLLM's prefill normalises q, k in its post-conv prep and calls the rule without in-kernel l2norm.
    ("vllm-prenormalised", CallProfile(qk_l2norm=False)),
    # A prompt with no cached state (a fresh request), final state kept.
    ("fresh-prompt", CallProfile(initial_state=False)),
    # No state in or out (scoring, embedding): FLA's defaults.
    ("stateless", CallProfile(initial_state=False, output_final_state=False)),
    # SGLang and FLA callers: int64 cu_seqlens and slot indices (torch's default integer dtype).
    ("int64-indices", CallProfile(index_dtype="int64")),
    # Gates in the model's dtype: vLLM's fused_gdn_gating gives beta in b's dtype; a bf16 g is cast.
    ("bf16-gates", CallProfile(beta_dtype="bfloat16", gate_dtype="bfloat16")),
    # Decode of a batch [N, 1] returning a new final state (FLA's fused_recurrent call, no cache).
    ("batch-decode", CallProfile(decode_state_cache=False, decode_varlen=False)),
)


@dataclass(frozen=True)
class PlannedKey:
    """One (kernel, workload): the key the workload resolves, the config the tables give it, and how."""

    kernel: str
    workload: str
    key: Key
    config: str
    source: str  # "exact", "nearest", "default" or "unreached" (no call of the plan resolved it)

    def as_dict(self) -> dict[str, Any]:
        return {
            "kernel": self.kernel,
            "workload": self.workload,
            "key": self.key.label,
            "config": self.config,
            "source": self.source,
        }


@dataclass
class WarmupPlan:
    target: str  # what the tables resolved as: "sm90 (NVIDIA_H200)"
    capability: int  # 90: what the workers compile for
    profiles: list[CallProfile]  # the calls planned, each over every workload
    workloads: list[str]
    keys: list[PlannedKey]
    variants: list[Variant]
    calls: int  # public calls recorded
    plan_seconds: float

    @property
    def profile(self) -> CallProfile:
        """The first call profile (the only one unless `--model` planned the serving calls)."""
        return self.profiles[0]

    @property
    def unreached(self) -> list[PlannedKey]:
        return [k for k in self.keys if k.source == "unreached"]

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "capability": self.capability,
            "profile": self.profile.as_dict(),
            "profiles": [p.as_dict() for p in self.profiles],
            "workloads": self.workloads,
            "keys": [k.as_dict() for k in self.keys],
            "variants": [v.as_dict() | {"label": v.label} for v in self.variants],
            "calls": self.calls,
            "plan_seconds": round(self.plan_seconds, 3),
        }


@dataclass
class WarmupResult:
    cache_dir: str
    jobs: int
    wall_seconds: float
    results: list[VariantResult] = field(default_factory=list)
    bundle: dict[str, Any] | None = None  # the manifest of the bundle written, if one was

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for r in self.results:
            counts[r.status] = counts.get(r.status, 0) + 1
        return dict(sorted(counts.items()))

    def launchers_missing(self) -> list[str]:
        """Why launchers were not built (each reason once), e.g. no libcuda on a machine without a GPU."""
        return sorted({r.launcher for r in self.results if r.status != "failed" and r.launcher != "built"})

    @property
    def failed(self) -> list[VariantResult]:
        return [r for r in self.results if r.status == "failed"]

    def as_dict(self) -> dict[str, Any]:
        return {
            "cache_dir": self.cache_dir,
            "jobs": self.jobs,
            "wall_seconds": round(self.wall_seconds, 3),
            "counts": self.counts(),
            "launchers_missing": self.launchers_missing(),
            "compile_seconds": round(sum(r.seconds for r in self.results), 3),
            "bundle": self.bundle,
            "results": [asdict(r) for r in self.results],
        }


# --------------------------------------------------------------------------------------------------
# Planning: the public functions on meta tensors, launches recorded


def counts_in_bucket(count: int, bucket: Callable[[int], int], lowest: int) -> list[int]:
    """Counts sharing `count`'s bucket that meet every specialisation class Triton distinguishes:
    the bucket's top INT_ALIGNMENT counts (every residue mod 16) and 1 when the bucket holds it.

    `lowest` is the smallest count the bucket function maps to the lowest bucket (1 for both buckets
    here); a bucket b holds (b/2, b], the lowest bucket [lowest, b].
    """
    top = bucket(count)
    floor = lowest if bucket(lowest) == top else top // 2 + 1
    chosen = {c for c in range(top - INT_ALIGNMENT + 1, top + 1) if c >= floor}
    if floor == lowest:
        chosen.add(lowest)
    return sorted(chosen)


# A planned call: the CallProfile fields it reads (two profiles that agree on them make the same call,
# which is planned once) and the call itself.
PlannedCall = tuple[tuple[str, ...], Callable[[], Any]]


def _prefill_calls(workload: Workload, tokens: int, profile: CallProfile) -> list[PlannedCall]:
    """The prefill calls of one layer at `tokens`, on meta tensors: gates, fused prep, chunked rule."""
    import torch

    import gdn_kernels

    meta = torch.device("meta")
    dtype = getattr(torch, workload.dtype)
    f32 = torch.float32
    H, HV, K, V = workload.H, workload.HV, workload.K, workload.V
    sequences = max(1, min(workload.sequences, tokens))
    empty = lambda *shape, dt=dtype: torch.empty(*shape, dtype=dt, device=meta)
    if profile.varlen:
        batch, length = 1, tokens
        cu_seqlens = empty(sequences + 1, dt=getattr(torch, profile.index_dtype))
    else:
        batch, length = sequences, -(-tokens // sequences)
        cu_seqlens = None
    A_log, dt_bias = empty(HV, dt=f32), empty(HV, dt=f32)
    a, b = empty(tokens, HV), empty(tokens, HV)
    mixed_qkv = empty(tokens, 2 * H * K + HV * V)
    q, k = empty(batch, length, H, K), empty(batch, length, H, K)
    v = empty(batch, length, HV, V)
    g = empty(batch, length, HV, dt=getattr(torch, profile.gate_dtype))
    beta = empty(batch, length, HV, dt=getattr(torch, profile.beta_dtype))
    state_shape = (sequences, HV, K, V) if workload.state_layout == "kv" else (sequences, HV, V, K)
    state_dtype = getattr(torch, workload.state_dtype)
    initial_state = empty(*state_shape, dt=state_dtype) if profile.initial_state else None
    rule_reads = (
        "varlen",
        "index_dtype",
        "gate_dtype",
        "beta_dtype",
        "initial_state",
        "output_final_state",
        "qk_l2norm",
    )
    return [
        ((), lambda: gdn_kernels.fused_gdn_gating(A_log, a, b, dt_bias)),
        ((), lambda: gdn_kernels.gdn_prefill_prep(mixed_qkv, a, b, A_log, dt_bias, H, HV, K, V)),
        (
            rule_reads,
            lambda: gdn_kernels.chunk_gated_delta_rule(
                q,
                k,
                v,
                g,
                beta,
                initial_state=initial_state,
                output_final_state=profile.output_final_state,
                cu_seqlens=cu_seqlens,
                use_qk_l2norm_in_kernel=profile.qk_l2norm,
                state_layout=workload.state_layout,
            ),
        ),
    ]


def _decode_calls(workload: Workload, sequences: int, profile: CallProfile) -> list[PlannedCall]:
    """One decode step of `sequences` sequences (one token each), on meta tensors: gates, recurrence."""
    import torch

    import gdn_kernels

    meta = torch.device("meta")
    dtype = getattr(torch, workload.dtype)
    f32 = torch.float32
    H, HV, K, V = workload.H, workload.HV, workload.K, workload.V
    empty = lambda *shape, dt=dtype: torch.empty(*shape, dtype=dt, device=meta)
    index = getattr(torch, profile.index_dtype)
    A_log, dt_bias = empty(HV, dt=f32), empty(HV, dt=f32)
    a, b = empty(sequences, HV), empty(sequences, HV)
    # [1, N] tokens with cu_seqlens (serving engines), or a batch of N sequences of one token.
    batch, length = (1, sequences) if profile.decode_varlen else (sequences, 1)
    q, k = empty(batch, length, H, K), empty(batch, length, H, K)
    v = empty(batch, length, HV, V)
    g = empty(batch, length, HV, dt=getattr(torch, profile.gate_dtype))
    beta = empty(batch, length, HV, dt=getattr(torch, profile.beta_dtype))
    cu_seqlens = empty(sequences + 1, dt=index) if profile.decode_varlen else None
    inner = (HV, K, V) if workload.state_layout == "kv" else (HV, V, K)
    state_dtype = getattr(torch, workload.state_dtype)
    if profile.decode_state_cache:
        # A cache with more slots than running sequences, gathered and updated in place by slot index.
        state, indices = empty(2 * sequences, *inner, dt=state_dtype), empty(sequences, dt=index)
    else:
        state, indices = empty(sequences, *inner, dt=state_dtype), None
    recurrence_reads = (
        "decode_varlen",
        "decode_state_cache",
        "index_dtype",
        "gate_dtype",
        "beta_dtype",
        "qk_l2norm",
    )
    return [
        ((), lambda: gdn_kernels.fused_gdn_gating(A_log, a, b, dt_bias)),
        (
            recurrence_reads,
            lambda: gdn_kernels.fused_recurrent_gated_delta_rule(
                q,
                k,
                v,
                g,
                beta,
                initial_state=state,
                output_final_state=True,
                cu_seqlens=cu_seqlens,
                use_qk_l2norm_in_kernel=profile.qk_l2norm,
                ssm_state_indices=indices,
                inplace_final_state=profile.decode_state_cache,
                state_layout=workload.state_layout,
            ),
        ),
    ]


def _serving_decode_calls(workload: Workload, sequences: int, profile: CallProfile) -> list[PlannedCall]:
    """The serving engines' decode step (phases decode_gated, decode_packed, spec_decode) of `sequences`
    sequences, on meta tensors, as their compat entry points make it: gates computed in the kernel, the
    whole cache in the workload's state dtype and layout, updated in place through slot indices; packed:
    q, k, v read from the fused projection, o into `out`, NULL_BLOCK_ID 0 as padding; speculative:
    `tokens / sequences` draft tokens per sequence, 2-D slot indices and accepted-token counts."""
    import torch

    import gdn_kernels

    meta = torch.device("meta")
    dtype = getattr(torch, workload.dtype)
    f32 = torch.float32
    H, HV, K, V = workload.H, workload.HV, workload.K, workload.V
    empty = lambda *shape, dt=dtype: torch.empty(*shape, dtype=dt, device=meta)
    index = getattr(torch, profile.index_dtype)
    drafts = -(-workload.tokens // max(1, workload.sequences)) if workload.phase == "spec_decode" else 1
    tokens = sequences * drafts
    inner = (HV, K, V) if workload.state_layout == "kv" else (HV, V, K)
    cache = empty(2 * tokens, *inner, dt=getattr(torch, workload.state_dtype))
    gates = {
        "use_gate_in_kernel": True,
        "A_log": empty(HV, dt=f32),
        "dt_bias": empty(HV, dt=f32),
        "use_beta_sigmoid_in_kernel": True,
    }
    a, b = empty(1, tokens, HV), empty(1, tokens, HV)
    common = {
        "initial_state": cache,
        "inplace_final_state": True,
        "use_qk_l2norm_in_kernel": True,
        "state_layout": workload.state_layout,
        **gates,
    }
    if workload.phase == "decode_packed":
        mixed = empty(tokens, 2 * H * K + HV * V)
        q = mixed[:, : H * K].unflatten(1, (H, K))[:, None]
        k = mixed[:, H * K : 2 * H * K].unflatten(1, (H, K))[:, None]
        v = mixed[:, 2 * H * K :].unflatten(1, (HV, V))[:, None]
        out = empty(tokens, 1, HV, V)
        call = lambda: gdn_kernels.fused_recurrent_gated_delta_rule(
            q, k, v, a.view(tokens, 1, HV), b.view(tokens, 1, HV),
            ssm_state_indices=empty(tokens, dt=index), null_slot=0, out=out, **common,
        )  # fmt: skip
    else:
        q, k, v = empty(1, tokens, H, K), empty(1, tokens, H, K), empty(1, tokens, HV, V)
        extra = {"ssm_state_indices": empty(sequences, dt=index)}
        if workload.phase == "spec_decode":
            extra = {
                "ssm_state_indices": empty(sequences, drafts, dt=index),
                "num_accepted_tokens": empty(sequences, dt=index),
            }
        call = lambda: gdn_kernels.fused_recurrent_gated_delta_rule(
            q, k, v, a, b, cu_seqlens=empty(sequences + 1, dt=index), **extra, **common
        )
    return [(("index_dtype",), call)]


_SERVING_DECODE_PHASES = ("decode_gated", "decode_packed", "spec_decode")


def _variant_of(record: Any, kernel_names: dict[int, str]) -> Variant | None:
    name = kernel_names.get(id(record.kernel))
    return None if name is None else describe_launch(record, name)


def plan_warmup(
    workloads: Iterable[Workload],
    place: TablePlace,
    capability: int,
    target: str,
    kernels: Sequence[str] | None = None,
    profile: CallProfile | Sequence[CallProfile] = CallProfile(),
) -> WarmupPlan:
    """Every variant the calls of `workloads`, made as `profile` (or each of several profiles) says,
    launch on a GPU at `place` (see the module doc).

    Refuses under TRITON_INTERPRET=1: the kernels would then take their interpreter paths (constexpr
    INTERPRETED flags) and record variants no GPU ever runs.
    """
    import torch

    from gdn_kernels.tuning import recording, resolution_report, resolving_as

    specs = select_specs(kernels, kernel_specs())
    profiles = [profile] if isinstance(profile, CallProfile) else list(dict.fromkeys(profile))
    for each in profiles:
        each.check()
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise ValueError("warmup plans compiled GPU launches; unset TRITON_INTERPRET (it is 1 here)")
    started = time.monotonic()
    workloads = list(dict.fromkeys(workloads))
    # A kernel several specs share (the decode variants) is named after the first, its own module's.
    kernel_names: dict[int, str] = {}
    for name, spec in specs.items():
        for fn in spec.jit_functions:
            kernel_names.setdefault(id(fn), name)
    variants: dict[tuple, Variant] = {}
    made: set[tuple] = set()  # (workload, count, call, the profile fields it reads): made once
    # Meta tensors resolve as the GPU at `place` would, and forget it after the block.
    with resolving_as("meta", place):
        for workload in workloads:
            if not any(workload.phase in spec.phases for spec in specs.values()):
                continue
            if workload.phase == "decode":
                counts = counts_in_bucket(workload.sequences, sequence_bucket, 1)
                make_calls = _decode_calls
            elif workload.phase in _SERVING_DECODE_PHASES:
                counts = counts_in_bucket(workload.sequences, sequence_bucket, 1)
                make_calls = _serving_decode_calls
            else:
                counts = counts_in_bucket(workload.tokens, token_bucket, 1)
                make_calls = _prefill_calls
            for count in counts:
                for each in profiles:
                    for i, (reads, call) in enumerate(make_calls(workload, count, each)):
                        made_as = (workload, count, i, tuple(getattr(each, f) for f in reads))
                        if made_as in made:
                            continue
                        made.add(made_as)
                        with recording() as records:
                            call()
                        for record in records:
                            variant = _variant_of(record, kernel_names)
                            if variant is not None:
                                variants.setdefault(specialisation_key(variant), variant)
        resolved = {
            (r.kernel, r.key): r for r in resolution_report() if torch.device(r.device).type == "meta"
        }
    keys = []
    for workload in workloads:
        for name, spec in specs.items():
            if workload.phase not in spec.phases:
                continue
            key = spec.key_for(workload)
            resolution = resolved.get((name, key))
            keys.append(
                PlannedKey(
                    name,
                    workload.label + ("" if workload.phase == "prefill" else f"-{workload.phase}"),
                    key,
                    resolution.config.label if resolution else "",
                    resolution.source if resolution else "unreached",
                )
            )
    return WarmupPlan(
        target=target,
        capability=capability,
        profiles=profiles,
        workloads=[w.label for w in workloads],
        keys=keys,
        variants=list(variants.values()),
        calls=len(made),
        plan_seconds=time.monotonic() - started,
    )


def triton_cache_dir(cache_dir: str | None) -> str:
    if cache_dir:
        return str(cache_dir)
    import triton

    return os.environ.get("TRITON_CACHE_DIR") or triton.knobs.cache.dir


def run_warmup(
    plan: WarmupPlan,
    jobs: int | None = None,
    cache_dir: str | None = None,
    progress: Callable[[int, int, VariantResult], None] | None = None,
    bundle: str | None = None,
) -> WarmupResult:
    """Compile every variant of `plan` into Triton's cache (`cache_dir`, else $TRITON_CACHE_DIR, else
    Triton's default) with `jobs` worker processes (default: one per CPU core, at most one per variant),
    and with `bundle` into that bundle folder too, closed by its manifest once every variant is done.

    The heaviest kernels go first so the last worker does not start the slowest compile alone. A
    worker that dies takes only its variant down (recorded failed) and is replaced.
    """
    started = time.monotonic()
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(plan.variants) or 1))
    heavy_first = sorted(plan.variants, key=lambda v: (not v.kernel.startswith("chunk"), v.kernel))
    results: list[VariantResult] = []

    def on_answer(variant: Variant, answer: dict[str, Any] | None, exit_code: int | None) -> None:
        if answer is None:
            error = f"worker died (exit code {exit_code})"
            results.append(VariantResult(variant.label, variant.kernel, "failed", 0.0, error=error))
        else:
            results.append(variant_result(variant, answer))
        if progress is not None:
            progress(len(results), len(plan.variants), results[-1])

    run_on_workers(
        [[variant] for variant in heavy_first],
        jobs,
        worker_environment(cache_dir),
        lambda variant: variant_request(variant, plan.capability, bundle),
        on_answer,
    )
    manifest = None
    if bundle is not None:
        from pathlib import Path

        from gdn_kernels.tuning import MODULES, write_bundle_manifest

        done = [r for r in results if r.status != "failed"]
        manifest = write_bundle_manifest(
            Path(bundle), plan.capability, len(done), len(list((Path(bundle) / MODULES).glob("*/*")))
        )
    return WarmupResult(triton_cache_dir(cache_dir), jobs, time.monotonic() - started, results, manifest)
