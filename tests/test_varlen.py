"""Chunk bookkeeping kernel (kernels/_varlen.py) against a plain-Python count of every sequence's chunks."""

import pytest
import torch

from gdn_kernels import _varlen

CHUNK = 64


def expected_tables(lengths: list[int], T: int) -> tuple[torch.Tensor, torch.Tensor]:
    offsets, rows = [0], []
    for n, length in enumerate(lengths):
        chunks = -(-length // CHUNK)
        offsets.append(offsets[-1] + chunks)
        rows += [(n, c) for c in range(chunks)]
    total = _varlen.max_chunks(T, len(lengths), CHUNK)
    rows += [(-1, -1)] * (total - len(rows))
    return torch.tensor(offsets, dtype=torch.int32), torch.tensor(rows, dtype=torch.int32).reshape(-1, 2)


CASES = {
    "N1-L8192": [8192],
    "N5-L1+63+64+65+17": [1, 63, 64, 65, 17],
    "N4-empty-sequences": [0, 130, 0, 64],
    # 150 sequences: two steps of the 128-sequence loop; 200+ chunks: two programs of 128 chunks.
    "N150-mixed": [(37 * n) % 200 for n in range(150)],
}


@pytest.mark.parametrize("lengths", CASES.values(), ids=CASES.keys())
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64], ids=str)
def test_bookkeeping_matches_a_python_count(device, lengths, index_dtype):
    T = sum(lengths)
    cu_seqlens = torch.tensor(
        [0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=index_dtype, device=device
    )
    offsets, indices = _varlen.chunk_bookkeeping(cu_seqlens, T, CHUNK)
    want_offsets, want_indices = expected_tables(lengths, T)
    assert offsets.dtype == indices.dtype == torch.int32
    assert torch.equal(offsets.cpu(), want_offsets)
    assert torch.equal(indices.cpu(), want_indices)
    assert torch.equal(_varlen.chunk_offsets(cu_seqlens, CHUNK).cpu(), want_offsets)
    assert torch.equal(_varlen.chunk_indices(cu_seqlens, T, CHUNK).cpu(), want_indices)


def test_meta_tensors_give_shapes_only():
    offsets, indices = _varlen.chunk_bookkeeping(torch.empty(4, dtype=torch.int32, device="meta"), 200, CHUNK)
    assert offsets.shape == (4,) and indices.shape == (_varlen.max_chunks(200, 3, CHUNK), 2)


def test_recorded_on_meta_tensors_for_cross_compiling():
    from gdn_kernels._launch import recording

    with recording() as records:
        _varlen.chunk_bookkeeping(torch.empty(4, dtype=torch.int32, device="meta"), 200, CHUNK)
    assert [r.kernel for r in records] == [_varlen._chunk_bookkeeping_kernel]
    assert records[0].args["BT"] == CHUNK
