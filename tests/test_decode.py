"""Decode kernel (fused_recurrent_gated_delta_rule) against the float64 token-by-token reference.

Runs compiled on a GPU host and through TRITON_INTERPRET=1 on the CPU (small shapes there).
"""

import pytest
import torch
from _helpers import (
    assert_default_config_fits_every_target,
    cu_seqlens_of,
    dtype_name,
    host_synchronisation_forbidden,
    launch_poisoned,
)

from gdn_kernels import fused_recurrent_gated_delta_rule
from gdn_kernels._spec import Config, compare_outputs, relative_error
from gdn_kernels.fused_recurrent import SPEC, fused_recurrent_reference

TOLERANCE = 1e-2


def make_decode_inputs(
    device,
    *,
    N,
    H,
    HV,
    K,
    V,
    lengths=None,
    dtype=torch.bfloat16,
    initial_state=True,
    slots=None,
):
    """Inputs of one decode call. `lengths` (tokens per sequence) gives a varlen batch (B = 1), else
    B = N sequences of one token. `slots`: cache size; state indices are then a random slot per sequence."""
    if lengths is None:
        B, T, cu_seqlens = N, 1, None
    else:
        B, T, cu_seqlens = 1, sum(lengths), cu_seqlens_of(lengths, device)
    inputs = {
        "q": torch.randn(B, T, H, K, device=device).to(dtype),
        # Keys of unit norm, as the model's l2norm gives them; unnormalised keys make the recurrence blow up.
        "k": torch.nn.functional.normalize(torch.randn(B, T, H, K, device=device), dim=-1).to(dtype),
        "v": torch.randn(B, T, HV, V, device=device).to(dtype),
        "g": torch.nn.functional.logsigmoid(torch.randn(B, T, HV, device=device)),
        "beta": torch.sigmoid(torch.randn(B, T, HV, device=device)),
        "cu_seqlens": cu_seqlens,
    }
    if initial_state:
        inputs["initial_state"] = 0.1 * torch.randn(slots or N, HV, K, V, device=device)
    if slots is not None:
        inputs["ssm_state_indices"] = torch.randperm(slots, device=device)[:N].to(torch.int32)
    return inputs


def assert_close(outputs, reference, names=("o", "final_state")):
    errors = {name: relative_error(outputs[name], reference[name]) for name in names}
    assert all(e <= TOLERANCE for e in errors.values()), errors
    return errors


def shape_id(N, H, HV, K, V, lengths=None):
    tokens = f"L{'+'.join(map(str, lengths))}" if lengths else "T1"
    return f"N{N}-{tokens}-H{H}-HV{HV}-K{K}-V{V}"


ONE_TOKEN_CASES = [
    (1, 2, 2, 64, 64),
    (3, 1, 2, 64, 64),
    (17, 1, 4, 64, 64),
    (3, 2, 4, 128, 128),
    (3, 1, 1, 48, 80),  # neither a power of two: masked rows and a partial last V block
]


@pytest.mark.parametrize(
    ("N", "H", "HV", "K", "V"), ONE_TOKEN_CASES, ids=[shape_id(*c) for c in ONE_TOKEN_CASES]
)
def test_one_token_per_sequence(device, N, H, HV, K, V):
    inputs = make_decode_inputs(device, N=N, H=H, HV=HV, K=K, V=V)
    assert_close(launch_poisoned(SPEC, inputs), fused_recurrent_reference(inputs))


VARLEN_CASES = [
    ((1, 3, 2, 5), 1, 2, torch.int32),
    ((4, 1, 7), 2, 4, torch.int64),
    ((3,), 1, 1, torch.int32),
]


@pytest.mark.parametrize(
    ("lengths", "H", "HV", "index_dtype"),
    VARLEN_CASES,
    ids=[f"{shape_id(len(c[0]), c[1], c[2], 64, 64, c[0])}-{dtype_name(c[3])}" for c in VARLEN_CASES],
)
def test_few_tokens_per_sequence_through_cu_seqlens(device, lengths, H, HV, index_dtype):
    inputs = make_decode_inputs(device, N=len(lengths), H=H, HV=HV, K=64, V=64, lengths=lengths)
    inputs["cu_seqlens"] = inputs["cu_seqlens"].to(index_dtype)
    assert_close(launch_poisoned(SPEC, inputs), fused_recurrent_reference(inputs))


def test_several_tokens_per_sequence_without_cu_seqlens(device):
    inputs = make_decode_inputs(device, N=3, H=1, HV=2, K=64, V=64)
    for name in ("q", "k", "v", "g", "beta"):  # B = 3 sequences of T = 3 tokens
        inputs[name] = torch.cat([inputs[name]] * 3, dim=1)
    inputs["g"] = torch.nn.functional.logsigmoid(torch.randn_like(inputs["g"]))
    assert_close(launch_poisoned(SPEC, inputs), fused_recurrent_reference(inputs))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("l2norm", [False, True], ids=["no-l2norm", "l2norm"])
def test_dtypes_and_in_kernel_l2norm(device, dtype, l2norm):
    inputs = make_decode_inputs(device, N=3, H=1, HV=2, K=64, V=64, lengths=(2, 1, 3), dtype=dtype)
    if l2norm:
        inputs["q"] = (4 * torch.randn_like(inputs["q"], dtype=torch.float32)).to(dtype)  # far from unit norm
        inputs["k"] = (4 * torch.randn_like(inputs["k"], dtype=torch.float32)).to(dtype)
    inputs["use_qk_l2norm_in_kernel"] = l2norm
    outputs = launch_poisoned(SPEC, inputs)
    assert outputs["o"].dtype == dtype
    errors = assert_close(outputs, fused_recurrent_reference(inputs))
    if dtype == torch.float32:
        assert max(errors.values()) < 1e-5, errors  # float32 in, float32 arithmetic: no 16-bit rounding


def test_without_initial_state_and_custom_scale(device):
    inputs = make_decode_inputs(device, N=3, H=1, HV=2, K=64, V=64, lengths=(1, 2, 3), initial_state=False)
    inputs["scale"] = 0.3
    assert_close(launch_poisoned(SPEC, inputs), fused_recurrent_reference(inputs))


@pytest.mark.parametrize(
    "config",
    [
        Config.of(BV=8, num_warps=1, num_stages=1),
        Config.of(BV=16, num_warps=2, num_stages=2),
        Config.of(BV=64, num_warps=8, num_stages=3),
    ],
    ids=lambda c: c.label,
)
def test_other_configs_of_the_space(device, config):
    inputs = make_decode_inputs(device, N=2, H=1, HV=2, K=64, V=64, lengths=(2, 1))
    key = SPEC.key(dtype="bfloat16", H=1, HV=2, K=64, V=64, N=2, state_dtype="float32", state_layout="kv")
    assert not SPEC.space.problems(config, key)
    assert_close(launch_poisoned(SPEC, inputs, config), fused_recurrent_reference(inputs))


def test_public_function_returns_reference_results(device):
    inputs = make_decode_inputs(device, N=3, H=1, HV=2, K=64, V=64, lengths=(1, 4, 2))
    o, final_state = fused_recurrent_gated_delta_rule(
        inputs["q"],
        inputs["k"],
        inputs["v"],
        inputs["g"],
        inputs["beta"],
        initial_state=inputs["initial_state"],
        output_final_state=True,
        cu_seqlens=inputs["cu_seqlens"],
    )
    assert o.shape == inputs["v"].shape and final_state.shape == inputs["initial_state"].shape
    assert_close({"o": o, "final_state": final_state}, fused_recurrent_reference(inputs))
    _, no_state = fused_recurrent_gated_delta_rule(
        inputs["q"], inputs["k"], inputs["v"], inputs["g"], inputs["beta"], cu_seqlens=inputs["cu_seqlens"]
    )
    assert no_state is None


def test_views_of_a_fused_projection_are_read_in_place(device):
    """q, k, v as views of one [B, T, 2·H·K + HV·V] projection: strided tokens, packed heads."""
    N, H, HV, K, V = 3, 1, 2, 64, 64
    dense = make_decode_inputs(device, N=N, H=H, HV=HV, K=K, V=V)
    fused = torch.cat([dense["q"].flatten(2), dense["k"].flatten(2), dense["v"].flatten(2)], dim=-1)
    q, k, v = fused.split([H * K, H * K, HV * V], dim=-1)
    views = {"q": q.unflatten(-1, (H, K)), "k": k.unflatten(-1, (H, K)), "v": v.unflatten(-1, (HV, V))}
    assert not views["k"].is_contiguous()
    o, final_state = fused_recurrent_gated_delta_rule(
        **views,
        g=dense["g"],
        beta=dense["beta"],
        initial_state=dense["initial_state"],
        output_final_state=True,
    )
    assert_close({"o": o, "final_state": final_state}, fused_recurrent_reference(dense))


def padded_cache_inputs(device, lengths=None):
    N, slots = 4, 9
    inputs = make_decode_inputs(device, N=N, H=1, HV=2, K=64, V=64, lengths=lengths, slots=slots)
    inputs["ssm_state_indices"][1] = -1  # a padded batch entry
    # Whatever a padded entry's inputs hold must not leak out: give it NaN values.
    if lengths is None:
        inputs["v"][1] = float("nan")
    else:
        inputs["v"][0, lengths[0] : lengths[0] + lengths[1]] = float("nan")
    return inputs


@pytest.mark.parametrize("lengths", [None, (1, 2, 1, 3)], ids=["T1", "varlen-L1+2+1+3"])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64], ids=str)
def test_state_cache_in_place_with_a_padded_slot(device, lengths, index_dtype):
    inputs = padded_cache_inputs(device, lengths)
    inputs["ssm_state_indices"] = inputs["ssm_state_indices"].to(index_dtype)
    cache = inputs["initial_state"]
    before = cache.clone()
    o, final_state = fused_recurrent_gated_delta_rule(
        inputs["q"],
        inputs["k"],
        inputs["v"],
        inputs["g"],
        inputs["beta"],
        initial_state=cache,
        cu_seqlens=inputs["cu_seqlens"],
        use_qk_l2norm_in_kernel=True,
        ssm_state_indices=inputs["ssm_state_indices"],
        inplace_final_state=True,
    )
    reference = fused_recurrent_reference(
        {**inputs, "initial_state": before, "use_qk_l2norm_in_kernel": True}
    )
    assert final_state is cache
    indices = inputs["ssm_state_indices"].long()
    used = indices[indices >= 0]
    untouched = torch.ones(cache.shape[0], dtype=torch.bool, device=device)
    untouched[used] = False
    assert torch.equal(cache[untouched], before[untouched]), "a slot no sequence names was written"
    assert relative_error(cache[used], reference["final_state"][indices >= 0]) <= TOLERANCE
    assert relative_error(o, reference["o"]) <= TOLERANCE
    padded_tokens = o[1] if lengths is None else o[0, 1:3]
    assert torch.equal(padded_tokens, torch.zeros_like(padded_tokens)), "a padded entry's output is not zero"


def test_state_cache_gather_into_a_new_final_state(device):
    inputs = padded_cache_inputs(device, lengths=(2, 1, 1, 2))
    before = inputs["initial_state"].clone()
    outputs = launch_poisoned(SPEC, inputs)
    assert torch.equal(inputs["initial_state"], before), "the cache changed without inplace_final_state"
    assert_close(outputs, fused_recurrent_reference(inputs))
    assert torch.equal(outputs["final_state"][1], torch.zeros_like(outputs["final_state"][1]))


def test_repeat_runs_are_bitwise_identical(device):
    inputs = make_decode_inputs(device, N=3, H=1, HV=2, K=64, V=64, lengths=(2, 3, 1))
    first, second = launch_poisoned(SPEC, inputs), launch_poisoned(SPEC, inputs)
    assert all(torch.equal(first[name], second[name]) for name in first)


def test_spec_inputs_launch_and_reference(device):
    key = SPEC.key(dtype="bfloat16", H=1, HV=2, K=32, V=32, N=3, state_dtype="float32", state_layout="kv")
    inputs = SPEC.make_inputs(key, device, seed=5)
    errors = compare_outputs(launch_poisoned(SPEC, inputs), SPEC.reference(inputs))
    assert set(errors) == {"o", "final_state"} and max(errors.values()) <= SPEC.tolerance, errors
    again = SPEC.make_inputs(key, device, seed=5)
    assert all(torch.equal(inputs[n], again[n]) for n in inputs if isinstance(inputs[n], torch.Tensor))
    other = SPEC.make_inputs(key, device, seed=6)
    assert not torch.equal(inputs["q"], other["q"])


@pytest.mark.parametrize(
    "kernel, N, state",
    [
        ("fused_recurrent", 1, ("float32", "kv")),
        ("fused_recurrent", 256, ("bfloat16", "vk")),
        ("fused_recurrent_gated", 256, ("float32", "vk")),
        ("packed_decode", 64, ("bfloat16", "vk")),
        ("spec_decode", 64, ("bfloat16", "vk")),
    ],
    ids=lambda x: x if isinstance(x, str) else f"N{x}" if isinstance(x, int) else "-".join(x),
)
def test_default_config_compiles_and_fits_every_target(kernel, N, state):
    extra = {"S": 4} if kernel == "spec_decode" else {}
    assert_default_config_fits_every_target(
        kernel,
        dtype="bfloat16",
        H=16,
        HV=64,
        K=128,
        V=128,
        N=N,
        **extra,
        state_dtype=state[0],
        state_layout=state[1],
    )


def call_with(inputs, **changes):
    args = {**inputs, **changes}
    return fused_recurrent_gated_delta_rule(**args)


BAD_ARGUMENTS = {
    "k-shape": (lambda i: {"k": i["k"][..., :32]}, "q and k must be"),
    "v-tokens": (lambda i: {"v": i["v"][:, :1]}, "v must be"),
    "HV-not-multiple": (
        lambda i: {
            "q": torch.cat([i["q"]] * 2, 2),
            "k": torch.cat([i["k"]] * 2, 2),
            "v": torch.cat([i["v"]] * 3, 2)[:, :, :3],
        },
        "multiple of q's H",
    ),
    "K-too-large": (lambda i: {"q": torch.zeros(1, 7, 1, 512), "k": torch.zeros(1, 7, 1, 512)}, "head dim K"),
    "mixed-dtypes": (lambda i: {"v": i["v"].half()}, "share one dtype"),
    "g-shape": (lambda i: {"g": i["g"][..., :1]}, "g and beta must be"),
    "g-dtype": (lambda i: {"g": i["g"].to(torch.int32)}, "g and beta must be floating point"),
    "cu_seqlens-float": (lambda i: {"cu_seqlens": i["cu_seqlens"].float()}, "cu_seqlens must be int32/int64"),
    "cu_seqlens-batch": (
        lambda i: {name: torch.cat([i[name]] * 2) for name in ("q", "k", "v", "g", "beta")},
        "batch size B must be 1",
    ),
    "state-shape": (lambda i: {"initial_state": i["initial_state"][:2]}, "initial_state must be"),
    "state-dtype": (
        lambda i: {"initial_state": i["initial_state"].to(torch.int32)},
        "initial_state must be float32, bfloat16 or float16",
    ),
    "indices-without-state": (
        lambda i: {"initial_state": None, "ssm_state_indices": torch.arange(3, dtype=torch.int32)},
        "needs initial_state",
    ),
    "indices-shape": (
        lambda i: {"ssm_state_indices": torch.arange(2, dtype=torch.int32)},
        "ssm_state_indices must be",
    ),
    "inplace-without-state": (
        lambda i: {"initial_state": None, "inplace_final_state": True},
        "needs initial_state",
    ),
}


@pytest.mark.parametrize("case", BAD_ARGUMENTS, ids=list(BAD_ARGUMENTS))
def test_bad_arguments_raise_clear_errors(case):
    inputs = make_decode_inputs("cpu", N=3, H=1, HV=2, K=64, V=64, lengths=(1, 4, 2))
    change, message = BAD_ARGUMENTS[case]
    with pytest.raises(ValueError, match=message):
        call_with(inputs, **change(inputs))


def check_serving_decode_step(device, N, H, HV, K, V):
    """A serving engine's decode step: one token per sequence, a state cache with a padded entry (N > 1),
    updated in place, in-kernel l2norm; then the same inputs gathered into a new final state."""
    inputs = make_decode_inputs(device, N=N, H=H, HV=HV, K=K, V=V, lengths=[1] * N, slots=2 * N + 1)
    inputs["use_qk_l2norm_in_kernel"] = True
    if N > 1:
        inputs["ssm_state_indices"][N // 2] = -1
    before = inputs["initial_state"].clone()
    o, cache = fused_recurrent_gated_delta_rule(
        inputs["q"],
        inputs["k"],
        inputs["v"],
        inputs["g"],
        inputs["beta"],
        initial_state=inputs["initial_state"],
        cu_seqlens=inputs["cu_seqlens"],
        use_qk_l2norm_in_kernel=True,
        ssm_state_indices=inputs["ssm_state_indices"],
        inplace_final_state=True,
    )
    reference = fused_recurrent_reference({**inputs, "initial_state": before})
    indices = inputs["ssm_state_indices"].long()
    assert relative_error(o, reference["o"]) <= TOLERANCE
    assert relative_error(cache[indices[indices >= 0]], reference["final_state"][indices >= 0]) <= TOLERANCE
    # Gathered, not in place. The l2norm flag travels in `inputs`: without it q (norm ≈ 11 at K = 128)
    # went in unnormalised and o came out 10× too large, while final_state (unit-norm keys) matched.
    assert_close(launch_poisoned(SPEC, {**inputs, "initial_state": before}), reference)


@pytest.mark.parametrize("N", [1, 4], ids=lambda n: f"N{n}-H1-HV2-K32-V32")
def test_serving_decode_step(device, N):
    check_serving_decode_step(device, N, H=1, HV=2, K=32, V=32)


@pytest.mark.gpu
@pytest.mark.parametrize("N", [1, 256], ids=lambda n: f"N{n}-H16-HV64-K128-V128")
def test_real_decode_shapes_on_gpu(device, N):
    """Qwen3.5-397B at TP 1: 16/64 heads of 128."""
    check_serving_decode_step(device, N, H=16, HV=64, K=128, V=128)


@pytest.mark.gpu
def test_decode_never_synchronises_with_the_host(device):
    inputs = make_decode_inputs(device, N=8, H=16, HV=64, K=128, V=128, lengths=[1] * 8, slots=17)
    args = {**inputs, "use_qk_l2norm_in_kernel": True, "inplace_final_state": True}
    fused_recurrent_gated_delta_rule(**args)  # warm-up: compile and resolve the config
    with host_synchronisation_forbidden():
        fused_recurrent_gated_delta_rule(**args)
