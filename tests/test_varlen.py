"""Varlen bookkeeping (kernels/_varlen.py): the chunk tables against a plain-Python count of every
sequence's chunks, and a wrong cu_seqlens: refused where its values are on the host, made safe (never
uninitialised memory) where they are not, refused on the device under GDN_TUNE_CHECK_CU_SEQLENS=1."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gdn_kernels import (
    _varlen,
    chunk_gated_delta_rule,
    chunk_output,
    fused_recurrent_gated_delta_rule,
    kernel_specs,
)

ROOT = Path(__file__).resolve().parent.parent

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


# ---------------------------------------------------------------------------------------------------
# cu_seqlens that is wrong: checked where its values are on the host; on a GPU (simulated here by
# treating the CPU tensor as unreadable) made safe by the guard kernel, which never leaves a token of
# the output uninitialised; GDN_TUNE_CHECK_CU_SEQLENS=1 checks it on the device and raises.

H, HV, K, V = 1, 2, 32, 32


def chunk_call(device, cu_seqlens, T: int = 64, dtype=torch.bfloat16, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(1, T, H, K, generator=gen).to(dtype)
    k = torch.nn.functional.normalize(torch.randn(1, T, H, K, generator=gen), dim=-1).to(dtype)
    v = torch.randn(1, T, HV, V, generator=gen).to(dtype)
    g = torch.nn.functional.logsigmoid(torch.randn(1, T, HV, generator=gen))
    beta = torch.sigmoid(torch.randn(1, T, HV, generator=gen))
    tensors = [t.to(device) for t in (q, k, v, g, beta)]
    return lambda cu=cu_seqlens: chunk_gated_delta_rule(*tensors, output_final_state=True, cu_seqlens=cu)


def decode_call(device, cu_seqlens, T: int = 4):
    q, k = torch.randn(1, T, H, K), torch.randn(1, T, H, K)
    v, g, beta = torch.randn(1, T, HV, V), -torch.rand(1, T, HV), torch.rand(1, T, HV)
    tensors = [t.to(device) for t in (q, k, v, g, beta)]
    return lambda: fused_recurrent_gated_delta_rule(*tensors, cu_seqlens=cu_seqlens)


BAD_VALUES = {
    "short-of-T": ([0, 20, 50], "must end at T = 64, the packed tokens, got 50"),
    "past-T": ([0, 20, 100], "must end at T = 64, the packed tokens, got 100"),
    "decreasing": ([0, 40, 20, 64], "must never decrease, got 40 then 20"),
    "not-from-0": ([8, 20, 64], "must start at 0, got 8"),
}


@pytest.mark.parametrize(("values", "message"), BAD_VALUES.values(), ids=BAD_VALUES.keys())
def test_host_cu_seqlens_with_wrong_values_is_refused_before_any_launch(device, values, message):
    if device.type != "cpu":
        pytest.skip("values on the host: a CPU tensor")
    cu = torch.tensor(values, dtype=torch.int32)
    with pytest.raises(ValueError, match=f"chunk_gated_delta_rule: cu_seqlens {re.escape(message)}"):
        chunk_call(device, cu)()


def test_decode_checks_host_cu_seqlens_too(device):
    if device.type != "cpu":
        pytest.skip("values on the host: a CPU tensor")
    with pytest.raises(ValueError, match="fused_recurrent_gated_delta_rule: cu_seqlens must end at T = 4"):
        decode_call(device, torch.tensor([0, 1, 3], dtype=torch.int32))()
    with pytest.raises(ValueError, match="never decrease"):
        decode_call(device, torch.tensor([0, 3, 1, 4], dtype=torch.int32))()


@pytest.mark.parametrize("kind", ["list", "numpy"])
@pytest.mark.parametrize("call", [chunk_call, decode_call], ids=["chunk", "decode"])
def test_cu_seqlens_that_is_not_a_tensor_is_a_type_error_saying_how_to_make_one(device, kind, call):
    values = [0, 2, 4] if call is decode_call else [0, 20, 64]
    given = values if kind == "list" else np.array(values, dtype=np.int32)
    with pytest.raises(TypeError, match=rf"cu_seqlens must be a torch.Tensor .*got {type(given).__name__}"):
        call(device, given)()


@pytest.fixture
def device_values(monkeypatch):
    """cu_seqlens treated as a GPU's: its values are not read on the host."""
    monkeypatch.setattr(_varlen, "_values_on_host", lambda t: False)


SAFE = {  # what the guard makes of each: clamped to [0, T], never below the value before
    "short-of-T": ([0, 20, 50], [0, 20, 50]),
    "past-T": ([0, 20, 100], [0, 20, 64]),
    "decreasing": ([0, 40, 20, 64], [0, 40, 40, 64]),
    "not-from-0": ([8, 20, 64], [8, 20, 64]),
}


@pytest.mark.parametrize(("values", "safe"), SAFE.values(), ids=SAFE.keys())
def test_device_cu_seqlens_with_wrong_values_never_returns_uninitialised_memory(
    device, device_values, monkeypatch, values, safe
):
    # o is allocated NaN-filled: any token the call leaves unwritten shows.
    monkeypatch.setattr(
        chunk_output, "_make_outputs", lambda inputs: {"o": torch.full_like(inputs["v_new"], float("nan"))}
    )
    call = chunk_call(device, torch.tensor(values, dtype=torch.int32, device=device))
    o, state = call()
    assert torch.isfinite(o).all() and torch.isfinite(state).all()
    covered = torch.zeros(64, dtype=torch.bool)
    covered[safe[0] : safe[-1]] = True
    assert (o[0, ~covered] == 0).all()  # no sequence covers them: zeros
    # The sequences are those of the safe cu_seqlens, each computed as in a valid call.
    if safe[0] == 0 and safe[-1] == 64:
        o_safe, state_safe = call(torch.tensor(safe, dtype=torch.int32, device=device))
        assert torch.equal(o, o_safe) and torch.equal(state, state_safe)


def test_the_debug_switch_checks_device_cu_seqlens_and_raises(device, device_values, monkeypatch):
    cu = torch.tensor([0, 20, 50], dtype=torch.int32, device=device)
    monkeypatch.setattr(_varlen, "CHECK_CU_SEQLENS", True)
    with pytest.raises(ValueError, match="must end at T = 64"):
        chunk_call(device, cu)()
    with pytest.raises(ValueError, match="must end at T = 4"):
        decode_call(device, torch.tensor([0, 1, 3], dtype=torch.int32, device=device))()
    chunk_call(device, torch.tensor([0, 20, 64], dtype=torch.int32, device=device))()  # a valid one passes


def test_the_debug_switch_is_read_from_the_environment_at_import():
    code = "from gdn_kernels import _varlen; print(_varlen.CHECK_CU_SEQLENS)"
    for value, expected in (("1", "True"), ("", "False")):
        env = {**os.environ, _varlen.ENV_CHECK_CU_SEQLENS: value}
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        assert done.stdout.strip() == expected


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64], ids=str)
def test_the_guard_over_many_sequences_and_programs(device, index_dtype):
    # 150 values: two steps of the guard's 128-value loop; 700 tokens: three programs of 256 rows.
    T = 700
    gen = torch.Generator().manual_seed(5)
    values = torch.randint(-50, T + 200, (150,), generator=gen).tolist()
    values[0], values[-1] = 130, 600  # rows 0..130 and 600..700 belong to no sequence
    cu = torch.tensor(values, dtype=index_dtype, device=device)
    o = torch.full((1, T, 2, 40), float("nan"), dtype=torch.bfloat16, device=device)
    safe = _varlen.guard_varlen(cu, T, o).cpu()
    running, expected = 0, []
    for value in values:
        running = max(running, min(max(value, 0), T))
        expected.append(running)
    assert safe.dtype == torch.int32 and safe.tolist() == expected
    rows = o[0].flatten(1).cpu()
    lo, hi = expected[0], expected[-1]
    assert (rows[:lo] == 0).all() and (rows[hi:] == 0).all() and torch.isnan(rows[lo:hi]).all()


def test_a_valid_cu_seqlens_is_copied_and_nothing_is_zeroed(device):
    lengths = [1, 63, 64, 65, 17]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int64, device=device)
    o = torch.full((1, sum(lengths), 2, 8), float("nan"), dtype=torch.float16, device=device)
    assert _varlen.guard_varlen(cu, sum(lengths), o).tolist() == cu.tolist()
    assert torch.isnan(o).all()


def test_prepare_varlen_records_the_guard_then_the_bookkeeping_on_meta_tensors():
    from gdn_kernels._launch import recording

    cu = torch.empty(4, dtype=torch.int32, device="meta")
    o = torch.empty(1, 200, 2, 8, dtype=torch.bfloat16, device="meta")
    with recording() as records:
        _varlen.prepare_varlen(cu, 200, CHUNK, o)
    assert [r.kernel for r in records] == [_varlen._varlen_guard_kernel, _varlen._chunk_bookkeeping_kernel]


def test_the_guard_does_not_make_the_tables_stale():
    # Launched with a fixed config, it is left out of chunk_kkt_solve's hash (the shipped tables'),
    # which is taken as a GPU process takes it: without TRITON_INTERPRET, whose kernels hash otherwise.
    assert _varlen._varlen_guard_kernel in kernel_specs()["chunk_kkt_solve"].jit_functions  # warmed up
    code = "from gdn_kernels import spec_by_name; print(spec_by_name('chunk_kkt_solve').source_hash())"
    env = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    shipped = json.loads((ROOT / "tuned_configs" / "sm90" / "chunk_kkt_solve.json").read_text())
    assert done.stdout.strip() == shipped["made_with"]["kernel_hash"]


def test_a_16_bit_gate_is_cast_to_float32_as_the_docstring_says(device):
    assert "16-bit is cast" in chunk_gated_delta_rule.__doc__
    cu = torch.tensor([0, 20, 64], dtype=torch.int32, device=device)
    gen = torch.Generator().manual_seed(1)
    q, k = (torch.randn(1, 64, H, K, generator=gen).to(torch.bfloat16).to(device) for _ in range(2))
    v = torch.randn(1, 64, HV, V, generator=gen).to(torch.bfloat16).to(device)
    g = torch.nn.functional.logsigmoid(torch.randn(1, 64, HV, generator=gen)).to(torch.bfloat16).to(device)
    beta = torch.rand(1, 64, HV, generator=gen).to(device)
    o16, _ = chunk_gated_delta_rule(q, k, v, g, beta, cu_seqlens=cu)
    o32, _ = chunk_gated_delta_rule(q, k, v, g.float(), beta, cu_seqlens=cu)
    assert torch.equal(o16, o32)


_COMPILE_GUARD = """
import json, torch
from gdn_kernels import _varlen
from gdn_kernels._launch import compile_for_target, recording
cu = torch.empty(65, dtype=torch.int64, device="meta")
o = torch.empty(1, 8192, 64, 128, dtype=torch.bfloat16, device="meta")
with recording() as records:
    _varlen.guard_varlen(cu, 8192, o)
print(json.dumps({cc: compile_for_target(records[0], cc).metadata.shared for cc in (80, 90, 100, 120)}))
"""


def test_the_guard_compiles_for_every_target():
    # The interpreter runs it here; a GPU compiles it (in a child process without TRITON_INTERPRET).
    env = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, "-c", _COMPILE_GUARD], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    shared = json.loads(done.stdout)
    assert set(shared) == {"80", "90", "100", "120"} and max(shared.values()) < 1024
