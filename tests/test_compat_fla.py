"""gdn_kernels.compat.fla replays flash-linear-attention's calls (as its tests/ops/test_gdn.py makes them)
at small shapes against the float64 reference: both state layouts (state_v_first), FLA's mixed input
dtypes, the in-kernel gate and beta sigmoid, chunk_size, and the forward-only contract."""

import pytest
import torch
import torch.nn.functional as F
from _compat import HV, H, K, V, as_kv, as_layout, assert_close, by_token, cu_seqlens_of, gate_parameters

from gdn_kernels.compat import fla
from gdn_kernels.gating import gating_reference
from gdn_kernels.reference import l2norm_reference

# These replay the engines' calls on CPU tensors under TRITON_INTERPRET=1; on a GPU host (where CPU
# tensors cannot reach a compiled kernel) the engines' own test files, run against the compat modules,
# cover the same paths (docs/integrations.md: the peer-test run).
pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="CPU replays under the interpreter")


def fla_inputs(T, dtype=torch.float16, qk_dtype=None, B=1):
    q = torch.randn(B, T, H, K, dtype=qk_dtype or dtype)
    k = torch.randn(B, T, H, K, dtype=qk_dtype or dtype)
    v = torch.randn(B, T, HV, V, dtype=dtype)
    return q, k, v


def decay_reference(g_raw, params):
    """FLA's in-kernel gate, −exp(A_log)·softplus(g + dt_bias), in float64 (b unused)."""
    return gating_reference({**params, "a": g_raw, "b": g_raw})["g"]


@pytest.mark.parametrize(
    ("state_v_first", "dtype", "state_dtype"),
    [(False, torch.float16, torch.float32), (True, torch.bfloat16, torch.bfloat16)],
    ids=["kv-fp16", "state_v_first-bf16"],
)
def test_chunk_both_layouts(state_v_first, dtype, state_dtype):
    T = 20
    q, k, v = fla_inputs(T, dtype)
    q, k = F.normalize(q.float(), dim=-1).to(dtype), F.normalize(k.float(), dim=-1).to(dtype)
    g = F.logsigmoid(torch.rand(1, T, HV))
    beta = torch.rand(1, T, HV).sigmoid()
    layout = "vk" if state_v_first else "kv"
    h0 = as_layout(0.1 * torch.randn(1, HV, K, V), layout).to(state_dtype)
    o, ht = fla.chunk_gated_delta_rule(
        q=q, k=k, v=v, g=g, beta=beta, scale=0.3, initial_state=h0, output_final_state=True,
        state_v_first=state_v_first,
    )  # fmt: skip
    o_ref, states = by_token(q, k, v, g, beta, [as_kv(h0[0], layout)], [(0, T)], scale=0.3)
    assert o.dtype == dtype and ht.dtype == torch.float32 and ht.shape == h0.shape
    assert_close(o, o_ref, "o")
    assert_close(as_kv(ht[0], layout), states[0][-1], "ht")


def test_chunk_float32_inputs_gate_and_beta_sigmoid_in_kernel_varlen():
    """float32 q, k, v (cast to bfloat16), use_gate_in_kernel with A_log and dt_bias, raw beta logits with
    allow_neg_eigval (β = 2·sigmoid), chunk_size=32, two packed sequences."""
    lengths = (9, 12)
    T = sum(lengths)
    q, k, v = fla_inputs(T, torch.float32)
    g_raw = torch.randn(1, T, HV)
    beta_raw = torch.randn(1, T, HV)
    params = gate_parameters()
    o, ht = fla.chunk_gated_delta_rule(
        q, k, v, g_raw, beta_raw, output_final_state=True, use_qk_l2norm_in_kernel=True,
        use_beta_sigmoid_in_kernel=True, allow_neg_eigval=True, cu_seqlens=cu_seqlens_of(lengths).long(),
        chunk_size=32, use_gate_in_kernel=True, **params,
    )  # fmt: skip
    g = decay_reference(g_raw, params)
    beta = 2 * torch.sigmoid(beta_raw.double())
    bf16 = [x.bfloat16() for x in (q, k, v)]
    o_ref, states = by_token(*bf16, g, beta, [None, None], [(0, 9), (9, T)], use_qk_l2norm=True)
    assert o.dtype == torch.float32 and ht.shape == (2, HV, K, V)
    assert_close(o, o_ref, "o")
    assert_close(ht, torch.stack([s[-1] for s in states]), "ht")


def test_fused_recurrent_mixed_dtypes_as_fla_tests_call_it():
    """tests/ops/test_gdn.py: float32 q, k with float16 v and beta, beta by keyword (7th positional)."""
    B, T = 2, 5
    q, k, v = fla_inputs(T, torch.float16, qk_dtype=torch.float32, B=B)
    beta = torch.rand(B, T, HV, dtype=torch.float16).sigmoid()
    g = F.logsigmoid(torch.rand(B, T, HV))
    h0 = 0.1 * torch.randn(B, HV, K, V)
    o, ht = fla.fused_recurrent_gated_delta_rule(
        q=q, k=k, v=v, beta=beta, g=g, scale=0.5, initial_state=h0, use_qk_l2norm_in_kernel=True,
        output_final_state=True,
    )  # fmt: skip
    assert o.dtype == torch.float16 and ht.dtype == torch.float32 and ht.shape == (B, HV, K, V)
    for b in range(B):
        row = slice(b, b + 1)
        o_ref, states = by_token(
            q[row].half(), k[row].half(), v[row], g[row], beta[row], [h0[b]], [(0, T)], True, scale=0.5
        )
        assert_close(o[row], o_ref, f"o of sequence {b}")
        assert_close(ht[b], states[0][-1], f"ht of sequence {b}")


def test_fused_recurrent_gate_in_kernel_state_v_first_varlen():
    lengths = (3, 2)
    q, k, v = fla_inputs(5, torch.bfloat16)
    g_raw = torch.randn(1, 5, HV)
    beta_raw = torch.randn(1, 5, HV)
    A_log = gate_parameters()["A_log"]
    h0 = 0.1 * torch.randn(2, HV, V, K)
    o, ht = fla.fused_recurrent_gated_delta_rule(
        q, k, v, g_raw, beta=beta_raw, initial_state=h0, output_final_state=True, use_gate_in_kernel=True,
        A_log=A_log, dt_bias=None, use_beta_sigmoid_in_kernel=True, state_v_first=True,
        cu_seqlens=cu_seqlens_of(lengths).long(),
    )  # fmt: skip
    g = decay_reference(g_raw, {"A_log": A_log, "dt_bias": torch.zeros(HV)})
    starts = [as_kv(h0[n], "vk") for n in range(2)]
    o_ref, states = by_token(q, k, v, g, torch.sigmoid(beta_raw.double()), starts, [(0, 3), (3, 5)])
    assert o.dtype == torch.bfloat16 and ht.shape == (2, HV, V, K)
    assert_close(o, o_ref, "o")
    assert_close(as_kv(ht, "vk"), torch.stack([s[-1] for s in states]), "ht")


def test_no_decay_and_unit_beta_by_default():
    q, k, v = fla_inputs(3, torch.float32)
    o, ht = fla.fused_recurrent_gated_delta_rule(q, k, v, output_final_state=True)
    o_ref, states = by_token(q, k, v, torch.zeros(1, 3, HV), torch.ones(1, 3, HV), [None], [(0, 3)])
    assert_close(o, o_ref, "o", 1e-4)
    assert_close(ht[0], states[0][-1], "ht", 1e-4)


def test_backward_raises_not_implemented():
    q, k, v = (x.requires_grad_() for x in fla_inputs(3, torch.float32))
    o, _ = fla.fused_recurrent_gated_delta_rule(q, k, v, g=torch.zeros(1, 3, HV), beta=torch.ones(1, 3, HV))
    assert o.requires_grad
    with pytest.raises(NotImplementedError, match="backward"):
        o.sum().backward()
    x = torch.randn(4, K, requires_grad=True)
    with pytest.raises(NotImplementedError, match="backward"):
        fla.l2_norm(x).sum().backward()


def test_l2norm_and_fused_gdn_gate():
    x = torch.randn(2, 3, H, K).bfloat16()
    y = fla.l2norm(x, output_dtype=torch.float32)
    assert fla.l2_norm is fla.l2norm and y.dtype == torch.float32
    assert_close(y, l2norm_reference(x), "l2norm", 1e-2)
    g_raw = torch.randn(2, 3, HV)
    params = gate_parameters()
    assert_close(fla.fused_gdn_gate(g_raw, **params), decay_reference(g_raw, params), "gate", 1e-5)
    no_bias = fla.fused_gdn_gate(g_raw, params["A_log"], output_dtype=torch.bfloat16)
    assert no_bias.dtype == torch.bfloat16
    assert_close(no_bias, decay_reference(g_raw, {**params, "dt_bias": torch.zeros(HV)}), "gate", 1e-2)


def test_unsupported_and_bad_arguments_raise():
    q, k, v = fla_inputs(2)
    g, beta = torch.zeros(1, 2, HV), torch.ones(1, 2, HV)
    with pytest.raises(NotImplementedError, match="gk"):
        fla.fused_recurrent_gated_delta_rule(q, k, v, g, torch.zeros(1, 2, HV, K), beta=beta)
    with pytest.raises(NotImplementedError, match="head_first"):
        fla.chunk_gated_delta_rule(q, k, v, g, beta, head_first=False)
    with pytest.raises(NotImplementedError, match="cp_context"):
        fla.chunk_gated_delta_rule(q, k, v, g, beta, cp_context=object())
    with pytest.raises(ValueError, match="chunk_size"):
        fla.chunk_gated_delta_rule(q, k, v, g, beta, chunk_size=128)
    with pytest.raises(TypeError, match="unexpected keyword"):
        fla.chunk_gated_delta_rule(q, k, v, g, beta, chunk_sizes=64)
    kv_state = torch.zeros(1, HV, K, V)  # K ≠ V: a [.., K, V] state where state_v_first declares [.., V, K]
    with pytest.raises(ValueError, match=r"initial_state must be \[.., HV, V, K\]"):
        fla.fused_recurrent_gated_delta_rule(
            q, k, v, g, beta=beta, initial_state=kv_state, state_v_first=True
        )
    with pytest.warns(DeprecationWarning, match="transpose_state_layout"):
        fla.fused_recurrent_gated_delta_rule(q, k, v, g, beta=beta, transpose_state_layout=False)
    with pytest.raises(ValueError, match="not both"):
        fla.fused_recurrent_gated_delta_rule(
            q, k, v, g, beta=beta, state_v_first=True, transpose_state_layout=True
        )
    with pytest.raises(ValueError, match="allow_neg_eigval"):
        fla.fused_recurrent_gated_delta_rule(q, k, v, g, beta=beta, allow_neg_eigval=True)
