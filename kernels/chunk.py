"""Prefill of a Gated Delta Net layer: `chunk_gated_delta_rule`, the chunked algorithm in four stages.

    gc, Ai       = chunk_kkt_solve(k, g, β)            chunk-local cumsum of g; (I + A)⁻¹ per chunk
    w, u         = chunk_wu(k, v, β, gc, Ai)            the WY representation of the chunk's updates
    o, S         = chunk_state_output(q, k, w, u, gc, S₀) the state pass and the output: fused into one
                   sequential kernel, or split into chunk_state (h, v_new per chunk, sequentially) and
                   chunk_output (every chunk in parallel), as the table's FUSED says

Nothing here reads a tensor's values on the host: with cu_seqlens the chunk bookkeeping is built on the
device and grids are sized by upper bounds (kernels/_varlen.py), so a call never synchronises and can
be captured in a CUDA graph.
"""

from __future__ import annotations

import torch

from . import _varlen
from ._launch import compiles_ahead
from ._spec import CHUNK_SIZE
from .chunk_fused import chunk_state_output
from .chunk_kkt_solve import chunk_kkt_solve_unchecked
from .chunk_output import MAX_GRID_CHUNKS, output_like
from .chunk_state import MAX_HEAD_DIM
from .chunk_wu import chunk_wu_unchecked
from .l2norm import l2norm

# 16-bit inputs only: the kernels' matrix products take 16-bit operands with float32 accumulation;
# float32 q/k/v would run as tf32 (10 mantissa bits) and look more precise than they are.
SUPPORTED_DTYPES = (torch.bfloat16, torch.float16)
STATE_LAYOUTS = ("kv", "vk")  # [.., K, V] (this package, FLA) or [.., V, K] (vLLM, SGLang, FlashInfer)
STATE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _check_arguments(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    initial_state: torch.Tensor | None,
    cu_seqlens: torch.Tensor | None,
    state_layout: str = "kv",
    state_indices: torch.Tensor | None = None,
    inplace_final_state: bool = False,
    out: torch.Tensor | None = None,
) -> None:
    """Shapes, dtypes and devices only: the values stay on the device (reading them would sync)."""
    name = "chunk_gated_delta_rule"
    if q.dim() != 4:
        raise ValueError(f"{name}: q must be [B, T, H, K], got shape {tuple(q.shape)}")
    B, T, H, K = q.shape
    if k.shape != q.shape:
        raise ValueError(f"{name}: k must have q's shape {tuple(q.shape)}, got {tuple(k.shape)}")
    if v.dim() != 4 or v.shape[:2] != (B, T):
        raise ValueError(f"{name}: v must be [B, T, HV, V] = [{B}, {T}, HV, V], got {tuple(v.shape)}")
    HV = v.shape[2]
    if HV % H:
        raise ValueError(f"{name}: v's heads HV = {HV} must be a multiple of q's heads H = {H}")
    if T == 0 or HV == 0 or v.shape[3] == 0:
        raise ValueError(f"{name}: q and v must not be empty, got q {tuple(q.shape)} and v {tuple(v.shape)}")
    if not 1 <= K <= MAX_HEAD_DIM:
        raise ValueError(f"{name}: q's head dim K must be in 1..{MAX_HEAD_DIM}, got {K}")
    if g.shape != (B, T, HV):
        raise ValueError(f"{name}: g must be [B, T, HV] = [{B}, {T}, {HV}], got {tuple(g.shape)}")
    if beta.shape != (B, T, HV):
        raise ValueError(f"{name}: beta must be [B, T, HV] = [{B}, {T}, {HV}], got {tuple(beta.shape)}")
    for arg, t in (("q", q), ("k", k), ("v", v)):
        if t.dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"{name}: {arg} must be bfloat16 or float16, got {t.dtype}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"{name}: q, k and v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if g.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"{name}: g must be float32 (or 16-bit, cast to float32), got {g.dtype}")
    if beta.dtype not in (torch.float32, q.dtype):
        raise ValueError(f"{name}: beta must be float32 or q's dtype {q.dtype}, got {beta.dtype}")
    N = B
    if cu_seqlens is not None:
        # Its values too where they are on the host; on a GPU the varlen guard makes them safe instead.
        N = _varlen.check_cu_seqlens(cu_seqlens, T, name, q.device)
        if B != 1:
            raise ValueError(f"{name}: with cu_seqlens the batch must be packed into B == 1, got B = {B}")
    if state_layout not in STATE_LAYOUTS:
        raise ValueError(
            f"{name}: state_layout must be 'kv' ([.., K, V]) or 'vk' ([.., V, K]), got {state_layout!r}"
        )
    V = v.shape[3]
    if state_indices is not None:
        if initial_state is None:
            raise ValueError(f"{name}: state_indices needs initial_state (the state pool it indexes)")
        if state_indices.shape != (N,) or state_indices.dtype not in (torch.int32, torch.int64):
            raise ValueError(
                f"{name}: state_indices must be int32/int64 [N={N}], got {state_indices.dtype} {tuple(state_indices.shape)}"
            )
    if inplace_final_state and initial_state is None:
        raise ValueError(f"{name}: inplace_final_state=True needs initial_state to write into")
    if initial_state is not None:
        inner = (HV, K, V) if state_layout == "kv" else (HV, V, K)
        rows = "slots" if state_indices is not None else N
        if (
            initial_state.dim() != 4
            or tuple(initial_state.shape[1:]) != inner
            or (state_indices is None and initial_state.shape[0] != N)
        ):
            raise ValueError(
                f"{name}: initial_state must be [{rows}, {', '.join(map(str, inner))}] "
                f"(state_layout={state_layout!r}: [.., HV, {'K, V' if state_layout == 'kv' else 'V, K'}]), "
                f"got {tuple(initial_state.shape)}"
            )
        if initial_state.dtype not in STATE_DTYPES:
            raise ValueError(
                f"{name}: initial_state must be float32, bfloat16 or float16, got {initial_state.dtype}"
            )
        if initial_state.shape[0] and not initial_state[0].is_contiguous():
            raise ValueError(
                f"{name}: each slot of initial_state must be contiguous (strides {initial_state.stride()})"
            )
    if out is not None and (out.shape != v.shape or out.dtype != v.dtype or not out.is_contiguous()):
        raise ValueError(
            f"{name}: out must be a contiguous {v.dtype} {tuple(v.shape)}, got {out.dtype} {tuple(out.shape)}"
        )
    if _varlen.max_chunks(B * T, N, CHUNK_SIZE) > MAX_GRID_CHUNKS:
        raise ValueError(
            f"{name}: {B * T} tokens in {N} sequences exceed {MAX_GRID_CHUNKS} chunks of {CHUNK_SIZE}"
        )
    named = {
        "q": q,
        "k": k,
        "v": v,
        "g": g,
        "beta": beta,
        "initial_state": initial_state,
        "cu_seqlens": cu_seqlens,
        "state_indices": state_indices,
        "out": out,
    }
    for arg, t in named.items():
        if t is not None and t.device != q.device:
            raise ValueError(f"{name}: {arg} is on {t.device}, q on {q.device}; all must share a device")


@compiles_ahead
def chunk_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    use_qk_l2norm_in_kernel: bool = False,
    *,
    state_layout: str = "kv",
    state_indices: torch.Tensor | None = None,
    inplace_final_state: bool = False,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gated delta rule over whole prompts → (o [B,T,HV,V] in v's dtype, final_state or None).

    q, k [B,T,H,K] and v [B,T,HV,V] in bf16 or fp16 (HV a multiple of H: query/key head h serves value
    heads h·HV/H onwards); g [B,T,HV] float32 log-decay (≤ 0; 16-bit is cast); beta [B,T,HV] float32 or
    q's dtype; scale defaults to K^-0.5. With cu_seqlens (an int32 or int64 tensor [N+1] on q's device,
    B == 1) the sequences are packed along T; its values must start at 0, never decrease and end at T:
    checked for a CPU tensor; on a GPU not read (that would synchronise) unless
    GDN_TUNE_CHECK_CU_SEQLENS=1, and tokens that no sequence covers come back as zeros.
    use_qk_l2norm_in_kernel normalises q and k over K first.

    States are [.., HV, K, V] for state_layout="kv" (the default), [.., HV, V, K] for "vk" (vLLM's and
    SGLang's caches), in float32, bfloat16 or float16 (read into float32). A [K, V] state passed as
    "vk" cannot be told apart when K = V: name the layout the state really has. initial_state is
    [N,HV,..], or with state_indices (int32/int64 [N]) a pool [slots,HV,..] whose slot state_indices[n]
    sequence n starts from (a negative index: zeros, and nothing is written back). final_state: with
    inplace_final_state, initial_state itself with each sequence's final state written into the slot
    it was read from (the pool's dtype); else with output_final_state a new float32 [N,HV,..]; else
    None. `out` (o's shape and dtype, contiguous) receives o instead of a new tensor.
    """
    _check_arguments(
        q, k, v, g, beta, initial_state, cu_seqlens, state_layout, state_indices, inplace_final_state, out
    )
    T, K = q.shape[1], q.shape[3]
    scale = K**-0.5 if scale is None else float(scale)
    q, k, v, beta = q.contiguous(), k.contiguous(), v.contiguous(), beta.contiguous()
    # The decay is cumulated in float32; a 16-bit gate is cast here, so the kernels compile one variant
    # whatever the caller's gate dtype (a warm-up with another dtype must not leave a compile for later).
    g = g.contiguous() if g.dtype == torch.float32 else g.float()
    chunk_indices = chunk_offsets = None
    o = out
    if cu_seqlens is not None:
        # o first: the varlen guard zeroes its rows outside every sequence, and hands the kernels an int32
        # cu_seqlens that cannot point outside the tokens (kernels/_varlen.py).
        if o is None:
            o = output_like(v)  # v_new, which chunk_output's own o would copy, has v's shape and dtype
        cu_seqlens, chunk_offsets, chunk_indices = _varlen.prepare_varlen(cu_seqlens, T, CHUNK_SIZE, o)
    if use_qk_l2norm_in_kernel:
        q, k = l2norm(q), l2norm(k)

    # Arguments were checked once above; the stages skip their own checks.
    gc, Ai = chunk_kkt_solve_unchecked(k, g, beta, cu_seqlens, chunk_indices)
    w, u = chunk_wu_unchecked(k, v, beta, gc, Ai, cu_seqlens, chunk_indices)
    o, final_state = chunk_state_output(
        q,
        k,
        w,
        u,
        gc,
        scale,
        initial_state=initial_state,
        output_final_state=output_final_state,
        cu_seqlens=cu_seqlens,
        chunk_offsets=chunk_offsets,
        chunk_indices=chunk_indices,
        state_layout=state_layout,
        state_indices=state_indices,
        inplace_final_state=inplace_final_state,
        out=o,
    )
    return o, final_state
