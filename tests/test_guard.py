"""The compile guard (GDN_TUNE_COMPILE_GUARD) and binary bundles (GDN_TUNE_BINARY_DIR), on the CPU.

Each check runs in a child process that compiles for sm90 (no interpreter): production's public
functions run on meta tensors with the h200's tables, their launches are recorded, and each goes
through the first-launch path of `gdn_kernels._launch` (`prepare_first_launch`: warm entry, bundle,
guard) under the compile-only driver: Triton compiles, or finds the binary, exactly as a first launch
on the GPU would, and launches nothing. On the GPU host the same is proven on real launches, a CUDA
graph capture of decode included (the `gpu` test at the end).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from _helpers import compiled_env, run_reporting, warmup_cli

from gdn_kernels._warm import BUNDLE_FORMAT, bundle_refusal

# argv[1]: JSON {"calls": [[function, tokens, dtype], ...], "cc": 90, "seal": null | "plain" | "loads",
# "triton_version": null | "x.y.z", "driver": null | 12080}. Prints, per recorded launch, whether the
# first-launch path let it through, the guard's error, and every warning; Triton's listener events and
# how often its per-process cache key (triton_key) was computed.
GUARD_CHILD = textwrap.dedent(
    """
    import json, sys, warnings
    spec = json.loads(sys.argv[1])
    import triton
    if spec.get("triton_version"):
        triton.__version__ = spec["triton_version"]  # another Triton, as far as a bundle can tell
    import triton.runtime.cache as compiler_cache
    import torch
    import gdn_kernels
    from gdn_kernels import _warm
    from gdn_kernels._launch import compile_only_driver, prepare_first_launch, recording
    from gdn_kernels.tuning import resolving_as
    from gdn_tune.sweep.target import target_place

    if spec.get("driver"):
        _warm.driver_cuda_version = lambda: spec["driver"]  # the CPU has no CUDA driver to ask
    key_calls = []
    real_key = compiler_cache.triton_key
    compiler_cache.triton_key = lambda: key_calls.append(1) or real_key()
    hits = []
    triton.knobs.compilation.listener = lambda **kw: hits.append(kw["cache_hit"])
    meta = torch.device("meta")
    calls = {
        "gating": lambda T, dt: gdn_kernels.fused_gdn_gating(
            torch.empty(2, device=meta), torch.empty(T, 2, dtype=dt, device=meta),
            torch.empty(T, 2, dtype=dt, device=meta), torch.empty(2, device=meta)),
        "l2norm": lambda T, dt: gdn_kernels.l2norm(torch.empty(1, T, 1, 32, dtype=dt, device=meta)),
    }
    place, _, _ = target_place("h200")
    launches = []
    with resolving_as("meta", place), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i, (function, tokens, dtype) in enumerate(spec["calls"]):
            if spec.get("seal") and i == spec.get("seal_before", 0):
                gdn_kernels.seal_compiles(loads=spec["seal"] == "loads")
            with recording() as records:
                calls[function](tokens, getattr(torch, dtype))
            for r in records:
                row = {"kernel": r.kernel.fn.__name__, "call": i, "ok": True}
                try:
                    with compile_only_driver(spec.get("cc", 90)):
                        prepare_first_launch(r.kernel, r.config, r.args)
                except gdn_kernels.CompileGuardError as e:
                    row.update(ok=False, error=str(e))
                launches.append(row)
    print(json.dumps({
        "launches": launches,
        "warnings": [str(w.message) for w in caught],
        "trips": [t.what for t in gdn_kernels.compile_guard_trips()],
        "hits": hits,
        "key_calls": len(key_calls),
    }))
    """
)


def _child(cache: Path, calls: list, **spec_and_env: str | int | None) -> dict:
    env = {k: str(v) for k, v in spec_and_env.items() if k.isupper()}
    spec = {k: v for k, v in spec_and_env.items() if not k.isupper()}
    done = subprocess.run(
        [sys.executable, "-c", GUARD_CHILD, json.dumps({"calls": calls, **spec})],
        capture_output=True,
        text=True,
        env=compiled_env(TRITON_CACHE_DIR=str(cache), **env),
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


WARM = ("--preset", "smoke", "--gpu", "h200", "--kernels", "gdn_gating")
BF16_100 = [["gating", 100, "bfloat16"]]  # the smoke prefill: 100 tokens, 2 value heads, bf16
FP16_100 = [["gating", 100, "float16"]]  # the same call in another dtype: no warmup made it


@pytest.fixture(scope="module")
def warmed(tmp_path_factory) -> tuple[Path, Path]:
    """(Triton cache, bundle) after `gdn-tune warmup --bundle` of the smoke preset's gating kernel."""
    root = tmp_path_factory.mktemp("warmed")
    cache, bundle = root / "triton-cache", root / "bundle"
    report = warmup_cli(*WARM, "--cache-dir", str(cache), "--bundle", str(bundle), "--jobs", "2")
    assert report["counts"] == {"compiled": report["plan"]["variants"]}, report["results"]
    assert report["bundle"]["variants"] == report["plan"]["variants"] >= 2
    return cache, bundle


def test_guard_refuses_a_compile_before_it_starts_and_names_kernel_key_config_and_specialisation(tmp_path):
    cache = tmp_path / "empty-cache"
    report = _child(cache, BF16_100, GDN_TUNE_COMPILE_GUARD="error")
    [launch] = report["launches"]
    assert not launch["ok"]
    message = launch["error"]
    assert "gdn_gating (_gdn_gating_kernel) would compile (refused) after start-up" in message
    assert "table key: dtype=bfloat16-HV=2" in message  # the key the h200's tables resolved
    assert "config: BLOCK" in message and "num_warps" in message
    assert "a=*bf16/16" in message and "n_elements=i32" in message
    assert "nearest warmed variant: none" in message  # nothing warmed at all
    assert report["trips"] == ["compile"]
    assert not list(cache.rglob("*.cubin"))  # refused before Triton compiled anything

    # Off (the default): the same launch compiles, silently.
    report = _child(cache, BF16_100)
    assert report["launches"][0]["ok"] and report["warnings"] == [] and report["hits"] == [False]


def test_guard_is_silent_on_warmed_and_cached_launches_and_names_what_an_unwarmed_one_differs_in(
    warmed, tmp_path
):
    cache, _ = warmed
    report = _child(cache, BF16_100 + FP16_100, GDN_TUNE_COMPILE_GUARD="error")
    warmed_launch, unwarmed = report["launches"]
    assert warmed_launch["ok"] and report["key_calls"] >= 1  # the fp16 check computed Triton's key
    assert not unwarmed["ok"]
    assert "a: *fp16/16 here, *bf16/16 warmed" in unwarmed["error"], unwarmed["error"]

    # Without warm entries the binary is still in Triton's cache: a load, not a compile. The guard's
    # own lookup of Triton's cache key must agree with compile()'s for this to stay silent.
    plain = tmp_path / "plain-cache"
    shutil.copytree(cache, plain)
    shutil.rmtree(plain / "gdn_kernels-warm")
    report = _child(plain, BF16_100, GDN_TUNE_COMPILE_GUARD="error")
    assert report["launches"][0]["ok"] and report["hits"] == [True], report


def test_guard_warn_mode_warns_once_per_specialisation_and_lets_it_compile(warmed, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(warmed[0], cache)
    report = _child(cache, FP16_100 + FP16_100 + BF16_100, GDN_TUNE_COMPILE_GUARD="warn")
    assert all(launch["ok"] for launch in report["launches"])
    assert report["trips"] == ["compile"]  # the second fp16 call finds the binary in memory
    [warning] = report["warnings"]
    assert (
        "_gdn_gating_kernel) compiles after start-up" in warning and "GDN_TUNE_COMPILE_GUARD=warn" in warning
    )
    assert report["hits"] == [False, True]  # compiled once, then the warmed bf16 one loaded


def test_guard_from_seal_allows_start_up_compiles_and_seal_with_loads_reports_cache_loads(warmed, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(warmed[0], cache)
    l2norm = [["l2norm", 100, "bfloat16"]]  # not warmed (the warmup compiled gating only)
    env = {"GDN_TUNE_COMPILE_GUARD": "error", "GDN_TUNE_COMPILE_GUARD_FROM": "seal"}
    report = _child(cache, l2norm + FP16_100, seal="plain", seal_before=1, **env)
    assert [launch["ok"] for launch in report["launches"]] == [True, False]  # start-up, then sealed
    assert report["trips"] == ["compile"]

    # seal_compiles(loads=True): a binary loaded after start-up is reported too, as a load.
    report = _child(cache, BF16_100, seal="loads", **env)
    assert not report["launches"][0]["ok"] and report["trips"] == ["load"]
    assert "loads a binary from a cache after start-up" in report["launches"][0]["error"]


@pytest.mark.parametrize(
    ("variable", "value"), [("GDN_TUNE_COMPILE_GUARD", "eror"), ("GDN_TUNE_COMPILE_GUARD_FROM", "later")]
)
def test_a_misspelt_guard_setting_fails_the_import(variable, value):
    done = subprocess.run(
        [sys.executable, "-c", "import gdn_kernels"],
        capture_output=True,
        text=True,
        env=compiled_env(**{variable: value}),
        timeout=120,
    )
    assert done.returncode != 0
    assert f"{variable}='{value}': expected one of" in done.stderr, done.stderr


def test_a_bundle_serves_a_process_whose_cache_is_empty_without_compiling(warmed, tmp_path):
    _, bundle = warmed
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["format"] == BUNDLE_FORMAT and manifest["arch"] == 90 and manifest["triton"]
    assert not list(bundle.rglob("*.ptx")) and list(bundle.rglob("*.cubin"))  # binaries, no IR
    empty = tmp_path / "fresh-cache"
    env = {"GDN_TUNE_BINARY_DIR": str(bundle), "GDN_TUNE_COMPILE_GUARD": "error"}
    report = _child(empty, BF16_100, driver=12080, **env)
    assert report["launches"][0]["ok"] and report["warnings"] == [], report
    assert report["hits"] == [True] and report["key_calls"] == 0  # loaded, without Triton's cache key
    assert not list(empty.rglob("*.cubin"))  # nothing compiled into the fresh cache


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        ({"triton_version": "3.6.1"}, "built with Triton 3.6.0, this process runs Triton 3.6.1"),
        ({"cc": 100}, "built for compute capability 90, this GPU is 100"),
        ({"driver": 11080}, "ptxas of CUDA 12; the driver is CUDA 11.8"),
    ],
    ids=["another-triton", "another-arch", "older-driver"],
)
def test_a_bundle_from_another_triton_architecture_or_driver_is_refused(warmed, tmp_path, spec, why):
    _, bundle = warmed
    spec = {"driver": 12080, **spec}
    env = {"GDN_TUNE_BINARY_DIR": str(bundle), "GDN_TUNE_COMPILE_GUARD": "error"}
    report = _child(tmp_path / "fresh-cache", BF16_100, **spec, **env)
    assert any(why in w and "is not used" in w for w in report["warnings"]), report["warnings"]
    assert not report["launches"][0]["ok"] and report["trips"] == ["compile"]  # nothing loaded from it


def test_bundle_refusal_names_what_differs():
    here = {
        "fingerprint": "f",
        "triton": "3.6.0",
        "installation": "wheel triton a",
        "sources_and_environment": "s",
    }
    manifest = {"format": BUNDLE_FORMAT, "arch": 90, "ptxas": "Build cuda_12.8.r12.8/compiler.1_0", **here}
    assert bundle_refusal(manifest, here, 90, 12080) is None
    assert bundle_refusal(manifest, here, 90, 13000) is None  # a newer driver loads older cubins
    assert "differs from this process's in the Triton installation" in bundle_refusal(
        {**manifest, "installation": "wheel triton b", "fingerprint": "g"}, here, 90, 12080
    )
    assert "gdn_kernels' sources or the toolchain environment" in bundle_refusal(
        {**manifest, "sources_and_environment": "t", "fingerprint": "g"}, here, 90, 12080
    )
    assert "no CUDA driver" in bundle_refusal(manifest, here, 90, None)
    assert "not a bundle of format" in bundle_refusal({**manifest, "format": 0}, here, 90, 12080)
    assert "not a bundle of format" in bundle_refusal(None, here, 90, 12080)


GPU_GUARDED_SERVING = textwrap.dedent(
    """
    import json, torch
    import gdn_kernels
    dev, H, HV, K, V = "cuda", 16, 64, 128, 128
    bf16 = torch.bfloat16

    def prefill(lengths, dtype=bf16):
        T = sum(lengths)
        q = torch.randn(1, T, H, K, device=dev, dtype=dtype)
        cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], device=dev, dtype=torch.int32)
        return gdn_kernels.chunk_gated_delta_rule(
            q, torch.randn_like(q), torch.randn(1, T, HV, V, device=dev, dtype=dtype),
            torch.nn.functional.logsigmoid(torch.randn(1, T, HV, device=dev)), torch.rand(1, T, HV, device=dev),
            initial_state=torch.randn(len(lengths), HV, K, V, device=dev), output_final_state=True,
            cu_seqlens=cu, use_qk_l2norm_in_kernel=True,
        )

    N = 32
    q = torch.randn(1, N, H, K, device=dev, dtype=bf16)
    k, v = torch.randn_like(q), torch.randn(1, N, HV, V, device=dev, dtype=bf16)
    g = torch.nn.functional.logsigmoid(torch.randn(1, N, HV, device=dev))
    beta = torch.rand(1, N, HV, device=dev)
    cache = torch.randn(2 * N, HV, K, V, device=dev)
    cu = torch.arange(N + 1, device=dev, dtype=torch.int32)
    slots = torch.arange(N, device=dev, dtype=torch.int32)

    def decode():
        return gdn_kernels.fused_recurrent_gated_delta_rule(
            q, k, v, g, beta, initial_state=cache, cu_seqlens=cu, ssm_state_indices=slots,
            use_qk_l2norm_in_kernel=True, inplace_final_state=True,
        )

    prefill([8192]); prefill([1000, 3000, 4004, 96])
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        decode()  # eager, as an engine warms a graph's shapes
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        o, _ = decode()
    graph.replay(); graph.replay()
    torch.cuda.synchronize()
    refused = ""
    try:
        prefill([8192], dtype=torch.float16)  # no warmup made fp16 variants
    except gdn_kernels.CompileGuardError as e:
        refused = str(e)
    print(json.dumps({"trips": [t.what for t in gdn_kernels.compile_guard_trips()], "refused": refused,
                      "finite": bool(o.isfinite().all())}))
    """
)


@pytest.mark.gpu
def test_gpu_a_guarded_process_serves_warmed_shapes_and_a_decode_graph_and_refuses_an_unwarmed_one(tmp_path):
    cache, bundle = tmp_path / "triton-cache", tmp_path / "bundle"
    shapes = (
        "--shape",
        "H=16,HV=64,K=128,V=128,T=8192",
        "--shape",
        "H=16,HV=64,K=128,V=128,T=32,N=32,phase=decode",
    )
    warm = warmup_cli(*shapes, "--cache-dir", str(cache), "--bundle", str(bundle))
    assert warm["counts"].get("failed", 0) == 0 and warm["launchers_missing"] == [], warm
    for served_from, env in (
        (cache, {}),  # the cache the warmup filled
        (tmp_path / "fresh-cache", {"GDN_TUNE_BINARY_DIR": str(bundle)}),  # a fresh container with the bundle
    ):
        report = run_reporting(GPU_GUARDED_SERVING, served_from, 600, GDN_TUNE_COMPILE_GUARD="error", **env)
        assert report["trips"] == ["compile"], report  # only the fp16 call, refused
        assert "would compile (refused)" in report["refused"] and report["finite"], report


def test_a_bundles_c_modules_are_seeded_into_tritons_cache_under_the_folder_triton_names(
    tmp_path, monkeypatch
):
    # Triton names a cache folder by the base32 of a hex key; get_cache_manager takes the hex key. A GPU
    # warm-up's bundle holds such folders (a CPU one has none), so the seeding is checked here directly.
    import base64

    import triton

    from gdn_kernels import _warm

    key = "0f" * 32
    folder = base64.b32encode(bytes.fromhex(key)).decode().rstrip("=")
    bundle, cache = tmp_path / "bundle", tmp_path / "cache"
    (bundle / _warm.MODULES / folder).mkdir(parents=True)
    (bundle / _warm.MODULES / folder / "launcher.so").write_bytes(b"\x7fELF module")
    (bundle / _warm.MODULES / "not-base32!").mkdir()
    (bundle / _warm.MODULES / "not-base32!" / "x.so").write_bytes(b"skipped")
    (bundle / _warm.MANIFEST).write_text(json.dumps(_warm.bundle_identity(90)))
    monkeypatch.setenv(_warm.ENV_BINARY_DIR, str(bundle))
    monkeypatch.setattr(triton.knobs.cache, "dir", str(cache))
    _warm._seed_modules()
    assert (cache / folder / "launcher.so").read_bytes() == b"\x7fELF module"
    assert not list(cache.rglob("x.so"))
