"""`gdn_kernels.preload()` (kernels/_preload.py, `_warm.preload_warm`): at start-up, every warm binary
of this GPU goes into memory, so a warmed first launch finds its binary there.

On the CPU the binaries are loaded under Triton's compile-only driver for sm90 (nothing goes onto a
device); on the GPU host the test at the end preloads for real and then makes a first call.
"""

from __future__ import annotations

import json
import shutil

import pytest
from _helpers import run_reporting, warmup_cli

WARM = ("--preset", "smoke", "--gpu", "h200", "--kernels", "gdn_gating")

# Prints JSON: what preload_warm loaded and skipped, Triton's listener events during it, and the events
# of the first launches of gating calls (the warmed shapes) after it.
PRELOAD_CHILD = """
import json
import torch, triton
import gdn_kernels
from gdn_kernels import _warm
from gdn_kernels._launch import compile_only_driver, prepare_first_launch, recording
from gdn_kernels.tuning import resolving_as
from gdn_tune.sweep.target import target_place

events = []
triton.knobs.compilation.listener = lambda **kw: events.append(kw["cache_hit"])
meta = torch.device("meta")
place, _, _ = target_place("h200")
with compile_only_driver(90):
    loaded, skipped, kernels = _warm.preload_warm(load_modules=False)
    during = list(events)
    with resolving_as("meta", place):
        for T in (1, 64, 8192):
            with recording() as records:
                gdn_kernels.fused_gdn_gating(
                    torch.empty(2, device=meta), torch.empty(T, 2, dtype=torch.bfloat16, device=meta),
                    torch.empty(T, 2, dtype=torch.bfloat16, device=meta), torch.empty(2, device=meta))
            for r in records:
                prepare_first_launch(r.kernel, r.config, r.args)
print(json.dumps({"loaded": loaded, "skipped": skipped, "during": during, "after": events[len(during):],
                  "kernels": sorted(k.fn.__name__ for k in kernels)}))
"""


def test_preload_puts_every_warm_binary_in_memory_and_first_launches_find_them(tmp_path):
    cache = tmp_path / "cache"
    report = warmup_cli(*WARM, "--cache-dir", str(cache), "--jobs", "2")
    variants = report["plan"]["variants"]
    assert report["counts"] == {"compiled": variants}
    # An entry that is not named after this process's fingerprint (other sources, another Triton).
    entries = sorted((cache / "gdn_kernels-warm").glob("*.json"))
    shutil.copy(entries[0], entries[0].with_name("0" * 64 + ".json"))
    # An entry of another target.
    other = json.loads(entries[0].read_text()) | {
        "target": "GPUTarget(backend='cuda', arch=80, warp_size=32)"
    }
    (entries[0].with_name("1" * 64 + ".json")).write_text(json.dumps(other))

    result = run_reporting(PRELOAD_CHILD, cache)
    assert result["loaded"] == variants > 0
    assert result["skipped"] == 2
    assert result["during"] == [True] * variants  # loaded from the entries, nothing compiled
    assert len(result["kernels"]) == 1  # gdn_gating's one kernel
    assert result["after"] == []  # each first launch found its binary in memory


def test_preload_without_warm_entries_loads_nothing_and_compiles_nothing(tmp_path):
    result = run_reporting(
        PRELOAD_CHILD.replace("for T in (1, 64, 8192):", "for T in ():"), tmp_path / "empty"
    )
    assert (result["loaded"], result["skipped"], result["during"]) == (0, 0, [])


def test_preload_refuses_a_device_that_is_not_cuda():
    import gdn_kernels

    with pytest.raises(ValueError, match="preload: device must be a CUDA device, got cpu"):
        gdn_kernels.preload("cpu")


@pytest.mark.gpu
def test_preload_on_the_gpu_then_a_warmed_first_call(tmp_path):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (run on the GPU host)")
    cache = tmp_path / "cache"
    warmup_cli("--shape", "H=2,HV=8,K=128,V=128,T=1024", "--gpu", "auto", "--cache-dir", str(cache))
    code = """
import json, torch, triton
import gdn_kernels
compiled = []
triton.knobs.compilation.listener = lambda **kw: compiled.append(kw["src"].fn.__name__)
report = gdn_kernels.preload()
before = len(compiled)
T = 1024
# Unit-norm q and k (on the host side of torch, no kernel of ours): the recurrence stays bounded.
q = torch.nn.functional.normalize(torch.randn(1, T, 2, 128, device="cuda"), dim=-1).bfloat16()
v = torch.randn(1, T, 8, 128, device="cuda", dtype=torch.bfloat16)
g = -torch.rand(1, T, 8, device="cuda")
b = torch.rand(1, T, 8, device="cuda")
# The variant warmup covers: the serving profile (initial and final state, l2norm in kernel, int32 offsets).
h0 = torch.zeros(1, 8, 128, 128, device="cuda")
o, _ = gdn_kernels.chunk_gated_delta_rule(q, q, v, g, b, initial_state=h0, output_final_state=True,
    use_qk_l2norm_in_kernel=True, cu_seqlens=torch.tensor([0, T], device="cuda", dtype=torch.int32))
torch.cuda.synchronize()
print(json.dumps({"binaries": report.binaries, "after": compiled[before:], "finite": bool(o.isfinite().all())}))
"""
    result = run_reporting(code, cache)
    assert result["binaries"] > 0
    assert result["after"] == []  # kernels the first call compiled or loaded: none
    assert result["finite"]
