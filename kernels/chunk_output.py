"""Chunked output of the gated delta rule: the state's contribution plus the causal in-chunk attention.

One program per (chunk, value head, V block), all independent:

    o = scale · ( (q · exp(gc)) · h  +  causal(q·kᵀ ⊙ exp(gc_i − gc_j)) · v_new )

with h the state at the chunk's start (from `chunk_state`) and gc the chunk-local cumulative gate. The
K dimension is walked in BK blocks, accumulating q·h and q·kᵀ together, so q and k are read once.
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
    stages,
    token_bucket,
    warps,
)
from ._tables import resolve_config
from .chunk_state import _dot_operand, _rounded, make_stage_inputs
from .reference import sequence_bounds

# Grid axis 1 (chunks) is capped at 65535 by CUDA: T/64 + N chunks, so about 4 million tokens per call.
MAX_GRID_CHUNKS = 65535

SPACE = SearchSpace(
    params=(
        # FLA's best on an H200 at dp-8k: BK 64, BV 64, 4 warps, 3 stages.
        Param("BK", (32, 64, 128), "K columns per step of the q·h and q·kᵀ accumulation", lo=16, hi=256),
        Param("BV", (32, 64, 128), "V columns of o per program", lo=16, hi=256),
        warps(2, 4, 8),
        stages(1, 2, 3, 4),
    ),
    constraints=(
        Constraint(
            # 64 stays allowed so that the default is valid for every key, small heads included.
            "BK ≤ max(64, K rounded up to a power of two): a wider block loads only padding",
            lambda c, key: c["BK"] <= max(64, pow2_ceil(int(key["K"]))),
        ),
        Constraint(
            # 64 stays allowed so that the default is valid for every key, small heads included.
            "BV ≤ max(64, V rounded up to a power of two): a wider block computes only padding",
            lambda c, key: c["BV"] <= max(64, pow2_ceil(int(key["V"]))),
        ),
    ),
)
# H200, CUDA-graph median (scripts/try_configs.py): dp-8k 0.276 ms, tp8 0.042 ms, where FLA's best
# (3 stages) ran 0.317 / 0.047 here; BK 32 ties (0.274 / 0.042), BK 128 0.284 / 0.043, 8 warps and
# BV 128 or BV 32 are slower. Less shared memory than 3 stages' 24 KiB; compiles for sm80 to sm120.
DEFAULT = Config.of(BK=64, BV=64, num_warps=4, num_stages=2)


@triton.jit
def _chunk_output_kernel(
    q,
    k,
    v_new,
    h,
    gc,
    o,
    cu_seqlens,
    chunk_indices,
    scale,
    T,
    H: tl.constexpr,
    HV: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    IS_VARLEN: tl.constexpr,
    INTERPRETED: tl.constexpr,
):
    # Axis 0 walks the V blocks, then the value heads, of one chunk: the HV/H heads that share a key
    # head run side by side and read the chunk's q and k from L2 (at dp-8k, q and k are 67 MB; read
    # once per value head from DRAM they would be 268 MB of the kernel's 0.55 GB).
    i_vh, i_t, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_v, i_hv = i_vh % tl.cdiv(V, BV), i_vh // tl.cdiv(V, BV)
    i_h = i_hv // (HV // H)
    if IS_VARLEN:
        i_n = tl.load(chunk_indices + i_t * 2)
        i_c = tl.load(chunk_indices + i_t * 2 + 1)
        if i_n < 0:
            return  # the grid's max_chunks bound exceeds the real chunk count by up to N
        bos = tl.load(cu_seqlens + i_n).to(tl.int64)
        T_seq = tl.load(cu_seqlens + i_n + 1) - tl.load(cu_seqlens + i_n)
        i_row = i_t.to(tl.int64)  # h rows are the global chunks, in order
    else:
        i_c = i_t
        T_seq = T
        bos = i_b.to(tl.int64) * T
        i_row = i_b.to(tl.int64) * tl.cdiv(T, BT) + i_t

    q_seq = q + (bos * H + i_h) * K
    k_seq = k + (bos * H + i_h) * K
    h_chunk = h + (i_row * HV + i_hv) * K * V

    dtype = v_new.dtype.element_ty
    b_o = tl.zeros([BT, BV], dtype=tl.float32)
    b_A = tl.zeros([BT, BT], dtype=tl.float32)
    for i_k in range(tl.cdiv(K, BK)):
        p_q = tl.make_block_ptr(q_seq, (T_seq, K), (H * K, 1), (i_c * BT, i_k * BK), (BT, BK), (1, 0))
        p_kt = tl.make_block_ptr(k_seq, (K, T_seq), (1, H * K), (i_k * BK, i_c * BT), (BK, BT), (0, 1))
        p_h = tl.make_block_ptr(h_chunk, (K, V), (V, 1), (i_k * BK, i_v * BV), (BK, BV), (1, 0))
        # Zero padding past the sequence's end and past K, V: garbage there would reach o via tl.dot.
        b_q = _dot_operand(tl.load(p_q, boundary_check=(0, 1), padding_option="zero"), dtype, INTERPRETED)
        b_kt = _dot_operand(tl.load(p_kt, boundary_check=(0, 1), padding_option="zero"), dtype, INTERPRETED)
        b_h = _dot_operand(tl.load(p_h, boundary_check=(0, 1), padding_option="zero"), dtype, INTERPRETED)
        b_o += tl.dot(b_q, b_h)
        b_A += tl.dot(b_q, b_kt)

    o_t = i_c * BT + tl.arange(0, BT)
    m_t = o_t < T_seq
    b_g = tl.load(gc + (bos + o_t) * HV + i_hv, mask=m_t, other=0.0)
    b_o = b_o * tl.exp(b_g)[:, None]
    # exp(gc_i − gc_j) overflows above the diagonal (gc falls along the chunk); mask before exp().
    m_A = (o_t[:, None] >= o_t[None, :]) & m_t[None, :]
    b_A = b_A * tl.exp(tl.where(m_A, b_g[:, None] - b_g[None, :], float("-inf")))

    p_v = tl.make_block_ptr(
        v_new + (bos * HV + i_hv) * V, (T_seq, V), (HV * V, 1), (i_c * BT, i_v * BV), (BT, BV), (1, 0)
    )
    p_o = tl.make_block_ptr(
        o + (bos * HV + i_hv) * V, (T_seq, V), (HV * V, 1), (i_c * BT, i_v * BV), (BT, BV), (1, 0)
    )
    # The intra-chunk product runs in tf32, not in 16-bit: o = q·h + A·v_new largely cancels (v_new is
    # what q·h mispredicts), and rounding A to bf16 alone cost 0.6 % relative L2 of o at T = 130, HV 4,
    # K = V = 64 (0.4 % with A in float32). The kernel is memory-bound (dp-8k: 0.55 GB for 43 GFLOP),
    # so the slower tf32 MMA on a third of its products costs little.
    b_v = tl.load(p_v, boundary_check=(0, 1), padding_option="zero").to(tl.float32)
    b_o = (b_o + tl.dot(b_A, b_v, input_precision="tf32")) * scale
    tl.store(p_o, _rounded(b_o, o.dtype.element_ty, INTERPRETED), boundary_check=(0, 1))


def _key(dtype: torch.dtype | str, H: int, HV: int, K: int, V: int, tokens: int) -> Key:
    return SPEC.memoised_key(dtype, H, HV, K, V, token_bucket(tokens))


def _launch_chunk_output(inputs: dict, outputs: dict, config: Config) -> None:
    q, k, v_new = inputs["q"], inputs["k"], inputs["v_new"]
    cu_seqlens, chunk_indices = inputs.get("cu_seqlens"), inputs.get("chunk_indices")
    B, T, H, K = q.shape
    HV, V = v_new.shape[2], v_new.shape[3]
    chunks = cdiv(T, CHUNK_SIZE) if cu_seqlens is None else chunk_indices.shape[0]
    launch(
        _chunk_output_kernel,
        (cdiv(V, config["BV"]) * HV, chunks, B),
        config,
        q=q,
        k=k,
        v_new=v_new,
        h=inputs["h"],
        gc=inputs["gc"],
        o=outputs["o"],
        cu_seqlens=cu_seqlens,
        chunk_indices=chunk_indices,
        scale=float(inputs["scale"]),
        T=T,
        H=H,
        HV=HV,
        K=K,
        V=V,
        BT=CHUNK_SIZE,
        IS_VARLEN=cu_seqlens is not None,
        INTERPRETED=INTERPRETED,
    )


def _make_outputs(inputs: dict) -> dict[str, torch.Tensor]:
    v_new = inputs["v_new"]
    # An explicit memory format: preserve_format on a meta tensor (compile ahead records calls on
    # meta stand-ins) goes through torch's Python reference, whose first use imports sympy (1.2-2.4 s).
    return {"o": torch.empty_like(v_new, memory_format=torch.contiguous_format)}


def output_like(v_new: torch.Tensor) -> torch.Tensor:
    """An uninitialised o for `chunk_output(..., out=o)`, allocated as chunk_output allocates its own."""
    return _make_outputs({"v_new": v_new})["o"]


def chunk_output(
    q: torch.Tensor,
    k: torch.Tensor,
    v_new: torch.Tensor,
    h: torch.Tensor,
    gc: torch.Tensor,
    scale: float,
    cu_seqlens: torch.Tensor | None = None,
    chunk_indices: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """o [B,T,HV,V] in v_new's dtype, from q, k [B,T,H,K], v_new [B,T,HV,V], h [B,NT,HV,K,V], gc [B,T,HV].

    With int32 cu_seqlens (B == 1), chunk_indices [max_chunks, 2] (from `_varlen.chunk_indices`) maps each
    program to its (sequence, chunk), and h row i is global chunk i; only the rows of sequences are
    written, into `out` when given (the public function zeroes the others there first). Arguments are
    assumed validated by `chunk_gated_delta_rule`.
    """
    if chunk_indices is None and cu_seqlens is not None:
        chunk_indices = _varlen.chunk_indices(cu_seqlens, q.shape[1], CHUNK_SIZE)
    inputs = {
        "q": q,
        "k": k,
        "v_new": v_new,
        "h": h,
        "gc": gc,
        "scale": scale,
        "cu_seqlens": cu_seqlens,
        "chunk_indices": chunk_indices,
    }
    outputs = _make_outputs(inputs) if out is None else {"o": out}
    B, T, H, K = q.shape
    HV, V = v_new.shape[2], v_new.shape[3]
    config = resolve_config(SPEC, _key(q.dtype, H, HV, K, V, B * T), q.device)
    _launch_chunk_output(inputs, outputs, config)
    return outputs["o"]


def chunk_output_reference(inputs: dict) -> dict[str, torch.Tensor]:
    """float64 o from the kernel's own (rounded) inputs, chunk by chunk."""
    f64 = torch.float64
    q, k, v_new, h, gc = (inputs[name].to(f64) for name in ("q", "k", "v_new", "h", "gc"))
    scale, cu_seqlens = float(inputs["scale"]), inputs.get("cu_seqlens")
    B, T, H, _ = q.shape
    HV = v_new.shape[2]
    q, k = q.repeat_interleave(HV // H, dim=2), k.repeat_interleave(HV // H, dim=2)
    bounds = [(b, s, e) for b in range(B) for s, e in sequence_bounds(T, cu_seqlens)]
    o = torch.zeros_like(v_new)
    rows = [0] * B
    for b, start, end in bounds:
        for s in range(start, end, CHUNK_SIZE):
            e = min(s + CHUNK_SIZE, end)
            qc, kc, vc = (x[b, s:e].transpose(0, 1) for x in (q, k, v_new))  # [HV, L, ·]
            g_chunk = gc[b, s:e].transpose(0, 1)  # [HV, L]
            causal = torch.ones(e - s, e - s, dtype=torch.bool, device=q.device).tril()
            decay = torch.exp((g_chunk[:, :, None] - g_chunk[:, None, :]).masked_fill(~causal, float("-inf")))
            inter = (qc * torch.exp(g_chunk)[..., None]) @ h[b, rows[b]]
            o[b, s:e] = (scale * (inter + (qc @ kc.transpose(1, 2) * decay) @ vc)).transpose(0, 1)
            rows[b] += 1
    return {"o": o}


_OUTPUT_INPUTS = ("q", "k", "v_new", "h", "gc", "scale", "cu_seqlens", "chunk_indices")


def _make_inputs(key: Key, device: torch.device | str, seed: int) -> dict:
    # One sequence with cu_seqlens, as serving engines call it; the grid does not depend on N.
    staged = make_stage_inputs(key, device, seed, sequences=1)
    return {name: staged[name] for name in _OUTPUT_INPUTS}


SPEC = KernelSpec(
    name="chunk_output",
    doc=__doc__.splitlines()[0],
    key_fields=("dtype", "H", "HV", "K", "V", "T"),
    space=SPACE,
    default=DEFAULT,
    jit_functions=(_rounded, _dot_operand, _chunk_output_kernel),
    key_for=lambda wl: _key(wl.dtype, wl.H, wl.HV, wl.K, wl.V, wl.tokens),
    make_inputs=_make_inputs,
    make_outputs=_make_outputs,
    launch=_launch_chunk_output,
    reference=chunk_output_reference,
    bytes_moved=lambda key: (
        int(key["T"]) * (2 * int(key["H"]) * int(key["K"]) + 2 * int(key["HV"]) * int(key["V"])) * 2
        + int(key["T"]) * int(key["HV"]) * 4
        + (int(key["T"]) // CHUNK_SIZE) * int(key["HV"]) * int(key["K"]) * int(key["V"]) * 2
    ),
)
SPECS = (SPEC,)
