"""Elementwise kernels: l2norm, the fused prefill prep (gdn_prefill_prep), and the gating math they share.

Runs compiled on a GPU host and through TRITON_INTERPRET=1 on the CPU (small shapes there).
"""

import pytest
import torch
from _helpers import assert_default_config_fits_every_target, host_synchronisation_forbidden, launch_poisoned

from gdn_kernels import fused_gdn_gating, gdn_prefill_prep, l2norm
from gdn_kernels import gdn_prep as prep_module
from gdn_kernels._registry import spec_by_name
from gdn_kernels._spec import Config, compare_outputs, relative_error
from gdn_kernels.gating import gating_reference
from gdn_kernels.reference import l2norm_reference

# The package exports the function l2norm under the module's name, so the spec comes from the registry.
L2NORM = spec_by_name("l2norm")
TOLERANCE_16BIT = 1e-2
TOLERANCE_FLOAT32 = 1e-5  # float32 in and float32 arithmetic: only reduction order differs


# --------------------------------------------------------------------------------------------------
# l2norm


L2NORM_CASES = [(1, 1, 128), (37, 3, 64), (130, 2, 128), (37, 1, 100)]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize(("T", "H", "D"), L2NORM_CASES, ids=[f"T{t}-H{h}-D{d}" for t, h, d in L2NORM_CASES])
def test_l2norm_matches_reference(device, T, H, D, dtype):
    x = (3 * torch.randn(1, T, H, D, device=device)).to(dtype)
    y = l2norm(x)
    assert y.shape == x.shape and y.dtype == dtype
    tolerance = TOLERANCE_FLOAT32 if dtype == torch.float32 else TOLERANCE_16BIT
    assert relative_error(y, l2norm_reference(x)) <= tolerance
    norms = y.double().norm(dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-2)


@pytest.mark.parametrize("shape", [(128,), (5, 64), (2, 3, 7, 32)], ids=lambda s: "x".join(map(str, s)))
def test_l2norm_any_leading_shape(device, shape):
    x = torch.randn(shape, device=device)
    assert relative_error(l2norm(x), l2norm_reference(x)) <= TOLERANCE_FLOAT32


def test_l2norm_of_strided_input_and_zero_rows(device):
    x = torch.randn(64, 37, device=device, dtype=torch.bfloat16).t()  # [37, 64], not contiguous
    x[5] = 0  # a zero row stays zero thanks to eps, instead of 0/0
    y = l2norm(x)
    assert relative_error(y, l2norm_reference(x)) <= TOLERANCE_16BIT
    assert torch.equal(y[5], torch.zeros_like(y[5]))


def test_l2norm_custom_eps(device):
    x = 1e-3 * torch.randn(9, 64, device=device)
    assert relative_error(l2norm(x, eps=1e-2), l2norm_reference(x, eps=1e-2)) <= TOLERANCE_FLOAT32


@pytest.mark.parametrize("block", [512, 8192], ids=lambda b: f"BLOCK{b}")
def test_l2norm_other_configs_write_every_row(device, block):
    key = L2NORM.key(dtype="bfloat16", D=128, T=64)
    inputs = {"x": torch.randn(131, 128, device=device, dtype=torch.bfloat16), "eps": 1e-6}
    config = Config.of(BLOCK=block, num_warps=2, num_stages=1)
    assert not L2NORM.space.problems(config, key)
    outputs = launch_poisoned(L2NORM, inputs, config)
    assert relative_error(outputs["y"], l2norm_reference(inputs["x"])) <= TOLERANCE_16BIT


def test_l2norm_spec_and_repeat_runs(device):
    spec = L2NORM
    inputs = spec.make_inputs(spec.key(dtype="float16", D=64, T=128), device, seed=3)
    runs = [launch_poisoned(spec, inputs)["y"] for _ in range(2)]
    assert relative_error(runs[0], spec.reference(inputs)["y"]) <= spec.tolerance
    assert torch.equal(runs[0], runs[1])


@pytest.mark.parametrize(
    ("x", "kwargs", "message"),
    [
        (torch.ones(4, 8, dtype=torch.int32), {}, "floating-point"),
        (torch.tensor(1.0), {}, "at least one dim"),
        (torch.ones(2, 8193), {}, "last dim must be in 1..8192"),
        (torch.ones(2, 8), {"eps": 0.0}, "eps must be positive"),
    ],
    ids=["int", "scalar", "row-too-long", "eps-zero"],
)
def test_l2norm_bad_arguments(x, kwargs, message):
    with pytest.raises(ValueError, match=message):
        l2norm(x, **kwargs)


# --------------------------------------------------------------------------------------------------
# Fused prefill prep


def make_prep_inputs(device, T, H, HV, K, V, dtype=torch.bfloat16):
    return {
        "mixed_qkv": (2 * torch.randn(T, 2 * H * K + HV * V, device=device)).to(dtype),
        "a": torch.randn(T, HV, device=device).to(dtype),
        "b": torch.randn(T, HV, device=device).to(dtype),
        "A_log": torch.log(torch.empty(HV, device=device).uniform_(1, 16)),
        "dt_bias": torch.randn(HV, device=device),
        "H": H,
        "HV": HV,
        "K": K,
        "V": V,
    }


def assert_prep_matches(outputs, inputs):
    reference = prep_module.gdn_prep_reference(inputs)
    errors = {name: relative_error(outputs[name], reference[name]) for name in reference}
    tolerance = TOLERANCE_FLOAT32 if inputs["mixed_qkv"].dtype == torch.float32 else TOLERANCE_16BIT
    assert errors["q"] <= tolerance and errors["k"] <= tolerance, errors
    assert errors["g"] <= TOLERANCE_FLOAT32 and errors["beta"] <= TOLERANCE_FLOAT32, errors
    H, HV, K, V = inputs["H"], inputs["HV"], inputs["K"], inputs["V"]
    v_columns = inputs["mixed_qkv"][:, 2 * H * K :]
    assert torch.equal(outputs["v"], v_columns.reshape(1, -1, HV, V)), "v is not an exact copy"
    return errors


PREP_CASES = [
    (1, 1, 1, 64, 64),
    (37, 2, 4, 64, 64),
    (130, 1, 2, 64, 64),
    (37, 2, 2, 48, 80),  # neither a power of two
    (5, 1, 2, 128, 128),
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize(
    ("T", "H", "HV", "K", "V"),
    PREP_CASES,
    ids=[f"T{t}-H{h}-HV{hv}-K{k}-V{v}" for t, h, hv, k, v in PREP_CASES],
)
def test_prep_matches_reference(device, T, H, HV, K, V, dtype):
    inputs = make_prep_inputs(device, T, H, HV, K, V, dtype)
    assert_prep_matches(launch_poisoned(prep_module.SPEC, inputs), inputs)


def test_prep_public_function_shapes_and_dtypes(device):
    inputs = make_prep_inputs(device, 37, 2, 4, 64, 32, torch.float32)
    q, k, v, g, beta = gdn_prefill_prep(
        inputs["mixed_qkv"],
        inputs["a"],
        inputs["b"],
        inputs["A_log"],
        inputs["dt_bias"],
        H=2,
        HV=4,
        K=64,
        V=32,
    )
    assert (q.shape, k.shape, v.shape, g.shape, beta.shape) == ((1, 37, 2, 64),) * 2 + ((1, 37, 4, 32),) + (
        (1, 37, 4),
    ) * 2
    assert q.dtype == k.dtype == v.dtype == torch.float32 and g.dtype == beta.dtype == torch.float32
    assert_prep_matches({"q": q, "k": k, "v": v, "g": g, "beta": beta}, inputs)


def test_prep_reads_strided_views(device):
    """The convolution's [D, T] output transposed, and a, b as halves of one [T, 2·HV] projection."""
    T, H, HV, K, V = 37, 1, 2, 64, 64
    inputs = make_prep_inputs(device, T, H, HV, K, V)
    transposed = inputs["mixed_qkv"].t().contiguous().t()
    ba = torch.cat([inputs["b"], inputs["a"]], dim=1)
    b_view, a_view = ba[:, :HV], ba[:, HV:]
    assert transposed.stride() == (1, T) and a_view.stride() == (2 * HV, 1)
    q, k, v, g, beta = gdn_prefill_prep(
        transposed, a_view, b_view, inputs["A_log"], inputs["dt_bias"], H, HV, K, V
    )
    assert_prep_matches({"q": q, "k": k, "v": v, "g": g, "beta": beta}, inputs)


def test_prep_other_configs(device):
    inputs = make_prep_inputs(device, 130, 1, 2, 64, 64)
    key = prep_module.SPEC.key(dtype="bfloat16", H=1, HV=2, K=64, V=64, T=256)
    for config in (Config.of(BT=8, num_warps=1, num_stages=1), Config.of(BT=128, num_warps=8, num_stages=1)):
        assert not prep_module.SPEC.space.problems(config, key)
        assert_prep_matches(launch_poisoned(prep_module.SPEC, inputs, config), inputs)


def test_prep_repeat_runs_are_bitwise_identical(device):
    inputs = make_prep_inputs(device, 37, 2, 4, 64, 64)
    runs = [launch_poisoned(prep_module.SPEC, inputs) for _ in range(2)]
    assert all(torch.equal(runs[0][name], runs[1][name]) for name in runs[0])


def test_prep_spec_inputs(device):
    spec = prep_module.SPEC
    key = spec.key(dtype="bfloat16", H=1, HV=2, K=32, V=32, T=64)
    inputs = spec.make_inputs(key, device, seed=1)
    assert inputs["mixed_qkv"].shape == (64, 2 * 32 + 2 * 32)
    errors = compare_outputs(launch_poisoned(spec, inputs), spec.reference(inputs))
    assert max(errors.values()) <= spec.tolerance, errors
    assert spec.bytes_moved(key) > 2 * 64 * 128 * 2


PREP_BAD_ARGUMENTS = {
    "H-bool": ({"H": True}, "H must be a positive int"),
    "HV-zero": ({"HV": 0}, "HV must be a positive int"),
    "HV-not-multiple": ({"H": 3}, "multiple of H"),
    "K-too-large": ({"K": 512}, "at most 256"),
    "width": ({"V": 32}, "mixed_qkv must be"),
    "dtype": ({"mixed_qkv": torch.ones(5, 4 * 64 + 2 * 64, dtype=torch.int16)}, "mixed_qkv must be bfloat16"),
    "a-shape": ({"a": torch.ones(4, 2)}, "a and b must be"),
    "b-int": ({"b": torch.ones(5, 2, dtype=torch.int32)}, "floating point"),
    "A_log-shape": ({"A_log": torch.ones(3)}, "A_log and dt_bias must be"),
    "softplus_beta": ({"softplus_beta": 0.0}, "softplus_beta must be positive"),
}


@pytest.mark.parametrize("case", PREP_BAD_ARGUMENTS, ids=list(PREP_BAD_ARGUMENTS))
def test_prep_bad_arguments(case):
    args = make_prep_inputs("cpu", 5, 2, 2, 64, 64)
    change, message = PREP_BAD_ARGUMENTS[case]
    with pytest.raises(ValueError, match=message):
        gdn_prefill_prep(**{**args, **change})


# --------------------------------------------------------------------------------------------------
# Gating edge cases, through both kernels that share gdn_gates


def edge_gate_inputs(device):
    """a + dt_bias exactly −100, 0 and +100 in every head, then ordinary values."""
    HV = 4
    dt_bias = torch.tensor([0.5, -1.0, 2.0, 0.0], device=device)
    edges = torch.tensor([-100.0, 0.0, 100.0], device=device)[:, None] - dt_bias
    a = torch.cat([edges, torch.randn(34, HV, device=device)])
    return a, torch.randn_like(a), torch.log(torch.empty(HV, device=device).uniform_(1, 16)), dt_bias


def check_edge_gates(g, beta, inputs):
    reference = gating_reference(inputs)
    g, beta = g.reshape(reference["g"].shape), beta.reshape(reference["beta"].shape)
    assert torch.isfinite(g).all() and (g <= 0).all()
    assert relative_error(g, reference["g"]) <= TOLERANCE_FLOAT32
    assert relative_error(beta, reference["beta"]) <= TOLERANCE_FLOAT32
    A = torch.exp(inputs["A_log"].double())
    assert (g[0].double().abs() <= 1e-40).all(), "softplus(−100) is e^−100 ≈ 4e−44, not a large value"
    assert torch.allclose(g[1].double(), -A * torch.log(torch.tensor(2.0, dtype=torch.float64)), rtol=1e-6)
    assert torch.allclose(g[2].double(), -A * 100, rtol=1e-6), "above the threshold softplus(x) = x"


def test_gating_edge_values(device):
    a, b, A_log, dt_bias = edge_gate_inputs(device)
    g, beta = fused_gdn_gating(A_log, a, b, dt_bias)
    check_edge_gates(g, beta, {"a": a, "b": b, "A_log": A_log, "dt_bias": dt_bias})


def test_prep_gating_edge_values(device):
    a, b, A_log, dt_bias = edge_gate_inputs(device)
    T, H, HV, K, V = a.shape[0], 1, 4, 32, 32
    mixed_qkv = torch.randn(T, 2 * H * K + HV * V, device=device)
    _, _, _, g, beta = gdn_prefill_prep(mixed_qkv, a, b, A_log, dt_bias, H, HV, K, V)
    check_edge_gates(g, beta, {"a": a, "b": b, "A_log": A_log, "dt_bias": dt_bias})


def test_prep_softplus_parameters(device):
    inputs = {**make_prep_inputs(device, 37, 1, 2, 32, 32), "softplus_beta": 2.0, "softplus_threshold": 5.0}
    assert_prep_matches(launch_poisoned(prep_module.SPEC, inputs), inputs)


# --------------------------------------------------------------------------------------------------
# Every default config compiles for every target (in a child process: the interpreter cannot compile)


DEFAULT_KEYS = {
    "l2norm": {"dtype": "bfloat16", "D": 256, "T": 8192},
    "gdn_prep": {"dtype": "bfloat16", "H": 16, "HV": 64, "K": 128, "V": 128, "T": 8192},
}


@pytest.mark.parametrize("kernel", DEFAULT_KEYS)
def test_default_config_compiles_and_fits_every_target(kernel):
    assert_default_config_fits_every_target(kernel, **DEFAULT_KEYS[kernel])


# --------------------------------------------------------------------------------------------------
# Real shapes on the GPU host


@pytest.mark.gpu
@pytest.mark.parametrize("T", [8192, 1000], ids=lambda t: f"T{t}-H16-HV64-K128-V128")
def test_prep_real_shapes_on_gpu(device, T):
    inputs = make_prep_inputs(device, T, 16, 64, 128, 128)
    q, k, v, g, beta = gdn_prefill_prep(**inputs)
    assert_prep_matches({"q": q, "k": k, "v": v, "g": g, "beta": beta}, inputs)


@pytest.mark.gpu
def test_l2norm_real_shapes_on_gpu(device):
    x = torch.randn(1, 8192, 16, 128, device=device, dtype=torch.bfloat16)
    assert relative_error(l2norm(x), l2norm_reference(x)) <= TOLERANCE_16BIT


@pytest.mark.gpu
def test_prep_and_l2norm_never_synchronise_with_the_host(device):
    inputs = make_prep_inputs(device, 1000, 16, 64, 128, 128)
    x = torch.randn(1000, 16, 128, device=device, dtype=torch.bfloat16)
    gdn_prefill_prep(**inputs)  # warm-up: compile and resolve the configs
    l2norm(x)
    with host_synchronisation_forbidden():
        gdn_prefill_prep(**inputs)
        l2norm(x)
