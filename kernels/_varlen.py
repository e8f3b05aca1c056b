"""Chunk bookkeeping for variable-length batches, built on the device: no host synchronisation.

Grids cannot depend on per-sequence lengths without reading them on the host, so chunked kernels
launch `max_chunks(T, N)` programs and look up which (sequence, chunk) each one handles; surplus
programs find sequence −1 and return.
"""

from __future__ import annotations

import torch


def max_chunks(T: int, sequences: int, chunk_size: int) -> int:
    """Upper bound of Σ ceil(len_n / BT) over sequences whose lengths sum to T: T/BT + N."""
    return T // chunk_size + sequences


def chunk_offsets(cu_seqlens: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """int32 [N+1]: number of chunks before each sequence (the last entry is the total)."""
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    chunks = (lengths + chunk_size - 1) // chunk_size
    return torch.nn.functional.pad(chunks.cumsum(0), (1, 0)).to(torch.int32)


def chunk_indices(cu_seqlens: torch.Tensor, T: int, chunk_size: int) -> torch.Tensor:
    """int32 [max_chunks, 2]: (sequence, chunk within it) of each global chunk; (−1, −1) past the last."""
    offsets = chunk_offsets(cu_seqlens, chunk_size)
    n_max = max_chunks(T, cu_seqlens.numel() - 1, chunk_size)
    c = torch.arange(n_max, device=cu_seqlens.device, dtype=torch.int32)
    seq = torch.searchsorted(offsets[1:], c, right=True).to(torch.int32)
    valid = c < offsets[-1]
    within = c - offsets[seq.clamp(max=offsets.numel() - 2)]
    return torch.stack((torch.where(valid, seq, -1), torch.where(valid, within, -1)), dim=1)
