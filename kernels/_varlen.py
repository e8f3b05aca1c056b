"""Varlen bookkeeping, built on the device: no host synchronisation. What `cu_seqlens` a call takes,
how it is made safe when its values cannot be read, and the chunk tables of the chunked kernels.

Grids cannot depend on per-sequence lengths without reading them on the host, so chunked kernels
launch `max_chunks(T, N)` programs and look up which (sequence, chunk) each one handles; surplus
programs find sequence −1 and return.

Both tables come from one small kernel: built from torch ops they took 13 launches (about 100 µs of
host time per prefill call on the H200 host, more than the tp8 shape's whole kkt stage on the GPU).

`cu_seqlens` must start at 0, never decrease and end at T. Where its values are on the host (a CPU
tensor) that is checked before any launch. On a GPU reading them would synchronise, so they are not
read; instead the guard kernel (one launch before the bookkeeping) hands the kernels a copy made safe
(each value clamped to [0, T] and raised to the one before: sequences never overlap nor leave the
tokens) and zeroes the output rows no sequence covers, so a wrong `cu_seqlens` can give wrong values
but never out-of-bounds accesses or uninitialised memory. GDN_TUNE_CHECK_CU_SEQLENS=1 (read at import)
checks GPU tensors too, on the device, and raises: a debug switch, since it synchronises.
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

from ._launch import cdiv, is_recording, launch
from ._spec import Config

INDEX_DTYPES = (torch.int32, torch.int64)
ENV_CHECK_CU_SEQLENS = "GDN_TUNE_CHECK_CU_SEQLENS"
# Read once: a forward call must not pay an environment lookup (about 0.4 µs) to learn it is off.
CHECK_CU_SEQLENS = os.environ.get(ENV_CHECK_CU_SEQLENS, "").strip().lower() in ("1", "true", "yes", "on")

# Chunks per program × sequences per step of the loop: a [128, 128] int32 compare tile, 128 values a
# thread at 4 warps. One program covers T = 8192 tokens of up to 64 sequences (192 chunks: 2 programs).
BOOKKEEPING_CONFIG = Config.of(BLOCK_C=128, BLOCK_N=128, num_warps=4, num_stages=1)


def _values_on_host(cu_seqlens: torch.Tensor) -> bool:
    """Whether the values can be read without waiting for a GPU (meta tensors have none)."""
    return cu_seqlens.device.type == "cpu"


def check_cu_seqlens(cu_seqlens: object, T: int, name: str, device: torch.device) -> int:
    """Validate a call's `cu_seqlens` for `T` packed tokens on `device`; returns the sequence count N.

    Type, shape, dtype and device always; the values (start at 0, never decrease, end at T) where they
    are on the host, and on a GPU only under GDN_TUNE_CHECK_CU_SEQLENS=1 (which synchronises). Raises
    TypeError or ValueError naming `name`'s argument and what is wrong.
    """
    if not isinstance(cu_seqlens, torch.Tensor):
        raise TypeError(
            f"{name}: cu_seqlens must be a torch.Tensor (int32 or int64 [N + 1] on {device}), got "
            f"{type(cu_seqlens).__name__}; torch.tensor(cu_seqlens, dtype=torch.int32, device=q.device) makes one"
        )
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise ValueError(f"{name}: cu_seqlens must be 1-D [N + 1] with N ≥ 1, got {tuple(cu_seqlens.shape)}")
    if cu_seqlens.dtype not in INDEX_DTYPES:
        raise ValueError(f"{name}: cu_seqlens must be int32/int64, got {cu_seqlens.dtype}")
    if cu_seqlens.device != device:
        raise ValueError(
            f"{name}: cu_seqlens is on {cu_seqlens.device}, q on {device}; all must share a device"
        )
    if _values_on_host(cu_seqlens):
        _check_values(cu_seqlens.tolist(), T, name)
    elif CHECK_CU_SEQLENS and cu_seqlens.device.type != "meta":
        # On the device: the verdict is one boolean; the values come over only to say what is wrong.
        bad = (cu_seqlens[0] != 0) | (cu_seqlens[-1] != T) | (cu_seqlens[1:] < cu_seqlens[:-1]).any()
        if bad.item():
            _check_values(cu_seqlens.tolist(), T, name)
    return cu_seqlens.numel() - 1


def _check_values(values: list[int], T: int, name: str) -> None:
    if values[0] != 0:
        raise ValueError(f"{name}: cu_seqlens must start at 0, got {values[0]}")
    for n in range(1, len(values)):
        if values[n] < values[n - 1]:
            raise ValueError(
                f"{name}: cu_seqlens must never decrease, got {values[n - 1]} then {values[n]} "
                f"(cu_seqlens[{n - 1}:{n + 1}]): sequence {n - 1} would have a negative length"
            )
    if values[-1] != T:
        raise ValueError(
            f"{name}: cu_seqlens must end at T = {T}, the packed tokens, got {values[-1]} "
            f"({'tokens past it belong to no sequence' if values[-1] < T else 'it points past the tokens'})"
        )


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


# The guard: cu_seqlens values per loop step (as the bookkeeping's), output rows per program (T = 8192
# is 32 programs; each first reads all N + 1 values, which for a valid cu_seqlens is all it does), and
# the zero tile it stores where no sequence covers a row: [16 rows, 512 elements], 16 per thread.
GUARD_CONFIG = Config.of(BLOCK_N=128, BLOCK_R=16, BLOCK_E=512, num_warps=4, num_stages=1)
GUARD_ROWS_PER_PROGRAM = 256


@triton.jit
def _maximum(a, b):
    return tl.maximum(a, b)


@triton.jit(do_not_specialize=["N", "T", "n_steps", "row_elems"])
def _varlen_guard_kernel(
    cu_seqlens,
    cu_safe,
    o,
    N,
    T,
    n_steps,  # cdiv(N + 1, BLOCK_N)
    row_elems,  # elements of one token's row of o (HV·V)
    ROWS: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_E: tl.constexpr,
):
    """cu_safe[n] = max(clamp(cu_seqlens[0..n], 0, T)) (program 0 writes it): sequence n is then
    [cu_safe[n], cu_safe[n + 1]), within the tokens and after sequence n − 1. Program p zeroes the rows
    p·ROWS .. p·ROWS + ROWS of o that lie before cu_safe[0] or from cu_safe[N] on: no sequence covers
    them, so no kernel writes them. For a valid cu_seqlens, cu_safe is a copy and nothing is zeroed."""
    i_p = tl.program_id(0)
    first = i_p == 0
    b_run = tl.full([], 0, tl.int32)  # cu_safe of the last value of the previous step
    # While loops over runtime bounds: the interpreter cannot take range() over them (see below).
    i_n = 0
    while i_n < n_steps:
        o_n = i_n * BLOCK_N + tl.arange(0, BLOCK_N)
        m_n = o_n <= N
        b_cu = tl.load(cu_seqlens + o_n, mask=m_n, other=0)
        # Clamped before the cast: an int64 value past 2³¹ must not wrap into range.
        b_cu = tl.minimum(tl.maximum(b_cu, 0), T).to(tl.int32)
        b_safe = tl.maximum(tl.associative_scan(b_cu, 0, _maximum), b_run)
        tl.store(cu_safe + o_n, b_safe, mask=m_n & first)
        b_run = tl.maximum(b_run, tl.max(tl.where(m_n, b_safe, 0), 0))
        i_n += 1
    lo = tl.minimum(tl.maximum(tl.load(cu_seqlens), 0), T).to(tl.int32)  # cu_safe[0]
    hi = b_run  # cu_safe[N]
    row_start = i_p * ROWS
    row_end = tl.minimum(row_start + ROWS, T)
    # Row steps only in a program that holds an uncovered row: none, for a valid cu_seqlens.
    uncovered = (row_start < lo) | (row_end > hi)
    n_e = tl.cdiv(row_elems, BLOCK_E)
    i_r = row_start
    while i_r < tl.where(uncovered, row_end, row_start):
        o_r = i_r + tl.arange(0, BLOCK_R)
        m_r = (o_r < row_end) & ((o_r < lo) | (o_r >= hi))
        i_e = 0
        while i_e < n_e:
            o_e = i_e * BLOCK_E + tl.arange(0, BLOCK_E)
            p_o = o + o_r.to(tl.int64)[:, None] * row_elems + o_e[None, :]
            b_zero = tl.zeros([BLOCK_R, BLOCK_E], dtype=o.dtype.element_ty)
            tl.store(p_o, b_zero, mask=m_r[:, None] & (o_e[None, :] < row_elems))
            i_e += 1
        i_r += BLOCK_R


def guard_varlen(cu_seqlens: torch.Tensor, T: int, o: torch.Tensor) -> torch.Tensor:
    """int32 [N + 1]: `cu_seqlens` made safe for T tokens, and the rows of o [1, T, ...] (contiguous)
    that no sequence covers zeroed (see `_varlen_guard_kernel`); one launch, no host synchronisation."""
    N = cu_seqlens.numel() - 1
    cu_safe = torch.empty(N + 1, dtype=torch.int32, device=cu_seqlens.device)
    if cu_seqlens.device.type == "meta" and not is_recording():
        return cu_safe
    launch(
        _varlen_guard_kernel,
        (cdiv(T, GUARD_ROWS_PER_PROGRAM),),
        GUARD_CONFIG,
        cu_seqlens=cu_seqlens,
        cu_safe=cu_safe,
        o=o,
        N=N,
        T=T,
        n_steps=cdiv(N + 1, GUARD_CONFIG["BLOCK_N"]),
        row_elems=math.prod(o.shape[2:]),
        ROWS=GUARD_ROWS_PER_PROGRAM,
    )
    return cu_safe


def prepare_varlen(
    cu_seqlens: torch.Tensor, T: int, chunk_size: int, o: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What the chunked kernels take for a varlen call of T tokens whose output is `o` [1, T, HV, V]:
    (cu_seqlens made safe, chunk_offsets, chunk_indices), with o's rows outside every sequence zeroed.
    Two launches: the guard costs one more than the bookkeeping alone (about 5 µs of host time, a few
    µs of GPU time for a valid cu_seqlens: 32 programs reading N + 1 values at T = 8192), against an
    output that could otherwise hold uninitialised memory or writes out of bounds."""
    cu_safe = guard_varlen(cu_seqlens, T, o)
    offsets, indices = chunk_bookkeeping(cu_safe, T, chunk_size)
    return cu_safe, offsets, indices


def chunk_offsets(cu_seqlens: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """int32 [N+1]: number of chunks before each sequence (the last entry is the total)."""
    return chunk_bookkeeping(cu_seqlens, 0, chunk_size)[0]


def chunk_indices(cu_seqlens: torch.Tensor, T: int, chunk_size: int) -> torch.Tensor:
    """int32 [max_chunks, 2]: (sequence, chunk within it) of each global chunk; (−1, −1) past the last."""
    return chunk_bookkeeping(cu_seqlens, T, chunk_size)[1]
