"""flash-linear-attention's GDN entry points (`fla.ops.gated_delta_rule`, `fla.modules.l2norm`,
`fla.ops.gated_delta_rule.gate.fused_gdn_gate`), forward only, with FLA's newest signatures.

States: FLA's own flag `state_v_first=False` keeps [N, HV, K, V]; True takes and returns [N, HV, V, K].
Final states are float32. Mixed input dtypes FLA accepts are cast: the chunked path runs 16-bit q, k, v
(float32 inputs are cast to bfloat16), the recurrent path casts q, k to v's dtype. Outputs requiring
grad get a backward that raises NotImplementedError (no backward kernels here).
"""

from __future__ import annotations

import torch

from .. import chunk as _chunk
from .. import fused_recurrent as _recurrent
from .. import gating as _gating
from ..l2norm import l2norm as _l2norm
from ._common import check_state, forward_only, unsupported

__all__ = [
    "chunk_gated_delta_rule",
    "chunk_gdn",
    "fused_gdn_gate",
    "fused_recurrent_gated_delta_rule",
    "fused_recurrent_gdn",
    "l2_norm",
    "l2norm",
]

# FLA's accepted chunk sizes; the kernels here always run chunks of 64 (same result up to rounding).
CHUNK_SIZES = (16, 32, 64)
_CHUNK_KWARGS = frozenset({"chunk_size", "use_gate_in_kernel", "A_log", "dt_bias", "transpose_state_layout"})


def _state_v_first(name: str, state_v_first: bool, kwargs: dict) -> bool:
    """FLA's deprecated alias `transpose_state_layout` for state_v_first."""
    if "transpose_state_layout" in kwargs:
        if state_v_first:
            raise ValueError(f"{name}: pass state_v_first or transpose_state_layout, not both")
        return bool(kwargs.pop("transpose_state_layout"))
    return state_v_first


def _raw_beta(
    beta: torch.Tensor, use_beta_sigmoid_in_kernel: bool, allow_neg_eigval: bool, name: str
) -> torch.Tensor:
    if allow_neg_eigval and not use_beta_sigmoid_in_kernel:
        raise ValueError(f"{name}: allow_neg_eigval=True requires use_beta_sigmoid_in_kernel=True")
    if not use_beta_sigmoid_in_kernel:
        return beta
    # β in [0, 2) with allow_neg_eigval (FLA's negative eigenvalues): one elementwise pass over [B,T,HV].
    return torch.sigmoid(beta.float()) * (2.0 if allow_neg_eigval else 1.0)


def _log_decay(
    g: torch.Tensor, A_log: torch.Tensor | None, dt_bias: torch.Tensor | None, name: str
) -> torch.Tensor:
    """FLA's in-kernel gate, −exp(A_log)·softplus(g + dt_bias), through the gating kernel."""
    if A_log is None:
        raise ValueError(f"{name}: use_gate_in_kernel=True needs A_log")
    return fused_gdn_gate(g, A_log, dt_bias)


def chunk_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    use_qk_l2norm_in_kernel: bool = False,
    use_beta_sigmoid_in_kernel: bool = False,
    allow_neg_eigval: bool = False,
    state_v_first: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    cu_seqlens_cpu: torch.Tensor | None = None,
    chunk_indices: torch.Tensor | None = None,
    cp_context: object | None = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """FLA's chunked gated delta rule → (o [B,T,HV,V] in q's dtype, final_state float32 or None).

    kwargs as FLA: chunk_size (16, 32 or 64), use_gate_in_kernel with A_log and optional dt_bias (g is
    then the raw gate input), transpose_state_layout (old name of state_v_first). cu_seqlens_cpu and
    chunk_indices are accepted and not needed. cp_context and head_first are not supported.
    """
    name = "fla.chunk_gated_delta_rule"
    if "head_first" in kwargs:
        raise unsupported(name, "head_first", " (FLA removed it too); pass [B, T, H, ...] tensors")
    if cp_context is not None:
        raise unsupported(name, "cp_context", " (context parallelism)")
    unknown = set(kwargs) - _CHUNK_KWARGS
    if unknown:
        raise TypeError(f"{name}: unexpected keyword arguments {sorted(unknown)}")
    state_v_first = _state_v_first(name, state_v_first, kwargs)
    chunk_size = kwargs.get("chunk_size", 64)
    if chunk_size not in CHUNK_SIZES:
        raise ValueError(f"{name}: chunk_size must be 16, 32 or 64, got {chunk_size}")
    if q.shape[2] != k.shape[2]:
        raise ValueError(
            f"{name}: q and k must have the same number of heads, got {q.shape[2]} and {k.shape[2]}"
        )
    layout = "vk" if state_v_first else "kv"
    check_state(name, "initial_state", initial_state, v.shape[2], q.shape[3], v.shape[3], layout)
    inputs = (q, k, v, g, beta, initial_state)
    if kwargs.get("use_gate_in_kernel", False):
        g = _log_decay(g, kwargs.get("A_log"), kwargs.get("dt_bias"), name)
    beta = _raw_beta(beta, use_beta_sigmoid_in_kernel, allow_neg_eigval, name)
    # The chunk kernels take 16-bit q, k, v of one dtype: v's if 16-bit, else bfloat16.
    dtype = v.dtype if v.dtype in _chunk.SUPPORTED_DTYPES else torch.bfloat16
    if beta.dtype not in (torch.float32, dtype):
        beta = beta.float()
    o, final_state = _chunk.chunk_gated_delta_rule(
        q.to(dtype),
        k.to(dtype),
        v.to(dtype),
        g,
        beta,
        scale=scale,
        initial_state=initial_state,
        output_final_state=output_final_state,
        cu_seqlens=cu_seqlens,
        use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel,
        state_layout=layout,
    )
    if final_state is not None:
        final_state = final_state.float()
    return forward_only(name, inputs, o.to(q.dtype), final_state)


def fused_recurrent_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor | None = None,
    gk: torch.Tensor | None = None,
    gv: torch.Tensor | None = None,
    beta: torch.Tensor | None = None,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    use_qk_l2norm_in_kernel: bool = False,
    use_gate_in_kernel: bool = False,
    A_log: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    use_beta_sigmoid_in_kernel: bool = False,
    allow_neg_eigval: bool = False,
    state_v_first: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """FLA's recurrent gated delta rule → (o [B,T,HV,V] in v's dtype, final_state float32 or None).

    Note FLA's order: beta is the 7th positional argument (after gk, gv). g None means no decay, beta
    None means ones; with use_gate_in_kernel g is the raw gate input. gk, gv (per-channel decays) are
    not supported.
    """
    name = "fla.fused_recurrent_gated_delta_rule"
    for argument, value in (("gk", gk), ("gv", gv)):
        if value is not None:
            raise unsupported(name, argument, " (per-channel decays)")
    state_v_first = _state_v_first(name, state_v_first, kwargs)
    if kwargs:
        raise TypeError(f"{name}: unexpected keyword arguments {sorted(kwargs)}")
    layout = "vk" if state_v_first else "kv"
    check_state(name, "initial_state", initial_state, v.shape[2], q.shape[3], v.shape[3], layout)
    inputs = (q, k, v, g, beta, initial_state)
    B, T, HV = v.shape[0], v.shape[1], v.shape[2]
    if g is None:
        if use_gate_in_kernel:
            raise ValueError(f"{name}: use_gate_in_kernel=True needs g (the raw gate input)")
        g = torch.zeros(B, T, HV, dtype=torch.float32, device=v.device)
    if beta is None:
        beta = torch.ones(B, T, HV, dtype=torch.float32, device=v.device)
    if use_gate_in_kernel:
        if A_log is None:
            raise ValueError(f"{name}: use_gate_in_kernel=True needs A_log")
        if dt_bias is None:
            dt_bias = torch.zeros_like(A_log, dtype=torch.float32)
    if allow_neg_eigval:  # 2·sigmoid(beta) here; the kernels' in-kernel sigmoid has no factor 2
        beta = _raw_beta(beta, use_beta_sigmoid_in_kernel, allow_neg_eigval, name)
        use_beta_sigmoid_in_kernel = False
    o, final_state = _recurrent.fused_recurrent_gated_delta_rule(
        q.to(v.dtype),
        k.to(v.dtype),
        v,
        g,
        beta,
        scale=scale,
        initial_state=initial_state,
        output_final_state=output_final_state,
        cu_seqlens=cu_seqlens,
        use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel,
        state_layout=layout,
        use_gate_in_kernel=use_gate_in_kernel,
        A_log=A_log if use_gate_in_kernel else None,
        dt_bias=dt_bias if use_gate_in_kernel else None,
        use_beta_sigmoid_in_kernel=use_beta_sigmoid_in_kernel,
    )
    if final_state is not None:
        final_state = final_state.float()
    return forward_only(name, inputs, o, final_state)


def fused_gdn_gate(
    g: torch.Tensor,
    A_log: torch.Tensor,
    dt_bias: torch.Tensor | None = None,
    output_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """FLA's gate: −exp(A_log)·softplus(g + dt_bias) for g [..., HV] (softplus threshold 20)."""
    HV = g.shape[-1]
    if dt_bias is None:
        dt_bias = torch.zeros(HV, dtype=torch.float32, device=g.device)
    # The gating kernel also computes sigmoid(b); b = g costs one extra read of g and is discarded.
    decay, _ = _gating.fused_gdn_gating(A_log.reshape(HV), g, g, dt_bias.reshape(HV))
    (decay,) = forward_only("fla.fused_gdn_gate", (g, A_log, dt_bias), decay.to(output_dtype))
    return decay


def l2norm(x: torch.Tensor, eps: float = 1e-6, output_dtype: torch.dtype | None = None) -> torch.Tensor:
    """FLA's l2norm: x / sqrt(Σx² + eps) over the last dim, in x's dtype or output_dtype."""
    y = _l2norm(x, eps)
    if output_dtype is not None:
        y = y.to(output_dtype)
    (y,) = forward_only("fla.l2norm", (x,), y)
    return y


l2_norm = l2norm
chunk_gdn = chunk_gated_delta_rule
fused_recurrent_gdn = fused_recurrent_gated_delta_rule
