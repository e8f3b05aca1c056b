"""gdn_kernels.compat.sglang replays SGLang's GDN calls (its TritonGDNKernel: extend, decode,
target_verify) at small shapes against the float64 reference: prefill on the state pool with
initial_state_indices, decode with padded (negative) indices, target verify into the intermediate
state buffer with the pool left untouched, and EAGLE trees through retrieve_parent_token."""

import pytest
import torch
import torch.nn.functional as F
from _compat import (
    HV,
    K,
    V,
    as_kv,
    assert_close,
    assert_untouched,
    by_token,
    cu_seqlens_of,
    gate_parameters,
    gates_reference,
    pool,
    projections,
    raw_gates,
)

from gdn_kernels.compat import sglang

# These replay the engines' calls on CPU tensors under TRITON_INTERPRET=1; on a GPU host (where CPU
# tensors cannot reach a compiled kernel) the engines' own test files, run against the compat modules,
# cover the same paths (docs/integrations.md: the peer-test run).
pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="CPU replays under the interpreter")


LAYOUT_DTYPES = [("vk", torch.float32), ("vk", torch.bfloat16), ("kv", torch.float16)]
IDS = [f"{layout}-{str(dtype).removeprefix('torch.')}" for layout, dtype in LAYOUT_DTYPES]


def layout_kwargs(state_layout):
    return {} if state_layout == "vk" else {"state_layout": state_layout}


@pytest.mark.parametrize(
    ("state_layout", "state_dtype"),
    [("vk", torch.bfloat16), ("kv", torch.float32)],
    ids=["vk-bfloat16", "kv-float32"],
)
def test_extend_on_the_state_pool(state_layout, state_dtype):
    """TritonGDNKernel.extend: the whole pool with initial_state_indices, final states written back in
    place; a padded sequence (index −1) starts from zeros and touches no slot."""
    lengths = (4, 1, 12)
    slots = torch.tensor([3, -1, 1], dtype=torch.int32)
    T = sum(lengths)
    x = projections(T)
    g = F.logsigmoid(torch.randn(1, T, HV))
    beta = torch.rand(1, T, HV)
    ssm_states = pool(5, state_layout, state_dtype)
    before = ssm_states.clone()
    o, last_recurrent_state, h = sglang.chunk_gated_delta_rule(
        q=x["q"],
        k=x["k"],
        v=x["v"],
        g=g,
        beta=beta,
        initial_state=ssm_states,
        cu_seqlens=cu_seqlens_of(lengths),
        head_first=False,
        use_qk_l2norm_in_kernel=True,
        initial_state_indices=slots,
        **layout_kwargs(state_layout),
    )
    assert last_recurrent_state is None and h is None
    starts = [as_kv(before[3], state_layout), None, as_kv(before[1], state_layout)]
    o_ref, states = by_token(x["q"], x["k"], x["v"], g, beta, starts, [(0, 4), (4, 5), (5, T)], True)
    assert o.shape == (1, T, HV, V) and o.dtype == torch.bfloat16
    assert_close(o, o_ref, "o")
    assert_close(as_kv(ssm_states[3], state_layout), states[0][-1], "slot 3")
    assert_close(as_kv(ssm_states[1], state_layout), states[2][-1], "slot 1")
    assert_untouched(ssm_states, before, [3, 1], "pool")


def decode_call(x, a, b, params, ssm_states, indices, cu_seqlens, **kwargs):
    """SGLang's positional order: A_log, a, dt_bias, softplus_beta, softplus_threshold, q, k, v, b, ..."""
    return sglang.fused_sigmoid_gating_delta_rule_update(
        params["A_log"], a, params["dt_bias"], 1.0, 20.0, x["q"], x["k"], x["v"], b,
        ssm_states, indices, cu_seqlens=cu_seqlens, use_qk_l2norm_in_kernel=True, **kwargs,
    )  # fmt: skip


@pytest.mark.parametrize(("state_layout", "state_dtype"), LAYOUT_DTYPES[::2], ids=IDS[::2])
def test_decode_updates_the_pool_and_skips_negative_indices(state_layout, state_dtype):
    indices = torch.tensor([2, -1, 0, 5], dtype=torch.int32)  # slot 0 is a real slot in SGLang
    x = projections(4)
    a, b = raw_gates(4)
    params = gate_parameters()
    ssm_states = pool(6, state_layout, state_dtype)
    before = ssm_states.clone()
    o = decode_call(
        x, a, b, params, ssm_states, indices, cu_seqlens_of((1,) * 4), **layout_kwargs(state_layout)
    )
    assert o.shape == (1, 4, HV, V) and o.dtype == torch.bfloat16
    g, beta = gates_reference(params, a, b)
    valid = {0: 2, 2: 0, 3: 5}
    starts = [as_kv(before[slot], state_layout) for slot in valid.values()]
    o_ref, states = by_token(
        x["q"], x["k"], x["v"], g[None], beta[None], starts, [(n, n + 1) for n in valid], True
    )
    assert_close(o[0, [0, 2, 3]], o_ref[0, [0, 2, 3]], "o")
    assert torch.equal(o[0, 1], torch.zeros_like(o[0, 1])), "a padded entry's output is not zero"
    for slot, after in zip(valid.values(), states, strict=True):
        assert_close(as_kv(ssm_states[slot], state_layout), after[-1], f"slot {slot}")
    assert_untouched(ssm_states, before, list(valid.values()), "pool")


def verify_inputs(state_layout, state_dtype, draft=3, requests=3):
    x = projections(draft * requests)
    a, b = raw_gates(draft * requests)
    params = gate_parameters()
    ssm_states = pool(5, state_layout, state_dtype)
    buffer = torch.randn(4, draft, HV, *((K, V) if state_layout == "kv" else (V, K))).to(state_dtype)
    g, beta = gates_reference(params, a, b)
    return x, a, b, params, ssm_states, buffer, g[None], beta[None]


@pytest.mark.parametrize(("state_layout", "state_dtype"), LAYOUT_DTYPES[::2], ids=IDS[::2])
def test_target_verify_fills_the_buffer_and_leaves_the_pool(state_layout, state_dtype):
    """topk = 1: every draft token's state goes to intermediate_states_buffer[idx, t]; the pool is not
    updated (disable_state_update); a padded request (indices −1) writes nothing."""
    x, a, b, params, ssm_states, buffer, g, beta = verify_inputs(state_layout, state_dtype)
    before, buffer_before = ssm_states.clone(), buffer.clone()
    o = decode_call(
        x, a, b, params, ssm_states, torch.tensor([1, 3, -1]), cu_seqlens_of((3, 3, 3)),
        is_kda=False, disable_state_update=True, intermediate_states_buffer=buffer,
        intermediate_state_indices=torch.tensor([2, 0, -1]), cache_steps=3, retrieve_parent_token=None,
        **layout_kwargs(state_layout),
    )  # fmt: skip
    starts = [as_kv(before[1], state_layout), as_kv(before[3], state_layout)]
    o_ref, states = by_token(x["q"], x["k"], x["v"], g, beta, starts, [(0, 3), (3, 6)], True)
    assert_close(o[:, :6], o_ref[:, :6], "o")
    assert torch.equal(o[:, 6:], torch.zeros_like(o[:, 6:]))
    assert torch.equal(ssm_states, before), "target verify wrote the pool"
    for row, after in ((2, states[0]), (0, states[1])):
        for t in range(3):
            assert_close(as_kv(buffer[row, t], state_layout), after[t], f"buffer[{row}, {t}]")
    assert_untouched(buffer, buffer_before, [2, 0], "intermediate_states_buffer")


def test_target_verify_over_draft_trees():
    """retrieve_parent_token: token t > 0 continues from the buffered state of its parent token."""
    parents = torch.tensor([[-1, 0, 0], [-1, 0, 1], [-1, 0, 0]], dtype=torch.int32)
    x, a, b, params, ssm_states, buffer, g, beta = verify_inputs("vk", torch.float32)
    before = ssm_states.clone()
    o = decode_call(
        x, a, b, params, ssm_states, torch.tensor([1, 3, -1]), cu_seqlens_of((3, 3, 3)),
        disable_state_update=True, intermediate_states_buffer=buffer,
        intermediate_state_indices=torch.tensor([2, 0, 3]), cache_steps=3, retrieve_parent_token=parents,
    )  # fmt: skip
    assert torch.equal(ssm_states, before), "target verify wrote the pool"
    for n, (slot, row) in enumerate(((1, 2), (3, 0))):
        after = {}
        for t in range(3):
            start = as_kv(before[slot], "vk") if t == 0 else after[int(parents[n, t])]
            token = 3 * n + t
            o_ref, states = by_token(x["q"], x["k"], x["v"], g, beta, [start], [(token, token + 1)], True)
            after[t] = states[0][0]
            assert_close(o[0, token], o_ref[0, token], f"o of token {t} of request {n}")
            assert_close(as_kv(buffer[row, t], "vk"), after[t], f"buffer[{row}, {t}]")
    assert torch.equal(o[0, 6:], torch.zeros_like(o[0, 6:])), "the padded request has outputs"


def test_fused_gdn_gating_returns_float32_beta():
    a, b = raw_gates(3)
    params = gate_parameters()
    g, beta = sglang.fused_gdn_gating(params["A_log"], a, b, params["dt_bias"])
    g_ref, beta_ref = gates_reference(params, a, b)
    assert g.shape == beta.shape == (1, 3, HV) and g.dtype == beta.dtype == torch.float32
    assert_close(g[0], g_ref, "g", 1e-5)
    assert_close(beta[0], beta_ref, "beta", 1e-2)


def test_unsupported_and_mismatched_arguments_raise():
    x = projections(2)
    a, b = raw_gates(2)
    params = gate_parameters()
    g, beta = torch.zeros(1, 2, HV), torch.ones(1, 2, HV)
    with pytest.raises(NotImplementedError, match="head_first"):
        sglang.chunk_gated_delta_rule(x["q"], x["k"], x["v"], g, beta, head_first=True)
    with pytest.raises(NotImplementedError, match="is_kda"):
        decode_call(x, a, b, params, pool(2, "vk", torch.float32), torch.tensor([0, 1]), None, is_kda=True)
    kv_pool = pool(3, "kv", torch.float32)  # [.., K, V] with K ≠ V where [.., V, K] is declared
    with pytest.raises(ValueError, match=r"initial_state_source must be \[.., HV, V, K\].*state_layout='vk'"):
        decode_call(x, a, b, params, kv_pool, torch.tensor([0, 1]), cu_seqlens_of((1, 1)))
    with pytest.raises(ValueError, match="intermediate_states_buffer must be"):
        decode_call(
            x, a, b, params, pool(3, "vk", torch.float32), torch.tensor([0, 1]), cu_seqlens_of((1, 1)),
            intermediate_states_buffer=torch.zeros(2, 2, HV, V, K), intermediate_state_indices=torch.tensor([0, 1]),
            cache_steps=3,
        )  # fmt: skip
