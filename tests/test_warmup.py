"""`gdn-tune warmup` (gdn_tune.warmup; its arguments are in test_cli_warmup.py): the plan (every spec × workload of a preset reached, tables
honoured, every integer specialisation class planned), real sm90 compiles into a Triton cache on the
CPU, and the proof that matters on the GPU host: production calls after a warmup compile nothing.

Planning and compiling run in subprocesses: this test process runs the kernels under TRITON_INTERPRET=1,
whose launches are not the GPU's (the plan refuses it, as tested here).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest
from _helpers import run_reporting, warmup_cli
from click.testing import CliRunner

from gdn_kernels import kernel_specs
from gdn_kernels._spec import Config, sequence_bucket, token_bucket
from gdn_kernels._tables import TableEntry
from gdn_kernels.gating import SPEC as GATING
from gdn_tune.cli import main
from gdn_tune.presets import preset_by_name
from gdn_tune.sweep.target import target_place
from gdn_tune.tables import write_table
from gdn_tune.warmup import CallProfile, counts_in_bucket, plan_warmup

MADE_WITH = {
    "gpu": "NVIDIA H200",
    "compute_capability": "9.0",
    "triton": "3.6.0",
    "torch": "2.13.0",
    "cuda": "12.8",
    "date": "2026-01-31",
}


@pytest.mark.parametrize(
    ("count", "bucket", "expected"),
    [
        (1, sequence_bucket, [1]),
        (2, sequence_bucket, [2]),
        (4, sequence_bucket, [3, 4]),
        (32, sequence_bucket, list(range(17, 33))),
        (64, token_bucket, [1, *range(49, 65)]),
        (100, token_bucket, list(range(113, 129))),
        (8192, token_bucket, list(range(8177, 8193))),
    ],
    ids=lambda x: getattr(x, "__name__", str(x)) if not isinstance(x, list) else f"{len(x)}counts",
)
def test_counts_in_bucket_meet_every_specialisation_class_inside_the_bucket(count, bucket, expected):
    counts = counts_in_bucket(count, bucket, 1)
    assert counts == expected
    assert {bucket(c) for c in counts} == {bucket(count)}
    if len(counts) >= 16:  # every residue mod 16 is met
        assert {c % 16 for c in counts} == set(range(16))


def test_auto_without_a_gpu_and_the_interpreter_are_refused():
    import torch

    if not torch.cuda.is_available():
        result = CliRunner().invoke(main, ["warmup", "--preset", "smoke"])
        assert result.exit_code != 0 and "needs a CUDA GPU" in result.output, result.output
    place, cc, target = target_place("h200")
    os.environ["TRITON_INTERPRET"], previous = "1", os.environ.get("TRITON_INTERPRET")
    try:
        with pytest.raises(ValueError, match="unset TRITON_INTERPRET"):
            plan_warmup(preset_by_name("smoke").workloads, place, cc, target)
    finally:
        if previous is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = previous


def _expected_pairs(preset: str) -> set[tuple[str, str]]:
    return {
        (name, spec.key_for(w).label)
        for w in preset_by_name(preset).workloads
        for name, spec in kernel_specs().items()
        if w.phase in spec.phases
    }


def test_smoke_plan_reaches_every_spec_and_workload_with_every_integer_class(tmp_path):
    # A table for gating in the H200's device folder, another in the arch folder: the device's wins,
    # as it does for production on an H200.
    key = GATING.key_for(preset_by_name("smoke").workloads[0])
    device_entry = TableEntry(key, Config.of(BLOCK=512, num_warps=2, num_stages=1), 0.01, 0.02)
    arch_entry = TableEntry(key, Config.of(BLOCK=256, num_warps=1, num_stages=1), 0.01, 0.02)
    write_table(tmp_path, "sm90", GATING, [device_entry], MADE_WITH, device_name="NVIDIA H200")
    write_table(tmp_path, "sm90", GATING, [arch_entry], MADE_WITH)

    plan = warmup_cli(
        "--preset", "smoke", "--gpu", "h200", "--device-name", "NVIDIA H200", "--dry-run",
        GDN_TUNE_CONFIG_DIR=str(tmp_path),
    )  # fmt: skip
    pairs = {(k["kernel"], k["key"]) for k in plan["keys"]}
    assert pairs == _expected_pairs("smoke")
    assert all(k["source"] != "unreached" for k in plan["keys"]), plan["keys"]
    gating_rows = [k for k in plan["keys"] if k["kernel"] == "gdn_gating" and k["key"] == key.label]
    assert [(k["source"], k["config"]) for k in gating_rows] == [("exact", device_entry.config.label)]
    gating_blocks = {dict(v["args"])["BLOCK"] for v in plan["variants"] if v["kernel"] == "gdn_gating"}
    assert 512 in gating_blocks and 256 not in gating_blocks

    # The smoke prefill has 100 tokens (bucket 128: 113..128), so each chunk kernel compiles with T
    # divisible by 16 and without; decode has 3 sequences (bucket 4: 3 and 4, never divisible).
    for kernel in ("chunk_kkt_solve", "chunk_wu", "chunk_state", "chunk_output"):
        classes = {dict(v["args"])["T"][1] % 16 == 0 for v in plan["variants"] if v["kernel"] == kernel}
        assert classes == {True, False}, kernel
    # One decode kernel serves the plain, gated, packed and speculative paths: one variant each here.
    decode = [dict(v["args"]) for v in plan["variants"] if v["kernel"] == "fused_recurrent"]
    plain = [a for a in decode if not a["USE_GATE"]]
    assert len(plain) == 1 and len(decode) == 4, decode
    assert {(a["TOKEN_MODE"], a["NULL_SLOT"], a["STATE_VK"]) for a in decode if a["USE_GATE"]} == {
        (0, -1, True),  # gated, the bf16 [V, K] cache
        (0, 0, True),  # packed: NULL_BLOCK_ID 0 pads
        (1, -1, True),  # speculative: a state per token into the cache
    }
    flags = plain[0]
    assert flags["USE_STATE_INDICES"] and flags["FINAL_MODE"] == 2 and flags["USE_QK_L2NORM"]  # in place
    assert all(dict(v["args"]).get("INTERPRETED") in (None, False) for v in plan["variants"])


def test_profile_flags_and_kernel_selection_change_the_plan():
    plan = warmup_cli(
        "--preset", "smoke", "--gpu", "h200", "--kernels", "chunk_state", "--no-varlen", "--no-initial-state",
        "--no-final-state", "--dry-run",
    )  # fmt: skip
    assert {k["kernel"] for k in plan["keys"]} == {"chunk_state"}
    assert {v["kernel"] for v in plan["variants"]} == {"chunk_state"}
    for variant in plan["variants"]:
        args = dict(variant["args"])
        assert (args["IS_VARLEN"], args["USE_INITIAL_STATE"], args["FINAL_MODE"]) == (
            False,
            False,
            False,
        )
        assert args["cu_seqlens"] is None and args["h0"] is None and args["ht"] is None
    assert (
        plan["profile"] == CallProfile(varlen=False, initial_state=False, output_final_state=False).as_dict()
    )


def test_model_and_tp_plan_every_serving_call_of_the_deployments_shapes():
    from gdn_tune.presets import deployment_workloads
    from gdn_tune.warmup import SERVING_CALLS

    plan = warmup_cli("--model", "qwen3-next-80b-a3b", "--tp", "8", "--gpu", "h200", "--dry-run")
    expected = {
        (name, spec.key_for(w).label)
        for w in deployment_workloads("qwen3-next-80b-a3b", 8)
        for name, spec in kernel_specs().items()
        if w.phase in spec.phases
    }
    assert {(k["kernel"], k["key"]) for k in plan["keys"]} == expected
    assert {k["key"].split("-H=")[1].split("-")[0] for k in plan["keys"] if "-H=" in k["key"]} == {
        "2"
    }  # 16/8
    assert plan["profiles"] == [p.as_dict() for _, p in SERVING_CALLS]
    args = {
        kernel: [dict(v["args"]) for v in plan["variants"] if v["kernel"] == kernel]
        for kernel in kernel_specs()
    }
    # Prefill: with and without an initial state, with and without the final state; both gate dtypes
    # give one variant (the rule casts g), bf16 beta another; in-kernel l2norm or not.
    assert {(a["USE_INITIAL_STATE"], bool(a["FINAL_MODE"])) for a in args["chunk_state"]} == {
        (True, True),
        (False, True),
        (False, False),
    }
    assert {a["beta"][1] for a in args["chunk_kkt_solve"] if "beta" in a} == {"float32", "bfloat16"}
    assert args["l2norm"]
    # Decode: through int32 and int64 cu_seqlens and slot indices, and as a batch without either.
    recurrences = args["fused_recurrent"]
    assert {a["cu_seqlens"][1] for a in recurrences if a["cu_seqlens"]} == {"int32", "int64"}
    assert {a["state_indices"][1] for a in recurrences if a["state_indices"]} == {"int32", "int64"}
    assert any(a["cu_seqlens"] is None and a["state_indices"] is None for a in recurrences)


@pytest.mark.slow
def test_default_preset_plan_reaches_every_spec_and_workload():
    plan = warmup_cli("--preset", "default", "--gpu", "h200", "--dry-run")
    assert {(k["kernel"], k["key"]) for k in plan["keys"]} == _expected_pairs("default")
    # The one key a call never reaches is chunk_state's where chunk_fused's entry runs segments: the
    # segmented state pass replaces chunk_state's walk there (sm90 tables: 2/8 heads at 8k–64k).
    segmented = {
        k["key"] for k in plan["keys"] if k["kernel"] == "chunk_fused" and "SEG1-" not in k["config"]
    }
    unreached = {(k["kernel"], k["key"]) for k in plan["keys"] if k["source"] == "unreached"}
    assert segmented and unreached == {("chunk_state", key) for key in segmented}
    kernels_with_variants = {v["kernel"] for v in plan["variants"]}
    # The decode paths' specs share fused_recurrent's kernel, whose variants are listed under its name;
    # chunk_fused's variants are its segment kernels (its split entries launch chunk_state's and
    # chunk_output's).
    sharing = {"fused_recurrent_gated", "packed_decode", "spec_decode"}
    assert kernels_with_variants == set(kernel_specs()) - sharing


# A production-like call on real (CPU) tensors, its launches recorded and compiled for sm90 through
# Triton's JIT warmup under the compile-only driver (`compile_for_target`): every one must be a cache hit after `gdn-tune warmup`, i.e.
# the meta-tensor plan produced exactly the specialisations real tensors produce.
REAL_TENSOR_CHECK = textwrap.dedent(
    """
    import json, sys, torch, triton
    import gdn_kernels
    from gdn_kernels._launch import compile_for_target, recording
    from gdn_tune.sweep.target import target_place

    hits = []
    triton.knobs.compilation.listener = lambda **kw: hits.append(kw["cache_hit"])
    records = []
    for tokens in (100, 97, 128):
        a, b = torch.randn(tokens, 2).bfloat16(), torch.randn(tokens, 2).bfloat16()
        x = torch.randn(1, tokens, 1, 32).bfloat16()
        with recording() as recs:
            gdn_kernels.fused_gdn_gating(torch.zeros(2), a, b, torch.zeros(2))
            gdn_kernels.l2norm(x)
        records += recs
    for r in records:
        compile_for_target(r, 90)
    print(json.dumps({"launches": len(records), "hits": hits}))
    """
)


def test_warmup_compiles_for_sm90_on_the_cpu_and_real_tensor_calls_hit_its_cache(tmp_path):
    cache = tmp_path / "triton-cache"
    args = ("--preset", "smoke", "--gpu", "h200", "--kernels", "gdn_gating,l2norm", "--cache-dir", str(cache))
    first = warmup_cli(*args, "--jobs", "2")
    assert first["counts"] == {"compiled": first["plan"]["variants"]}, first["results"]
    assert first["plan"]["variants"] >= 4  # two kernels × (T divisible by 16, T not)
    assert all(r["shared_bytes"] is not None for r in first["results"])
    assert any(Path(cache).rglob("*.cubin"))
    # Launchers link against the GPU driver's libcuda: built where it is installed, else reported.
    ldconfig = subprocess.run(["/sbin/ldconfig", "-p"], capture_output=True, text=True).stdout
    has_libcuda = "libcuda.so.1" in ldconfig or bool(os.environ.get("TRITON_LIBCUDA_PATH"))
    assert bool(first["launchers_missing"]) == (not has_libcuda), first["launchers_missing"]
    assert all(reason.startswith("not built: ") for reason in first["launchers_missing"])

    again = warmup_cli(*args, "--jobs", "1")
    assert again["counts"] == {"cached": first["plan"]["variants"]}, again["results"]

    # The CPU tensors resolve no table (CPU device), so the configs are the defaults: the smoke plan
    # for h200 without tables resolves the defaults too.
    report = run_reporting(REAL_TENSOR_CHECK, cache)
    assert report["launches"] == 6
    assert report["hits"] and all(report["hits"]), report  # every compile Triton attempted was a hit


GPU_FIRST_CALLS = textwrap.dedent(
    """
    import json, torch, triton
    import triton.runtime.build
    import gdn_kernels
    misses = []
    triton.knobs.compilation.listener = lambda **kw: misses.append(kw["cache_hit"] is False)
    # Triton builds a C module (a kernel signature's launcher, the driver's utilities) only on a miss
    # of its cache, through this function.
    builds = []
    real_build = triton.runtime.build._build
    def counting_build(name, *args, **kwargs):
        builds.append(name)
        return real_build(name, *args, **kwargs)
    triton.runtime.build._build = counting_build
    dev = "cuda"
    H, HV, K, V = 16, 64, 128, 128
    for tokens, lengths in ((8192, [8192]), (8100, [1000, 3000, 4004, 96])):
        q = torch.randn(1, tokens, H, K, device=dev, dtype=torch.bfloat16)
        k = torch.randn_like(q)
        v = torch.randn(1, tokens, HV, V, device=dev, dtype=torch.bfloat16)
        g = torch.nn.functional.logsigmoid(torch.randn(1, tokens, HV, device=dev))
        beta = torch.rand(1, tokens, HV, device=dev)
        cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], device=dev, dtype=torch.int32)
        h0 = torch.randn(len(lengths), HV, K, V, device=dev)
        a = torch.randn(tokens, HV, device=dev, dtype=torch.bfloat16)
        gdn_kernels.fused_gdn_gating(torch.zeros(HV, device=dev), a, a, torch.zeros(HV, device=dev))
        gdn_kernels.chunk_gated_delta_rule(
            q, k, v, g, beta, initial_state=h0, output_final_state=True, cu_seqlens=cu,
            use_qk_l2norm_in_kernel=True,
        )
    for N in (32, 27):
        q = torch.randn(1, N, H, K, device=dev, dtype=torch.bfloat16)
        cache = torch.randn(2 * N, HV, K, V, device=dev)
        gdn_kernels.fused_recurrent_gated_delta_rule(
            q, torch.randn_like(q), torch.randn(1, N, HV, V, device=dev, dtype=torch.bfloat16),
            torch.nn.functional.logsigmoid(torch.randn(1, N, HV, device=dev)), torch.rand(1, N, HV, device=dev),
            initial_state=cache, cu_seqlens=torch.arange(N + 1, device=dev, dtype=torch.int32),
            ssm_state_indices=torch.arange(N, device=dev, dtype=torch.int32), use_qk_l2norm_in_kernel=True,
            inplace_final_state=True,
        )
    torch.cuda.synchronize()
    print(json.dumps({"compilations": len(misses), "misses": sum(misses), "c_builds": builds}))
    """
)


@pytest.mark.gpu
def test_gpu_production_calls_after_warmup_compile_nothing(tmp_path):
    cache = tmp_path / "triton-cache"
    warm = warmup_cli(
        "--shape", "H=16,HV=64,K=128,V=128,T=8192", "--shape", "H=16,HV=64,K=128,V=128,T=32,N=32,phase=decode",
        "--cache-dir", str(cache),
    )  # fmt: skip
    assert not warm["plan"]["unreached"] and warm["counts"].get("failed", 0) == 0, warm
    assert warm["launchers_missing"] == [], warm["launchers_missing"]
    report = run_reporting(GPU_FIRST_CALLS, cache, timeout=600)
    assert report["compilations"] > 0  # the listener saw the first loads
    assert report["misses"] == 0, report
    assert report["c_builds"] == [], report  # launchers and driver utilities came from the warmup


WARM_LOAD_CHECK = textwrap.dedent(
    """
    import json, sys
    import triton.runtime.cache as compiler_cache
    from gdn_kernels._launch import compile_only_driver
    from gdn_kernels._warm import load_warm
    from gdn_tune.presets import preset_by_name
    from gdn_tune.compile import _rebuild_args
    from gdn_tune.sweep.target import target_place
    from gdn_tune.warmup import plan_warmup
    import importlib

    place, cc, target = target_place("h200")
    plan = plan_warmup(preset_by_name("smoke").workloads, place, cc, target, ["gdn_gating"])
    # Triton's own compile path starts with this hash of its installation: a warm load never calls it.
    calls = []
    real_key = compiler_cache.triton_key
    def counting_key():
        calls.append(1)
        return real_key()
    compiler_cache.triton_key = counting_key  # where get_cache_key looks it up
    hits = []
    import triton
    triton.knobs.compilation.listener = lambda **kw: hits.append(kw["cache_hit"])
    for v in plan.variants:
        kernel = getattr(importlib.import_module(v.module), v.function)
        with compile_only_driver(cc):
            load_warm(kernel, **_rebuild_args(v), num_warps=v.num_warps, num_stages=v.num_stages)
    loaded = sum(len(c[0]) for k in {importlib.import_module(v.module).__dict__[v.function] for v in plan.variants}
                 for c in k.device_caches.values())
    assert triton.knobs.runtime.jit_cache_hook is None  # the warm load's hook is gone
    # Someone else's hook decides about compiles: a warm load leaves it in place and does nothing.
    def theirs(**kw):
        return None
    triton.knobs.runtime.jit_cache_hook = theirs
    with compile_only_driver(cc):
        v = plan.variants[0]
        kernel = getattr(importlib.import_module(v.module), v.function)
        load_warm(kernel, **_rebuild_args(v), num_warps=v.num_warps, num_stages=v.num_stages)
    assert triton.knobs.runtime.jit_cache_hook is theirs
    print(json.dumps({"variants": len(plan.variants), "loaded": loaded, "hits": hits, "key_calls": len(calls)}))
    """
)


def test_a_warmed_binary_loads_without_tritons_cache_key_and_a_cold_one_compiles(tmp_path):
    cache = tmp_path / "triton-cache"

    cold = run_reporting(
        WARM_LOAD_CHECK, cache
    )  # nothing warmed: Triton compiles each variant, through its cache key
    assert cold["variants"] >= 2 and cold["loaded"] == cold["variants"]
    assert cold["hits"] == [False] * cold["variants"] and cold["key_calls"] >= cold["variants"]

    shutil.rmtree(cache)
    warm = warmup_cli(
        "--preset", "smoke", "--gpu", "h200", "--kernels", "gdn_gating", "--cache-dir", str(cache)
    )
    assert warm["plan"]["variants"] == cold["variants"]
    assert len(list((cache / "gdn_kernels-warm").glob("*.json"))) == cold["variants"]
    hot = run_reporting(WARM_LOAD_CHECK, cache)
    assert hot["loaded"] == hot["variants"] == cold["variants"]
    assert hot["hits"] == [True] * hot["variants"] and hot["key_calls"] == 0, hot
    # Another ptxas option would make Triton compile other binaries: the warm entries do not apply.
    other = run_reporting(WARM_LOAD_CHECK, cache, PTXAS_OPTIONS="-O2")
    assert other["key_calls"] >= other["variants"], other
