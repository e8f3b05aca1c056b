"""vLLM's GDN ops (`vllm.third_party.flash_linear_attention.ops`, vLLM ≥ 0.28; earlier
`vllm.model_executor.layers.fla.ops`) and `fused_gdn_gating`, with vLLM's signatures and semantics.

States: vLLM keeps its SSM cache as [slots, HV, V, K] (K innermost), hence `state_layout="vk"` in every
signature; versions that kept [.., K, V] pass state_layout="kv". Cache slots: under a full CUDA graph
vLLM pads batches with slot NULL_BLOCK_ID = 0 (older versions −1): an index ≤ 0 marks a padded
sequence whose outputs are zeros and whose slots are neither read nor written, the kernels' semantics in
vLLM too (`state_idx <= 0`). Speculative decoding passes ssm_state_indices [N, S] with
num_accepted_tokens [N]: the state is read from slot [n, accepted − 1] and the state after token t is
written to slot [n, t].
"""

from __future__ import annotations

import torch

from .. import chunk as _chunk
from .. import fused_recurrent as _recurrent
from .. import gating as _gating
from .. import gdn_prep as _prep
from ..l2norm import l2norm as _l2norm
from ._common import (
    check_layout,
    check_state,
    fused_gates,
    gate_rows,
    one_token_cu_seqlens,
    replay_draft_tree,
    unsupported,
)

# vLLM's KV-cache block reserved for CUDA-graph padding; the kernels skip it like a negative index.
NULL_BLOCK_ID = 0

__all__ = [
    "NULL_BLOCK_ID",
    "chunk_gated_delta_rule",
    "fused_gdn_gating",
    "fused_post_conv_prep",
    "fused_recurrent_gated_delta_rule",
    "fused_recurrent_gated_delta_rule_packed_decode",
    "fused_sigmoid_gating_delta_rule_update",
    "l2norm_fwd",
]


def chunk_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    chunk_indices: torch.Tensor | None = None,
    chunk_offsets: torch.Tensor | None = None,
    use_qk_l2norm_in_kernel: bool = False,
    core_attn_out: torch.Tensor | None = None,
    *,
    state_layout: str = "vk",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """vLLM's prefill → (o [B,T,HV,V] in q's dtype, final_state float32 [N,HV,V,K] or None).

    initial_state [N,HV,V,K] in the cache's dtype (vLLM gathers `ssm_state[indices]` first).
    chunk_indices / chunk_offsets (vLLM's precomputed chunk bookkeeping) are accepted and not needed:
    the kernels derive the same on the device. core_attn_out: a buffer whose first B·T·HV·V elements
    receive o (o is returned as a view of it), as in vLLM.
    """
    name = "vllm.chunk_gated_delta_rule"
    check_layout(name, state_layout)
    check_state(name, "initial_state", initial_state, v.shape[2], q.shape[3], v.shape[3], state_layout)
    out = None
    if core_attn_out is not None:
        if (
            core_attn_out.dtype != q.dtype
            or not core_attn_out.is_contiguous()
            or core_attn_out.numel() < v.numel()
        ):
            raise ValueError(
                f"{name}: core_attn_out must be a contiguous {q.dtype} buffer of at least {v.numel()} "
                f"elements, got {core_attn_out.dtype} {tuple(core_attn_out.shape)}"
            )
        out = core_attn_out.view(-1)[: v.numel()].view(v.shape)
    o, final_state = _chunk.chunk_gated_delta_rule(
        q,
        k,
        v,
        g,
        beta,
        scale=scale,
        initial_state=initial_state,
        output_final_state=output_final_state,
        cu_seqlens=cu_seqlens,
        use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel,
        state_layout=state_layout,
        out=out,
    )
    # vLLM returns float32 final states whatever the cache dtype (its layer casts them back).
    return o, None if final_state is None else final_state.float()


def _recurrent_call(
    name: str,
    tokens: dict[str, torch.Tensor],
    initial_state: torch.Tensor | None,
    inplace_final_state: bool,
    ssm_state_indices: torch.Tensor | None,
    num_accepted_tokens: torch.Tensor | None,
    retrieve_parent_token: torch.Tensor | None,
    state_layout: str,
    o_dtype: torch.dtype | None = None,
    **core,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The decode recurrence with vLLM's return convention: in place → (o, cache); else (o, the state
    after every token [B·T, HV, ..]), as vLLM's kernels write it. tokens: q, k, v and the two gates
    (g, beta, or the raw a, b with the gating kwargs in `core`)."""
    check_layout(name, state_layout)
    q, v = tokens["q"], tokens["v"]
    check_state(name, "initial_state", initial_state, v.shape[2], q.shape[3], v.shape[3], state_layout)
    if num_accepted_tokens is not None and (ssm_state_indices is None or ssm_state_indices.dim() != 2):
        raise ValueError(
            f"{name}: num_accepted_tokens needs 2-D ssm_state_indices [N, S] (speculative decoding)"
        )
    if retrieve_parent_token is not None:
        return _tree_decode(
            name, tokens, initial_state, inplace_final_state, ssm_state_indices, num_accepted_tokens,
            retrieve_parent_token, state_layout=state_layout, **core,
        )  # fmt: skip
    if o_dtype is not None and o_dtype != q.dtype:
        core["out"] = torch.empty(*v.shape, dtype=o_dtype, device=v.device)
    o, final_state = _recurrent.fused_recurrent_gated_delta_rule(
        *tokens.values(),
        initial_state=initial_state,
        output_final_state=True,
        ssm_state_indices=ssm_state_indices,
        inplace_final_state=inplace_final_state,
        state_layout=state_layout,
        num_accepted_tokens=num_accepted_tokens,
        state_per_token=not inplace_final_state,
        **core,
    )
    return o, final_state


def _tree_decode(
    name: str,
    tokens: dict[str, torch.Tensor],
    initial_state: torch.Tensor | None,
    inplace_final_state: bool,
    ssm_state_indices: torch.Tensor | None,
    num_accepted_tokens: torch.Tensor | None,
    retrieve_parent_token: torch.Tensor,
    cu_seqlens: torch.Tensor | None = None,
    **core,
) -> tuple[torch.Tensor, torch.Tensor]:
    """EAGLE draft trees (vLLM versions with `retrieve_parent_token`): token t > 0 of sequence n starts
    from the state after its parent token p = retrieve_parent_token[n, t], which the cache holds in slot
    ssm_state_indices[n, p]. Run as one launch per tree level, each reading the index column [n, 1] and
    writing [n, 0] of a two-column index (read slot, after num_accepted = 2)."""
    if not inplace_final_state or initial_state is None or cu_seqlens is None:
        raise unsupported(
            name, "retrieve_parent_token", " without inplace_final_state=True, initial_state and cu_seqlens"
        )
    if ssm_state_indices is None or ssm_state_indices.dim() != 2:
        raise ValueError(f"{name}: retrieve_parent_token needs 2-D ssm_state_indices [N, S]")
    N, S = ssm_state_indices.shape
    if retrieve_parent_token.shape[0] != N or retrieve_parent_token.shape[1] < 1:
        raise ValueError(
            f"{name}: retrieve_parent_token must be [N={N}, steps], got {tuple(retrieve_parent_token.shape)}"
        )
    slots = ssm_state_indices.long()
    accepted = (
        torch.ones(N, dtype=torch.long, device=slots.device)
        if num_accepted_tokens is None
        else num_accepted_tokens
    )
    first = slots.gather(1, (accepted.long() - 1).clamp(0, S - 1)[:, None])[:, 0]
    parents = retrieve_parent_token.long().clamp(0, S - 1)
    device = tokens["q"].device
    two = torch.full((N,), 2, dtype=torch.int32, device=device)

    def run_step(t: int, valid: torch.Tensor, picked: dict[str, torch.Tensor]) -> torch.Tensor:
        read = first if t == 0 else slots.gather(1, parents[:, t : t + 1])[:, 0]
        rows = torch.where(valid[:, None], torch.stack([slots[:, t], read], dim=1), -1)
        o_t, _ = _recurrent.fused_recurrent_gated_delta_rule(
            *picked.values(),
            initial_state=initial_state,
            output_final_state=True,
            cu_seqlens=one_token_cu_seqlens(N, device),
            ssm_state_indices=rows,
            inplace_final_state=True,
            num_accepted_tokens=two,
            **core,
        )
        return o_t

    steps = min(S, retrieve_parent_token.shape[1])
    o = replay_draft_tree(cu_seqlens, steps, tokens, run_step)
    return o.to(tokens["q"].dtype), initial_state


def fused_recurrent_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor | None = None,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    inplace_final_state: bool = True,
    cu_seqlens: torch.Tensor | None = None,
    ssm_state_indices: torch.Tensor | None = None,
    num_accepted_tokens: torch.Tensor | None = None,
    use_qk_l2norm_in_kernel: bool = False,
    *,
    retrieve_parent_token: torch.Tensor | None = None,
    state_layout: str = "vk",
    null_slot: int | None = NULL_BLOCK_ID,
) -> tuple[torch.Tensor, torch.Tensor]:
    """vLLM's decode recurrence → (o [B,T,HV,V] in q's dtype, final_state).

    initial_state: the cache [slots,HV,V,K] with ssm_state_indices ([N] or [N,S]), else [N,HV,V,K].
    final_state: with inplace_final_state (vLLM's default) the cache itself, updated; else a new
    [B·T, HV, V, K] tensor in the cache's dtype holding the state after every token (zeros for padded
    sequences). beta None means ones. retrieve_parent_token [N, S] (EAGLE trees, in vLLM versions that
    had it) is run one tree level per launch; it needs inplace_final_state and cu_seqlens.
    """
    B, T, HV = v.shape[0], v.shape[1], v.shape[2]
    if beta is None:
        beta = torch.ones(B, T, HV, dtype=torch.float32, device=q.device)
    return _recurrent_call(
        "vllm.fused_recurrent_gated_delta_rule",
        {"q": q, "k": k, "v": v, "g": g, "beta": beta},
        initial_state,
        inplace_final_state,
        ssm_state_indices,
        num_accepted_tokens,
        retrieve_parent_token,
        state_layout,
        scale=scale,
        cu_seqlens=cu_seqlens,
        use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel,
        null_slot=null_slot,
    )


def fused_sigmoid_gating_delta_rule_update(
    A_log: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    dt_bias: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: float = 1.0,
    threshold: float = 20.0,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    inplace_final_state: bool = True,
    cu_seqlens: torch.Tensor | None = None,
    ssm_state_indices: torch.Tensor | None = None,
    num_accepted_tokens: torch.Tensor | None = None,
    use_qk_l2norm_in_kernel: bool = False,
    is_kda: bool = False,
    *,
    state_layout: str = "vk",
    null_slot: int | None = NULL_BLOCK_ID,
) -> tuple[torch.Tensor, torch.Tensor]:
    """vLLM's decode step with the gating fused: g = −exp(A_log)·softplus(a + dt_bias) (softplus with
    `beta`, `threshold`), β = sigmoid(b), then the recurrence of fused_recurrent_gated_delta_rule.

    a, b: [B,T,HV] or vLLM's 2-D [≥ B·T, HV] projections (their first B·T rows are read; row strides
    kept). o is float32 when the cache is float32 (vLLM keeps an fp32 readout from overflowing fp16),
    else in q's dtype.
    """
    name = "vllm.fused_sigmoid_gating_delta_rule_update"
    if is_kda:
        raise unsupported(name, "is_kda=True", " (KDA's per-channel gates)")
    B, T, HV = v.shape[0], v.shape[1], v.shape[2]
    o_dtype = torch.float32 if initial_state is not None and initial_state.dtype == torch.float32 else q.dtype
    tokens = {
        "q": q,
        "k": k,
        "v": v,
        "a": gate_rows(name, "a", a, B, T, HV),
        "b": gate_rows(name, "b", b, B, T, HV),
    }
    return _recurrent_call(
        name,
        tokens,
        initial_state,
        inplace_final_state,
        ssm_state_indices,
        num_accepted_tokens,
        None,
        state_layout,
        o_dtype=o_dtype,
        scale=scale,
        cu_seqlens=cu_seqlens,
        use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel,
        null_slot=null_slot,
        **fused_gates(A_log, dt_bias, beta, threshold),
    )


def fused_recurrent_gated_delta_rule_packed_decode(
    mixed_qkv: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    A_log: torch.Tensor,
    dt_bias: torch.Tensor,
    scale: float,
    initial_state: torch.Tensor,
    out: torch.Tensor,
    ssm_state_indices: torch.Tensor,
    use_qk_l2norm_in_kernel: bool = False,
    *,
    state_layout: str = "vk",
    null_slot: int | None = NULL_BLOCK_ID,
) -> tuple[torch.Tensor, torch.Tensor]:
    """vLLM's packed decode: one token for each of B sequences, read straight from the convolution output
    mixed_qkv [B, 2·H·K + HV·V] (q | k | v; any row stride), gating fused, cache updated in place.

    The head dims come from the cache [slots, HV, V, K] (state_layout), H from mixed_qkv's width.
    out [B, 1, HV, V] receives o (zeros for padded sequences). Returns (out, initial_state).
    """
    name = "vllm.fused_recurrent_gated_delta_rule_packed_decode"
    check_layout(name, state_layout)
    if mixed_qkv.dim() != 2 or mixed_qkv.stride(-1) != 1:
        raise ValueError(f"{name}: mixed_qkv must be 2-D [B, 2·H·K + HV·V] with a dense last dim")
    if initial_state.dim() != 4:
        raise ValueError(f"{name}: initial_state must be [slots, HV, V, K], got {tuple(initial_state.shape)}")
    if ssm_state_indices.dim() != 1:
        raise ValueError(f"{name}: ssm_state_indices must be 1-D [B] for packed decode")
    HV = initial_state.shape[1]
    K, V = (initial_state.shape[2], initial_state.shape[3])
    if state_layout == "vk":
        K, V = V, K
    B, width = mixed_qkv.shape
    qk = width - HV * V
    H = qk // (2 * K) if qk > 0 and qk % (2 * K) == 0 else 0
    if not H or tuple(out.shape) != (B, 1, HV, V):
        raise ValueError(
            f"{name}: mixed_qkv {tuple(mixed_qkv.shape)} and out {tuple(out.shape)} must be [B, 2·H·K + HV·V] "
            f"and [B, 1, HV, V] for the cache's HV={HV}, K={K}, V={V} (read with state_layout={state_layout!r}; "
            "a [.., K, V] cache passed as [.., V, K]?)"
        )
    row = mixed_qkv.stride(0)

    def heads(offset: int, count: int, dim: int) -> torch.Tensor:
        # [B, 1, heads, dim] view of the columns offset.. of every row: one token per sequence.
        return mixed_qkv[:, offset : offset + count * dim].as_strided((B, 1, count, dim), (row, row, dim, 1))

    _recurrent.fused_recurrent_gated_delta_rule(
        heads(0, H, K),
        heads(H * K, H, K),
        heads(2 * H * K, HV, V),
        gate_rows(name, "a", a, B, 1, HV),
        gate_rows(name, "b", b, B, 1, HV),
        scale=scale,
        initial_state=initial_state,
        output_final_state=True,
        use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel,
        ssm_state_indices=ssm_state_indices,
        inplace_final_state=True,
        state_layout=state_layout,
        null_slot=null_slot,
        out=out,
        **fused_gates(A_log, dt_bias),
    )
    return out, initial_state


def fused_post_conv_prep(
    conv_output: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    A_log: torch.Tensor,
    dt_bias: torch.Tensor,
    num_k_heads: int,
    head_k_dim: int,
    head_v_dim: int,
    apply_l2norm: bool = True,
    output_g_exp: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """vLLM's prefill prep → q, k [L,H,K] (L2-normalised with apply_l2norm), v [L,HV,V] in the
    convolution's dtype, g (exp(g) with output_g_exp, FlashInfer's decay) and beta float32 [L,HV].

    conv_output [L, 2·H·K + HV·V] (q | k | v); HV is A_log's length. One fused launch when
    apply_l2norm; without it, copies of the three splits and the gating kernel.
    """
    H, K, V, HV = num_k_heads, head_k_dim, head_v_dim, A_log.shape[0]
    if apply_l2norm:
        q, k, v, g, beta = (
            x.squeeze(0) for x in _prep.gdn_prefill_prep(conv_output, a, b, A_log, dt_bias, H, HV, K, V)
        )
    else:
        L = conv_output.shape[0]
        q, k, v = (
            x.reshape(L, heads, dim).contiguous()
            for x, heads, dim in zip(
                conv_output.split([H * K, H * K, HV * V], dim=-1), (H, H, HV), (K, K, V), strict=True
            )
        )
        g, beta = _gating.fused_gdn_gating(A_log, a, b, dt_bias)
    if output_g_exp:
        g = g.exp_()
    return q, k, v, g, beta


def fused_gdn_gating(
    A_log: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    dt_bias: torch.Tensor,
    beta: float = 1.0,
    threshold: float = 20.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """vLLM's gating (qwen_gdn_linear_attn.fused_gdn_gating) → g float32 [1,T,HV], beta [1,T,HV] in b's
    dtype, for a, b [T, HV]; `beta`, `threshold` are softplus's."""
    g, beta_out = _gating.fused_gdn_gating(
        A_log, a, b, dt_bias, softplus_beta=beta, softplus_threshold=threshold
    )
    return g.unsqueeze(0), beta_out.to(b.dtype).unsqueeze(0)


def l2norm_fwd(x: torch.Tensor, eps: float = 1e-6, output_dtype: torch.dtype | None = None) -> torch.Tensor:
    """vLLM's l2norm_fwd (x / sqrt(Σx² + eps) over the last dim)."""
    y = _l2norm(x, eps)
    return y if output_dtype is None else y.to(output_dtype)
