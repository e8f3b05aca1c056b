"""The decode paths serving engines call: state layouts and dtypes, gates computed in the kernel, q/k/v
read from a packed projection, speculative decoding with a state per token, target-verify buffers,
CUDA-graph padding (negative and null slots). Each against the float64 token-by-token reference.

Runs through TRITON_INTERPRET=1 on the CPU (small shapes) and compiled on a GPU host.
"""

import pytest
import torch
from _helpers import cu_seqlens_of

from gdn_kernels import fused_recurrent_gated_delta_rule
from gdn_kernels._spec import relative_error
from gdn_kernels.fused_recurrent import fused_recurrent_reference

TOLERANCE = 1e-2
STATES = [(torch.float32, "kv"), (torch.float32, "vk"), (torch.bfloat16, "vk"), (torch.float16, "kv")]


def state_id(state):
    return f"{str(state[0]).removeprefix('torch.')}-{state[1]}"


def cache(slots, HV, K, V, state, device):
    dtype, layout = state
    shape = (slots, HV, K, V) if layout == "kv" else (slots, HV, V, K)
    return (0.1 * torch.randn(shape, device=device)).to(dtype)


def step_inputs(device, *, lengths, H=1, HV=2, K=32, V=16, gates_in_kernel=False, dtype=torch.bfloat16):
    """One varlen decode call (B = 1): q, k, v and either g, beta or the raw a, b with A_log, dt_bias."""
    T = sum(lengths)
    inputs = {
        "q": torch.randn(1, T, H, K, device=device).to(dtype),
        "k": torch.randn(1, T, H, K, device=device).to(dtype),
        "v": torch.randn(1, T, HV, V, device=device).to(dtype),
        "cu_seqlens": cu_seqlens_of(lengths, device),
        "use_qk_l2norm_in_kernel": True,
    }
    if gates_in_kernel:
        inputs.update(
            g=torch.randn(1, T, HV, device=device).to(dtype),
            beta=torch.randn(1, T, HV, device=device).to(dtype),
            A_log=torch.log(1 + 15 * torch.rand(HV, device=device)),
            dt_bias=0.5 * torch.randn(HV, device=device),
            use_gate_in_kernel=True,
            use_beta_sigmoid_in_kernel=True,
        )
    else:
        inputs.update(
            g=torch.nn.functional.logsigmoid(torch.randn(1, T, HV, device=device)),
            beta=torch.sigmoid(torch.randn(1, T, HV, device=device)),
        )
    return inputs


def reference(inputs, layout, **extra):
    return fused_recurrent_reference({**inputs, "state_layout": layout, **extra})


def close(out, ref):
    error = relative_error(out, ref)
    assert error <= TOLERANCE, error


@pytest.mark.parametrize("state", STATES, ids=state_id)
@pytest.mark.parametrize("gates_in_kernel", [False, True], ids=["gates", "gates-in-kernel"])
def test_cache_in_place_with_padding(device, state, gates_in_kernel):
    """vLLM's decode under a CUDA graph: the whole cache, a slot per sequence, padded rows marked by -1
    and by the null block 0; padded rows give zeros and leave every slot untouched."""
    HV, K, V = 2, 32, 16
    inputs = step_inputs(device, lengths=(1, 1, 1, 1, 1), HV=HV, K=K, V=V, gates_in_kernel=gates_in_kernel)
    pool = cache(8, HV, K, V, state, device)
    indices = torch.tensor([5, -1, 2, 0, 7], dtype=torch.int32, device=device)
    expected = reference(
        {**inputs, "initial_state": pool.clone(), "ssm_state_indices": indices, "null_slot": 0}, state[1]
    )
    before = pool.clone()
    o, final = fused_recurrent_gated_delta_rule(
        **inputs,
        initial_state=pool,
        ssm_state_indices=indices,
        inplace_final_state=True,
        state_layout=state[1],
        null_slot=0,
    )
    assert final is pool
    close(o, expected["o"])
    assert torch.all(o[0, [1, 3]] == 0)
    for n, slot in enumerate(indices.tolist()):
        if slot > 0:
            close(pool[slot], expected["final_state"][n])
    untouched = [s for s in range(8) if s not in (5, 2, 7)]
    assert torch.equal(pool[untouched], before[untouched])


@pytest.mark.parametrize("state", STATES[:3], ids=state_id)
def test_speculative_slots_per_token(device, state):
    """Speculative decoding: 2-D slot indices, the state read after the last accepted token and the state
    after each draft token written to its own slot (vLLM's num_accepted_tokens)."""
    HV, K, V, S = 2, 32, 16, 3
    lengths = (3, 2, 3)
    inputs = step_inputs(device, lengths=lengths, HV=HV, K=K, V=V, gates_in_kernel=True)
    pool = cache(12, HV, K, V, state, device)
    indices = torch.tensor([[0, 1, 2], [3, 4, 5], [-1, -1, -1]], dtype=torch.int32, device=device)
    accepted = torch.tensor([2, 1, 1], dtype=torch.int32, device=device)
    common = {"ssm_state_indices": indices, "num_accepted_tokens": accepted}
    expected = reference(
        {**inputs, **common, "initial_state": pool.clone(), "state_per_token": True}, state[1]
    )
    before = pool.clone()
    o, final = fused_recurrent_gated_delta_rule(
        **inputs, **common, initial_state=pool, inplace_final_state=True, state_layout=state[1]
    )
    assert final is pool
    close(o, expected["o"])
    token = 0
    for n, length in enumerate(lengths):
        for t in range(length):
            slot = indices[n, t].item()
            if slot >= 0 and t < S:
                close(pool[slot], expected["token_states"][token])
            token += 1
    assert torch.all(o[0, 5:] == 0)  # the padded sequence
    assert torch.equal(pool[6:], before[6:])


@pytest.mark.parametrize("state", STATES[:3], ids=state_id)
def test_state_per_token_and_verify_buffer(device, state):
    """vLLM's not-in-place call returns the state after every token; SGLang's target verify writes them
    to a buffer row per sequence and leaves the cache alone."""
    HV, K, V = 2, 32, 16
    lengths = (2, 3)
    inputs = step_inputs(device, lengths=lengths, HV=HV, K=K, V=V, gates_in_kernel=True)
    pool = cache(4, HV, K, V, state, device)
    indices = torch.tensor([3, 1], dtype=torch.int32, device=device)
    expected = reference(
        {**inputs, "initial_state": pool, "ssm_state_indices": indices, "state_per_token": True}, state[1]
    )
    o, per_token = fused_recurrent_gated_delta_rule(
        **inputs, initial_state=pool, ssm_state_indices=indices, state_per_token=True, state_layout=state[1]
    )
    close(o, expected["o"])
    assert per_token.shape[0] == sum(lengths) and per_token.dtype == state[0]
    close(per_token, expected["token_states"])

    before = pool.clone()
    buffer = torch.full((3, 4, *pool.shape[1:]), float("nan"), dtype=state[0], device=device)
    rows = torch.tensor([2, 0], dtype=torch.int32, device=device)
    o2, none = fused_recurrent_gated_delta_rule(
        **inputs,
        initial_state=pool,
        ssm_state_indices=indices,
        intermediate_states=buffer,
        intermediate_state_indices=rows,
        state_layout=state[1],
    )
    assert none is None and torch.equal(pool, before)
    close(o2, expected["o"])
    close(buffer[2, :2], expected["token_states"][:2])
    close(buffer[0, :3], expected["token_states"][2:])
    assert torch.isnan(buffer[1].float()).all() and torch.isnan(buffer[2, 2:].float()).all()


def test_packed_projection_and_out(device):
    """vLLM's packed decode: q, k, v are column blocks of one projection (no copy), o goes to `out`."""
    H, HV, K, V, N = 1, 2, 32, 16, 3
    mixed = torch.randn(N, 2 * H * K + HV * V, device=device).to(torch.bfloat16)
    q = mixed[:, : H * K].unflatten(1, (H, K))[:, None]
    k = mixed[:, H * K : 2 * H * K].unflatten(1, (H, K))[:, None]
    v = mixed[:, 2 * H * K :].unflatten(1, (HV, V))[:, None]
    gates = step_inputs(device, lengths=(1,) * N, H=H, HV=HV, K=K, V=V, gates_in_kernel=True)
    gates = {
        name: gates[name] for name in ("A_log", "dt_bias", "use_gate_in_kernel", "use_beta_sigmoid_in_kernel")
    }
    a = torch.randn(N, 1, HV, device=device).to(torch.bfloat16)
    b = torch.randn(N, 1, HV, device=device).to(torch.bfloat16)
    pool = cache(4, HV, K, V, (torch.bfloat16, "vk"), device)
    indices = torch.tensor([2, 0, 3], dtype=torch.int32, device=device)
    out = torch.full((N, 1, HV, V), float("nan"), dtype=torch.bfloat16, device=device)
    args = {"q": q, "k": k, "v": v, "g": a, "beta": b, **gates, "use_qk_l2norm_in_kernel": True}
    expected = reference({**args, "initial_state": pool.clone(), "ssm_state_indices": indices}, "vk")
    o, _ = fused_recurrent_gated_delta_rule(
        **args,
        initial_state=pool,
        ssm_state_indices=indices,
        inplace_final_state=True,
        state_layout="vk",
        out=out,
    )
    assert o is out
    close(out, expected["o"])
    close(pool[indices.long()], expected["final_state"])


def test_layout_mismatch_is_an_error(device):
    """A [K, V] cache declared [V, K] (K ≠ V) is refused by its shape, naming the layout."""
    inputs = step_inputs(device, lengths=(1, 1), K=32, V=16)
    kv_cache = cache(4, 2, 32, 16, (torch.float32, "kv"), device)
    indices = torch.tensor([0, 1], dtype=torch.int32, device=device)
    with pytest.raises(ValueError, match=r"initial_state must be .*state_layout='vk'"):
        fused_recurrent_gated_delta_rule(
            **inputs, initial_state=kv_cache, ssm_state_indices=indices, state_layout="vk"
        )


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"state_layout": "kvv"}, "state_layout must be"),
        ({"initial_state": "int"}, "must be float32, bfloat16 or float16"),
        ({"num_accepted_tokens": [1, 4]}, r"num_accepted_tokens must be in 1\.\.3"),
        ({"ssm_state_indices": "1-D", "num_accepted_tokens": [1, 1]}, "needs 2-D ssm_state_indices"),
        ({"A_log": None}, "needs A_log"),
    ],
    ids=["layout", "state-dtype", "accepted-too-many", "accepted-1d", "no-A_log"],
)
def test_bad_arguments_name_what_is_wrong(device, changes, message):
    inputs = step_inputs(device, lengths=(2, 1), gates_in_kernel=True)
    args = {
        **inputs,
        "initial_state": cache(6, 2, 32, 16, (torch.float32, "kv"), device),
        "ssm_state_indices": torch.tensor([[0, 1, 2], [3, 4, 5]], dtype=torch.int32, device=device),
    }
    for name, value in changes.items():
        if value == "int":
            value = args["initial_state"].to(torch.int32)
        elif value == "1-D":
            value = args["ssm_state_indices"][:, 0]
        elif isinstance(value, list):
            value = torch.tensor(value, dtype=torch.int32)  # on the host: checked without a sync
        args[name] = value
    with pytest.raises(ValueError, match=message):
        fused_recurrent_gated_delta_rule(**args)


def test_accepted_tokens_out_of_range_pad_the_entry_in_the_kernel(device):
    """On the device a count outside 1..S cannot be checked without a sync: the kernel pads the entry
    (zeros out, zero states), as vLLM's does. Launched through the spec, past the host-side check."""
    from gdn_kernels.fused_recurrent import SPEC_SPECULATIVE as spec

    key = spec.key(
        dtype="bfloat16", H=1, HV=2, K=32, V=16, N=3, S=2, state_dtype="float32", state_layout="kv"
    )
    inputs = spec.make_inputs(key, device, seed=1)
    inputs["num_accepted_tokens"] = torch.tensor([0, 3, 2], dtype=torch.int32, device=device)
    outputs = {name: t.fill_(float("nan")) for name, t in spec.make_outputs(inputs).items()}
    spec.launch(inputs, outputs, spec.default)
    assert torch.all(outputs["o"][0, :4] == 0) and torch.all(outputs["token_states"][:4] == 0)
    expected = fused_recurrent_reference({**inputs, "num_accepted_tokens": torch.tensor([1, 1, 2])})
    close(outputs["o"][0, 4:], expected["o"][0, 4:])
    close(outputs["token_states"][4:], expected["token_states"][4:])
