"""The second half of the prefill pipeline (chunk_state, chunk_output) and the public
`chunk_gated_delta_rule`, against float64 references.

On the CPU these run through Triton's interpreter, so shapes stay small; on the GPU host the same tests
run compiled, and the `gpu`-marked ones add the real shapes of ANCHORS.md.
"""

from __future__ import annotations

import pytest
import torch
from _helpers import (
    assert_default_config_fits_every_target,
    cu_seqlens_of,
    dtype_name,
    host_synchronisation_forbidden,
    launch_poisoned,
)

from gdn_kernels import _varlen, chunk_output, chunk_state
from gdn_kernels._spec import CHUNK_SIZE, compare_outputs, relative_error
from gdn_kernels.chunk import chunk_gated_delta_rule
from gdn_kernels.reference import chunk_stages_reference, gated_delta_rule_reference, l2norm_reference

# Relative L2 error allowed for o and the final state with 16-bit inputs. Seen on the CPU (interpreter):
# at most 0.7 % for bf16 (with in-kernel l2norm), 0.05 % for fp16.
TOLERANCE = 1e-2
VARLEN_LENGTHS = (1, 63, 64, 65, 17)
# A warm state's elements have a standard deviation of about 0.1 at these gate statistics (measured:
# the reference's final state after 256 tokens of such inputs), so initial states are drawn at that scale.
STATE_SCALE = 0.1


def make_problem(
    lengths: tuple[int, ...],
    H: int,
    HV: int,
    K: int,
    V: int,
    dtype: torch.dtype,
    device: torch.device,
    varlen: bool = True,
    initial_state: bool = True,
    normalized_k: bool = True,
) -> dict:
    """Inputs of one call: sequences packed with cu_seqlens (varlen) or as a batch of equal lengths."""
    B, T = (1, sum(lengths)) if varlen else (len(lengths), lengths[0])
    assert varlen or len(set(lengths)) == 1
    k = torch.randn(B, T, H, K)
    problem = {
        "q": torch.randn(B, T, H, K).to(dtype),
        "k": (l2norm_reference(k).float() if normalized_k else k).to(dtype),
        "v": torch.randn(B, T, HV, V).to(dtype),
        "g": torch.nn.functional.logsigmoid(torch.randn(B, T, HV)),
        "beta": torch.sigmoid(torch.randn(B, T, HV)),
        "initial_state": STATE_SCALE * torch.randn(len(lengths), HV, K, V) if initial_state else None,
        "cu_seqlens": cu_seqlens_of(lengths) if varlen else None,
    }
    return {name: None if t is None else t.to(device) for name, t in problem.items()}


@pytest.fixture
def poisoned_outputs(monkeypatch):
    """Every output the two stages allocate starts as NaN, so an element left unwritten fails a check."""
    for module in (chunk_state, chunk_output):
        allocate = module._make_outputs

        def poisoned(inputs, allocate=allocate):
            return {name: t.fill_(float("nan")) for name, t in allocate(inputs).items()}

        monkeypatch.setattr(module, "_make_outputs", poisoned)


# ---------------------------------------------------------------------------------------------------
# Each stage alone, fed the float64 chunked reference's intermediates rounded to the kernels' dtypes.


def stage_inputs(problem: dict) -> dict:
    """The chunked reference's intermediates, as the first-half kernels would hand them over."""
    p, dtype = problem, problem["k"].dtype
    ref = chunk_stages_reference(
        p["q"],
        p["k"],
        p["v"],
        p["g"],
        p["beta"],
        initial_state=p["initial_state"],
        cu_seqlens=p["cu_seqlens"],
    )
    return {
        **problem,
        "gc": ref["gc"].float(),
        "w": ref["w"].to(dtype),
        "u": ref["u"].to(dtype),
        "h": ref["h"].to(dtype),
        "v_new": ref["v_new"].to(dtype),
        "scale": problem["q"].shape[-1] ** -0.5,
    }


STAGE_CASES = [
    # (lengths, varlen, H, HV, K, V, dtype, initial state, final state)
    ((1,), False, 1, 1, 64, 64, torch.bfloat16, True, True),
    ((130,), False, 2, 4, 64, 64, torch.bfloat16, False, True),
    ((65, 65), False, 2, 2, 64, 64, torch.float16, True, False),
    (VARLEN_LENGTHS, True, 1, 2, 64, 64, torch.bfloat16, True, True),
    (VARLEN_LENGTHS, True, 2, 2, 64, 64, torch.float16, False, True),
    ((63, 2), True, 1, 4, 128, 128, torch.bfloat16, True, True),
]


def stage_case_id(case) -> str:
    lengths, varlen, H, HV, K, V, dtype, h0, ht = case
    shape = f"N{len(lengths)}-T{sum(lengths)}" if varlen else f"B{len(lengths)}-T{lengths[0]}"
    flags = ("-h0" if h0 else "") + ("-ht" if ht else "")
    return f"{shape}-H{H}-HV{HV}-K{K}-V{V}-{dtype_name(dtype)}{flags}"


@pytest.mark.parametrize("case", STAGE_CASES, ids=stage_case_id)
def test_chunk_state_matches_reference(case, device, poisoned_outputs):
    lengths, varlen, H, HV, K, V, dtype, h0, ht = case
    s = stage_inputs(make_problem(lengths, H, HV, K, V, dtype, device, varlen=varlen, initial_state=h0))
    h, v_new, final_state = chunk_state.chunk_state(
        s["k"], s["w"], s["u"], s["gc"], s["initial_state"], ht, cu_seqlens=s["cu_seqlens"]
    )
    ref = chunk_state.chunk_state_reference(s)
    chunks = ref["h"].shape[1]
    if varlen:  # h has max_chunks rows, an upper bound; rows past the last chunk are never written
        assert h.shape[1] == _varlen.max_chunks(sum(lengths), len(lengths), CHUNK_SIZE)
    errors = {"h": relative_error(h[:, :chunks], ref["h"]), "v_new": relative_error(v_new, ref["v_new"])}
    if ht:
        assert final_state.dtype == torch.float32
        errors["final_state"] = relative_error(final_state, ref["final_state"])
    else:
        assert final_state is None
    assert h.dtype == v_new.dtype == dtype
    assert max(errors.values()) <= TOLERANCE, errors


@pytest.mark.parametrize("case", STAGE_CASES, ids=stage_case_id)
def test_chunk_output_matches_reference(case, device, poisoned_outputs):
    lengths, varlen, H, HV, K, V, dtype, h0, _ = case
    s = stage_inputs(make_problem(lengths, H, HV, K, V, dtype, device, varlen=varlen, initial_state=h0))
    o = chunk_output.chunk_output(s["q"], s["k"], s["v_new"], s["h"], s["gc"], s["scale"], s["cu_seqlens"])
    ref = chunk_output.chunk_output_reference(s)
    assert o.dtype == dtype and o.shape == s["v"].shape
    assert relative_error(o, ref["o"]) <= TOLERANCE


def test_stage_references_agree_with_the_chunked_reference():
    """The stage references (computed from the kernels' inputs) against chunk_stages_reference, in float64."""
    p = make_problem(VARLEN_LENGTHS, 1, 2, 32, 16, torch.float64, torch.device("cpu"))
    s = stage_inputs(p)
    full = chunk_stages_reference(
        p["q"],
        p["k"],
        p["v"],
        p["g"],
        p["beta"],
        initial_state=p["initial_state"],
        cu_seqlens=p["cu_seqlens"],
    )
    s["gc"] = full["gc"]  # stage_inputs rounds gc to float32, the kernels' dtype
    state = chunk_state.chunk_state_reference(s)
    assert relative_error(chunk_output.chunk_output_reference(s)["o"], full["o"]) < 1e-12
    for name in ("h", "v_new", "final_state"):
        assert relative_error(state[name], full[name]) < 1e-12, name


# ---------------------------------------------------------------------------------------------------
# The whole pipeline against the token-by-token recurrence.

E2E_CASES = [
    # (lengths, varlen, H, HV, K, dtype, initial state, final state, l2norm in kernel)
    ((1,), False, 1, 1, 64, torch.bfloat16, True, True, False),
    ((63,), False, 1, 2, 64, torch.float16, False, True, True),
    ((64,), False, 2, 4, 64, torch.bfloat16, True, False, True),
    ((65,), False, 2, 2, 64, torch.float16, True, True, False),
    ((130,), False, 1, 4, 64, torch.bfloat16, True, True, True),
    ((130,), False, 2, 2, 64, torch.float16, False, False, False),
    ((65, 65), False, 2, 4, 64, torch.bfloat16, True, True, False),  # B > 1 without cu_seqlens
    ((63, 63, 63), False, 1, 1, 64, torch.float16, False, True, True),
    (VARLEN_LENGTHS, True, 1, 2, 64, torch.bfloat16, True, True, True),
    (VARLEN_LENGTHS, True, 2, 2, 64, torch.bfloat16, False, True, False),
    (VARLEN_LENGTHS, True, 1, 4, 64, torch.float16, True, False, True),
    (VARLEN_LENGTHS, True, 2, 4, 64, torch.float16, False, False, False),
    ((64,), False, 1, 2, 128, torch.bfloat16, True, True, True),
    ((17, 65), True, 1, 1, 128, torch.float16, True, True, False),
]


def e2e_case_id(case) -> str:
    lengths, varlen, H, HV, K, dtype, h0, ht, l2 = case
    shape = f"N{len(lengths)}-T{sum(lengths)}" if varlen else f"B{len(lengths)}-T{lengths[0]}"
    flags = ("-h0" if h0 else "") + ("-ht" if ht else "") + ("-l2norm" if l2 else "")
    return f"{shape}-H{H}-HV{HV}-K{K}-{dtype_name(dtype)}{flags}"


def run_and_compare(p: dict, output_final_state: bool, l2norm: bool) -> tuple[dict, tuple]:
    o, final_state = chunk_gated_delta_rule(
        **p, output_final_state=output_final_state, use_qk_l2norm_in_kernel=l2norm
    )
    ref_o, ref_state = gated_delta_rule_reference(
        p["q"],
        p["k"],
        p["v"],
        p["g"],
        p["beta"],
        initial_state=p["initial_state"],
        cu_seqlens=p["cu_seqlens"],
        use_qk_l2norm=l2norm,
    )
    errors = {"o": relative_error(o, ref_o)}
    if output_final_state:
        errors["final_state"] = relative_error(final_state, ref_state)
    return errors, (o, final_state)


@pytest.mark.parametrize("case", E2E_CASES, ids=e2e_case_id)
def test_chunk_gated_delta_rule_matches_recurrence(case, device, poisoned_outputs):
    lengths, varlen, H, HV, K, dtype, h0, ht, l2 = case
    p = make_problem(
        lengths, H, HV, K, K, dtype, device, varlen=varlen, initial_state=h0, normalized_k=not l2
    )
    errors, (o, final_state) = run_and_compare(p, ht, l2)
    assert o.shape == p["v"].shape and o.dtype == dtype
    if ht:
        assert final_state.shape == (len(lengths), HV, K, K) and final_state.dtype == torch.float32
    else:
        assert final_state is None
    assert max(errors.values()) <= TOLERANCE, errors


def test_int64_cu_seqlens_give_the_int32_result(device):
    p = make_problem(VARLEN_LENGTHS, 1, 2, 64, 64, torch.bfloat16, device)
    o32, s32 = chunk_gated_delta_rule(**p, output_final_state=True)
    o64, s64 = chunk_gated_delta_rule(**{**p, "cu_seqlens": p["cu_seqlens"].long()}, output_final_state=True)
    assert torch.equal(o32, o64) and torch.equal(s32, s64)


def test_second_run_is_bitwise_identical(device):
    p = make_problem(VARLEN_LENGTHS, 1, 2, 64, 64, torch.bfloat16, device)
    first = run_and_compare(p, True, True)[1]
    second = run_and_compare(p, True, True)[1]
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_noncontiguous_inputs_match_contiguous(device):
    """q, k, v sliced out of one fused projection, as models produce them."""
    p = make_problem((65,), 1, 2, 64, 64, torch.bfloat16, device, varlen=False)
    fused = torch.cat([p["q"], p["k"], p["v"]], dim=2)  # [B, T, H + H + HV, 64]
    q, k, v = fused[:, :, :1], fused[:, :, 1:2], fused[:, :, 2:]
    assert not q.is_contiguous()
    o_views, _ = chunk_gated_delta_rule(q, k, v, p["g"], p["beta"], initial_state=p["initial_state"])
    o_copies, _ = chunk_gated_delta_rule(
        p["q"], p["k"], p["v"], p["g"], p["beta"], initial_state=p["initial_state"]
    )
    assert torch.equal(o_views, o_copies)


# ---------------------------------------------------------------------------------------------------
# Argument errors name the argument and what is wrong.

BAD_ARGUMENTS = {
    "q-3d": (lambda p: {**p, "q": p["q"][0]}, "q must be"),
    "k-shape": (lambda p: {**p, "k": p["k"][:, :, :, :32]}, "k must have q's shape"),
    "v-length": (lambda p: {**p, "v": p["v"][:, :10]}, "v must be"),
    "HV-not-multiple": (
        lambda p: {**p, "q": p["q"].repeat(1, 1, 3, 1), "k": p["k"].repeat(1, 1, 3, 1)},
        "multiple",
    ),
    "g-shape": (lambda p: {**p, "g": p["g"][..., :1]}, "g must be"),
    "beta-shape": (lambda p: {**p, "beta": p["beta"][:, :5]}, "beta must be"),
    "q-float32": (lambda p: {**p, "q": p["q"].float()}, "q must be bfloat16 or float16"),
    "mixed-dtypes": (lambda p: {**p, "v": p["v"].half()}, "share one dtype"),
    "g-int": (lambda p: {**p, "g": p["g"].to(torch.int32)}, "g must be float32"),
    "beta-fp16": (lambda p: {**p, "beta": p["beta"].half()}, "beta must be float32 or"),
    "cu_seqlens-float": (lambda p: {**p, "cu_seqlens": p["cu_seqlens"].float()}, "cu_seqlens must be int32"),
    "cu_seqlens-2d": (lambda p: {**p, "cu_seqlens": p["cu_seqlens"][None]}, "cu_seqlens must be 1-D"),
    "cu_seqlens-with-B2": (
        lambda p: {**p, **{n: torch.cat([p[n], p[n]]) for n in ("q", "k", "v", "g", "beta")}},
        "B == 1",
    ),
    "initial_state-shape": (
        lambda p: {**p, "initial_state": p["initial_state"][:2]},
        "initial_state must be",
    ),
    "initial_state-int": (
        lambda p: {**p, "initial_state": p["initial_state"].int()},
        "initial_state must be float32, bfloat16 or float16",
    ),
    "state-layout-vk-of-kv": (
        lambda p: {**p, "initial_state": p["initial_state"][..., :32], "state_layout": "vk"},
        r"initial_state must be .*state_layout='vk'",
    ),
    "K-too-large": (
        lambda p: {
            **p,
            "q": p["q"].repeat(1, 1, 1, 5),
            "k": p["k"].repeat(1, 1, 1, 5),
            "initial_state": None,
        },
        "head dim K",
    ),
    "empty": (
        lambda p: {**p, **{n: p[n][:, :0] for n in ("q", "k", "v", "g", "beta")}, "cu_seqlens": None},
        "empty",
    ),
}


@pytest.mark.parametrize("case", list(BAD_ARGUMENTS), ids=list(BAD_ARGUMENTS))
def test_bad_arguments_raise_value_error_naming_them(case):
    p = make_problem(VARLEN_LENGTHS, 1, 2, 64, 64, torch.bfloat16, torch.device("cpu"))
    change, message = BAD_ARGUMENTS[case]
    bad = change(p)
    with pytest.raises(ValueError, match=message):
        chunk_gated_delta_rule(
            bad["q"],
            bad["k"],
            bad["v"],
            bad["g"],
            bad["beta"],
            initial_state=bad["initial_state"],
            cu_seqlens=bad["cu_seqlens"],
            state_layout=bad.get("state_layout", "kv"),
        )


# ---------------------------------------------------------------------------------------------------
# The specs, as the tuner drives them: inputs, poisoned outputs, launch, reference.


@pytest.mark.parametrize("spec", [chunk_state.SPEC, chunk_output.SPEC], ids=lambda s: s.name)
def test_spec_round_trip_with_default_config(spec, device):
    fields = {"dtype": "bfloat16", "H": 1, "HV": 2, "K": 64, "V": 64, "T": 128}
    if "N" in spec.key_fields:
        fields.update(N=2, state_dtype="bfloat16", state_layout="vk")
    key = spec.key(**fields)
    for small_heads in (16, 32):  # the default stays valid (if wasteful) for small heads, which have no table
        assert not spec.space.problems(
            spec.default, spec.key(**{**fields, "K": small_heads, "V": small_heads})
        )
    inputs = spec.make_inputs(key, device, seed=3)
    errors = compare_outputs(launch_poisoned(spec, inputs), spec.reference(inputs))
    assert errors and max(errors.values()) <= spec.tolerance, errors


@pytest.mark.parametrize("spec", [chunk_state.SPEC, chunk_output.SPEC], ids=lambda s: s.name)
def test_default_config_compiles_and_fits_every_target(spec):
    """Compiled for each target's cc in a child process without TRITON_INTERPRET (the interpreter's
    kernels cannot be compiled), at the largest head dims of the presets."""
    fields = {"dtype": "bfloat16", "H": 16, "HV": 64, "K": 128, "V": 128, "T": 8192}
    if "N" in spec.key_fields:
        fields.update(N=4, state_dtype="bfloat16", state_layout="vk")
    assert not spec.space.problems(spec.default, spec.key(**fields))
    assert_default_config_fits_every_target(spec.name, **fields)


# ---------------------------------------------------------------------------------------------------
# GPU host: the real shapes of ANCHORS.md, and no host synchronisation.

GPU_CASES = {
    "dp-8k-H16-HV64": ((8192,), 16, 64),
    "tp1-next-H16-HV32": ((8192,), 16, 32),
    "tp8-H2-HV8": ((8192,), 2, 8),
    "dp-4seq-H16-HV64": ((1000, 3000, 4096, 96), 16, 64),
}


@pytest.mark.gpu
@pytest.mark.parametrize("case", list(GPU_CASES), ids=list(GPU_CASES))
def test_real_shapes_match_the_chunked_reference_on_gpu(case):
    lengths, H, HV = GPU_CASES[case]
    p = make_problem(lengths, H, HV, 128, 128, torch.bfloat16, torch.device("cuda"))
    o, final_state = chunk_gated_delta_rule(**p, output_final_state=True)
    ref = chunk_stages_reference(
        p["q"],
        p["k"],
        p["v"],
        p["g"],
        p["beta"],
        initial_state=p["initial_state"],
        cu_seqlens=p["cu_seqlens"],
    )
    errors = {
        "o": relative_error(o, ref["o"]),
        "final_state": relative_error(final_state, ref["final_state"]),
    }
    print(case, errors)
    assert max(errors.values()) <= TOLERANCE, errors


@pytest.mark.gpu
@pytest.mark.parametrize("l2norm", [False, True], ids=["plain", "l2norm"])
def test_forward_never_synchronises_with_the_host(l2norm):
    p = make_problem((1000, 3000, 4096, 96), 16, 64, 128, 128, torch.bfloat16, torch.device("cuda"))

    def forward():
        return chunk_gated_delta_rule(**p, output_final_state=True, use_qk_l2norm_in_kernel=l2norm)

    forward()  # warm-up: compiles the kernels and resolves the configs
    with host_synchronisation_forbidden():
        o, final_state = forward()
    torch.cuda.synchronize()
    assert torch.isfinite(o).all() and torch.isfinite(final_state).all()


def test_a_16bit_gate_gives_the_float32_gates_result(device):
    """A bf16 gate is cast once to float32: the same kernels run, on the same (rounded) values."""
    p = make_problem((65, 30), 1, 2, 64, 64, torch.bfloat16, device)
    g16 = p["g"].bfloat16()
    o16, s16 = chunk_gated_delta_rule(**{**p, "g": g16}, output_final_state=True)
    o32, s32 = chunk_gated_delta_rule(**{**p, "g": g16.float()}, output_final_state=True)
    assert torch.equal(o16, o32) and torch.equal(s16, s32)
