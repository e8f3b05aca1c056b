"""`@triton.jit` helpers shared by the kernels that read a caller's recurrent state once and write it
back once: its layout, pool slot and dtype.

A state is [.., HV, K, V] ("kv": V contiguous) or [.., HV, V, K] ("vk": K contiguous, vLLM's and
SGLang's caches) in float32, bfloat16 or float16; the kernels hold a K×BV float32 block of it. With a
pool (state_indices) sequence n reads slot state_indices[n]; a negative slot starts from zeros and is
not written back. chunk_state keeps its own copy of these lines until its tables are swept again (its
kernel source is hashed into them).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def state_block(i_n, i_hv, i_v, state_indices, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr,
                BV: tl.constexpr, USE_STATE_INDICES: tl.constexpr, STATE_VK: tl.constexpr):  # fmt: skip
    """(offsets within a slot, mask, slot) of the K×BV block of value head i_hv, V block i_v."""
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    if STATE_VK:
        o_s = i_hv * K * V + o_v[None, :] * K + o_k[:, None]
    else:
        o_s = i_hv * K * V + o_k[:, None] * V + o_v[None, :]
    m_s = (o_k[:, None] < K) & (o_v[None, :] < V)
    if USE_STATE_INDICES:
        i_slot = tl.load(state_indices + i_n).to(tl.int64)
    else:
        i_slot = i_n.to(tl.int64)
    return o_s, m_s, i_slot


@triton.jit
def load_state(h0, i_slot, stride_h0, o_s, m_s, BK: tl.constexpr, BV: tl.constexpr,
               USE_INITIAL_STATE: tl.constexpr):  # fmt: skip
    """The block in float32: zeros without an initial state or for a negative slot."""
    b_h = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_INITIAL_STATE:  # noqa: SIM102 (a constexpr branch around a run-time one)
        if i_slot >= 0:
            b_h += tl.load(h0 + i_slot * stride_h0 + o_s, mask=m_s, other=0.0).to(tl.float32)
    return b_h


@triton.jit
def store_final_state(b_h, ht, h0, i_n, i_slot, stride_h0, o_s, m_s, HV: tl.constexpr, K: tl.constexpr,
                      V: tl.constexpr, FINAL_MODE: tl.constexpr):  # fmt: skip
    """FINAL_MODE 1: into a new [N, HV, ..] tensor ht; 2: back into the slot read (not a negative one)."""
    if FINAL_MODE == 1:
        tl.store(ht + i_n.to(tl.int64) * HV * K * V + o_s, b_h.to(ht.dtype.element_ty), mask=m_s)
    elif FINAL_MODE == 2:  # noqa: SIM102 (constexpr around run-time)
        if i_slot >= 0:
            tl.store(h0 + i_slot * stride_h0 + o_s, b_h.to(h0.dtype.element_ty), mask=m_s)


JIT_FUNCTIONS = (state_block, load_state, store_final_state)
