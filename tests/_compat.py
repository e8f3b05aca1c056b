"""What the compat tests share: small engine-like inputs, state pools in either layout, and the float64
reference run token by token (kernels/reference.py's recurrence, one token per call) so that the state
after every token is known, as speculative decoding and target verify need it."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from gdn_kernels._spec import relative_error
from gdn_kernels.gating import gating_reference
from gdn_kernels.reference import gated_delta_rule_reference

# K ≠ V everywhere: a state passed in the wrong layout then has the wrong shape, not just wrong values.
H, HV, K, V = 1, 2, 16, 32
TOLERANCE = 2e-2  # 16-bit inputs and, for 16-bit caches, 16-bit stored states
STATE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def cu_seqlens_of(lengths: Sequence[int]) -> torch.Tensor:
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)


def projections(T: int, dtype: torch.dtype = torch.bfloat16, B: int = 1) -> dict[str, torch.Tensor]:
    """q, k, v [B,T,..] as a model's convolution gives them (unit-norm q, k when l2norm is applied)."""
    return {
        "q": torch.randn(B, T, H, K).to(dtype),
        "k": torch.randn(B, T, H, K).to(dtype),
        "v": torch.randn(B, T, HV, V).to(dtype),
    }


def gate_parameters() -> dict[str, torch.Tensor]:
    return {"A_log": torch.log(torch.empty(HV).uniform_(1, 16)), "dt_bias": torch.randn(HV)}


def raw_gates(T: int, dtype: torch.dtype = torch.bfloat16) -> tuple[torch.Tensor, torch.Tensor]:
    """a, b as 2-D [T, HV] column slices of one [T, 2·HV] projection (strided rows, as engines pass)."""
    ba = torch.randn(T, 2 * HV).to(dtype)
    b, a = ba.chunk(2, dim=-1)
    return a, b


def gates_reference(
    params: dict, a: torch.Tensor, b: torch.Tensor, **softplus
) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 (g, beta) of raw gates a, b, shaped like a."""
    out = gating_reference({**params, "a": a, "b": b, **softplus})
    return out["g"], out["beta"]


def as_layout(states_kv: torch.Tensor, state_layout: str) -> torch.Tensor:
    """[.., K, V] states in `state_layout` (a copy for 'vk')."""
    return states_kv if state_layout == "kv" else states_kv.transpose(-1, -2).contiguous()


def as_kv(states: torch.Tensor, state_layout: str) -> torch.Tensor:
    return states if state_layout == "kv" else states.transpose(-1, -2)


def pool(slots: int, state_layout: str, dtype: torch.dtype) -> torch.Tensor:
    """A state pool [slots, HV, ., .] with entries of order 0.1, as a running decode has."""
    return as_layout(0.1 * torch.randn(slots, HV, K, V), state_layout).to(dtype)


def by_token(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    starts: Sequence[torch.Tensor | None],
    bounds: Sequence[tuple[int, int]],
    use_qk_l2norm: bool = False,
    scale: float | None = None,
) -> tuple[torch.Tensor, list[list[torch.Tensor]]]:
    """float64 o [1, T, HV, V] (zeros outside `bounds`) and the [HV, K, V] state after every token of
    each sequence n, which spans tokens bounds[n] of batch row 0 and starts from starts[n] (None: zeros)."""
    o = torch.zeros(1, q.shape[1], HV, V, dtype=torch.float64)
    states = []
    for (s, e), S in zip(bounds, starts, strict=True):
        S = torch.zeros(HV, K, V, dtype=torch.float64) if S is None else S.to(torch.float64)
        after = []
        for t in range(s, e):
            step = slice(t, t + 1)
            o_t, S = gated_delta_rule_reference(
                q[:, step], k[:, step], v[:, step], g[:, step], beta[:, step],
                scale=scale, initial_state=S[None], use_qk_l2norm=use_qk_l2norm,
            )  # fmt: skip
            S = S[0]
            o[0, t] = o_t[0, 0]
            after.append(S)
        states.append(after)
    return o, states


def assert_close(
    actual: torch.Tensor, expected: torch.Tensor, what: str, tolerance: float = TOLERANCE
) -> None:
    error = relative_error(actual, expected)
    assert error <= tolerance, f"{what}: relative error {error:.3g} > {tolerance}"


def assert_untouched(after: torch.Tensor, before: torch.Tensor, used: Sequence[int], what: str) -> None:
    """Every slot of a pool but `used` is bitwise unchanged."""
    others = [i for i in range(before.shape[0]) if i not in set(used)]
    assert torch.equal(after[others], before[others]), f"{what}: a slot no sequence names was written"
