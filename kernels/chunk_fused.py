"""State pass and output of the chunked gated delta rule, fused into one kernel or split in two: the
structure is a tuned parameter (FUSED), chosen per shape and GPU by the sweep.

Split (FUSED 0): `chunk_state` stores every chunk's start state h and the corrected values v_new, then
`chunk_output` reads them back, all chunks in parallel; each kernel runs its own table's config.
Fused (FUSED 1): one program per (sequence, value head, V block) walks the chunks as chunk_state does
and writes o for the chunk before moving the state on:

    v_new = u − w·S
    o     = scale · ( (q · exp(gc)) · S  +  causal(q·kᵀ ⊙ exp(gc_i − gc_j)) · v_new )
    S     = exp(gc_l)·S + (k · exp(gc_l − gc))ᵀ · v_new

h and v_new never reach memory: at dp-8k (16/64 heads, 8192 tokens) h alone is 268 MB written and read
back, against 347 MB for all of the layer's inputs and outputs. The price is parallelism: the output's
work joins the sequential walk, which has N·HV·V/BV programs (128 at one 16/64-head sequence with BV
64, 16 at 2/8 heads), where the split output kernel has one program per chunk as well. Which wins
depends on heads, sequences and length, so the tuner measures both.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from . import _varlen
from . import chunk_output as _output
from . import chunk_state as _state
from ._launch import INTERPRETED, cdiv, launch
from ._spec import (
    CHUNK_SIZE,
    Config,
    Constraint,
    KernelSpec,
    Key,
    KeyValue,
    Param,
    SearchSpace,
    pow2_ceil,
    stages,
    warps,
)
from ._state_io import load_state, state_block, store_final_state
from ._tables import resolve_config
from .chunk_segments import JIT_FUNCTIONS as SEGMENT_JIT_FUNCTIONS
from .chunk_segments import launch_segmented_state
from .chunk_state import _dot_operand, _rounded, make_stage_inputs

SPLIT_DEFAULTS = {"BV": 64, "num_warps": 4, "num_stages": 2}

SPACE = SearchSpace(
    params=(
        Param(
            "FUSED",
            (0, 1),
            "1: state pass and output in one kernel; 0: state pass, then chunk_output",
            power_of_two=False,
            lo=0,
            hi=1,
        ),
        # Segments per sequence of the context-parallel state pass (kernels/chunk_segments.py); 1 is
        # chunk_state's sequential walk. Worth it where N·HV·V/BV programs leave SMs idle (2/8 heads).
        Param("SEG", (1, 2, 4, 8, 16), "segments per sequence of the split state pass", lo=1, hi=64),
        # The fused walk holds the K×BV float32 state, the BT×BV output and the BT×BT attention block.
        Param("BV", (64, 128), "V columns of the state (and of o) per program", lo=64, hi=256),
        warps(4, 8),
        stages(1, 2, 3),
    ),
    constraints=(
        Constraint(
            "split with one segment (FUSED 0, SEG 1) runs chunk_state's and chunk_output's own table "
            "entries: its BV, warps and stages stay at 64, 4, 2 (other values would time the same launches)",
            lambda c, key: (
                c["FUSED"] == 1 or c["SEG"] > 1 or all(c[p] == v for p, v in SPLIT_DEFAULTS.items())
            ),
        ),
        Constraint(
            "segments (SEG > 1) belong to the split structure; the fused kernel walks whole sequences",
            lambda c, key: c["FUSED"] == 0 or c["SEG"] == 1,
        ),
        Constraint(
            # H200, Triton 3.6, K = V = 128, 2/4 heads, 512 tokens: BV 32 gives a final state at relative
            # error 1.0 and o at 0.067 (BV 64: 0.0009 and 0.0018), and an illegal address at 8192
            # tokens; the interpreter computes BV 16 and 32 right, so it is the compiled kernel.
            "fused BV ≥ 64: narrower blocks miscompute on sm90 with Triton 3.6",
            lambda c, key: c["FUSED"] == 0 or c["BV"] >= 64,
        ),
        Constraint(
            # 64 stays allowed so that the default is valid for every key, small heads included.
            "BV ≤ max(64, V rounded up to a power of two): a wider block computes only padding",
            lambda c, key: c["BV"] <= max(64, pow2_ceil(int(key["V"]))),
        ),
        Constraint(
            "BV·K ≤ 128·128: the float32 state tile must stay in registers (more spills to local memory)",
            lambda c, key: c["BV"] * pow2_ceil(int(key["K"])) <= 128 * 128,
        ),
    ),
)
# Split by default: what the pipeline ran before the fused kernel existed, with no table a key runs
# exactly the tuned chunk_state and chunk_output entries.
DEFAULT = Config.of(FUSED=0, SEG=1, **SPLIT_DEFAULTS)


@triton.jit
def _fused_step(
    b_h,
    i_t,
    i_v,
    q_seq,
    k_seq,
    w_seq,
    u_seq,
    o_seq,
    gc_seq,
    T_seq,
    scale,
    H: tl.constexpr,
    HV: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    INTERPRETED: tl.constexpr,
):
    """Chunk i_t: write its o, return the state after it. The loads do not depend on the state, so the
    pipeline can fetch the next chunk's while this one computes."""
    dtype = o_seq.dtype.element_ty
    p_q = tl.make_block_ptr(q_seq, (T_seq, K), (H * K, 1), (i_t * BT, 0), (BT, BK), (1, 0))
    p_kt = tl.make_block_ptr(k_seq, (K, T_seq), (1, H * K), (0, i_t * BT), (BK, BT), (0, 1))
    p_w = tl.make_block_ptr(w_seq, (T_seq, K), (HV * K, 1), (i_t * BT, 0), (BT, BK), (1, 0))
    p_u = tl.make_block_ptr(u_seq, (T_seq, V), (HV * V, 1), (i_t * BT, i_v * BV), (BT, BV), (1, 0))
    p_o = tl.make_block_ptr(o_seq, (T_seq, V), (HV * V, 1), (i_t * BT, i_v * BV), (BT, BV), (1, 0))
    # Zero padding past the sequence's end and past K: garbage there would reach o and S via tl.dot.
    b_q = _dot_operand(tl.load(p_q, boundary_check=(0, 1), padding_option="zero"), dtype, INTERPRETED)
    b_kt = _dot_operand(tl.load(p_kt, boundary_check=(0, 1), padding_option="zero"), dtype, INTERPRETED)
    b_w = _dot_operand(tl.load(p_w, boundary_check=(0, 1), padding_option="zero"), dtype, INTERPRETED)
    b_u = tl.load(p_u, boundary_check=(0, 1), padding_option="zero").to(tl.float32)
    o_t = i_t * BT + tl.arange(0, BT)
    m_t = o_t < T_seq
    b_g = tl.load(gc_seq + o_t * HV, mask=m_t, other=0.0)
    b_g_last = tl.load(gc_seq + (tl.minimum(i_t * BT + BT, T_seq) - 1) * HV)

    # The state enters every product in the operand dtype, as the split path's stored h does.
    b_hd = _dot_operand(b_h, dtype, INTERPRETED)
    b_v = b_u - tl.dot(b_w, b_hd)
    b_A = tl.dot(b_q, b_kt)
    b_o = tl.dot(b_q, b_hd) * tl.exp(b_g)[:, None]
    # exp(gc_i − gc_j) overflows above the diagonal (gc falls along the chunk); mask before exp().
    m_A = (o_t[:, None] >= o_t[None, :]) & m_t[None, :]
    b_A = b_A * tl.exp(tl.where(m_A, b_g[:, None] - b_g[None, :], float("-inf")))
    # v_new as the split path stores it (16-bit), in a tf32 product: o = q·S + A·v_new largely cancels,
    # and a 16-bit A costs 0.6 % relative L2 of o (chunk_output.py).
    b_vr = _rounded(b_v, dtype, INTERPRETED).to(tl.float32)
    b_o = (b_o + tl.dot(b_A, b_vr, input_precision="tf32")) * scale
    tl.store(p_o, _rounded(b_o, dtype, INTERPRETED), boundary_check=(0, 1))

    b_v = b_v * tl.where(m_t, tl.exp(b_g_last - b_g), 0.0)[:, None]
    return b_h * tl.exp(b_g_last) + tl.dot(b_kt, _dot_operand(b_v, dtype, INTERPRETED))


@triton.jit
def _chunk_fused_kernel(
    q,
    k,
    w,
    u,
    gc,
    h0,
    o,
    ht,
    cu_seqlens,
    state_indices,
    scale,
    T,
    stride_h0,
    H: tl.constexpr,
    HV: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    USE_INITIAL_STATE: tl.constexpr,
    FINAL_MODE: tl.constexpr,
    USE_STATE_INDICES: tl.constexpr,
    STATE_VK: tl.constexpr,
    IS_VARLEN: tl.constexpr,
    INTERPRETED: tl.constexpr,
):
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_hv = i_nh // HV, i_nh % HV
    i_h = i_hv // (HV // H)
    if IS_VARLEN:
        bos = tl.load(cu_seqlens + i_n).to(tl.int64)
        T_seq = tl.load(cu_seqlens + i_n + 1) - tl.load(cu_seqlens + i_n)
    else:
        T_seq = T
        bos = i_n.to(tl.int64) * T
    NT = tl.cdiv(T_seq, BT)

    q_seq = q + (bos * H + i_h) * K
    k_seq = k + (bos * H + i_h) * K
    w_seq = w + (bos * HV + i_hv) * K
    u_seq = u + (bos * HV + i_hv) * V
    o_seq = o + (bos * HV + i_hv) * V
    gc_seq = gc + bos * HV + i_hv

    # The caller's state, read once and written once (kernels/_state_io.py).
    o_s, m_s, i_slot = state_block(i_n, i_hv, i_v, state_indices, K, V, BK, BV, USE_STATE_INDICES, STATE_VK)
    b_h = load_state(h0, i_slot, stride_h0, o_s, m_s, BK, BV, USE_INITIAL_STATE)

    # The interpreter cannot range() over a loaded bound (chunk_state.py): a while loop there.
    if INTERPRETED:
        i_t = 0
        while i_t < NT:
            b_h = _fused_step(
                b_h, i_t, i_v, q_seq, k_seq, w_seq, u_seq, o_seq, gc_seq, T_seq, scale,
                H, HV, K, V, BT, BK, BV, True,
            )  # fmt: skip
            i_t += 1
    else:
        for i_t in range(0, NT):
            b_h = _fused_step(
                b_h, i_t, i_v, q_seq, k_seq, w_seq, u_seq, o_seq, gc_seq, T_seq, scale,
                H, HV, K, V, BT, BK, BV, False,
            )  # fmt: skip

    store_final_state(b_h, ht, h0, i_n, i_slot, stride_h0, o_s, m_s, HV, K, V, FINAL_MODE)


@functools.cache
def _kernel_config(config: Config) -> Config:
    """The fused kernel's launch config: the structure parameters are no kernel arguments."""
    return Config.of(**{p: v for p, v in config.params if p not in ("FUSED", "SEG")})


def _launch_fused(inputs: dict, outputs: dict, config: Config) -> None:
    q, k, w, u = inputs["q"], inputs["k"], inputs["w"], inputs["u"]
    cu_seqlens, state_indices = inputs.get("cu_seqlens"), inputs.get("state_indices")
    initial_state, final_state = inputs.get("initial_state"), outputs.get("final_state")
    in_place = bool(inputs.get("inplace_final_state", False))
    B, T, H, K = k.shape
    HV, V = u.shape[2], u.shape[3]
    N = B if cu_seqlens is None else cu_seqlens.numel() - 1
    launch(
        _chunk_fused_kernel,
        (cdiv(V, config["BV"]), N * HV),
        _kernel_config(config),
        q=q,
        k=k,
        w=w,
        u=u,
        gc=inputs["gc"],
        h0=initial_state,
        o=outputs["o"],
        ht=None if in_place else final_state,
        cu_seqlens=cu_seqlens,
        state_indices=state_indices,
        scale=float(inputs["scale"]),
        T=T,
        stride_h0=initial_state.stride(0) if initial_state is not None else 0,
        H=H,
        HV=HV,
        K=K,
        V=V,
        BT=CHUNK_SIZE,
        BK=max(16, pow2_ceil(K)),  # tl.dot needs every dimension ≥ 16
        USE_INITIAL_STATE=initial_state is not None,
        FINAL_MODE=2 if in_place else int(final_state is not None),
        USE_STATE_INDICES=state_indices is not None,
        STATE_VK=inputs.get("state_layout", "kv") == "vk",
        IS_VARLEN=cu_seqlens is not None,
        INTERPRETED=INTERPRETED,
    )


# The segment kernels put sequences × segments × heads on grid axis 1, which CUDA caps at 65535: 64
# sequences × 16 segments × 64 heads failed on an H200 with "invalid argument". Past it the state pass
# runs unsegmented, the same numbers at chunk_state's speed. Moving that product to axis 0 changes
# the kernels' source (and so staleness of this spec's table): it waits for the table's next sweep.
MAX_SEGMENT_ROWS = 65535


def _launch_split(inputs: dict, outputs: dict, config: Config) -> None:
    """The state pass (chunk_state with its own table's config, or in config["SEG"] segments with this
    config's BV, warps and stages), then chunk_output with its table's; h and v_new in `outputs`."""
    q, k, u = inputs["q"], inputs["k"], inputs["u"]
    B, T, H, K = k.shape
    HV, V = u.shape[2], u.shape[3]
    cu_seqlens = inputs.get("cu_seqlens")
    N = B if cu_seqlens is None else cu_seqlens.numel() - 1
    if config["SEG"] > 1 and N * config["SEG"] * HV <= MAX_SEGMENT_ROWS:
        launch_segmented_state(inputs, outputs, config)
    else:
        initial_state = inputs.get("initial_state")
        state_dtype = initial_state.dtype if initial_state is not None else torch.float32
        layout = inputs.get("state_layout", "kv")
        state_key = _state._key(k.dtype, H, HV, K, V, B * T, N, state_dtype, layout)
        _state._launch_chunk_state(inputs, outputs, resolve_config(_state.SPEC, state_key, k.device))
    output_inputs = {**inputs, "v_new": outputs["v_new"], "h": outputs["h"]}
    output_key = _output._key(q.dtype, H, HV, K, V, B * T)
    _output._launch_chunk_output(output_inputs, outputs, resolve_config(_output.SPEC, output_key, q.device))


def _launch_chunk_fused(inputs: dict, outputs: dict, config: Config) -> None:
    if config["FUSED"]:
        _launch_fused(inputs, outputs, config)
    else:
        _launch_split(inputs, outputs, config)


def _make_outputs(
    inputs: dict, split: bool = True, out: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """o (or `out`) and the final state, plus h and v_new where the split structure needs them (the
    tuner times both structures on one set of outputs, so its outputs always hold them)."""
    outputs = _state._make_outputs(inputs) if split else _state.final_state_output(inputs)
    o = torch.empty_like(inputs["u"], memory_format=torch.contiguous_format)  # see chunk_output._make_outputs
    outputs["o"] = o if out is None else out
    return outputs


def _key(*fields: KeyValue) -> Key:
    """chunk_state's key fields and buckets (`_state._key`'s arguments), as this spec's key."""
    return _state._key(*fields, spec=SPEC)


def chunk_state_output(
    q: torch.Tensor,
    k: torch.Tensor,
    w: torch.Tensor,
    u: torch.Tensor,
    gc: torch.Tensor,
    scale: float,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    chunk_offsets: torch.Tensor | None = None,
    chunk_indices: torch.Tensor | None = None,
    state_layout: str = "kv",
    state_indices: torch.Tensor | None = None,
    inplace_final_state: bool = False,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(o [B,T,HV,V] in u's dtype, final_state) from the chunk_wu stage's w, u and the prepared gc.

    The state arguments are chunk_state's; chunk_offsets and chunk_indices are the varlen bookkeeping
    (kernels/_varlen.py) that only the split structure reads. o goes into `out` when given. Arguments
    are assumed validated by `chunk_gated_delta_rule`.
    """
    B, T, H, K = k.shape
    HV, V = u.shape[2], u.shape[3]
    N = B if cu_seqlens is None else cu_seqlens.numel() - 1
    state_dtype = initial_state.dtype if initial_state is not None else torch.float32
    config = resolve_config(SPEC, _key(k.dtype, H, HV, K, V, B * T, N, state_dtype, state_layout), k.device)
    inputs = {
        "q": q,
        "k": k,
        "w": w,
        "u": u,
        "gc": gc,
        "scale": scale,
        "initial_state": initial_state,
        "output_final_state": output_final_state,
        "cu_seqlens": cu_seqlens,
        "chunk_offsets": chunk_offsets,
        "chunk_indices": chunk_indices,
        "state_layout": state_layout,
        "state_indices": state_indices,
        "inplace_final_state": inplace_final_state,
    }
    split = not config["FUSED"]
    if cu_seqlens is not None and split:
        if chunk_offsets is None:
            inputs["chunk_offsets"] = _varlen.chunk_offsets(cu_seqlens, CHUNK_SIZE)
        if chunk_indices is None:
            inputs["chunk_indices"] = _varlen.chunk_indices(cu_seqlens, T, CHUNK_SIZE)
    outputs = _make_outputs(inputs, split=split, out=out)
    _launch_chunk_fused(inputs, outputs, config)
    final_state = initial_state if inplace_final_state else outputs.get("final_state")
    return outputs["o"], final_state


def chunk_fused_reference(inputs: dict) -> dict[str, torch.Tensor]:
    """float64 o and final state from the kernel's own (rounded) inputs: chunk_state's reference, whose
    h and v_new then feed chunk_output's."""
    state = _state.chunk_state_reference(inputs)
    rows = {**inputs, "h": state["h"], "v_new": state["v_new"]}
    return {"o": _output.chunk_output_reference(rows)["o"], "final_state": state["final_state"]}


_FUSED_INPUTS = (*_state._STATE_INPUTS, "q", "chunk_indices", "scale")


def _make_inputs(key: Key, device: torch.device | str, seed: int) -> dict:
    # chunk_state's tuned case (cu_seqlens, an initial state, the final state asked for) plus q.
    staged = make_stage_inputs(key, device, seed, sequences=int(key["N"]))
    inputs = {name: staged[name] for name in _FUSED_INPUTS}
    state = inputs["initial_state"]
    if key["state_layout"] == "vk":
        state = state.transpose(-1, -2).contiguous()
    inputs["initial_state"] = state.to(getattr(torch, str(key["state_dtype"])))
    inputs["state_layout"] = key["state_layout"]
    return inputs


def _bytes_moved(key: Key) -> int:
    """Bytes of the fused structure: q, k, w, u, v read, o written, the state once each way."""
    T, H, HV, K, V, N = (int(key[f]) for f in ("T", "H", "HV", "K", "V", "N"))
    return T * (2 * H * K + HV * (K + 2 * V)) * 2 + T * HV * 4 + 2 * N * HV * K * V * 4


SPEC = KernelSpec(
    name="chunk_fused",
    doc=__doc__.splitlines()[0],
    key_fields=_state.SPEC.key_fields,
    fallback_fields=_state.SPEC.fallback_fields,
    # Its default (split, one segment) runs chunk_state's and chunk_output's own tables.
    table_optional=True,
    space=SPACE,
    default=DEFAULT,
    # The split structure's kernels belong to chunk_state's and chunk_output's hashes and tables.
    jit_functions=(
        _rounded,
        _dot_operand,
        _fused_step,
        _chunk_fused_kernel,
        _state._chunk_state_step,
        *SEGMENT_JIT_FUNCTIONS,  # with the state I/O helpers of kernels/_state_io.py
    ),
    key_for=lambda wl: _key(
        wl.dtype, wl.H, wl.HV, wl.K, wl.V, wl.tokens, wl.sequences, wl.state_dtype, wl.state_layout
    ),
    make_inputs=_make_inputs,
    make_outputs=_make_outputs,
    launch=_launch_chunk_fused,
    reference=chunk_fused_reference,
    bytes_moved=_bytes_moved,
)
SPECS = (SPEC,)
