"""chunk_fused: the state pass and the output in one kernel (FUSED 1) or split (FUSED 0), against the
float64 references, through the spec as the tuner drives it and through chunk_gated_delta_rule.

On the CPU these run through Triton's interpreter at small shapes; on the GPU host compiled, plus the
`gpu`-marked real shapes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from _helpers import cu_seqlens_of, launch_poisoned

from gdn_kernels import chunk_fused, chunk_output, chunk_state
from gdn_kernels._spec import Config, compare_outputs, relative_error
from gdn_kernels._targets import TARGETS
from gdn_kernels.chunk import chunk_gated_delta_rule
from gdn_kernels.reference import gated_delta_rule_reference, l2norm_reference

SPEC = chunk_fused.SPEC
TOLERANCE = 1e-2  # relative L2 of o and the final state with 16-bit inputs, as for the split pipeline
SEGMENTED = Config.of(FUSED=0, SEG=4, BV=64, num_warps=4, num_stages=2)
FUSED_CONFIGS = [
    Config.of(FUSED=1, SEG=1, BV=64, num_warps=4, num_stages=1),
    Config.of(FUSED=1, SEG=1, BV=64, num_warps=4, num_stages=2),
    Config.of(FUSED=1, SEG=1, BV=64, num_warps=8, num_stages=3),
]


def _label(config: Config) -> str:
    return "-".join(f"{k}{v}" for k, v in config.params)


def _key(**fields):
    base = {"dtype": "bfloat16", "H": 1, "HV": 2, "K": 64, "V": 64, "T": 128, "N": 2}
    base.update(state_dtype="float32", state_layout="kv")
    base.update(fields)
    return SPEC.key(**base)


@pytest.mark.parametrize("config", [SPEC.default, SEGMENTED, *FUSED_CONFIGS], ids=_label)
def test_every_structure_matches_the_reference(config, device):
    key = _key(T=200, N=3, state_dtype="bfloat16", state_layout="vk")  # lengths 66, 67, 67: odd tails
    assert not SPEC.space.problems(config, key)
    inputs = SPEC.make_inputs(key, device, seed=5)
    errors = compare_outputs(launch_poisoned(SPEC, inputs, config), SPEC.reference(inputs))
    assert set(errors) == {"o", "final_state"} and max(errors.values()) <= SPEC.tolerance, errors


def test_fused_and_split_agree_and_a_rerun_is_bitwise_identical(device):
    key = _key(H=2, HV=4, K=32, V=32, T=130, N=1)
    inputs = SPEC.make_inputs(key, device, seed=7)
    split = launch_poisoned(SPEC, inputs, SPEC.default)
    fused = launch_poisoned(SPEC, inputs, FUSED_CONFIGS[1])
    again = launch_poisoned(SPEC, inputs, FUSED_CONFIGS[1])
    # Same operand roundings on both paths; only the order of float32 sums differs.
    assert relative_error(fused["o"], split["o"]) < 2e-3
    assert relative_error(fused["final_state"], split["final_state"]) < 2e-3
    assert torch.equal(fused["o"], again["o"]) and torch.equal(fused["final_state"], again["final_state"])


@pytest.mark.parametrize("segments", [2, 16])
def test_segmented_agrees_with_split_and_a_rerun_is_bitwise_identical(segments, device):
    key = _key(H=2, HV=4, K=32, V=32, T=330, N=1)  # 6 chunks: 16 segments leave some empty
    inputs = SPEC.make_inputs(key, device, seed=11)
    config = Config.of(FUSED=0, SEG=segments, BV=64, num_warps=4, num_stages=2)
    split = launch_poisoned(SPEC, inputs, SPEC.default)
    first = launch_poisoned(SPEC, inputs, config)
    again = launch_poisoned(SPEC, inputs, config)
    assert relative_error(first["o"], split["o"]) < 5e-3
    assert relative_error(first["final_state"], split["final_state"]) < 5e-3
    assert torch.equal(first["o"], again["o"]) and torch.equal(first["final_state"], again["final_state"])


def test_split_only_at_its_fixed_launch_parameters():
    key = _key()
    assert SPEC.space.problems(Config.of(FUSED=0, SEG=1, BV=32, num_warps=4, num_stages=2), key)
    assert not SPEC.space.problems(SPEC.default, key) and SPEC.default["FUSED"] == 0
    candidates = SPEC.space.candidates(key)
    assert sum(1 for c in candidates if c["FUSED"] == 0 and c["SEG"] == 1) == 1
    assert any(c["FUSED"] for c in candidates) and any(c["SEG"] > 1 for c in candidates)
    assert not any(c["FUSED"] and c["SEG"] > 1 for c in candidates)
    assert SPEC.space.problems(
        Config.of(FUSED=1, SEG=1, BV=32, num_warps=4, num_stages=2), key
    )  # miscompiles


STRUCTURES = {"split": SPEC.default, "segmented": SEGMENTED, "fused": None}


@pytest.fixture(params=list(STRUCTURES))
def structure(request, monkeypatch):
    """chunk_gated_delta_rule with chunk_fused resolving to one structure; every output the stages
    allocate starts as NaN (besides o, which the varlen guard zeroes first), so a gap shows."""
    chosen = STRUCTURES[request.param] or FUSED_CONFIGS[1]
    resolve = chunk_fused.resolve_config

    def resolving(spec, key, device):
        return chosen if spec is SPEC else resolve(spec, key, device)

    monkeypatch.setattr(chunk_fused, "resolve_config", resolving)
    for module in (chunk_state, chunk_output, chunk_fused):
        allocate = module._make_outputs

        def poisoned(inputs, *args, allocate=allocate, **kwargs):
            out = kwargs.get("out")
            return {
                n: t if t is out else t.fill_(float("nan"))
                for n, t in allocate(inputs, *args, **kwargs).items()
            }

        monkeypatch.setattr(module, "_make_outputs", poisoned)
    return request.param


# (lengths, H, HV, K, state layout, state dtype, initial state, l2norm in kernel)
PIPELINE_CASES = [
    ((1, 63, 64, 65, 17), 1, 2, 64, "kv", torch.float32, True, False),
    ((1, 63, 64, 65, 17), 2, 2, 32, "vk", torch.bfloat16, True, True),
    ((130,), 1, 4, 64, "vk", torch.float16, False, False),
    ((40, 70), 1, 8, 32, "kv", torch.bfloat16, True, True),
]


def _case_id(case) -> str:
    lengths, H, HV, K, layout, dtype, h0, l2 = case
    flags = ("-h0" if h0 else "-zero") + ("-l2norm" if l2 else "")
    return f"N{len(lengths)}-T{sum(lengths)}-H{H}-HV{HV}-K{K}-{layout}-{str(dtype)[6:]}{flags}"


@pytest.mark.parametrize("case", PIPELINE_CASES, ids=_case_id)
def test_chunk_gated_delta_rule_in_each_structure_matches_the_recurrence(case, structure, device):
    lengths, H, HV, K, layout, state_dtype, h0, l2 = case
    T, N = sum(lengths), len(lengths)
    k = torch.randn(1, T, H, K)
    p = {
        "q": torch.randn(1, T, H, K).bfloat16(),
        "k": (k if l2 else l2norm_reference(k).float()).bfloat16(),
        "v": torch.randn(1, T, HV, K).bfloat16(),
        "g": torch.nn.functional.logsigmoid(torch.randn(1, T, HV)),
        "beta": torch.sigmoid(torch.randn(1, T, HV)),
    }
    p = {name: t.to(device) for name, t in p.items()}
    state_kv = (
        0.1 * torch.randn(N, HV, K, K, device=device) if h0 else torch.zeros(N, HV, K, K, device=device)
    )
    state_kv = state_kv.to(state_dtype)
    state = state_kv if layout == "kv" else state_kv.transpose(-1, -2).contiguous()
    o, final = chunk_gated_delta_rule(
        **p,
        initial_state=state,
        output_final_state=True,
        cu_seqlens=cu_seqlens_of(lengths, device),
        use_qk_l2norm_in_kernel=l2,
        state_layout=layout,
    )
    ref_o, ref_state = gated_delta_rule_reference(
        *(p[n] for n in ("q", "k", "v", "g", "beta")),
        initial_state=state_kv.float(),
        cu_seqlens=cu_seqlens_of(lengths, device),
        use_qk_l2norm=l2,
    )
    final_kv = final if layout == "kv" else final.transpose(-1, -2)
    errors = {"o": relative_error(o, ref_o), "final_state": relative_error(final_kv, ref_state)}
    assert max(errors.values()) <= TOLERANCE, (structure, errors)


def test_a_state_pool_is_updated_in_place_alike_in_both_structures(device, monkeypatch):
    lengths, H, HV, K = (65, 3), 1, 2, 32
    T = sum(lengths)
    p = {
        "q": torch.randn(1, T, H, K).bfloat16(),
        "k": l2norm_reference(torch.randn(1, T, H, K)).bfloat16(),
        "v": torch.randn(1, T, HV, K).bfloat16(),
        "g": torch.nn.functional.logsigmoid(torch.randn(1, T, HV)),
        "beta": torch.sigmoid(torch.randn(1, T, HV)),
    }
    p = {name: t.to(device) for name, t in p.items()}
    pool = (0.1 * torch.randn(4, HV, K, K, device=device)).bfloat16()
    indices = torch.tensor([2, 0], dtype=torch.int32, device=device)
    results = {}
    resolve = chunk_fused.resolve_config
    for name, config in (("split", SPEC.default), ("segmented", SEGMENTED), ("fused", FUSED_CONFIGS[0])):
        monkeypatch.setattr(
            chunk_fused, "resolve_config", lambda s, k, d, c=config: c if s is SPEC else resolve(s, k, d)
        )
        mine = pool.clone()
        o, final = chunk_gated_delta_rule(
            **p,
            initial_state=mine,
            cu_seqlens=cu_seqlens_of(lengths, device),
            state_layout="vk",
            state_indices=indices,
            inplace_final_state=True,
        )
        assert final is mine
        assert torch.equal(mine[[1, 3]], pool[[1, 3]])  # slots no sequence names stay as they were
        results[name] = (o, mine)
    for name in ("segmented", "fused"):
        assert relative_error(results[name][0], results["split"][0]) < 5e-3, name
        assert relative_error(results[name][1].float(), results["split"][1].float()) < 5e-3, name


@pytest.mark.parametrize("segments", [2, 3, 16])
def test_segments_carry_the_state_across_their_boundaries(segments, device, monkeypatch):
    """With the model's gates a chunk's decay is about exp(−50): the state that a segment hands on
    hardly matters and any segment split looks right. Gates of −0.01 per token keep exp(−3) of it over
    300 tokens, so a wrong transition M or a wrong start state shows in o and the final state."""
    lengths, H, HV, K = (300, 1, 63, 64, 65, 130), 1, 2, 32
    T = sum(lengths)
    p = {
        "q": torch.randn(1, T, H, K).bfloat16(),
        "k": l2norm_reference(torch.randn(1, T, H, K)).bfloat16(),
        "v": torch.randn(1, T, HV, K).bfloat16(),
        "g": -0.01 * torch.rand(1, T, HV),
        "beta": torch.sigmoid(torch.randn(1, T, HV)),
    }
    p = {name: t.to(device) for name, t in p.items()}
    h0 = torch.randn(len(lengths), HV, K, K, device=device)
    cu = cu_seqlens_of(lengths, device)
    ref_o, ref_state = gated_delta_rule_reference(*p.values(), initial_state=h0, cu_seqlens=cu)
    config = Config.of(FUSED=0, SEG=segments, BV=64, num_warps=4, num_stages=2)
    resolve = chunk_fused.resolve_config
    monkeypatch.setattr(
        chunk_fused, "resolve_config", lambda s, k, d: config if s is SPEC else resolve(s, k, d)
    )
    o, final = chunk_gated_delta_rule(**p, initial_state=h0, output_final_state=True, cu_seqlens=cu)
    errors = {"o": relative_error(o, ref_o), "final_state": relative_error(final, ref_state)}
    assert max(errors.values()) <= TOLERANCE, errors
    # Dropping the carried state (h0 and every segment's start) is far off: the check can fail.
    o_cold, _ = chunk_gated_delta_rule(**p, cu_seqlens=cu)
    assert relative_error(o_cold, ref_o) > 10 * TOLERANCE


def test_segments_past_the_grid_limit_run_the_unsegmented_state_pass(monkeypatch):
    """N·SEG·HV programs on grid axis 1 past CUDA's 65535 fail to launch ("invalid argument" on an
    H200 at 64 sequences × 16 segments × 64 heads): such a call runs chunk_state's walk instead."""
    from gdn_kernels._launch import recording

    key = _key(N=4, T=256)
    inputs = SPEC.make_inputs(key, "meta", 0)

    def kernels(config):
        with recording() as launches:
            SPEC.launch(inputs, SPEC.make_outputs(inputs), config)
        return [getattr(r.kernel, "__name__", None) or r.kernel.fn.__name__ for r in launches]

    assert "_segment_state_kernel" in kernels(SEGMENTED)  # 4 sequences × 4 segments × 2 heads = 32
    monkeypatch.setattr(chunk_fused, "MAX_SEGMENT_ROWS", 31)
    launched = kernels(SEGMENTED)
    assert "_chunk_state_kernel" in launched and not any("segment" in name for name in launched)


# Compiled in a child process without TRITON_INTERPRET, for one target of each compute capability.
_COMPILE = """
import json, sys
from gdn_kernels._launch import compile_for_target, recording
from gdn_kernels._spec import Config
from gdn_kernels._targets import TARGETS
from gdn_kernels.chunk_fused import SPEC
key = SPEC.key(**json.loads(sys.argv[1]))
config = Config.from_dict(json.loads(sys.argv[2]))
inputs = SPEC.make_inputs(key, "meta", 0)
with recording() as launches:
    SPEC.launch(inputs, SPEC.make_outputs(inputs), config)
targets = {t.cc: t for t in TARGETS.values()}.values()
print(json.dumps({t.name: [compile_for_target(r, t.cc).metadata.shared for r in launches] for t in targets}))
"""


@pytest.mark.parametrize(
    "params",
    [{"FUSED": 1, "BV": 32, "num_warps": 4, "num_stages": 1}],
    ids=lambda p: _label(Config.from_dict(p)),
)
def test_a_fused_config_compiles_and_fits_every_target(params):
    fields = {"dtype": "bfloat16", "H": 16, "HV": 64, "K": 128, "V": 128, "T": 8192, "N": 1}
    fields.update(state_dtype="bfloat16", state_layout="vk")
    env = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, "-c", _COMPILE, json.dumps(fields), json.dumps(params)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for name, needs in json.loads(done.stdout).items():
        assert needs and max(needs) <= TARGETS[name].shared_memory_per_block, (name, needs)


@pytest.mark.gpu
@pytest.mark.parametrize(
    "H, HV, lengths", [(16, 64, (8192,)), (2, 8, (8192,)), (16, 64, (1000, 3000, 4096, 96))]
)
def test_fused_matches_split_at_real_shapes_on_gpu(H, HV, lengths):
    key = SPEC.key(
        dtype="bfloat16", H=H, HV=HV, K=128, V=128, T=sum(lengths), N=len(lengths),
        state_dtype="float32", state_layout="kv",
    )  # fmt: skip
    inputs = SPEC.make_inputs(key, "cuda", seed=1)
    ref = SPEC.reference(inputs)
    for config in (SPEC.default, SEGMENTED, Config.of(FUSED=1, SEG=1, BV=64, num_warps=4, num_stages=2)):
        errors = compare_outputs(launch_poisoned(SPEC, inputs, config), ref)
        print(_label(config), errors)
        assert max(errors.values()) <= SPEC.tolerance, errors
