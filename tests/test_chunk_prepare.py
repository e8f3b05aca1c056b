"""chunk_kkt_solve (cumsum of g, (I + A)⁻¹) and chunk_wu (w, u) against the float64 chunked reference.

On the CPU these run through Triton's interpreter at small shapes; on the GPU host the same tests run
compiled, plus the `gpu`-marked ones at real shapes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from _helpers import cu_seqlens_of, dtype_name, launch_poisoned

from gdn_kernels import _varlen
from gdn_kernels._spec import CHUNK_SIZE, Config, compare_outputs
from gdn_kernels.chunk_kkt_solve import SPEC as KKT_SPEC
from gdn_kernels.chunk_kkt_solve import chunk_kkt_solve, chunk_kkt_solve_reference
from gdn_kernels.chunk_wu import SPEC as WU_SPEC
from gdn_kernels.chunk_wu import chunk_wu, chunk_wu_reference
from gdn_kernels.reference import chunk_stages_reference

TOLERANCE = 1e-2  # relative L2 for 16-bit outputs; measured errors are 1e-4 (Ai) and 3e-3 (w, u)


def _stage_inputs(
    B: int, T: int, H: int, HV: int, K: int, V: int, dtype: torch.dtype, device, lengths=None
) -> dict:
    """Realistic inputs as a model feeds them, plus cu_seqlens when `lengths` is given (then B == 1)."""
    k = torch.nn.functional.normalize(torch.randn(B, T, H, K), dim=-1).to(dtype)
    inputs = {
        "k": k,
        "v": torch.randn(B, T, HV, V).to(dtype),
        "g": torch.nn.functional.logsigmoid(torch.randn(B, T, HV)),
        "beta": torch.sigmoid(torch.randn(B, T, HV)),
    }
    inputs = {name: t.to(device) for name, t in inputs.items()}
    inputs["cu_seqlens"] = None if lengths is None else cu_seqlens_of(lengths, device)
    return inputs


def _kkt_then_wu(inputs: dict, config_kkt: Config | None = None, config_wu: Config | None = None) -> dict:
    stage1 = launch_poisoned(KKT_SPEC, inputs, config_kkt)
    stage2 = launch_poisoned(WU_SPEC, {**inputs, **stage1}, config_wu)
    return {**stage1, **stage2}


def _reference(inputs: dict) -> dict:
    k = inputs["k"]
    ref = chunk_stages_reference(
        k, k, inputs["v"], inputs["g"], inputs["beta"], cu_seqlens=inputs["cu_seqlens"]
    )
    return {name: ref[name] for name in ("gc", "Ai", "w", "u")}


# (B, T, H, HV, K, V, dtype): one sequence at lengths around the chunk size, G = HV/H ∈ {1, 2, 4},
# both 16-bit dtypes, one case at K = V = 128; interpreter cost stays at a few seconds each.
SINGLE_CASES = [
    (1, 1, 1, 2, 64, 64, torch.bfloat16),
    (1, 63, 2, 2, 64, 64, torch.float16),
    (1, 64, 1, 4, 64, 64, torch.bfloat16),
    (1, 65, 2, 4, 64, 64, torch.bfloat16),
    (1, 130, 1, 2, 128, 128, torch.float16),
    (2, 65, 1, 2, 64, 64, torch.bfloat16),  # batch rows start at b·T
]


def _case_id(case) -> str:
    B, T, H, HV, K, V, dtype = case
    return f"B{B}-T{T}-H{H}-HV{HV}-K{K}-V{V}-{dtype_name(dtype)}"


@pytest.mark.parametrize("case", SINGLE_CASES, ids=_case_id)
def test_stages_match_reference(case, device):
    B, T, H, HV, K, V, dtype = case
    inputs = _stage_inputs(B, T, H, HV, K, V, dtype, device)
    out = _kkt_then_wu(inputs)
    errors = compare_outputs(out, _reference(inputs))
    assert errors["gc"] < 1e-5, errors  # float32 cumsum of 64 terms at most
    assert all(e < TOLERANCE for e in errors.values()), errors


@pytest.mark.parametrize("lengths", [[1, 63, 64, 65, 17]], ids=lambda ls: "N5-lens" + "_".join(map(str, ls)))
def test_stages_varlen_match_reference(lengths, device):
    T = sum(lengths)
    inputs = _stage_inputs(1, T, 2, 4, 64, 64, torch.bfloat16, device, lengths=lengths)
    out = _kkt_then_wu(inputs)
    errors = compare_outputs(out, _reference(inputs))
    assert errors["gc"] < 1e-5, errors
    assert all(e < TOLERANCE for e in errors.values()), errors


def test_varlen_chunks_do_not_cross_sequences(device):
    """Two sequences of 3 tokens: the second's chunk starts at token 3, so gc restarts there and row
    3 + r of Ai holds row r of that chunk's inverse (diagonal at column r, nothing from column 3 on);
    one chunk spanning both sequences would put the diagonal at column 3 + r."""
    inputs = _stage_inputs(1, 6, 1, 1, 64, 64, torch.bfloat16, device, lengths=[3, 3])
    out = launch_poisoned(KKT_SPEC, inputs)
    g = inputs["g"][0, :, 0]
    torch.testing.assert_close(out["gc"][0, 3, 0], g[3], rtol=0, atol=1e-6)
    assert (out["Ai"][0, 3:, 0, 3:] == 0).all()  # row 3 + r holds row r of the second chunk's inverse
    assert (out["Ai"][0, :, 0].diagonal()[:3] == 1).all() and (out["Ai"][0, 3:, 0, :3].diagonal() == 1).all()


def test_second_run_is_bitwise_identical(device):
    inputs = _stage_inputs(1, 130, 1, 2, 64, 64, torch.bfloat16, device)
    first, second = _kkt_then_wu(inputs), _kkt_then_wu(inputs)
    for name in first:
        assert torch.equal(first[name], second[name]), name


def test_public_functions_match_spec_launch(device):
    """chunk_kkt_solve / chunk_wu (checked wrappers of what the prefill pipeline calls) give the
    spec's results, with and without a precomputed chunk_indices."""
    lengths = [40, 70]
    inputs = _stage_inputs(1, sum(lengths), 1, 2, 64, 64, torch.bfloat16, device, lengths=lengths)
    cu = inputs["cu_seqlens"]
    indices = _varlen.chunk_indices(cu, sum(lengths), CHUNK_SIZE)
    gc, Ai = chunk_kkt_solve(inputs["k"], inputs["g"], inputs["beta"], cu_seqlens=cu, chunk_indices=indices)
    w, u = chunk_wu(inputs["k"], inputs["v"], inputs["beta"], gc, Ai, cu_seqlens=cu)
    expected = _kkt_then_wu(inputs)
    for name, got in (("gc", gc), ("Ai", Ai), ("w", w), ("u", u)):
        assert torch.equal(got, expected[name]), name


def test_beta_in_input_dtype(device):
    inputs = _stage_inputs(1, 65, 1, 2, 64, 64, torch.bfloat16, device)
    inputs["beta"] = inputs["beta"].to(torch.bfloat16)
    errors = compare_outputs(_kkt_then_wu(inputs), _reference(inputs))
    assert all(e < TOLERANCE for e in errors.values()), errors


def _distinct_block_configs(spec, key) -> list[Config]:
    """One config per distinct block-size combination. The interpreter ignores num_warps and
    num_stages, so on the CPU the other candidates would rerun identical code; on the GPU every
    candidate runs."""
    candidates = spec.space.candidates(key)
    if torch.cuda.is_available():
        return candidates
    return list({tuple(sorted(c.block_params().items())): c for c in candidates}.values())


def test_every_kkt_candidate_is_correct(device):
    key = KKT_SPEC.key(dtype="bfloat16", H=1, HV=2, K=64, T=64)
    inputs = KKT_SPEC.make_inputs(key, device, 0)
    reference = KKT_SPEC.reference(inputs)
    configs = _distinct_block_configs(KKT_SPEC, key)
    assert len(configs) >= 3
    for config in configs:
        errors = compare_outputs(launch_poisoned(KKT_SPEC, inputs, config), reference)
        assert all(e < KKT_SPEC.tolerance for e in errors.values()), (config.label, errors)


def test_every_wu_candidate_is_correct(device):
    key = WU_SPEC.key(dtype="bfloat16", H=1, HV=2, K=64, V=64, T=64)
    inputs = WU_SPEC.make_inputs(key, device, 0)
    reference = WU_SPEC.reference(inputs)
    configs = _distinct_block_configs(WU_SPEC, key)
    assert len(configs) >= 4
    for config in configs:
        errors = compare_outputs(launch_poisoned(WU_SPEC, inputs, config), reference)
        assert all(e < WU_SPEC.tolerance for e in errors.values()), (config.label, errors)


def test_make_inputs_on_meta_device():
    kkt_key = KKT_SPEC.key(dtype="bfloat16", H=16, HV=64, K=128, T=8192)
    wu_key = WU_SPEC.key(dtype="bfloat16", H=16, HV=64, K=128, V=128, T=8192)
    kkt_inputs = KKT_SPEC.make_inputs(kkt_key, "meta", 0)
    wu_inputs = WU_SPEC.make_inputs(wu_key, "meta", 0)
    assert KKT_SPEC.make_outputs(kkt_inputs)["Ai"].shape == (1, 8192, 64, CHUNK_SIZE)
    assert wu_inputs["Ai"].shape == (1, 8192, 64, CHUNK_SIZE) and wu_inputs["Ai"].dtype == torch.bfloat16
    assert WU_SPEC.make_outputs(wu_inputs)["w"].shape == (1, 8192, 64, 128)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda k, g, b: chunk_kkt_solve(k[0], g, b), "k must be"),
        (lambda k, g, b: chunk_kkt_solve(k, g[:, :, :3], b), "g must be"),
        (lambda k, g, b: chunk_kkt_solve(k, g, b[:, :-1]), "beta must"),
        (lambda k, g, b: chunk_kkt_solve(k, g.half(), b), "float32"),
        (
            lambda k, g, b: chunk_kkt_solve(k, g, b, cu_seqlens=torch.tensor([0, 8], dtype=torch.int64)),
            "int32",
        ),
    ],
    ids=["k-3d", "g-heads", "beta-shape", "g-dtype", "cu-int64"],
)
def test_kkt_rejects_bad_arguments(call, message):
    k = torch.randn(1, 8, 2, 16, dtype=torch.bfloat16)
    g, beta = torch.zeros(1, 8, 4), torch.zeros(1, 8, 4)
    with pytest.raises(ValueError, match=message):
        call(k, g, beta)


def test_wu_rejects_bad_arguments():
    k, v = torch.randn(1, 8, 2, 16, dtype=torch.bfloat16), torch.randn(1, 8, 4, 16, dtype=torch.bfloat16)
    beta, gc = torch.zeros(1, 8, 4), torch.zeros(1, 8, 4)
    with pytest.raises(ValueError, match="Ai must be"):
        chunk_wu(k, v, beta, gc, torch.zeros(1, 8, 4, 32, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="HV a multiple of H"):
        chunk_wu(k, v[:, :, :3], beta, gc, torch.zeros(1, 8, 4, 64))
    with pytest.raises(ValueError, match="gc must be float32"):
        chunk_wu(k, v, beta, gc.half(), torch.zeros(1, 8, 4, 64))


_COMPILE_DEFAULTS = """
import json, torch
from gdn_kernels import _targets, _varlen
from gdn_kernels._launch import compile_for_target, recording
from gdn_kernels.chunk_kkt_solve import SPEC as KKT
from gdn_kernels.chunk_wu import SPEC as WU
shared = {}
for spec, key in ((KKT, KKT.key(dtype="bfloat16", H=16, HV=64, K=128, T=8192)),
                  (WU, WU.key(dtype="bfloat16", H=16, HV=64, K=128, V=128, T=8192))):
    for varlen in (False, True):
        inputs = spec.make_inputs(key, "meta", 0)
        if varlen:
            inputs["cu_seqlens"] = torch.empty(5, dtype=torch.int32, device="meta")
            inputs["chunk_indices"] = torch.empty(_varlen.max_chunks(8192, 4, 64), 2, dtype=torch.int32, device="meta")
        with recording() as records:
            spec.launch(inputs, spec.make_outputs(inputs), spec.default)
        for target in _targets.TARGETS.values():
            compiled = compile_for_target(records[0], target.cc)
            shared[f"{spec.name}-varlen{varlen}-{target.name}"] = (compiled.metadata.shared, target.shared_memory_per_block)
print(json.dumps(shared))
"""


@pytest.mark.slow
def test_defaults_compile_and_fit_every_target():
    """Default configs compile for sm80/90/100/120 and fit each target's shared memory. Runs in a
    subprocess: triton.compile does not work under TRITON_INTERPRET."""
    env = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, "-c", _COMPILE_DEFAULTS], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    shared = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(shared) == 2 * 2 * 5
    for label, (needed, available) in shared.items():
        assert 0 < needed <= available, label


# GPU host: real shapes, float64 reference on the GPU.
GPU_CASES = [
    pytest.param(16, 64, 8192, None, id="H16-HV64-T8192"),
    pytest.param(2, 8, 8192, None, id="H2-HV8-T8192"),
    pytest.param(16, 64, 8192, [1000, 3000, 4096, 96], id="H16-HV64-varlen1000_3000_4096_96"),
    pytest.param(2, 8, 8192, [1000, 3000, 4096, 96], id="H2-HV8-varlen1000_3000_4096_96"),
]


@pytest.mark.gpu
@pytest.mark.parametrize(("H", "HV", "T", "lengths"), GPU_CASES)
def test_stages_real_shapes_gpu(H, HV, T, lengths):
    inputs = _stage_inputs(1, T, H, HV, 128, 128, torch.bfloat16, "cuda", lengths=lengths)
    out = _kkt_then_wu(inputs)
    errors = compare_outputs(out, _reference(inputs))
    assert errors["gc"] < 1e-5, errors
    assert all(e < TOLERANCE for e in errors.values()), errors
    again = _kkt_then_wu(inputs)
    for name in out:
        assert torch.equal(out[name], again[name]), name


@pytest.mark.gpu
def test_spec_references_real_shape_gpu():
    """The specs' own make_inputs / reference (what the tuner checks) at dp-8k."""
    for spec, key in (
        (KKT_SPEC, KKT_SPEC.key(dtype="bfloat16", H=16, HV=64, K=128, T=8192)),
        (WU_SPEC, WU_SPEC.key(dtype="bfloat16", H=16, HV=64, K=128, V=128, T=8192)),
    ):
        inputs = spec.make_inputs(key, "cuda", 1)
        reference = (chunk_kkt_solve_reference if spec is KKT_SPEC else chunk_wu_reference)(inputs)
        errors = compare_outputs(launch_poisoned(spec, inputs), reference)
        assert all(e < spec.tolerance for e in errors.values()), (spec.name, errors)
