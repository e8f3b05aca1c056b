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
    token_states: list | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-by-token recurrence in float64 → (o [B,T,HV,V], final_state [N,HV,K,V]).

    Shapes as the public API: q, k [B,T,H,K]; v [B,T,HV,V]; g, beta [B,T,HV]; initial_state
    [N,HV,K,V]; with cu_seqlens, B == 1 and N = len(cu_seqlens) − 1, else N = B. `token_states`, a
    list, receives the state after every token ([HV,K,V] each, in token order).
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
            if token_states is not None:
                token_states.append(S)
        states.append(S)
    return o, torch.stack(states)


def chunk_stages_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    chunk_size: int = 64,
) -> dict[str, torch.Tensor]:
    """Every intermediate of the chunked algorithm in float64, so each stage kernel can be checked alone.

    Returns (layouts are what the stage kernels produce):
    - gc [B,T,HV]: chunk-local inclusive cumsum of g (restarting at each chunk and each sequence start);
    - Ai [B,T,HV,BT]: row t holds row (t − chunk start) of the chunk's (I + A)⁻¹, where
      A_ij = β_i (k_i·k_j) exp(gc_i − gc_j) for i > j; columns past the chunk's end are zero;
    - w [B,T,HV,K] = Ai (β·exp(gc)·k) and u [B,T,HV,V] = Ai (β·v), chunk by chunk;
    - h [B,NT,HV,K,V]: the state at the start of each chunk (NT chunks of all sequences, in order;
      with cu_seqlens, B == 1 and chunk c of sequence n is row chunk_offsets[n] + c);
    - v_new [B,T,HV,V] = u − w h (the delta-rule's corrected values);
    - o [B,T,HV,V] and final_state [N,HV,K,V], equal to gated_delta_rule_reference's.
    """
    B, T, H, K = q.shape
    HV, V = v.shape[2], v.shape[3]
    G = HV // H
    BT = chunk_size
    scale = K**-0.5 if scale is None else scale
    f64 = torch.float64
    q, k, v, g, beta = (x.to(f64) for x in (q, k, v, g, beta))
    q = q.repeat_interleave(G, dim=2)
    k = k.repeat_interleave(G, dim=2)
    dev = v.device
    out = {
        "gc": torch.zeros(B, T, HV, dtype=f64, device=dev),
        "Ai": torch.zeros(B, T, HV, BT, dtype=f64, device=dev),
        "w": torch.zeros(B, T, HV, K, dtype=f64, device=dev),
        "u": torch.zeros(B, T, HV, V, dtype=f64, device=dev),
        "v_new": torch.zeros(B, T, HV, V, dtype=f64, device=dev),
        "o": torch.zeros(B, T, HV, V, dtype=f64, device=dev),
    }
    states, finals = [], []
    bounds = [(b, s, e) for b in range(B) for s, e in sequence_bounds(T, cu_seqlens)]
    for n, (b, start, end) in enumerate(bounds):
        S = torch.zeros(HV, K, V, dtype=f64, device=dev)
        if initial_state is not None:
            S = initial_state[n].to(f64).clone()
        for s in range(start, end, BT):
            e = min(s + BT, end)
            L = e - s
            kc, qc = k[b, s:e].transpose(0, 1), q[b, s:e].transpose(0, 1)  # [HV, L, K]
            vc = v[b, s:e].transpose(0, 1)  # [HV, L, V]
            bc = beta[b, s:e].transpose(0, 1)  # [HV, L]
            gc = g[b, s:e].cumsum(0).transpose(0, 1)  # [HV, L]
            decay = torch.exp(gc[:, :, None] - gc[:, None, :])  # [HV, L, L], (i, j) → exp(gc_i − gc_j)
            lower = torch.ones(L, L, dtype=torch.bool, device=dev).tril(-1)
            A = (bc[:, :, None] * (kc @ kc.transpose(1, 2)) * decay).masked_fill(~lower, 0)
            eye = torch.eye(L, dtype=f64, device=dev).expand(HV, L, L)
            Ai = torch.linalg.solve_triangular(eye + A, eye, upper=False)
            w = Ai @ (bc[..., None] * torch.exp(gc)[..., None] * kc)
            u = Ai @ (bc[..., None] * vc)
            v_new = u - w @ S
            causal = (qc @ kc.transpose(1, 2) * decay).masked_fill(
                ~lower.logical_or(torch.eye(L, dtype=torch.bool, device=dev)), 0
            )
            o = scale * ((qc * torch.exp(gc)[..., None]) @ S + causal @ v_new)
            states.append((b, S))
            S = (
                torch.exp(gc[:, -1])[:, None, None] * S
                + (kc * torch.exp(gc[:, -1:] - gc)[..., None]).transpose(1, 2) @ v_new
            )
            out["gc"][b, s:e] = gc.transpose(0, 1)
            out["Ai"][b, s:e, :, :L] = Ai.transpose(0, 1)
            out["w"][b, s:e] = w.transpose(0, 1)
            out["u"][b, s:e] = u.transpose(0, 1)
            out["v_new"][b, s:e] = v_new.transpose(0, 1)
            out["o"][b, s:e] = o.transpose(0, 1)
        finals.append(S)
    per_batch = [[S for bb, S in states if bb == b] for b in range(B)]
    out["h"] = torch.stack([torch.stack(hs) for hs in per_batch])
    out["final_state"] = torch.stack(finals)
    return out
