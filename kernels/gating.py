"""GDN gating: g = −exp(A_log) · softplus(a + dt_bias), beta = sigmoid(b), both float32.

One elementwise pass over the [.., HV] gate projections. The softplus stays finite and exact for large
inputs: above the threshold it returns x itself, and below −15 it returns exp(βx)/β, where log(1+e)
would round to 0 in float32 (e < 6e-8) and lose the value entirely.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import cdiv, launch
from ._spec import Config, KernelSpec, Key, Param, SearchSpace, randn, stages, token_bucket, warps
from ._tables import resolve_config

SPACE = SearchSpace(
    params=(
        # Elements per program; below 256 a 1-warp program idles half its lanes on bf16 loads.
        Param("BLOCK", (256, 512, 1024, 2048, 4096), "elements per program", lo=64, hi=16384),
        warps(1, 2, 4, 8),
        stages(1, why="no loop to pipeline"),
    ),
)
DEFAULT = Config.of(BLOCK=1024, num_warps=4, num_stages=1)


@triton.jit
def gdn_gates(b_a, b_b, b_A_log, b_dt_bias, softplus_beta: tl.constexpr, softplus_threshold: tl.constexpr):
    """(g, beta) from float32 blocks of the gate projections; shared with the fused prefill prep."""
    b_x = (b_a + b_dt_bias) * softplus_beta
    b_log1p = tl.maximum(b_x, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(b_x)))
    b_sp = (
        tl.where(b_x > softplus_threshold, b_x, tl.where(b_x < -15.0, tl.exp(b_x), b_log1p)) / softplus_beta
    )
    return -tl.exp(b_A_log) * b_sp, tl.sigmoid(b_b)


@triton.jit
def _gdn_gating_kernel(
    A_log,
    a,
    b,
    dt_bias,
    g,
    beta,
    n_elements,
    HV: tl.constexpr,
    softplus_beta: tl.constexpr,
    softplus_threshold: tl.constexpr,
    BLOCK: tl.constexpr,
):
    o_x = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m_x = o_x < n_elements
    i_hv = o_x % HV
    b_a = tl.load(a + o_x, mask=m_x, other=0.0).to(tl.float32)
    b_b = tl.load(b + o_x, mask=m_x, other=0.0).to(tl.float32)
    b_A = tl.load(A_log + i_hv, mask=m_x, other=0.0).to(tl.float32)
    b_dt = tl.load(dt_bias + i_hv, mask=m_x, other=0.0).to(tl.float32)
    b_g, b_beta = gdn_gates(b_a, b_b, b_A, b_dt, softplus_beta, softplus_threshold)
    tl.store(g + o_x, b_g, mask=m_x)
    tl.store(beta + o_x, b_beta, mask=m_x)


def _key(dtype: torch.dtype | str, HV: int, elements: int) -> Key:
    return SPEC.memoised_key(dtype, HV, token_bucket(elements // HV))


def _launch_gating(inputs: dict, outputs: dict, config: Config) -> None:
    a = inputs["a"]
    n = a.numel()
    launch(
        _gdn_gating_kernel,
        (cdiv(n, config["BLOCK"]),),
        config,
        A_log=inputs["A_log"],
        a=a,
        b=inputs["b"],
        dt_bias=inputs["dt_bias"],
        g=outputs["g"],
        beta=outputs["beta"],
        n_elements=n,
        HV=a.shape[-1],
        softplus_beta=float(inputs.get("softplus_beta", 1.0)),
        softplus_threshold=float(inputs.get("softplus_threshold", 20.0)),
    )


def fused_gdn_gating(
    A_log: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    dt_bias: torch.Tensor,
    softplus_beta: float = 1.0,
    softplus_threshold: float = 20.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(g, beta) for gate projections a, b of shape [..., HV]; A_log and dt_bias are [HV]."""
    HV = a.shape[-1]
    if b.shape != a.shape or A_log.shape != (HV,) or dt_bias.shape != (HV,):
        raise ValueError(
            f"fused_gdn_gating: a {tuple(a.shape)} and b {tuple(b.shape)} must match, "
            f"A_log {tuple(A_log.shape)} and dt_bias {tuple(dt_bias.shape)} must be ({HV},)"
        )
    inputs = {
        "A_log": A_log,
        "a": a.contiguous(),
        "b": b.contiguous(),
        "dt_bias": dt_bias,
        "softplus_beta": softplus_beta,
        "softplus_threshold": softplus_threshold,
    }
    outputs = _make_outputs(inputs)
    _launch_gating(inputs, outputs, resolve_config(SPEC, _key(a.dtype, HV, a.numel()), a.device))
    return outputs["g"], outputs["beta"]


def gating_reference(inputs: dict) -> dict[str, torch.Tensor]:
    f64 = torch.float64
    beta_sp = float(inputs.get("softplus_beta", 1.0))
    threshold = float(inputs.get("softplus_threshold", 20.0))
    x = inputs["a"].to(f64) + inputs["dt_bias"].to(f64)
    sp = torch.where(x * beta_sp > threshold, x, torch.nn.functional.softplus(x * beta_sp) / beta_sp)
    g = -torch.exp(inputs["A_log"].to(f64)) * sp
    return {"g": g, "beta": torch.sigmoid(inputs["b"].to(f64))}


def _make_inputs(key: Key, device: torch.device | str, seed: int) -> dict:
    gen = torch.Generator("cpu").manual_seed(seed)
    HV, T, dtype = key["HV"], key["T"], getattr(torch, key["dtype"])
    cpu = {
        "A_log": torch.log(torch.empty(HV).uniform_(1, 16, generator=gen)),
        "a": randn(T, HV, generator=gen, device=device).to(dtype),
        "b": randn(T, HV, generator=gen, device=device).to(dtype),
        "dt_bias": randn(HV, generator=gen, device=device),
    }
    return {name: t.to(device) for name, t in cpu.items()}


def _make_outputs(inputs: dict) -> dict[str, torch.Tensor]:
    a = inputs["a"]
    return {name: torch.empty(a.shape, dtype=torch.float32, device=a.device) for name in ("g", "beta")}


SPEC = KernelSpec(
    name="gdn_gating",
    doc=__doc__.splitlines()[0],
    key_fields=("dtype", "HV", "T"),
    space=SPACE,
    default=DEFAULT,
    jit_functions=(_gdn_gating_kernel, gdn_gates),
    key_for=lambda w: _key(w.dtype, w.HV, w.tokens * w.HV),
    make_inputs=_make_inputs,
    make_outputs=_make_outputs,
    launch=_launch_gating,
    reference=gating_reference,
    tolerance=1e-5,  # float32 arithmetic throughout
    phases=("prefill", "decode"),
    bytes_moved=lambda key: key["T"] * key["HV"] * (2 * 2 + 2 * 4),
)
SPECS = (SPEC,)
