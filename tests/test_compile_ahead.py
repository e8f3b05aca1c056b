"""The cold first call (kernels/_launch.py `compiles_ahead`): a prefill call's first launch readies all
of the call's kernels at once, the cold ones compiling side by side in threads (or in forked child
processes, GDN_KERNELS_COMPILE_AHEAD=processes).

The compiling checks run in a child process that compiles for sm90 without a GPU (the compile-only
driver, as tests/test_guard.py): `chunk_gated_delta_rule` on meta tensors with the h200's tables.
On the GPU host `scripts/bench_cold_start.py` measures the first call itself.
"""

from __future__ import annotations

import threading

from _helpers import run_reporting

from gdn_kernels import _launch

# Prints JSON: the kernels the call records, the threads Triton compiled them in, how many compiles
# compile_ahead waited for, and the compiles that each launch's own first-launch path made afterwards;
# "children": the compiles of other processes (Triton's listener, inherited by a forked child, writes
# each child's to a file of its own).
AHEAD_CHILD = """
import json, os, threading
import torch, triton
import gdn_kernels
from gdn_kernels import _launch
from gdn_kernels._launch import compile_only_driver, prepare_first_launch, recording
from gdn_kernels.tuning import resolving_as
from gdn_tune.sweep.target import target_place

parent = os.getpid()
events = []
def listen(**kw):
    if os.getpid() == parent:
        events.append((threading.current_thread().name, kw["cache_hit"]))
    else:
        with open(f"child-events-{os.getpid()}.json", "w") as f:
            json.dump([kw["src"].fn.__name__, kw["cache_hit"]], f)
triton.knobs.compilation.listener = listen
meta = torch.device("meta")
T, H, HV, K = 200, 2, 4, 64
q = torch.empty(1, T, H, K, dtype=torch.bfloat16, device=meta)
v = torch.empty(1, T, HV, K, dtype=torch.bfloat16, device=meta)
g = torch.empty(1, T, HV, device=meta)
args = (q, q, v, g, g)
kwargs = dict(output_final_state=True, cu_seqlens=torch.tensor([0, 77, T], dtype=torch.int32, device=meta))
entry = gdn_kernels.chunk_gated_delta_rule
place, _, _ = target_place("h200")
with resolving_as("meta", place), recording() as records:
    entry(*args, **kwargs)
with compile_only_driver(90):
    # A first launch inside a compiles_ahead call asks for its warm binary and defers when none exists.
    r = records[0]
    readied = _launch.load_warm(r.kernel, None, defer=True, **r.args, num_warps=r.num_warps, num_stages=r.num_stages)
    deferred_events = list(events)
    # What the call's first launch does (it takes the device's place: here the h200's, as recorded).
    waited = _launch.compile_ahead(entry.__wrapped__, args, kwargs, place)
    ahead = list(events)
    for r in records:  # the call goes on: every launch finds its binary in memory
        prepare_first_launch(r.kernel, r.config, r.args)
import glob
children = [json.load(open(f)) for f in sorted(glob.glob("child-events-*.json"))]
print(json.dumps({
    "children": children,
    "kernels": sorted({r.kernel.fn.__name__ for r in records}),
    "ahead": ahead,
    "after": events[len(ahead):],
    "waited": waited,
    "readied": readied,
    "deferred_events": deferred_events,
}))
"""


def test_a_cold_call_compiles_its_kernels_in_child_processes_and_then_finds_them(tmp_path):
    report = run_reporting(
        AHEAD_CHILD, tmp_path / "cache", cwd=tmp_path, GDN_KERNELS_COMPILE_AHEAD="processes"
    )
    assert report["readied"] is False and report["deferred_events"] == []  # deferred: nothing compiled
    assert len(report["kernels"]) >= 5  # varlen guard, bookkeeping, kkt+solve, w/u, state and output
    # One child per cold kernel compiled it; this process only loaded the binaries from the disk cache.
    assert sorted(name for name, hit in report["children"] if not hit) == sorted(report["kernels"])
    assert report["ahead"] and all(hit for _, hit in report["ahead"])
    assert report["waited"] == len(report["ahead"])
    assert report["after"] == []


def test_in_threads_a_cold_call_compiles_its_kernels_side_by_side_and_then_finds_them(tmp_path):
    report = run_reporting(AHEAD_CHILD, tmp_path / "cache", cwd=tmp_path)
    assert report["children"] == []
    compiled = [name for name, hit in report["ahead"] if not hit]
    assert len(compiled) >= len(report["kernels"]) >= 5
    assert report["waited"] == len(compiled)
    # Compiled in the pool's threads, not one after another at each kernel's own first launch.
    assert all(name.startswith("gdn_kernels-compile") for name in compiled), compiled
    assert report["after"] == []


def test_a_cached_call_loads_ahead_without_compiling(tmp_path):
    cache = tmp_path / "cache"
    run_reporting(AHEAD_CHILD, cache, cwd=tmp_path)
    for f in tmp_path.glob("child-events-*.json"):
        f.unlink()
    report = run_reporting(AHEAD_CHILD, cache, cwd=tmp_path, GDN_KERNELS_COMPILE_AHEAD="processes")
    # Triton's disk cache holds every binary
    assert report["children"] == []  # nothing to compile: no child
    assert report["ahead"] and all(hit for _, hit in report["ahead"])
    assert report["waited"] == len(report["ahead"])  # Triton's disk-cache loads, in the pool
    assert report["after"] == []


def test_compile_ahead_off_leaves_the_entry_point_unwrapped(tmp_path):
    code = (
        "import json, gdn_kernels\n"
        "print(json.dumps(hasattr(gdn_kernels.chunk_gated_delta_rule, '__wrapped__')))"
    )
    assert run_reporting(code, tmp_path, GDN_KERNELS_COMPILE_AHEAD="0") is False
    assert run_reporting(code, tmp_path) is True


class _FakeKernel:
    """Not a JITFunction: `launch` takes Triton's own path, `kernel[grid](**args)`, which this records."""

    def __init__(self) -> None:
        self.ran: list[str] = []

    def __getitem__(self, grid):
        return lambda **args: self.ran.append(threading.current_thread().name)


def test_recording_in_one_thread_leaves_other_threads_launches_running():
    kernel, config = _FakeKernel(), _launch.Config.of(num_warps=4, num_stages=1)
    with _launch.recording() as records:
        assert _launch.is_recording()
        other = threading.Thread(target=lambda: _launch.launch(kernel, (1,), config), name="other")
        other.start()
        other.join()
        _launch.launch(kernel, (1,), config)
    assert kernel.ran == ["other"]
    assert [r.kernel for r in records] == [kernel]
    assert not _launch.is_recording()


def test_a_failing_call_readies_nothing_and_raises_nothing():
    def entry():
        raise ValueError("bad argument")

    assert _launch.compile_ahead(entry, (), {}, None) == 0


def test_a_calls_first_cold_launch_readies_the_call_once(monkeypatch):
    """The wiring in `prepare_first_launch`: inside a `compiles_ahead` call, the first launch whose warm
    binary is missing (load_warm defers) hands the call to compile_ahead; later launches of the call,
    and launches outside any such call, do not."""
    from gdn_kernels import _tables

    readied, deferrals = [], []
    monkeypatch.setattr(
        _launch, "load_warm", lambda kernel, watch, defer, **kw: deferrals.append(defer) or not defer
    )
    monkeypatch.setattr(_launch, "compile_ahead", lambda *call: readied.append(call) or 0)
    monkeypatch.setattr(_launch, "_current_device", lambda: 0)
    monkeypatch.setattr(_tables, "place_for", lambda device: f"place of {device}")
    monkeypatch.setattr(_launch, "INTERPRETED", False)  # the tests' process interprets: decorate anyway
    config = _launch.Config.of(num_warps=4, num_stages=1)

    def entry(x, *, y):
        _launch.prepare_first_launch(_FakeKernel(), config, {})
        _launch.prepare_first_launch(_FakeKernel(), config, {})
        return x + y

    assert _launch.compiles_ahead(entry)(1, y=2) == 3
    assert readied == [(entry, (1,), {"y": 2}, "place of cuda:0")]
    assert deferrals == [True, False]
    _launch.prepare_first_launch(_FakeKernel(), config, {})  # outside any call: nothing to ready
    assert len(readied) == 1 and deferrals[-1] is False
    assert _launch._chain is None
