"""Plain-PyTorch references of the gated delta rule, in float64. Tests and the tuner compare against these.

The recurrence, per sequence and value head (S is K×V, q/k rows of length K, v rows of length V):

    S_t = exp(g_t) · S_{t-1}
    S_t = S_t + k_t ⊗ β_t (v_t − S_tᵀ k_t)
    o_t = S_tᵀ (scale · q_t)

Query/key head h serves value heads h·G .. h·G+G−1, G = HV / H (grouped value heads).
"""

from __future__ import annotations

import itertools

import torch


def l2norm_reference(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """x / sqrt(sum(x²) + eps) over the last dimension, in float64."""
    x = x.to(torch.float64)
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + eps)


def sequence_bounds(T: int, cu_seqlens: torch.Tensor | None) -> list[tuple[int, int]]:
    if cu_seqlens is None:
        return [(0, T)]
    cu = cu_seqlens.tolist()
    return list(itertools.pairwise(cu))


def gated_delta_rule_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    use_qk_l2norm: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-by-token recurrence in float64 → (o [B,T,HV,V], final_state [N,HV,K,V]).

    Shapes as the public API: q, k [B,T,H,K]; v [B,T,HV,V]; g, beta [B,T,HV]; initial_state
    [N,HV,K,V]; with cu_seqlens, B == 1 and N = len(cu_seqlens) − 1, else N = B.
    """
    B, T, H, K = q.shape
    HV, V = v.shape[2], v.shape[3]
    G = HV // H
    scale = K**-0.5 if scale is None else scale
    f64 = torch.float64
    q, k, v, g, beta = (x.to(f64) for x in (q, k, v, g, beta))
    if use_qk_l2norm:
        q, k = l2norm_reference(q), l2norm_reference(k)
    q = q.repeat_interleave(G, dim=2) * scale
    k = k.repeat_interleave(G, dim=2)
    o = torch.zeros(B, T, HV, V, dtype=f64, device=v.device)
    bounds = [(b, s, e) for b in range(B) for s, e in sequence_bounds(T, cu_seqlens)]
    states = []
    for n, (b, start, end) in enumerate(bounds):
        S = torch.zeros(HV, K, V, dtype=f64, device=v.device)
        if initial_state is not None:
            S = initial_state[n].to(f64).clone()
        for t in range(start, end):
            S = S * torch.exp(g[b, t])[:, None, None]
            v_new = beta[b, t][:, None] * (v[b, t] - torch.einsum("hk,hkv->hv", k[b, t], S))
            S = S + k[b, t][:, :, None] * v_new[:, None, :]
            o[b, t] = torch.einsum("hk,hkv->hv", q[b, t], S)
        states.append(S)
    return o, torch.stack(states)
