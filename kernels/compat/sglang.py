"""SGLang's GDN kernels (`sglang.srt.layers.attention.fla`: chunk, fused_sigmoid_gating_recurrent,
fused_gdn_gating) with SGLang's signatures and semantics.

States: SGLang's pool is [slots, HV, V, K] (K innermost), hence `state_layout="vk"`; versions with a
[.., K, V] pool pass state_layout="kv". A negative entry of initial_state_indices marks a padded
sequence: nothing in the pool is read or written for it (its outputs are zeros; SGLang's own decode
kernel computes them from a zero state, values its callers discard).
"""

from __future__ import annotations

import torch

from .. import chunk as _chunk
from .. import fused_recurrent as _recurrent
from .. import gating as _gating
from ._common import (
    check_layout,
    check_state,
    fused_gates,
    gate_rows,
    one_token_cu_seqlens,
    replay_draft_tree,
    unsupported,
)

__all__ = ["chunk_gated_delta_rule", "fused_gdn_gating", "fused_sigmoid_gating_delta_rule_update"]


def chunk_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    initial_state_indices: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    head_first: bool = False,
    use_qk_l2norm_in_kernel: bool = False,
    *,
    state_layout: str = "vk",
) -> tuple[torch.Tensor, None, None]:
    """SGLang's extend (prefill) on the state pool → (o [B,T,HV,V], None, None).

    initial_state: the pool [slots,HV,V,K]; sequence n starts from slot initial_state_indices[n] and its
    final state is written back there (without indices, initial_state is [N,HV,V,K] and row n is
    updated). SGLang's third value, the per-chunk states h for prefix-cache tracking, is not produced:
    None, so SGLang skips the tracking (docs/integrations.md).
    """
    name = "sglang.chunk_gated_delta_rule"
    if head_first:
        raise unsupported(name, "head_first=True", "; pass [B, T, H, ...] tensors")
    check_layout(name, state_layout)
    check_state(name, "initial_state", initial_state, v.shape[2], q.shape[3], v.shape[3], state_layout)
    if initial_state is not None and initial_state_indices is None:
        N = q.shape[0] if cu_seqlens is None else cu_seqlens.shape[0] - 1
        initial_state_indices = torch.arange(N, dtype=torch.int32, device=q.device)
    o, _ = _chunk.chunk_gated_delta_rule(
        q,
        k,
        v,
        g,
        beta,
        scale=scale,
        initial_state=initial_state,
        output_final_state=initial_state is not None,
        cu_seqlens=cu_seqlens,
        use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel,
        state_layout=state_layout,
        state_indices=initial_state_indices,
        inplace_final_state=initial_state is not None,
    )
    return o, None, None


def fused_sigmoid_gating_delta_rule_update(
    A_log: torch.Tensor,
    a: torch.Tensor,
    dt_bias: torch.Tensor,
    softplus_beta: float,
    softplus_threshold: float,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    b: torch.Tensor,
    initial_state_source: torch.Tensor | None,
    initial_state_indices: torch.Tensor | None,
    scale: float | None = None,
    use_qk_l2norm_in_kernel: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    is_kda: bool = False,
    disable_state_update: bool = False,
    intermediate_states_buffer: torch.Tensor | None = None,
    intermediate_state_indices: torch.Tensor | None = None,
    cache_steps: int | None = None,
    retrieve_parent_token: torch.Tensor | None = None,
    *,
    state_layout: str = "vk",
) -> torch.Tensor:
    """SGLang's decode and target-verify step, gating fused → o [B,T,HV,V] in q's dtype.

    g = −exp(A_log)·softplus(a + dt_bias) (softplus_beta, softplus_threshold), β = sigmoid(b); a, b are
    [B,T,HV] or SGLang's 2-D [≥ B·T, HV]. The pool initial_state_source [slots,HV,V,K] is read at
    initial_state_indices[n] and, unless disable_state_update, written back there.
    Target verify: intermediate_states_buffer [M, cache_steps, HV, V, K] receives the state after token t
    of sequence n at [intermediate_state_indices[n], t] (skipped for a negative index).
    retrieve_parent_token [N, steps] (EAGLE trees): token t > 0 starts from the buffered state of its
    parent token, one launch per tree level; it needs the buffer and disable_state_update=True.
    """
    name = "sglang.fused_sigmoid_gating_delta_rule_update"
    if is_kda:
        raise unsupported(name, "is_kda=True", " (KDA's per-channel gates)")
    check_layout(name, state_layout)
    B, T, HV, K, V = v.shape[0], v.shape[1], v.shape[2], q.shape[3], v.shape[3]
    check_state(name, "initial_state_source", initial_state_source, HV, K, V, state_layout)
    buffer = intermediate_states_buffer
    if buffer is not None:
        if intermediate_state_indices is None:
            raise ValueError(f"{name}: intermediate_states_buffer needs intermediate_state_indices")
        if buffer.dim() != 5 or (cache_steps is not None and buffer.shape[1] != cache_steps):
            raise ValueError(
                f"{name}: intermediate_states_buffer must be [M, cache_steps={cache_steps}, HV, .., ..], "
                f"got {tuple(buffer.shape)}"
            )
        check_state(name, "intermediate_states_buffer[:, t]", buffer[:, 0], HV, K, V, state_layout)
    indices = initial_state_indices if initial_state_source is not None else None
    gates = fused_gates(A_log, dt_bias, softplus_beta, softplus_threshold)
    a = gate_rows(name, "a", a, B, T, HV)
    b = gate_rows(name, "b", b, B, T, HV)
    if retrieve_parent_token is not None:
        return _tree_verify(
            name,
            q,
            k,
            v,
            a,
            b,
            scale,
            initial_state_source,
            indices,
            cu_seqlens,
            use_qk_l2norm_in_kernel,
            disable_state_update,
            buffer,
            intermediate_state_indices,
            retrieve_parent_token,
            state_layout,
            gates,
        )
    inplace = initial_state_source is not None and not disable_state_update
    o, _ = _recurrent.fused_recurrent_gated_delta_rule(
        q,
        k,
        v,
        a,
        b,
        scale=scale,
        initial_state=initial_state_source,
        output_final_state=inplace,
        cu_seqlens=cu_seqlens,
        use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel,
        ssm_state_indices=indices,
        inplace_final_state=inplace,
        state_layout=state_layout,
        intermediate_states=buffer,
        intermediate_state_indices=intermediate_state_indices if buffer is not None else None,
        **gates,
    )
    return o


def _tree_verify(
    name: str,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    scale: float | None,
    pool: torch.Tensor | None,
    pool_indices: torch.Tensor | None,
    cu_seqlens: torch.Tensor | None,
    use_qk_l2norm_in_kernel: bool,
    disable_state_update: bool,
    buffer: torch.Tensor | None,
    buffer_indices: torch.Tensor | None,
    parents: torch.Tensor,
    state_layout: str,
    gates: dict,
) -> torch.Tensor:
    """Target verify over draft trees, one tree level per launch. Level 0 reads the pool and writes
    buffer[idx, 0]; level t > 0 reads buffer[idx, parent[n, t]] and writes buffer[idx, t], through the
    buffer seen as [M·S, ...] slots and a two-column index (write, read) read after num_accepted = 2."""
    if buffer is None or not disable_state_update or cu_seqlens is None:
        raise unsupported(
            name,
            "retrieve_parent_token",
            " without intermediate_states_buffer, cu_seqlens and disable_state_update=True",
        )
    N, S = cu_seqlens.shape[0] - 1, buffer.shape[1]
    if parents.dim() != 2 or parents.shape[0] != N:
        raise ValueError(f"{name}: retrieve_parent_token must be [N={N}, steps], got {tuple(parents.shape)}")
    steps = min(S, parents.shape[1])
    flat = buffer.flatten(0, 1)
    base = buffer_indices.long() * S
    # A sequence with no pool state or no buffer row has nothing to continue from at later levels.
    padded = buffer_indices.long() < 0
    if pool_indices is not None:
        padded |= pool_indices.long() < 0
    cu_one = one_token_cu_seqlens(N, q.device)
    two = torch.full((N,), 2, dtype=torch.int32, device=q.device)
    common = {
        "scale": scale,
        "cu_seqlens": cu_one,
        "use_qk_l2norm_in_kernel": use_qk_l2norm_in_kernel,
        "state_layout": state_layout,
        **gates,
    }

    def run_step(t: int, valid: torch.Tensor, picked: dict[str, torch.Tensor]) -> torch.Tensor:
        tensors = (picked["q"], picked["k"], picked["v"], picked["a"], picked["b"])
        if t == 0:
            o_t, _ = _recurrent.fused_recurrent_gated_delta_rule(
                *tensors,
                initial_state=pool,
                ssm_state_indices=None if pool_indices is None else torch.where(valid, pool_indices, -1),
                intermediate_states=buffer,
                intermediate_state_indices=torch.where(valid, buffer_indices, -1),
                **common,
            )
            return o_t
        rows = torch.stack([base + t, base + parents[:, t].long()], dim=1)
        rows = torch.where((valid & ~padded)[:, None], rows, -1)
        o_t, _ = _recurrent.fused_recurrent_gated_delta_rule(
            *tensors,
            initial_state=flat,
            output_final_state=True,
            ssm_state_indices=rows,
            inplace_final_state=True,
            num_accepted_tokens=two,
            **common,
        )
        return o_t

    return replay_draft_tree(cu_seqlens, steps, {"q": q, "k": k, "v": v, "a": a, "b": b}, run_step)


def fused_gdn_gating(
    A_log: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    dt_bias: torch.Tensor,
    beta: float = 1.0,
    threshold: float = 20.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SGLang's gating → g float32 [1,T,HV], beta float32 [1,T,HV] rounded through b's dtype (as
    SGLang stores it), for a, b [T, HV]; `beta`, `threshold` are softplus's."""
    g, beta_out = _gating.fused_gdn_gating(
        A_log, a, b, dt_bias, softplus_beta=beta, softplus_threshold=threshold
    )
    if b.dtype != torch.float32:
        beta_out = beta_out.to(b.dtype).float()
    return g.unsqueeze(0), beta_out.unsqueeze(0)
