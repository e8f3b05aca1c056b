"""What the engine adapters share: state-shape checks that name the engine's own argument, gate
projections reshaped to [B, T, HV], forward-only outputs, and the token-by-token replay of draft trees.

Nothing here reads a tensor's values on the host: adapters run inside CUDA-graph captures.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

LAYOUTS = ("kv", "vk")


def unsupported(name: str, argument: str, detail: str = "") -> NotImplementedError:
    """The error for a peer feature gdn_kernels does not implement; `raise unsupported(...)`."""
    return NotImplementedError(f"{name}: {argument} is not supported by gdn_kernels{detail}")


def check_layout(name: str, state_layout: str) -> None:
    if state_layout not in LAYOUTS:
        raise ValueError(
            f"{name}: state_layout must be 'kv' ([.., K, V]) or 'vk' ([.., V, K]), got {state_layout!r}"
        )


def state_shape(HV: int, K: int, V: int, state_layout: str) -> tuple[int, int, int]:
    """The trailing [HV, ., .] of one state in `state_layout`."""
    return (HV, K, V) if state_layout == "kv" else (HV, V, K)


def check_state(
    name: str, argument: str, state: torch.Tensor | None, HV: int, K: int, V: int, state_layout: str
) -> None:
    """A state (or pool of states) is 4-D with trailing dims [HV, K, V] ('kv') or [HV, V, K] ('vk').

    Checked here, under the engine's own argument name, before the core sees it: a K×V state passed
    where V×K is declared (K ≠ V) fails with a message that says which layout was expected.
    """
    if state is None:
        return
    want = state_shape(HV, K, V, state_layout)
    if state.dim() != 4 or tuple(state.shape[1:]) != want:
        letters = "[.., HV, K, V]" if state_layout == "kv" else "[.., HV, V, K]"
        raise ValueError(
            f"{name}: {argument} must be {letters} = [.., {', '.join(map(str, want))}] for "
            f"state_layout={state_layout!r}, got {tuple(state.shape)}"
        )


def gate_rows(name: str, argument: str, x: torch.Tensor, B: int, T: int, HV: int) -> torch.Tensor:
    """A gate projection as [B, T, HV]: 3-D as given, or 2-D [rows ≥ B·T, HV] (engines pass the whole
    projection and the kernels read its first B·T rows; row strides are kept, no copy)."""
    if x.dim() == 3 and tuple(x.shape) == (B, T, HV):
        return x
    if x.dim() == 2 and x.shape[1] == HV and x.shape[0] >= B * T:
        return x[: B * T].unflatten(0, (B, T))
    raise ValueError(
        f"{name}: {argument} must be [{B}, {T}, {HV}] or [≥ {B * T}, {HV}], got {tuple(x.shape)}"
    )


class _ForwardOnly(torch.autograd.Function):
    """Passes outputs through unchanged; their backward raises (the kernels have no backward)."""

    @staticmethod
    def forward(ctx, name: str, anchor: torch.Tensor, *outputs: torch.Tensor):
        ctx.name = name
        return tuple(o.view_as(o) for o in outputs)

    @staticmethod
    def backward(ctx, *grads):
        raise unsupported(ctx.name, "backward", " (forward-only kernels)")


def forward_only(name: str, inputs: tuple, *outputs: torch.Tensor | None) -> tuple:
    """`outputs` as given, or, when autograd records and an input requires grad, tied to a backward that
    raises NotImplementedError: calling .backward() then fails clearly instead of silently."""
    anchor = next((t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad), None)
    if anchor is None or not torch.is_grad_enabled():
        return outputs
    present = [o for o in outputs if o is not None]
    tied = iter(_ForwardOnly.apply(name, anchor, *present))
    return tuple(None if o is None else next(tied) for o in outputs)


def replay_draft_tree(
    cu_seqlens: torch.Tensor,
    steps: int,
    tokens: dict[str, torch.Tensor],
    run_step: Callable[[int, torch.Tensor, dict[str, torch.Tensor]], torch.Tensor],
) -> torch.Tensor:
    """o [1, T, HV, V] of draft trees run one tree level at a time: `steps` launches of one token per
    sequence.

    tokens: [1, T, ...] per-token inputs (q, k, v, gates; strided views allowed); token t of sequence n is
    row cu_seqlens[n] + t. run_step(t, valid, picked) runs step t, with `picked` holding each input's
    rows of token t of every sequence ([1, N, ...]) and valid [N] saying which sequences have a token t;
    it returns that step's o [1, N, HV, V]. Rows of sequences without a token t go nowhere.
    """
    starts = cu_seqlens[:-1].long()
    lengths = cu_seqlens[1:].long() - starts
    T = next(iter(tokens.values())).shape[1]
    o = None
    for t in range(steps):
        valid = lengths > t
        rows = torch.where(valid, starts + t, 0)
        picked = {name: x[0].index_select(0, rows).unsqueeze(0) for name, x in tokens.items()}
        o_t = run_step(t, valid, picked)
        if o is None:  # one spare row collects the outputs of sequences without a token t
            o = o_t.new_zeros((T + 1, *o_t.shape[2:]))
        o.index_copy_(0, torch.where(valid, rows, T), o_t[0])
    return o[:T].unsqueeze(0)


def fused_gates(
    A_log: torch.Tensor, dt_bias: torch.Tensor, softplus_beta: float = 1.0, softplus_threshold: float = 20.0
) -> dict:
    """The core's kwargs for gating inside the recurrence: g = −exp(A_log)·softplus(a + dt_bias) from the
    raw `a` passed as g, β = sigmoid(b) from the raw `b` passed as beta."""
    return {
        "use_gate_in_kernel": True,
        "A_log": A_log,
        "dt_bias": dt_bias,
        "use_beta_sigmoid_in_kernel": True,
        "softplus_beta": softplus_beta,
        "softplus_threshold": softplus_threshold,
    }


def one_token_cu_seqlens(N: int, device: torch.device) -> torch.Tensor:
    """[0, 1, .., N]: N sequences of one token each."""
    return torch.arange(N + 1, dtype=torch.int32, device=device)
