"""Chunk bookkeeping for variable-length batches, built on the device: no host synchronisation.

Grids cannot depend on per-sequence lengths without reading them on the host, so chunked kernels
launch `max_chunks(T, N)` programs and look up which (sequence, chunk) each one handles; surplus
programs find sequence −1 and return.

Both tables come from one small kernel: built from torch ops they took 13 launches (about 100 µs of
host time per prefill call on the H200 host, more than the tp8 shape's whole kkt stage on the GPU).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import cdiv, is_recording, launch
from ._spec import Config

# Chunks per program × sequences per step of the loop: a [128, 128] int32 compare tile, 128 values a
# thread at 4 warps. One program covers T = 8192 tokens of up to 64 sequences (192 chunks: 2 programs).
BOOKKEEPING_CONFIG = Config.of(BLOCK_C=128, BLOCK_N=128, num_warps=4, num_stages=1)


def max_chunks(T: int, sequences: int, chunk_size: int) -> int:
    """Upper bound of Σ ceil(len_n / BT) over sequences whose lengths sum to T: T/BT + N."""
    return T // chunk_size + sequences


# One binary for every N and T: specialising them (N == 1 as a constexpr, divisibility by 16) buys
# nothing here and would make each class a separate compile for `gdn-tune warmup` to foresee.
@triton.jit(do_not_specialize=["N", "T", "n_steps"])
def _chunk_bookkeeping_kernel(
    cu_seqlens,
    offsets,
    indices,
    N,
    T,
    n_steps,  # cdiv(N, BLOCK_N)
    BT: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Program p: (sequence, chunk within it) of global chunks p·BLOCK_C .. +BLOCK_C; program 0 also
    writes the chunk offsets. Sequence of chunk c = how many sequences end at or before c (their
    chunks precede it); its first chunk = the largest such end, or 0."""
    i_p = tl.program_id(0)
    n_chunks = T // BT + N  # max_chunks(T, N): rows of `indices`
    o_c = i_p * BLOCK_C + tl.arange(0, BLOCK_C)
    b_seq = tl.zeros([BLOCK_C], dtype=tl.int32)
    b_start = tl.zeros([BLOCK_C], dtype=tl.int32)
    b_base = tl.zeros([1], dtype=tl.int32)  # chunks of the sequences before this block of them
    # Masks rather than `if i_p == 0`: the interpreter cannot branch on a program id with numpy ≥ 2.4.
    first = i_p == 0
    tl.store(offsets + tl.arange(0, 1), b_base, mask=first)
    # A while loop: the interpreter cannot take range() over a runtime bound (numpy ≥ 2.4 hands it
    # 1-element arrays); compiled, the loop is as cheap either way (one to a few steps).
    i_n = 0
    while i_n < n_steps:
        o_n = i_n * BLOCK_N + tl.arange(0, BLOCK_N)
        m_n = o_n < N
        bos = tl.load(cu_seqlens + o_n, mask=m_n, other=0).to(tl.int32)
        eos = tl.load(cu_seqlens + o_n + 1, mask=m_n, other=0).to(tl.int32)
        b_chunks = (eos - bos + BT - 1) // BT
        b_ends = tl.cumsum(b_chunks, 0) + b_base  # offsets[n + 1] for this block's sequences
        tl.store(offsets + o_n + 1, b_ends, mask=m_n & first)
        b_before = (b_ends[None, :] <= o_c[:, None]) & m_n[None, :]
        b_seq += tl.sum(b_before.to(tl.int32), 1)
        b_start = tl.maximum(b_start, tl.max(tl.where(b_before, b_ends[None, :], 0), 1))
        b_base += tl.sum(b_chunks, 0)
        i_n += 1
    m_valid = o_c < b_base  # b_base now holds the total number of chunks
    m_c = o_c < n_chunks
    tl.store(indices + o_c * 2, tl.where(m_valid, b_seq, -1), mask=m_c)
    tl.store(indices + o_c * 2 + 1, tl.where(m_valid, o_c - b_start, -1), mask=m_c)


def chunk_bookkeeping(cu_seqlens: torch.Tensor, T: int, chunk_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(chunk_offsets int32 [N+1], chunk_indices int32 [max_chunks, 2]) in one launch; see below."""
    N = cu_seqlens.numel() - 1
    n_chunks = max_chunks(T, N, chunk_size)
    offsets = torch.empty(N + 1, dtype=torch.int32, device=cu_seqlens.device)
    indices = torch.empty(n_chunks, 2, dtype=torch.int32, device=cu_seqlens.device)
    if cu_seqlens.device.type == "meta" and not is_recording():
        return offsets, indices  # shapes only; under recording() the launch is recorded for compiling
    block_c = BOOKKEEPING_CONFIG["BLOCK_C"]
    launch(
        _chunk_bookkeeping_kernel,
        (cdiv(n_chunks, block_c),),
        BOOKKEEPING_CONFIG,
        cu_seqlens=cu_seqlens,
        offsets=offsets,
        indices=indices,
        N=N,
        T=T,
        n_steps=cdiv(N, BOOKKEEPING_CONFIG["BLOCK_N"]),
        BT=chunk_size,
    )
    return offsets, indices


def chunk_offsets(cu_seqlens: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """int32 [N+1]: number of chunks before each sequence (the last entry is the total)."""
    return chunk_bookkeeping(cu_seqlens, 0, chunk_size)[0]


def chunk_indices(cu_seqlens: torch.Tensor, T: int, chunk_size: int) -> torch.Tensor:
    """int32 [max_chunks, 2]: (sequence, chunk within it) of each global chunk; (−1, −1) past the last."""
    return chunk_bookkeeping(cu_seqlens, T, chunk_size)[1]
