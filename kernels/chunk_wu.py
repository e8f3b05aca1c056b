"""w = Ai (β·exp(gc)·k) and u = Ai (β·v), chunk by chunk: the delta rule's keys and values, recomputed.

One program per (chunk of BT = 64 tokens, value head): it loads the chunk's 64×64 Ai once, then runs
the V columns of v in slices of BV and the K columns of k in slices of BK through one `tl.dot` each,
and writes w [B,T,HV,K] and u [B,T,HV,V] in k's dtype. The kernel only streams bytes: at dp-8k
(T 8192, H 16, HV 64, K = V = 128, bf16) it reads Ai 67 MB, v 134 MB, k 34 MB and writes w and u
268 MB, 0.12 ms at 4.3 TB/s.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _varlen
from ._launch import INTERPRETED, cdiv, launch
from ._spec import (
    CHUNK_SIZE,
    Config,
    Constraint,
    KernelSpec,
    Key,
    Param,
    SearchSpace,
    pow2_ceil,
    randn,
    stages,
    token_bucket,
    warps,
)
from ._tables import resolve_config
from .chunk_kkt_solve import _dot_operand, _rounded
from .reference import chunk_stages_reference

SPACE = SearchSpace(
    params=(
        # Column slices of k (for w) and v (for u); 16 is tl.dot's minimum, 128 covers K = V = 128 in one step.
        Param("BK", (32, 64, 128), "K columns per step of w", lo=16, hi=256),
        Param("BV", (32, 64, 128), "V columns per step of u", lo=16, hi=256),
        # The 64-row product fills one warpgroup's MMA on sm90 with 4 warps; 2 and 8 bracket it.
        warps(2, 4, 8),
        # K/BK and V/BV are constexpr trip counts of 1..4: ptxas output (sm90, dp-8k) is identical
        # for 2 and 3 stages, so more would only lengthen sweeps. 1 stage is left out: with Triton 3.6
        # on an H200, BK 32, BV 64, 4 warps, 1 stage faults with an illegal memory access (K = V = 64,
        # T 64; every time, in a fresh process, through kernel[grid] as through the direct launch),
        # where the same blocks at 2 stages and every other 1-stage config are right. Its loop keeps
        # the k tile's shared-memory buffer inside the loop (no pipelining): a compiler bug, not ours.
        stages(2, why="the column loops are short and fully unrolled; 1 stage can fault (see above)"),
    ),
    constraints=(
        # A slice wider than the head only loads masked zeros.
        Constraint(
            "BK ≤ K rounded up to a power of two", lambda c, key: c["BK"] <= max(16, pow2_ceil(int(key["K"])))
        ),
        Constraint(
            "BV ≤ V rounded up to a power of two", lambda c, key: c["BV"] <= max(16, pow2_ceil(int(key["V"])))
        ),
    ),
)
# FLA 0.6's best dp-8k config is BK = BV = 64 with 4 warps (ANCHORS.md). Here that needs 24 KB of
# shared memory (fits sm120's 99 KB) and spills 24 bytes per thread on sm90; 8 warps spills none but
# halves the programs per SM. Valid for every K, V ≥ 33.
DEFAULT = Config.of(BK=64, BV=64, num_warps=4, num_stages=2)


@triton.jit
def _chunk_wu_kernel(
    k,
    v,
    beta,
    gc,
    Ai,
    w,
    u,
    cu_seqlens,
    chunk_indices,
    T,
    BHV,
    H: tl.constexpr,
    HV: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    INTERPRETED: tl.constexpr,
    IS_VARLEN: tl.constexpr,
):
    # Flat grid, value heads fastest: the HV/H value heads sharing a key head read k from L2 together.
    i_c, i_bhv = tl.program_id(0) // BHV, tl.program_id(0) % BHV
    i_b, i_hv = i_bhv // HV, i_bhv % HV
    i_h = i_hv // (HV // H)
    if IS_VARLEN:
        i_n = tl.load(chunk_indices + i_c * 2)
        i_c = tl.load(chunk_indices + i_c * 2 + 1)
        if i_n < 0:
            return
        bos = tl.load(cu_seqlens + i_n).to(tl.int64)
        eos = tl.load(cu_seqlens + i_n + 1).to(tl.int64)
    else:
        bos = i_b.to(tl.int64) * T
        eos = bos + T
    t0 = bos + i_c * BT
    L = tl.minimum(eos - t0, BT).to(tl.int32)  # tokens in this chunk; a sequence's last may be short
    o_t = tl.arange(0, BT)
    m_t = o_t < L
    # Block pointers start at the chunk (scalar int64 bases: token · HV · K passes 2³¹ past 262k
    # tokens at HV 64, K 128) and span its L rows, so a partial chunk loads zeros past its end and
    # stores nothing there. Columns of Ai past that end hold zeros (chunk_kkt_solve writes them).
    p_Ai = tl.make_block_ptr(Ai + (t0 * HV + i_hv) * BT, (L, BT), (HV * BT, 1), (0, 0), (BT, BT), (1, 0))
    b_Ai = tl.load(p_Ai, boundary_check=(0,), padding_option="zero").to(tl.float32)
    b_beta = tl.load(beta + (t0 + o_t) * HV + i_hv, mask=m_t, other=0.0).to(tl.float32)
    b_kscale = b_beta * tl.exp(tl.load(gc + (t0 + o_t) * HV + i_hv, mask=m_t, other=0.0))
    # Fold the per-token scales into Ai's columns once, Ai·diag(β) and Ai·diag(β·exp(gc)), so the
    # k and v tiles go to the MMA as loaded: at dp-8k this took 4 warps from 652 to 24 bytes of
    # register spills (ptxas, sm90) and keeps the error of w and u at 2.2e-3 (2.3e-3 scaling tiles).
    b_Aiv = _dot_operand(_rounded(b_Ai * b_beta[None, :], k.dtype.element_ty, INTERPRETED), INTERPRETED)
    b_Aik = _dot_operand(_rounded(b_Ai * b_kscale[None, :], k.dtype.element_ty, INTERPRETED), INTERPRETED)

    for i_v in range(tl.cdiv(V, BV)):
        p_v = tl.make_block_ptr(
            v + (t0 * HV + i_hv) * V, (L, V), (HV * V, 1), (0, i_v * BV), (BT, BV), (1, 0)
        )
        p_u = tl.make_block_ptr(
            u + (t0 * HV + i_hv) * V, (L, V), (HV * V, 1), (0, i_v * BV), (BT, BV), (1, 0)
        )
        b_v = _dot_operand(tl.load(p_v, boundary_check=(0, 1), padding_option="zero"), INTERPRETED)
        b_u = tl.dot(b_Aiv, b_v)
        tl.store(p_u, _rounded(b_u, u.dtype.element_ty, INTERPRETED), boundary_check=(0, 1))

    for i_k in range(tl.cdiv(K, BK)):
        p_k = tl.make_block_ptr(k + (t0 * H + i_h) * K, (L, K), (H * K, 1), (0, i_k * BK), (BT, BK), (1, 0))
        p_w = tl.make_block_ptr(
            w + (t0 * HV + i_hv) * K, (L, K), (HV * K, 1), (0, i_k * BK), (BT, BK), (1, 0)
        )
        b_k = _dot_operand(tl.load(p_k, boundary_check=(0, 1), padding_option="zero"), INTERPRETED)
        b_w = tl.dot(b_Aik, b_k)
        tl.store(p_w, _rounded(b_w, w.dtype.element_ty, INTERPRETED), boundary_check=(0, 1))


def _key(dtype: torch.dtype | str, H: int, HV: int, K: int, V: int, tokens: int) -> Key:
    return SPEC.memoised_key(dtype, H, HV, K, V, token_bucket(tokens))


def _launch_chunk_wu(inputs: dict, outputs: dict, config: Config) -> None:
    k, v = inputs["k"], inputs["v"]
    cu_seqlens, chunk_indices = inputs.get("cu_seqlens"), inputs.get("chunk_indices")
    B, T, H, K = k.shape
    HV, V = v.shape[2], v.shape[3]
    if cu_seqlens is None:
        chunks = cdiv(T, CHUNK_SIZE)
    else:
        if chunk_indices is None:
            chunk_indices = _varlen.chunk_indices(cu_seqlens, T, CHUNK_SIZE)
        chunks = chunk_indices.shape[0]  # max_chunks(T, N): known on the host without a sync
    launch(
        _chunk_wu_kernel,
        (chunks * B * HV,),
        config,
        k=k,
        v=v,
        beta=inputs["beta"],
        gc=inputs["gc"],
        Ai=inputs["Ai"],
        w=outputs["w"],
        u=outputs["u"],
        cu_seqlens=cu_seqlens,
        chunk_indices=chunk_indices,
        T=T,
        BHV=B * HV,
        H=H,
        HV=HV,
        K=K,
        V=V,
        BT=CHUNK_SIZE,
        INTERPRETED=INTERPRETED,
        IS_VARLEN=cu_seqlens is not None,
    )


def _make_outputs(inputs: dict) -> dict[str, torch.Tensor]:
    k, v = inputs["k"], inputs["v"]
    B, T, _, K = k.shape
    HV = v.shape[2]
    return {
        "w": torch.empty(B, T, HV, K, dtype=k.dtype, device=k.device),
        "u": torch.empty(*v.shape, dtype=k.dtype, device=k.device),
    }


def _check_arguments(
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    gc: torch.Tensor,
    Ai: torch.Tensor,
    cu_seqlens: torch.Tensor | None,
) -> None:
    if k.dim() != 4 or v.dim() != 4 or v.shape[:2] != k.shape[:2] or v.shape[2] % k.shape[2]:
        raise ValueError(
            f"chunk_wu: k must be [B, T, H, K] and v [B, T, HV, V] with HV a multiple of H, "
            f"got k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    B, T, HV = v.shape[:3]
    for name, x, shape in (
        ("beta", beta, (B, T, HV)),
        ("gc", gc, (B, T, HV)),
        ("Ai", Ai, (B, T, HV, CHUNK_SIZE)),
    ):
        if tuple(x.shape) != shape:
            raise ValueError(f"chunk_wu: {name} must be {list(shape)}, got {list(x.shape)}")
    if gc.dtype != torch.float32:
        raise ValueError(f"chunk_wu: gc must be float32 (from chunk_kkt_solve), got {gc.dtype}")
    if cu_seqlens is not None and (B != 1 or cu_seqlens.dtype != torch.int32):
        raise ValueError(f"chunk_wu: cu_seqlens needs B == 1 (got {B}) and int32 (got {cu_seqlens.dtype})")


def chunk_wu(
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    gc: torch.Tensor,
    Ai: torch.Tensor,
    cu_seqlens: torch.Tensor | None = None,
    chunk_indices: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(w [B,T,HV,K], u [B,T,HV,V]), both in k's dtype, from `chunk_kkt_solve`'s gc and Ai.

    k [B,T,H,K], v [B,T,HV,V] (contiguous), beta [B,T,HV] float32 or k's dtype, gc [B,T,HV] float32,
    Ai [B,T,HV,64]; with cu_seqlens (int32 [N+1], B == 1) chunks restart at every sequence start;
    `chunk_indices` (`_varlen.chunk_indices`) is built here when not given.
    """
    _check_arguments(k, v, beta, gc, Ai, cu_seqlens)
    return chunk_wu_unchecked(k, v, beta, gc, Ai, cu_seqlens, chunk_indices)


def chunk_wu_unchecked(
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    gc: torch.Tensor,
    Ai: torch.Tensor,
    cu_seqlens: torch.Tensor | None,
    chunk_indices: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`chunk_wu` on arguments already checked: `chunk_gated_delta_rule` checks them once per call."""
    inputs = {
        "k": k,
        "v": v,
        "beta": beta,
        "gc": gc,
        "Ai": Ai,
        "cu_seqlens": cu_seqlens,
        "chunk_indices": chunk_indices,
    }
    outputs = _make_outputs(inputs)
    B, T, H, K = k.shape
    HV, V = v.shape[2], v.shape[3]
    _launch_chunk_wu(inputs, outputs, resolve_config(SPEC, _key(k.dtype, H, HV, K, V, B * T), k.device))
    return outputs["w"], outputs["u"]


def chunk_wu_reference(inputs: dict) -> dict[str, torch.Tensor]:
    """float64 w and u from `chunk_stages_reference`, starting from g (not from the rounded Ai), so
    the comparison covers Ai's rounding to k's dtype too."""
    k = inputs["k"]
    stages_ref = chunk_stages_reference(
        k, k, inputs["v"], inputs["g"], inputs["beta"], cu_seqlens=inputs.get("cu_seqlens")
    )
    return {"w": stages_ref["w"], "u": stages_ref["u"]}


def _make_inputs(key: Key, device: torch.device | str, seed: int) -> dict:
    """k L2-normalised and v in the key's dtype, g = logsigmoid(randn) and beta = sigmoid(randn) in
    float32, gc (float32) and Ai (k's dtype) from the float64 reference, as chunk_kkt_solve makes them.
    g is kept for the reference; the kernel does not read it."""
    H, HV, K, V, T = (int(key[f]) for f in ("H", "HV", "K", "V", "T"))
    dtype = getattr(torch, str(key["dtype"]))
    if torch.device(device).type == "meta":  # cross-compiling: shapes and dtypes only
        f32 = torch.float32
        return {
            "k": torch.empty(1, T, H, K, dtype=dtype, device=device),
            "v": torch.empty(1, T, HV, V, dtype=dtype, device=device),
            "g": torch.empty(1, T, HV, dtype=f32, device=device),
            "beta": torch.empty(1, T, HV, dtype=f32, device=device),
            "gc": torch.empty(1, T, HV, dtype=f32, device=device),
            "Ai": torch.empty(1, T, HV, CHUNK_SIZE, dtype=dtype, device=device),
        }
    gen = torch.Generator("cpu").manual_seed(seed)
    cpu = {
        "k": torch.nn.functional.normalize(randn(1, T, H, K, generator=gen, device=device), dim=-1).to(dtype),
        "v": randn(1, T, HV, V, generator=gen, device=device).to(dtype),
        "g": torch.nn.functional.logsigmoid(randn(1, T, HV, generator=gen, device=device)),
        "beta": torch.sigmoid(randn(1, T, HV, generator=gen, device=device)),
    }
    inputs = {name: t.to(device) for name, t in cpu.items()}
    # A one-wide zero v: only gc and Ai are needed, and the recurrence then costs next to nothing.
    v_unused = torch.zeros(1, T, HV, 1, dtype=torch.float64, device=device)
    stages_ref = chunk_stages_reference(inputs["k"], inputs["k"], v_unused, inputs["g"], inputs["beta"])
    inputs["gc"] = stages_ref["gc"].float()
    inputs["Ai"] = stages_ref["Ai"].to(dtype)
    return inputs


SPEC = KernelSpec(
    name="chunk_wu",
    doc=__doc__.splitlines()[0],
    key_fields=("dtype", "H", "HV", "K", "V", "T"),
    space=SPACE,
    default=DEFAULT,
    jit_functions=(_chunk_wu_kernel, _rounded, _dot_operand),
    key_for=lambda wl: _key(wl.dtype, wl.H, wl.HV, wl.K, wl.V, wl.tokens),
    make_inputs=_make_inputs,
    make_outputs=_make_outputs,
    launch=_launch_chunk_wu,
    reference=chunk_wu_reference,
    # k once per key head (L2 serves the other value heads); per value head: Ai (64 columns), v,
    # beta and gc read, w and u written; 2-byte k, v, Ai, w, u.
    bytes_moved=lambda key: (
        int(key["T"])
        * (
            int(key["H"]) * int(key["K"]) * 2
            + int(key["HV"]) * (CHUNK_SIZE * 2 + 4 * int(key["V"]) + 2 * int(key["K"]) + 8)
        )
    ),
)
SPECS = (SPEC,)
