"""gdn_kernels.compat.vllm replays vLLM's GDN calls (its qwen_gdn_linear_attn layer and its op tests) at
small shapes, against the float64 reference: prefill on gathered states, the post-convolution prep,
gating, decode on the whole cache with CUDA-graph padding (slot −1 and NULL_BLOCK_ID 0), speculative
decoding with 2-D slot indices, packed decode, and EAGLE trees."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from _compat import (
    HV,
    H,
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

from gdn_kernels.compat import vllm
from gdn_kernels.reference import l2norm_reference

# These replay the engines' calls on CPU tensors under TRITON_INTERPRET=1; on a GPU host (where CPU
# tensors cannot reach a compiled kernel) the engines' own test files, run against the compat modules,
# cover the same paths (docs/integrations.md: the peer-test run).
pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="CPU replays under the interpreter")


LAYOUT_DTYPES = [("vk", torch.float32), ("vk", torch.bfloat16), ("kv", torch.float16)]
IDS = [f"{layout}-{str(dtype).removeprefix('torch.')}" for layout, dtype in LAYOUT_DTYPES]


def bounds_of(lengths):
    cu = cu_seqlens_of(lengths).tolist()
    return list(itertools.pairwise(cu))


# The chunked kernels are the slow ones under the interpreter (seconds per call): two cases, one of them
# with a sequence spanning two chunks of 64; the other state dtype is covered by SGLang's extend test.
PREFILL_CASES = [("vk", torch.float32, (5, 65)), ("kv", torch.float16, (3, 9))]


@pytest.mark.parametrize(
    ("state_layout", "state_dtype", "lengths"), PREFILL_CASES, ids=["vk-float32-L5+65", "kv-float16-L3+9"]
)
def test_prefill_on_gathered_cache_rows(state_layout, state_dtype, lengths):
    """The layer: initial_state = ssm_state[prefill_state_indices] (zeroed for new sequences), q, k already
    normalised, vLLM's chunk bookkeeping passed along, o written into a larger core_attn_out buffer."""
    T = sum(lengths)
    x = projections(T)
    q, k = (F.normalize(x[n].float(), dim=-1).bfloat16() for n in ("q", "k"))
    g = F.logsigmoid(torch.randn(1, T, HV))
    beta = torch.rand(1, T, HV)
    cache = pool(5, state_layout, state_dtype)
    initial_state = cache[torch.tensor([3, 1])]
    initial_state[1] = 0  # a new request: no initial state
    core_attn_out = torch.zeros(T + 3, HV, V, dtype=torch.bfloat16)
    chunks = [(n, c) for n, length in enumerate(lengths) for c in range(-(-length // 64))]  # vLLM's metadata
    kwargs = {} if state_layout == "vk" else {"state_layout": state_layout}
    o, final_state = vllm.chunk_gated_delta_rule(
        q=q,
        k=k,
        v=x["v"],
        g=g,
        beta=beta,
        initial_state=initial_state,
        output_final_state=True,
        cu_seqlens=cu_seqlens_of(lengths),
        chunk_indices=torch.tensor(chunks, dtype=torch.int32),
        chunk_offsets=cu_seqlens_of([-(-n // 64) for n in lengths]),
        use_qk_l2norm_in_kernel=False,
        core_attn_out=core_attn_out,
        **kwargs,
    )
    starts = [as_kv(initial_state[n], state_layout) for n in range(2)]
    o_ref, states = by_token(q, k, x["v"], g, beta, starts, bounds_of(lengths))
    assert o.shape == (1, T, HV, V) and o.dtype == torch.bfloat16
    assert o.data_ptr() == core_attn_out.data_ptr(), "o is not written into core_attn_out"
    assert_close(core_attn_out[:T], o_ref[0], "o")
    assert final_state.dtype == torch.float32 and final_state.shape == initial_state.shape
    assert_close(as_kv(final_state, state_layout), torch.stack([s[-1] for s in states]), "final_state")


@pytest.mark.parametrize(
    ("apply_l2norm", "output_g_exp"), [(True, False), (False, True)], ids=["l2norm", "g-exp"]
)
def test_post_conv_prep(apply_l2norm, output_g_exp):
    L = 7
    width = 2 * H * K + HV * V
    conv_output = torch.randn(L, width + 8).bfloat16()[:, :width]  # a strided view, as from the conv
    a, b = raw_gates(L)
    params = gate_parameters()
    q, k, v, g, beta = vllm.fused_post_conv_prep(
        conv_output,
        a,
        b,
        params["A_log"],
        params["dt_bias"],
        num_k_heads=H,
        head_k_dim=K,
        head_v_dim=V,
        apply_l2norm=apply_l2norm,
        output_g_exp=output_g_exp,
    )
    assert (q.shape, k.shape, v.shape, g.shape, beta.shape) == (
        (L, H, K),
        (L, H, K),
        (L, HV, V),
        (L, HV),
        (L, HV),
    )
    assert q.dtype == v.dtype == torch.bfloat16 and g.dtype == beta.dtype == torch.float32
    assert q.is_contiguous() and k.is_contiguous() and v.is_contiguous()
    q_ref, k_ref, _ = conv_output.double().split([H * K, H * K, HV * V], dim=-1)
    if apply_l2norm:
        q_ref, k_ref = l2norm_reference(q_ref.reshape(L, H, K)), l2norm_reference(k_ref.reshape(L, H, K))
    g_ref, beta_ref = gates_reference(params, a, b)
    assert_close(q, q_ref.reshape(L, H, K), "q", 1e-2)
    assert_close(k, k_ref.reshape(L, H, K), "k", 1e-2)
    assert torch.equal(v, conv_output[:, 2 * H * K :].reshape(L, HV, V))
    assert_close(g, g_ref.exp() if output_g_exp else g_ref, "g", 1e-5)
    assert_close(beta, beta_ref, "beta", 1e-5)
    empty = vllm.fused_post_conv_prep(
        conv_output[:0], a[:0], b[:0], params["A_log"], params["dt_bias"], H, K, V
    )
    assert [t.shape[0] for t in empty] == [0] * 5


def test_fused_gdn_gating_shapes_dtypes_and_softplus_kwargs():
    a, b = raw_gates(5)
    params = gate_parameters()
    g, beta = vllm.fused_gdn_gating(params["A_log"], a, b, params["dt_bias"], beta=0.5, threshold=1.0)
    g_ref, beta_ref = gates_reference(params, a, b, softplus_beta=0.5, softplus_threshold=1.0)
    assert g.shape == beta.shape == (1, 5, HV)
    assert g.dtype == torch.float32 and beta.dtype == b.dtype
    assert_close(g[0], g_ref, "g", 1e-5)
    assert_close(beta[0], beta_ref, "beta", 1e-2)


def decode_batch(lengths, T_rows=None):
    """q, k, v of one varlen decode batch, and a, b as the layer passes them (2-D, maybe longer)."""
    T = sum(lengths)
    x = projections(T)
    a, b = raw_gates(T_rows or T)
    return x, a, b, cu_seqlens_of(lengths)


def gated_decode(x, a, b, params, cache, cu_seqlens, slots, **kwargs):
    """The layer's decode call: whole cache, in place, in-kernel l2norm."""
    return vllm.fused_sigmoid_gating_delta_rule_update(
        A_log=params["A_log"], a=a, b=b, dt_bias=params["dt_bias"], q=x["q"], k=x["k"], v=x["v"],
        initial_state=cache, inplace_final_state=True, cu_seqlens=cu_seqlens, ssm_state_indices=slots,
        use_qk_l2norm_in_kernel=True, **kwargs,
    )  # fmt: skip


@pytest.mark.parametrize(("state_layout", "state_dtype"), LAYOUT_DTYPES, ids=IDS)
def test_decode_on_the_whole_cache_with_cuda_graph_padding(state_layout, state_dtype):
    """One token per request; padded entries: slot −1 (older vLLM) and NULL_BLOCK_ID 0 with an empty
    sequence (vLLM's full CUDA graphs). a, b have more rows than tokens (vLLM passes the whole projection)."""
    lengths = (1, 1, 1, 0, 1)
    slots = torch.tensor([4, -1, 2, 0, 6], dtype=torch.int32)
    x, a, b, cu_seqlens = decode_batch(lengths, T_rows=6)
    x["v"][0, 1] = float("nan")  # the padded entry's inputs must not leak anywhere
    params = gate_parameters()
    cache = pool(8, state_layout, state_dtype)
    before = cache.clone()
    kwargs = {} if state_layout == "vk" else {"state_layout": state_layout}
    o, final_state = gated_decode(x, a, b, params, cache, cu_seqlens, slots, **kwargs)
    assert final_state is cache
    assert o.shape == (1, 4, HV, V)
    assert o.dtype == (torch.float32 if state_dtype == torch.float32 else torch.bfloat16)
    g, beta = gates_reference(params, a[:4], b[:4])
    valid = [(0, 4), (2, 2), (4, 6)]  # (sequence, slot); its token t is sequence n's row
    rows = {0: 0, 2: 2, 4: 3}
    starts = [as_kv(before[slot], state_layout) for _, slot in valid]
    o_ref, states = by_token(
        x["q"], x["k"], x["v"], g[None], beta[None], starts, [(rows[n], rows[n] + 1) for n, _ in valid], True
    )
    assert torch.equal(o[0, 1], torch.zeros_like(o[0, 1])), "a padded entry's output is not zero"
    assert_close(o[0, [0, 2, 3]], o_ref[0, [0, 2, 3]], "o")
    for (_, slot), after in zip(valid, states, strict=True):
        assert_close(as_kv(cache[slot], state_layout), after[-1], f"slot {slot}")
    assert_untouched(cache, before, [4, 2, 6], "cache")


@pytest.mark.parametrize(("state_layout", "state_dtype"), LAYOUT_DTYPES[::2], ids=IDS[::2])
def test_speculative_decoding_reads_the_accepted_slot_and_writes_every_token(state_layout, state_dtype):
    lengths = (3, 2, 0)
    slots = torch.tensor([[1, 2, 3], [4, 5, 6], [0, 0, 0]], dtype=torch.int32)  # the last: padding
    accepted = torch.tensor([2, 1, 1], dtype=torch.int32)
    x, a, b, cu_seqlens = decode_batch(lengths)
    params = gate_parameters()
    cache = pool(8, state_layout, state_dtype)
    before = cache.clone()
    o, _ = gated_decode(
        x, a, b, params, cache, cu_seqlens, slots, num_accepted_tokens=accepted, state_layout=state_layout
    )
    g, beta = gates_reference(params, a, b)
    starts = [as_kv(before[2], state_layout), as_kv(before[4], state_layout)]
    o_ref, states = by_token(x["q"], x["k"], x["v"], g[None], beta[None], starts, [(0, 3), (3, 5)], True)
    assert_close(o, o_ref, "o")
    for slot, state in zip((1, 2, 3, 4, 5), states[0] + states[1], strict=True):
        assert_close(as_kv(cache[slot], state_layout), state, f"slot {slot} (state after its token)")
    assert_untouched(cache, before, [1, 2, 3, 4, 5], "cache")


@pytest.mark.parametrize("inplace_final_state", [True, False], ids=["in-place", "per-token"])
def test_fused_recurrent_batch_with_padding(inplace_final_state):
    """vLLM's op tests: B sequences of one token (no cu_seqlens), slot −1 and NULL 0 padding, beta None."""
    x = projections(1, B=4)
    g = F.logsigmoid(torch.randn(4, 1, HV))
    slots = torch.tensor([3, -1, 1, 0])
    cache = pool(5, "vk", torch.bfloat16)
    before = cache.clone()
    o, final_state = vllm.fused_recurrent_gated_delta_rule(
        q=x["q"],
        k=x["k"],
        v=x["v"],
        g=g,
        scale=K**-0.5,
        initial_state=cache,
        inplace_final_state=inplace_final_state,
        ssm_state_indices=slots,
    )
    assert o.shape == (4, 1, HV, V) and o.dtype == torch.bfloat16
    ones = torch.ones(4, 1, HV)
    expected = {}
    for i, slot in ((0, 3), (2, 1)):
        o_ref, states = by_token(
            x["q"][i : i + 1], x["k"][i : i + 1], x["v"][i : i + 1], g[i : i + 1], ones[i : i + 1],
            [as_kv(before[slot], "vk")], [(0, 1)],
        )  # fmt: skip
        assert_close(o[i], o_ref[0], f"o of sequence {i}")
        expected[i] = (slot, states[0][-1])
    for i in (1, 3):
        assert torch.equal(o[i], torch.zeros_like(o[i])), f"padded sequence {i} has a non-zero output"
    if inplace_final_state:
        assert final_state is cache
        for slot, state in expected.values():
            assert_close(as_kv(cache[slot], "vk"), state, f"slot {slot}")
        assert_untouched(cache, before, [3, 1], "cache")
    else:
        assert torch.equal(cache, before), "the cache changed without inplace_final_state"
        assert final_state.shape == (4, HV, V, K) and final_state.dtype == cache.dtype
        for i, (_, state) in expected.items():
            assert_close(as_kv(final_state[i], "vk"), state, f"state after token {i}")


@pytest.mark.parametrize(("state_layout", "state_dtype"), LAYOUT_DTYPES[::2], ids=IDS[::2])
def test_packed_decode_from_mixed_qkv(state_layout, state_dtype):
    B = 4
    width = 2 * H * K + HV * V
    mixed_qkv = torch.randn(B, width + 16).bfloat16()[:, :width]
    a, b = raw_gates(B)
    params = gate_parameters()
    slots = torch.tensor([3, 0, -1, 1], dtype=torch.int32)
    cache = pool(5, state_layout, state_dtype)
    before = cache.clone()
    out = torch.full((B, 1, HV, V), float("nan"), dtype=torch.bfloat16)
    kwargs = {} if state_layout == "vk" else {"state_layout": state_layout}
    returned = vllm.fused_recurrent_gated_delta_rule_packed_decode(
        mixed_qkv=mixed_qkv,
        a=a,
        b=b,
        A_log=params["A_log"],
        dt_bias=params["dt_bias"],
        scale=K**-0.5,
        initial_state=cache,
        out=out,
        ssm_state_indices=slots,
        use_qk_l2norm_in_kernel=True,
        **kwargs,
    )
    assert returned[0] is out and returned[1] is cache
    q, k, v = mixed_qkv.split([H * K, H * K, HV * V], dim=-1)
    g, beta = gates_reference(params, a, b)
    for i, slot in ((0, 3), (3, 1)):
        o_ref, states = by_token(
            q[i].reshape(1, 1, H, K), k[i].reshape(1, 1, H, K), v[i].reshape(1, 1, HV, V),
            g[i].reshape(1, 1, HV), beta[i].reshape(1, 1, HV), [as_kv(before[slot], state_layout)], [(0, 1)], True,
        )  # fmt: skip
        assert_close(out[i, 0], o_ref[0, 0], f"o of sequence {i}")
        assert_close(as_kv(cache[slot], state_layout), states[0][-1], f"slot {slot}")
    assert torch.equal(out[[1, 2]], torch.zeros_like(out[[1, 2]])), "padded rows must be zeros"
    assert_untouched(cache, before, [3, 1], "cache")


def test_eagle_tree_restarts_each_token_from_its_parent():
    """vLLM versions with retrieve_parent_token kept [.., K, V] caches: token t > 0 starts from the state
    of its parent token, held in slot ssm_state_indices[n, parent]."""
    lengths = (4, 3)
    parents = torch.tensor([[-1, 0, 0, 1], [-1, 0, 1, -1]], dtype=torch.int32)
    slots = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]], dtype=torch.int32)
    accepted = torch.tensor([2, 1], dtype=torch.int32)
    x = projections(sum(lengths))
    g = F.logsigmoid(torch.randn(1, 7, HV))
    beta = torch.rand(1, 7, HV)
    cache = pool(9, "kv", torch.float32)
    before = cache.clone()
    o, final_state = vllm.fused_recurrent_gated_delta_rule(
        q=x["q"],
        k=x["k"],
        v=x["v"],
        g=g,
        beta=beta,
        initial_state=cache,
        inplace_final_state=True,
        cu_seqlens=cu_seqlens_of(lengths),
        ssm_state_indices=slots,
        num_accepted_tokens=accepted,
        retrieve_parent_token=parents,
        use_qk_l2norm_in_kernel=True,
        state_layout="kv",
    )
    assert final_state is cache
    for n, (start, length) in enumerate(((0, 4), (4, 3))):
        after = {}
        for t in range(length):
            S = before[slots[n, accepted[n] - 1]] if t == 0 else after[int(parents[n, t])]
            o_ref, states = by_token(x["q"], x["k"], x["v"], g, beta, [S], [(start + t, start + t + 1)], True)
            after[t] = states[0][0]
            assert_close(o[0, start + t], o_ref[0, start + t], f"o of token {t} of sequence {n}")
            assert_close(cache[slots[n, t]], after[t], f"slot {int(slots[n, t])}")
    assert_untouched(cache, before, list(range(1, 8)), "cache")


def test_a_kv_state_declared_vk_raises_naming_the_layout():
    x = projections(2)
    a, b = raw_gates(2)
    params = gate_parameters()
    kv_cache = pool(3, "kv", torch.float32)  # [.., K, V] with K ≠ V, passed where [.., V, K] is declared
    with pytest.raises(ValueError, match=r"initial_state must be \[.., HV, V, K\].*state_layout='vk'"):
        vllm.fused_sigmoid_gating_delta_rule_update(
            params["A_log"], a, b, params["dt_bias"], x["q"], x["k"], x["v"],
            initial_state=kv_cache, cu_seqlens=cu_seqlens_of((1, 1)), ssm_state_indices=torch.tensor([1, 2]),
        )  # fmt: skip
    with pytest.raises(ValueError, match="initial_state must be"):
        vllm.chunk_gated_delta_rule(
            x["q"], x["k"], x["v"], torch.zeros(1, 2, HV), torch.ones(1, 2, HV),
            initial_state=kv_cache[:1], output_final_state=True,
        )  # fmt: skip
    width = 2 * H * K + HV * V
    with pytest.raises(ValueError, match=r"state_layout='vk'; a \[.., K, V\] cache"):
        vllm.fused_recurrent_gated_delta_rule_packed_decode(
            torch.randn(2, width).bfloat16(), a, b, params["A_log"], params["dt_bias"], 1.0,
            kv_cache, torch.empty(2, 1, HV, V).bfloat16(), torch.tensor([1, 2]),
        )  # fmt: skip


def test_unsupported_and_inconsistent_arguments_raise():
    x = projections(1)
    a, b = raw_gates(1)
    params = gate_parameters()
    cache = pool(2, "vk", torch.float32)
    with pytest.raises(NotImplementedError, match="is_kda"):
        vllm.fused_sigmoid_gating_delta_rule_update(
            params["A_log"], a, b, params["dt_bias"], x["q"], x["k"], x["v"], initial_state=cache, is_kda=True
        )
    with pytest.raises(ValueError, match="num_accepted_tokens needs 2-D ssm_state_indices"):
        vllm.fused_recurrent_gated_delta_rule(
            x["q"], x["k"], x["v"], torch.zeros(1, 1, HV), initial_state=cache,
            ssm_state_indices=torch.tensor([1]), num_accepted_tokens=torch.tensor([1]),
        )  # fmt: skip
