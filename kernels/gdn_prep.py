"""Fused prefill prep: short-convolution output → L2-normalised q, k, a copy of v, and the gates g, beta.

A GDN layer's convolution emits one [T, 2·H·K + HV·V] tensor laid out q | k | v (each head-major). The
chunked kernels want q, k [1,T,H,K] with unit-norm heads, v [1,T,HV,V] and float32 g, beta [1,T,HV].
Done as separate ops that is three splits with copies, two l2norm passes and the gating kernel: five
launches and q, k read twice. Here one launch reads every input once and writes every output once
(dp-8k: 8192 × 12288 bf16 in and out, 0.40 GB, 94 µs at 4.3 TB/s).

Grid: (token blocks, head slots). Slot j < 2H is q or k head j (normalised), then HV value heads
(copied), and one last slot computes the gates of all HV heads for the block.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import cdiv, launch
from ._spec import (
    Config,
    Constraint,
    KernelSpec,
    Key,
    Param,
    SearchSpace,
    pow2_ceil,
    randn,
    stages,
    token_bucket,
    warps,
)
from ._tables import resolve_config
from .gating import gating_reference, gdn_gates
from .reference import l2norm_reference

# A head's row is one register tile: past 256 elements (bf16 K or V) a program needs BT·256 float32
# registers, too many at any BT worth launching. GDN models use 128.
MAX_HEAD_DIM = 256
# Same epsilon as l2norm() and the chunked path, so both prefill routes give identical q, k.
L2NORM_EPS = 1e-6
# float32 elements of one tile per thread; past 64 the 255-register budget spills once addresses count.
MAX_TILE_PER_THREAD = 64

SPACE = SearchSpace(
    params=(
        # Tokens per program. 8 rows of 128 bf16 = 2 KiB per program; 128 rows = 32 KiB (registers bound it).
        Param("BT", (8, 16, 32, 64, 128), "tokens per program", lo=1, hi=256),
        warps(1, 2, 4, 8),
        stages(1, why="no loop to pipeline"),
    ),
    constraints=(
        Constraint(
            f"BT·pow2(max(K, V, HV)) / (32·num_warps) ≤ {MAX_TILE_PER_THREAD}: the tile stays in registers",
            lambda c, k: (
                c["BT"] * pow2_ceil(max(k["K"], k["V"], k["HV"])) <= MAX_TILE_PER_THREAD * 32 * c["num_warps"]
            ),
        ),
    ),
)
# 16 tokens × 128 = 2048 elements, 16 per thread at 4 warps; within the constraint up to K, V = 256.
DEFAULT = Config.of(BT=16, num_warps=4, num_stages=1)


@triton.jit
def _gdn_prep_kernel(
    mixed_qkv,
    a,
    b,
    A_log,
    dt_bias,
    q,
    k,
    v,
    g,
    beta,
    T,
    stride_x_t,
    stride_x_d,
    stride_a_t,
    stride_b_t,
    eps,
    H: tl.constexpr,
    HV: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    BHV: tl.constexpr,
    softplus_beta: tl.constexpr,
    softplus_threshold: tl.constexpr,
    BT: tl.constexpr,
):
    i_t, i_j = tl.program_id(0), tl.program_id(1)
    o_t = i_t.to(tl.int64) * BT + tl.arange(0, BT)
    m_t = o_t < T
    x_rows = mixed_qkv + o_t[:, None] * stride_x_t

    if i_j < 2 * H:
        # q head j (j < H) or k head j − H: columns j·K .. j·K + K of the row in both cases.
        o_k = tl.arange(0, BK)
        m_x = m_t[:, None] & (o_k[None, :] < K)
        b_x = tl.load(x_rows + (i_j * K + o_k[None, :]) * stride_x_d, mask=m_x, other=0.0).to(tl.float32)
        b_x = b_x * tl.rsqrt(tl.sum(b_x * b_x, axis=1) + eps)[:, None]
        i_h = i_j % H
        p_y = (o_t[:, None] * H + i_h) * K + o_k[None, :]
        if i_j < H:
            tl.store(q + p_y, b_x.to(q.dtype.element_ty), mask=m_x)
        else:
            tl.store(k + p_y, b_x.to(k.dtype.element_ty), mask=m_x)
    elif i_j < 2 * H + HV:
        i_hv = i_j - 2 * H
        o_v = tl.arange(0, BV)
        m_x = m_t[:, None] & (o_v[None, :] < V)
        b_v = tl.load(x_rows + (2 * H * K + i_hv * V + o_v[None, :]) * stride_x_d, mask=m_x, other=0.0)
        tl.store(v + (o_t[:, None] * HV + i_hv) * V + o_v[None, :], b_v.to(v.dtype.element_ty), mask=m_x)
    else:
        o_hv = tl.arange(0, BHV)
        m_hv = o_hv < HV
        m_g = m_t[:, None] & m_hv[None, :]
        b_a = tl.load(a + o_t[:, None] * stride_a_t + o_hv[None, :], mask=m_g, other=0.0).to(tl.float32)
        b_b = tl.load(b + o_t[:, None] * stride_b_t + o_hv[None, :], mask=m_g, other=0.0).to(tl.float32)
        b_A_log = tl.load(A_log + o_hv, mask=m_hv, other=0.0).to(tl.float32)
        b_dt_bias = tl.load(dt_bias + o_hv, mask=m_hv, other=0.0).to(tl.float32)
        b_g, b_beta = gdn_gates(
            b_a, b_b, b_A_log[None, :], b_dt_bias[None, :], softplus_beta, softplus_threshold
        )
        p_g = o_t[:, None] * HV + o_hv[None, :]
        tl.store(g + p_g, b_g, mask=m_g)
        tl.store(beta + p_g, b_beta, mask=m_g)


def _key(dtype: torch.dtype | str, H: int, HV: int, K: int, V: int, tokens: int) -> Key:
    return SPEC.memoised_key(dtype, H, HV, K, V, token_bucket(tokens))


def _launch_gdn_prep(inputs: dict, outputs: dict, config: Config) -> None:
    mixed_qkv, a, b = inputs["mixed_qkv"], inputs["a"], inputs["b"]
    H, HV, K, V = inputs["H"], inputs["HV"], inputs["K"], inputs["V"]
    T = mixed_qkv.shape[0]
    launch(
        _gdn_prep_kernel,
        (cdiv(T, config["BT"]), 2 * H + HV + 1),
        config,
        mixed_qkv=mixed_qkv,
        a=a,
        b=b,
        A_log=inputs["A_log"],
        dt_bias=inputs["dt_bias"],
        q=outputs["q"],
        k=outputs["k"],
        v=outputs["v"],
        g=outputs["g"],
        beta=outputs["beta"],
        T=T,
        # mixed_qkv may be a strided view (a convolution's [D, T] output transposed); a stride of 1 is
        # specialised by Triton, so the usual dense rows still get 16-byte loads.
        stride_x_t=mixed_qkv.stride(0),
        stride_x_d=mixed_qkv.stride(1),
        stride_a_t=a.stride(0),
        stride_b_t=b.stride(0),
        eps=L2NORM_EPS,
        H=H,
        HV=HV,
        K=K,
        V=V,
        BK=pow2_ceil(K),
        BV=pow2_ceil(V),
        BHV=pow2_ceil(HV),
        softplus_beta=float(inputs.get("softplus_beta", 1.0)),
        softplus_threshold=float(inputs.get("softplus_threshold", 20.0)),
    )


def _rows_dense(x: torch.Tensor) -> torch.Tensor:
    """x [T, n] itself when its last dim is dense (any row stride), else a dense copy."""
    return x if x.stride(-1) == 1 or x.shape[-1] == 1 else x.contiguous()


def gdn_prefill_prep(
    mixed_qkv: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    A_log: torch.Tensor,
    dt_bias: torch.Tensor,
    H: int,
    HV: int,
    K: int,
    V: int,
    softplus_beta: float = 1.0,
    softplus_threshold: float = 20.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(q, k, v, g, beta) for the chunked prefill from the convolution output of one GDN layer.

    mixed_qkv [T, 2·H·K + HV·V] (q | k | v, head-major; any strides); a, b [T, HV]; A_log, dt_bias
    [HV] float32. Returns q, k [1,T,H,K] L2-normalised over K and v [1,T,HV,V], in mixed_qkv's dtype,
    and g = −exp(A_log)·softplus(a + dt_bias), beta = sigmoid(b), float32 [1,T,HV].
    """
    name = "gdn_prefill_prep"
    for arg, value in (("H", H), ("HV", HV), ("K", K), ("V", V)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: {arg} must be a positive int, got {value!r}")
    if HV % H:
        raise ValueError(f"{name}: HV={HV} must be a multiple of H={H}")
    if K > MAX_HEAD_DIM or V > MAX_HEAD_DIM:
        raise ValueError(f"{name}: head dims K and V must be at most {MAX_HEAD_DIM}, got K={K}, V={V}")
    width = 2 * H * K + HV * V
    if mixed_qkv.dim() != 2 or mixed_qkv.shape[1] != width:
        raise ValueError(
            f"{name}: mixed_qkv must be [T, 2·H·K + HV·V = {width}], got {tuple(mixed_qkv.shape)}"
        )
    if mixed_qkv.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise ValueError(f"{name}: mixed_qkv must be bfloat16, float16 or float32, got {mixed_qkv.dtype}")
    T = mixed_qkv.shape[0]
    if a.shape != (T, HV) or b.shape != (T, HV):
        raise ValueError(
            f"{name}: a and b must be [T, HV] = {(T, HV)}, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if not (a.is_floating_point() and b.is_floating_point()):
        raise ValueError(f"{name}: a and b must be floating point, got {a.dtype} and {b.dtype}")
    if A_log.shape != (HV,) or dt_bias.shape != (HV,):
        raise ValueError(
            f"{name}: A_log and dt_bias must be [HV] = ({HV},), got {tuple(A_log.shape)} and {tuple(dt_bias.shape)}"
        )
    if not softplus_beta > 0:
        raise ValueError(f"{name}: softplus_beta must be positive, got {softplus_beta}")
    inputs = {
        "mixed_qkv": mixed_qkv,
        "a": _rows_dense(a),
        "b": _rows_dense(b),
        "A_log": A_log.contiguous(),
        "dt_bias": dt_bias.contiguous(),
        "H": H,
        "HV": HV,
        "K": K,
        "V": V,
        "softplus_beta": softplus_beta,
        "softplus_threshold": softplus_threshold,
    }
    outputs = _make_outputs(inputs)
    if T:
        config = resolve_config(SPEC, _key(mixed_qkv.dtype, H, HV, K, V, T), mixed_qkv.device)
        _launch_gdn_prep(inputs, outputs, config)
    return outputs["q"], outputs["k"], outputs["v"], outputs["g"], outputs["beta"]


def gdn_prep_reference(inputs: dict) -> dict[str, torch.Tensor]:
    """float64 q, k (normalised), v and the gates, shaped like the kernel's outputs."""
    x = inputs["mixed_qkv"].to(torch.float64)
    H, HV, K, V = inputs["H"], inputs["HV"], inputs["K"], inputs["V"]
    T = x.shape[0]
    q, k, v = x.split([H * K, H * K, HV * V], dim=1)
    gates = gating_reference(inputs)
    return {
        "q": l2norm_reference(q.reshape(1, T, H, K), L2NORM_EPS),
        "k": l2norm_reference(k.reshape(1, T, H, K), L2NORM_EPS),
        "v": v.reshape(1, T, HV, V),
        "g": gates["g"].reshape(1, T, HV),
        "beta": gates["beta"].reshape(1, T, HV),
    }


def _make_inputs(key: Key, device: torch.device | str, seed: int) -> dict:
    gen = torch.Generator("cpu").manual_seed(seed)
    H, HV, K, V, T = key["H"], key["HV"], key["K"], key["V"], key["T"]
    dtype = getattr(torch, key["dtype"])
    cpu = {
        "mixed_qkv": randn(T, 2 * H * K + HV * V, generator=gen, device=device).to(dtype),
        "a": randn(T, HV, generator=gen, device=device).to(dtype),
        "b": randn(T, HV, generator=gen, device=device).to(dtype),
        "A_log": torch.log(torch.empty(HV).uniform_(1, 16, generator=gen)),
        "dt_bias": randn(HV, generator=gen, device=device),
    }
    return {**{name: t.to(device) for name, t in cpu.items()}, "H": H, "HV": HV, "K": K, "V": V}


def _make_outputs(inputs: dict) -> dict[str, torch.Tensor]:
    x = inputs["mixed_qkv"]
    T, H, HV, K, V = x.shape[0], inputs["H"], inputs["HV"], inputs["K"], inputs["V"]
    return {
        "q": torch.empty(1, T, H, K, dtype=x.dtype, device=x.device),
        "k": torch.empty(1, T, H, K, dtype=x.dtype, device=x.device),
        "v": torch.empty(1, T, HV, V, dtype=x.dtype, device=x.device),
        "g": torch.empty(1, T, HV, dtype=torch.float32, device=x.device),
        "beta": torch.empty(1, T, HV, dtype=torch.float32, device=x.device),
    }


def _bytes_moved(key: Key) -> int:
    T, H, HV, K, V = key["T"], key["H"], key["HV"], key["K"], key["V"]
    itemsize = getattr(torch, key["dtype"]).itemsize
    # qkv read and written once; a, b read (16-bit), g, beta written (float32).
    return 2 * T * (2 * H * K + HV * V) * itemsize + T * HV * (2 * itemsize + 2 * 4)


SPEC = KernelSpec(
    name="gdn_prep",
    doc=__doc__.splitlines()[0],
    key_fields=("dtype", "H", "HV", "K", "V", "T"),
    space=SPACE,
    default=DEFAULT,
    jit_functions=(_gdn_prep_kernel, gdn_gates),
    key_for=lambda w: _key(w.dtype, w.H, w.HV, w.K, w.V, w.tokens),
    make_inputs=_make_inputs,
    make_outputs=_make_outputs,
    launch=_launch_gdn_prep,
    reference=gdn_prep_reference,
    bytes_moved=_bytes_moved,
)
SPECS = (SPEC,)
