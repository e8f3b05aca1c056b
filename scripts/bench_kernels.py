"""Forward-pass timings of gdn_kernels against flash-linear-attention (and FlashInfer where installed).

Run on the GPU host, FLA installed beside (the package itself never imports it):

    python scripts/bench_kernels.py [--only prefill|decode|stages] [--cases dp-8k,tp8,...] [--reps 30]
        [--no-fla] [--no-flashinfer] [--stages-breakdown | --no-stages-breakdown] [--out results.json]
    python scripts/bench_kernels.py --list-cases     # the prefill cases, ANCHORS.md's six marked
    python scripts/bench_kernels.py --dry-run        # no GPU: cases, input shapes, I/O-floor bytes

Prefill: every case is timed for each library on the same inputs, as a CUDA-graph replay (GPU time
only) and as an eager call (host work included), the median of --reps replays and 2/3 as many eager
calls, each between its own pair of CUDA events. Ratios are the other library's time over ours
(above 1: we are faster). The I/O floor is the bytes a call must move at the least (q, k, v, g, beta
and the initial state read, o and the final state written, once each, in their real dtypes) over the
measured device copy bandwidth (bytes read plus written). Rows print as each case completes and the
JSON (--out) is rewritten after each, so a run cut short still reports; then per-stage breakdowns
(one profiled eager call per library, CUDA kernel time by kernel name; ANCHORS.md's six by default),
and the summary last: the table again, geometric means and the issue's goals, met or missed.
Every library is warmed up first (FLA autotunes on its first call per shape, FlashInfer compiles);
that cost is excluded here (each row says what the first call took) and measured by
scripts/bench_cold_start.py. scripts/fla_warm.py run beforehand puts FLA's picks in Triton's cache.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from gpu_stages import format_breakdown, kernel_breakdown


def mixed_lengths(count: int, seed: int) -> list[int]:
    """`count` sequence lengths in [1, 1024] from a seeded generator, the chunk edges 1, 63, 64 and 65
    among them."""
    rng = random.Random(seed)
    lengths = [1, 63, 64, 65] + [rng.randint(1, 1024) for _ in range(count - 4)]
    rng.shuffle(lengths)
    return lengths


# (name, H, HV, sequence lengths), K = V = 128: ANCHORS.md's six prefill cases first.
ANCHOR_CASES = [
    ("dp-8k", 16, 64, [8192]),
    ("dp-4seq", 16, 64, [1000, 3000, 4096, 96]),
    ("tp1-next", 16, 32, [8192]),
    ("tp8", 2, 8, [8192]),
    ("dp-32k", 16, 64, [32768]),
    ("dp-64x128", 16, 64, [128] * 64),
]
ANCHORS = tuple(case[0] for case in ANCHOR_CASES)
PREFILL_CASES = [
    *ANCHOR_CASES,
    ("short-37", 16, 64, [37]),  # under one chunk
    ("short-200", 16, 64, [200]),  # three chunks and a part
    ("mix16", 16, 64, mixed_lengths(16, seed=16)),
    ("mix16-tp4", 4, 16, mixed_lengths(16, seed=16)),
    ("mix64", 16, 64, mixed_lengths(64, seed=64)),
    ("mix64-tp4", 4, 16, mixed_lengths(64, seed=64)),
    ("tp8-32k", 2, 8, [32768]),
    ("tp8-64k", 2, 8, [65536]),
]
# (sequences, H, HV): ANCHORS.md decode cases, one token per sequence.
DECODE_CASES = [(1, 16, 64), (32, 16, 64), (256, 16, 64), (256, 2, 8)]
K = V = 128
# The issue's goals, by CUDA-graph time: geometric mean of FLA / ours over ANCHORS.md's six, the least
# any one of them may reach, and two absolute times (ms).
GOAL_GEOMEAN, GOAL_EACH_ANCHOR = 2.0, 1.5
GOAL_MS = {"dp-8k": 0.35, "tp8": 0.06}
# What --dry-run divides by to show a floor without a GPU: the H200's measured copy bandwidth (docs).
NOMINAL_BANDWIDTH = 4.2e12


def prefill_inputs(H: int, HV: int, lengths: list[int], device: str = "cuda") -> dict:
    T, N = sum(lengths), len(lengths)
    q = torch.randn(1, T, H, K, device=device, dtype=torch.bfloat16)
    k = F.normalize(torch.randn(1, T, H, K, device=device, dtype=torch.float32), dim=-1).to(torch.bfloat16)
    v = torch.randn(1, T, HV, V, device=device, dtype=torch.bfloat16)
    g = F.logsigmoid(torch.randn(1, T, HV, device=device, dtype=torch.float32))
    beta = torch.randn(1, T, HV, device=device, dtype=torch.float32).sigmoid()
    h0 = torch.randn(N, HV, K, V, device=device, dtype=torch.float32) * 0.1
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], device=device, dtype=torch.int32)
    return dict(q=q, k=k, v=v, g=g, beta=beta, initial_state=h0, output_final_state=True, cu_seqlens=cu)


def decode_inputs(N: int, H: int, HV: int, device: str = "cuda") -> dict:
    q = torch.randn(N, 1, H, K, device=device, dtype=torch.bfloat16)
    k = F.normalize(torch.randn(N, 1, H, K, device=device, dtype=torch.float32), dim=-1).to(torch.bfloat16)
    v = torch.randn(N, 1, HV, V, device=device, dtype=torch.bfloat16)
    g = F.logsigmoid(torch.randn(N, 1, HV, device=device, dtype=torch.float32))
    beta = torch.randn(N, 1, HV, device=device, dtype=torch.float32).sigmoid()
    h0 = torch.randn(N, HV, K, V, device=device, dtype=torch.float32) * 0.1
    return dict(q=q, k=k, v=v, g=g, beta=beta, initial_state=h0, output_final_state=True)


def time_eager(fn, reps: int, warmup: int = 5) -> float:
    """Median milliseconds of one call, each call bracketed by its own event pair (host work included)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def time_graph(fn, reps: int) -> float:
    """Median milliseconds of one call replayed from a CUDA graph (no host work)."""
    fn()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return time_eager(graph.replay, reps)


def copy_bandwidth() -> float:
    """Device-to-device copy bandwidth in bytes/s, counting bytes read plus written."""
    src = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = time_eager(lambda: dst.copy_(src), 20)
    return 2 * src.numel() / (ms * 1e-3)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return (torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b)).item()


def bench_stage_kernels(reps: int) -> list[dict]:
    """Each tunable kernel alone with its default config, on the dp-8k and tp8 shapes."""
    from gdn_kernels import Workload, kernel_specs

    rows = []
    for case, H, HV in (("dp-8k", 16, 64), ("tp8", 2, 8)):
        for spec in kernel_specs().values():
            if "prefill" not in spec.phases:
                continue
            key = spec.key_for(Workload(H, HV, K, V, tokens=8192, sequences=1))
            inputs = spec.make_inputs(key, "cuda", 0)
            outputs = spec.make_outputs(inputs)
            ms = time_graph(lambda: spec.launch(inputs, outputs, spec.default), reps)
            rows.append({"case": case, "kernel": spec.name, "config": spec.default.label, "ms": ms})
    return rows


def io_bytes(x: dict) -> dict:
    """Bytes one prefill call must move at the least, in the inputs' real dtypes: q, k, v, g, beta and
    the initial state read once; o (v's shape and dtype) and the float32 final state written once."""

    def size(t: torch.Tensor) -> int:
        return t.numel() * t.element_size()

    read = sum(size(x[name]) for name in ("q", "k", "v", "g", "beta", "initial_state"))
    written = size(x["v"]) + x["initial_state"].numel() * 4
    return {"read": read, "written": written, "total": read + written}


def flashinfer_inputs(x: dict) -> dict:
    """FlashInfer's arguments for the same problem, made before any timing (flashinfer/gdn_prefill.py):
    q, k, v [T, heads, 128] contiguous (no batch dimension); g the decay itself, exp of our log-decay,
    and beta, float32 [T, HV]; the initial state [N, HV, V, K] float32; cu_seqlens int64, which its
    SM90 path would otherwise convert inside every call."""
    return {
        "q": x["q"][0].contiguous(),
        "k": x["k"][0].contiguous(),
        "v": x["v"][0].contiguous(),
        "g": x["g"][0].exp().contiguous(),
        "beta": x["beta"][0].float().contiguous(),
        "scale": K**-0.5,
        "initial_state": x["initial_state"].transpose(-1, -2).contiguous(),
        "output_final_state": True,
        "cu_seqlens": x["cu_seqlens"].to(torch.int64),
    }


@dataclass(frozen=True)
class Contestant:
    """One library's prefill: `make` turns the case's inputs into the call to time (any conversion done
    there, outside the timed region); `result` turns its return into (o [1,T,HV,V], state [N,HV,K,V])."""

    key: str
    label: str
    make: Callable[[dict], Callable[[], Any]]
    result: Callable[[Any], tuple[torch.Tensor, torch.Tensor]]


def contestants(ours, fla, flashinfer) -> list[Contestant]:
    """Ours first (the ratios' denominator), then FLA and FlashInfer where present."""
    chosen = [Contestant("ours", "ours", lambda x: lambda: ours.chunk_gated_delta_rule(**x), tuple)]
    if fla is not None:
        chosen.append(Contestant("fla", "FLA", lambda x: lambda: fla.chunk_gated_delta_rule(**x), tuple))
    if flashinfer is not None:

        def make(x: dict) -> Callable[[], Any]:
            args = flashinfer_inputs(x)
            return lambda: flashinfer.chunk_gated_delta_rule(**args)

        chosen.append(
            Contestant("fi", "FlashInfer", make, lambda out: (out[0].unsqueeze(0), out[1].transpose(-1, -2)))
        )
    return chosen


def load_flashinfer(left_out: str | None) -> tuple[Any, str]:
    """(flashinfer.gdn_prefill or None, its version or why it is left out: `left_out`, or its import
    failing)."""
    if left_out:
        return None, f"left out ({left_out})"
    try:
        import flashinfer
        import flashinfer.gdn_prefill as module
    except Exception as error:  # not installed, or its import fails on this host
        return None, f"left out: import flashinfer.gdn_prefill failed ({describe(error)})"
    return module, f"flashinfer {getattr(flashinfer, '__version__', '?')}"


def describe(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}".replace("\n", " ")
    return text if len(text) <= 240 else text[:237] + "..."


def measure(contestant: Contestant, x: dict, graph_reps: int, eager_reps: int) -> tuple[dict, Any]:
    """First call (warm-up, compile or autotune: its seconds), eager and graph median ms; errors are
    recorded, not raised, so one library failing a case leaves the others' figures."""
    record: dict = {}
    try:
        fn = contestant.make(x)
        start = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        record["first_call_s"] = time.perf_counter() - start
        result = contestant.result(out)
        record["eager_ms"] = time_eager(fn, eager_reps)
    except Exception as error:
        record["error"] = describe(error)
        return record, None
    stream = torch.cuda.current_stream()
    try:
        record["graph_ms"] = time_graph(fn, graph_reps)
    except Exception as error:  # a capture that fails can leave its side stream current
        torch.cuda.set_stream(stream)
        torch.cuda.synchronize()
        record["graph_error"] = describe(error)
    return record, result


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def bench_prefill_case(
    case: tuple, chosen: list[Contestant], bandwidth: float, reps: tuple[int, int]
) -> dict:
    """One row: every library's graph and eager ms, the ratios to ours, the I/O floor, rel-L2 errors
    against FLA's o and final state."""
    name, H, HV, lengths = case
    started = time.perf_counter()
    x = prefill_inputs(H, HV, lengths)
    io = io_bytes(x)
    row: dict = {"case": name, "anchor": name in ANCHORS, "H": H, "HV": HV, "T": sum(lengths)}
    row.update(N=len(lengths), io_bytes=io["total"], floor_ms=io["total"] / bandwidth * 1e3)
    results = {}
    for contestant in chosen:
        record, result = measure(contestant, x, *reps)
        row.update({f"{contestant.key}_{field}": value for field, value in record.items()})
        if result is not None:
            results[contestant.key] = result
    for contestant in chosen[1:]:
        for mode in ("graph", "eager"):
            row[f"{contestant.key}_over_ours_{mode}"] = ratio(
                row.get(f"{contestant.key}_{mode}_ms"), row.get(f"ours_{mode}_ms")
            )
    row["ours_over_floor"] = ratio(row.get("ours_graph_ms"), row["floor_ms"])
    if "fla" in results:
        o_ref, s_ref = results["fla"]
        for key, (o, s) in results.items():
            if key != "fla":
                prefix = "" if key == "ours" else f"{key}_"
                row[f"{prefix}o_vs_fla"] = rel_err(o, o_ref)
                row[f"{prefix}state_vs_fla"] = rel_err(s, s_ref)
        if "fi" in results:  # the other state layout: tells a [K, V] state if FlashInfer's were one
            row["fi_state_as_kv_vs_fla"] = rel_err(results["fi"][1].transpose(-1, -2), s_ref)
    del x, results
    row["wall_s"] = time.perf_counter() - started
    return row


def fmt(value: float | None, width: int, spec: str) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}{spec}}"


PREFILL_HEADER = (
    f"{'case':<11} {'H/HV':>5} {'tokens':>6} {'seqs':>4} | {'ours g':>8} {'FLA g':>8} {'FI g':>8} | "
    f"{'ours e':>8} {'FLA e':>8} {'FI e':>8} | {'FLA/o g':>7} {'FLA/o e':>7} {'FI/o g':>7} {'FI/o e':>7} | "
    f"{'floor':>7} {'o/floor':>7} | {'o err':>7} {'st err':>7} {'FI o err':>8}"
)
PREFILL_LEGEND = (
    "ms; g = CUDA-graph replay (GPU time), e = eager call (host work included), medians; X/o g = X's time / "
    "ours (above 1: ours faster);\nfloor = I/O floor ms (inputs read and outputs written once at the copy "
    "bandwidth), o/floor = ours graph / floor; errors: rel-L2 against FLA's o and final state; * = ANCHORS.md case"
)


def prefill_line(row: dict) -> str:
    g = row.get
    return (
        f"{row['case'] + ('*' if row['anchor'] else ''):<11} {str(row['H']) + '/' + str(row['HV']):>5} "
        f"{row['T']:>6} {row['N']:>4} | {fmt(g('ours_graph_ms'), 8, '.4f')} {fmt(g('fla_graph_ms'), 8, '.4f')} "
        f"{fmt(g('fi_graph_ms'), 8, '.4f')} | {fmt(g('ours_eager_ms'), 8, '.4f')} "
        f"{fmt(g('fla_eager_ms'), 8, '.4f')} {fmt(g('fi_eager_ms'), 8, '.4f')} | "
        f"{fmt(g('fla_over_ours_graph'), 7, '.2f')} {fmt(g('fla_over_ours_eager'), 7, '.2f')} "
        f"{fmt(g('fi_over_ours_graph'), 7, '.2f')} {fmt(g('fi_over_ours_eager'), 7, '.2f')} | "
        f"{fmt(row['floor_ms'], 7, '.4f')} {fmt(g('ours_over_floor'), 7, '.2f')} | "
        f"{fmt(g('o_vs_fla'), 7, '.1e')} {fmt(g('state_vs_fla'), 7, '.1e')} {fmt(g('fi_o_vs_fla'), 8, '.1e')}"
    )


def prefill_notes(row: dict, chosen: list[Contestant]) -> list[str]:
    """What a row's columns cannot say: first-call seconds, errors, a FlashInfer state layout doubt."""
    firsts = [
        f"{c.label} {row[f'{c.key}_first_call_s']:.2f} s" for c in chosen if f"{c.key}_first_call_s" in row
    ]
    notes = [f"  first call: {', '.join(firsts) or 'none succeeded'}; case wall {row['wall_s']:.1f} s"]
    for c in chosen:
        for field in ("error", "graph_error"):
            if f"{c.key}_{field}" in row:
                notes.append(f"  {c.label} {field.replace('_', ' ')}: {row[f'{c.key}_{field}']}")
    if "fi_state_vs_fla" in row:
        notes.append(
            f"  FlashInfer final state vs FLA: {row['fi_state_vs_fla']:.1e} as [V,K] "
            f"({row['fi_state_as_kv_vs_fla']:.1e} were it [K,V])"
        )
    return notes


def geomean(values: list[float | None]) -> tuple[float | None, int]:
    """Geometric mean of the values measured, and how many there were."""
    have = [v for v in values if v is not None and v > 0 and math.isfinite(v)]
    return (math.exp(sum(map(math.log, have)) / len(have)) if have else None), len(have)


def goal_checks(rows: list[dict]) -> list[dict]:
    """The issue's goals on the rows measured: each {goal, figure, verdict (met, missed, not measured)}."""
    by_case = {r["case"]: r for r in rows}
    anchors = [(n, by_case[n].get("fla_over_ours_graph")) for n in ANCHORS if n in by_case]
    anchors = [(n, v) for n, v in anchors if v is not None]
    complete = len(anchors) == len(ANCHORS)
    goals = []

    def add(goal: str, figure: str, met: bool | None) -> None:
        """met None: undecided, for want of every case the goal needs."""
        verdict = {True: "met", False: "missed"}.get(met, "not measured" if figure == "-" else "incomplete")
        goals.append({"goal": goal, "figure": figure, "verdict": verdict})

    mean, count = geomean([v for _, v in anchors])
    add(
        f"geomean FLA/ours by graph time over the six ANCHORS cases >= {GOAL_GEOMEAN:.2f}",
        "-" if mean is None else f"{mean:.2f} ({count} of {len(ANCHORS)} measured)",
        mean >= GOAL_GEOMEAN if complete else None,
    )
    low = min(anchors, key=lambda item: item[1], default=None)
    add(
        f"no ANCHORS case below {GOAL_EACH_ANCHOR:.2f}x FLA by graph time",
        "-" if low is None else f"lowest {low[1]:.2f} ({low[0]}; {len(anchors)} of {len(ANCHORS)} measured)",
        None if low is None else (False if low[1] < GOAL_EACH_ANCHOR else (True if complete else None)),
    )
    eager = [(r["case"], r["fla_over_ours_eager"]) for r in rows if r.get("fla_over_ours_eager") is not None]
    low = min(eager, key=lambda item: item[1], default=None)
    add(
        "eager never slower than FLA (every case measured)",
        "-" if low is None else f"lowest FLA/ours eager {low[1]:.2f} ({low[0]}; {len(eager)} cases)",
        None if low is None else low[1] >= 1.0,
    )
    for name, limit in GOAL_MS.items():
        ms = by_case.get(name, {}).get("ours_graph_ms")
        add(
            f"{name} <= {limit:.3f} ms graph",
            "-" if ms is None else f"{ms:.4f} ms",
            None if ms is None else ms <= limit,
        )
    return goals


def print_prefill_summary(rows: list[dict], chosen_labels: dict[str, str]) -> dict:
    """The table again, geometric means (the six ANCHORS cases, every case) and the goals; returns them."""
    print(f"\n{PREFILL_LEGEND}\n{PREFILL_HEADER}")
    for row in rows:
        print(prefill_line(row))
    summary: dict = {"geomeans": {}}
    for key, label in chosen_labels.items():
        if key == "ours":
            continue
        for scope, members in (("anchors", [r for r in rows if r["anchor"]]), ("all", rows)):
            for mode in ("graph", "eager"):
                mean, count = geomean([r.get(f"{key}_over_ours_{mode}") for r in members])
                summary["geomeans"][f"{key}_{scope}_{mode}"] = {"geomean": mean, "cases": count}
        means = summary["geomeans"]
        print(
            f"geometric mean {label}/ours: "
            + "; ".join(
                f"{scope_label} graph {fmt(means[f'{key}_{scope}_graph']['geomean'], 0, '.2f')}, "
                f"eager {fmt(means[f'{key}_{scope}_eager']['geomean'], 0, '.2f')} "
                f"({means[f'{key}_{scope}_graph']['cases']} cases)"
                for scope, scope_label in (("anchors", "ANCHORS six"), ("all", "all cases"))
            )
        )
    summary["goals"] = goal_checks(rows) if "fla" in chosen_labels else []
    for goal in summary["goals"]:
        print(f"goal: {goal['goal']}: {goal['figure']} -- {goal['verdict']}")
    return summary


def breakdown_cases(flag: bool | None, cases: list[tuple]) -> list[tuple]:
    """--stages-breakdown: every case run; --no-stages-breakdown: none; neither: ANCHORS.md's six."""
    if flag is None:
        return [c for c in cases if c[0] in ANCHORS]
    return list(cases) if flag else []


def stage_breakdowns(cases: list[tuple], chosen: list[Contestant], rows: list[dict], save) -> None:
    """One profiled eager call per library and case, printed and added to its row (`stages`). Run it
    after all timing: a profiler session can leave CUPTI attached, which slows the launches after it."""
    by_case = {r["case"]: r for r in rows}
    for name, H, HV, lengths in cases:
        row = by_case[name]
        x = prefill_inputs(H, HV, lengths)
        row["stages"] = {}
        for c in chosen:
            if f"{c.key}_error" in row:
                continue
            try:
                fn = c.make(x)
                fn()
                breakdown = kernel_breakdown(fn)
            except Exception as error:
                print(f"  {c.label} {name}: no breakdown ({describe(error)})", flush=True)
                continue
            row["stages"][c.key] = breakdown
            graph = row.get(f"{c.key}_graph_ms")
            title = f"{c.label} {name}, one eager call" + (
                "" if graph is None else f" (graph replay {graph:.4f} ms)"
            )
            print(format_breakdown(title, breakdown), flush=True)
        del x
        save()


def select_cases(names: str | None) -> list[tuple]:
    if not names:
        return list(PREFILL_CASES)
    known = {c[0]: c for c in PREFILL_CASES}
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise SystemExit(f"unknown case(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return [known[n] for n in wanted]


def lengths_text(lengths: list[int]) -> str:
    if len(set(lengths)) == 1 and len(lengths) > 1:
        return f"{len(lengths)} x {lengths[0]}"
    text = "+".join(map(str, lengths))
    return text if len(text) <= 60 else text[:57] + "..."


def list_cases() -> None:
    print(f"{'case':<11} {'H/HV':>6} {'tokens':>6} {'seqs':>4}  lengths   (* = ANCHORS.md case)")
    for name, H, HV, lengths in PREFILL_CASES:
        star = "*" if name in ANCHORS else " "
        print(
            f"{name:<10}{star} {f'{H}/{HV}':>6} {sum(lengths):>6} {len(lengths):>4}  {lengths_text(lengths)}"
        )


def dry_run(cases: list[tuple], args) -> int:
    """No GPU: the cases chosen, each one's input and FlashInfer argument shapes (meta tensors), the
    I/O-floor bytes, and the floor at NOMINAL_BANDWIDTH."""
    graph_reps, eager_reps = reps_of(args.reps)
    staged = {c[0] for c in breakdown_cases(args.stages_breakdown, cases)}
    print(
        f"dry run: {len(cases)} prefill cases; {graph_reps} graph replays and {eager_reps} eager calls each"
    )
    print(f"floors at a nominal {NOMINAL_BANDWIDTH / 1e12:.1f} TB/s (the real run measures it)")
    print(f"FlashInfer: {load_flashinfer('--no-flashinfer' if args.no_flashinfer else None)[1]}")
    for case in cases:
        name, H, HV, lengths = case
        x = prefill_inputs(H, HV, lengths, device="meta")
        io = io_bytes(x)
        fi = flashinfer_inputs(x)
        print(
            f"\n{name}{' (ANCHORS)' if name in ANCHORS else ''}: H/HV {H}/{HV}, T {sum(lengths)}, N {len(lengths)}"
            f" [{lengths_text(lengths)}]; stage breakdown {'yes' if name in staged else 'no'}"
        )
        for label, tensors in (("ours/FLA", x), ("FlashInfer", fi)):
            shapes = ", ".join(
                f"{n} {list(t.shape)} {str(t.dtype).removeprefix('torch.')}"
                for n, t in tensors.items()
                if isinstance(t, torch.Tensor)
            )
            print(f"  {label}: {shapes}")
        print(
            f"  I/O floor: read {io['read'] / 1e6:.2f} MB + written {io['written'] / 1e6:.2f} MB = "
            f"{io['total'] / 1e6:.2f} MB -> {io['total'] / NOMINAL_BANDWIDTH * 1e3:.4f} ms"
        )
    print_prefill_summary([], {"ours": "ours", "fla": "FLA"})
    return 0


def reps_of(reps: int) -> tuple[int, int]:
    """(graph replays, eager calls) per prefill measurement: --reps and 2/3 of it."""
    return reps, max(3, round(reps * 2 / 3))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--reps",
        type=int,
        default=30,
        help="graph replays per measurement (eager calls: 2/3 of it); decode and stages use it for both",
    )
    parser.add_argument("--out", help="write the results as JSON here (rewritten after every prefill case)")
    parser.add_argument("--no-fla", action="store_true", help="time gdn_kernels alone")
    parser.add_argument("--no-flashinfer", action="store_true", help="leave FlashInfer out of prefill")
    parser.add_argument("--only", choices=("prefill", "decode", "stages"), help="run one section")
    parser.add_argument("--cases", help="comma-separated prefill case names (--list-cases); default all")
    parser.add_argument("--list-cases", action="store_true", help="print the prefill cases and exit")
    parser.add_argument(
        "--stages-breakdown",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="profile one eager call per library and case, GPU time by kernel (default: ANCHORS.md's six only)",
    )
    parser.add_argument("--dry-run", action="store_true", help="no GPU: cases, input shapes, I/O-floor bytes")
    args = parser.parse_args()
    if args.list_cases:
        list_cases()
        return 0
    cases = select_cases(args.cases)
    if args.dry_run:
        return dry_run(cases, args)

    import triton

    import gdn_kernels as ours

    fla = None
    if not args.no_fla:
        from fla.ops import gated_delta_rule as fla

    sections = {args.only} if args.only else {"prefill", "decode", "stages"}
    left_out = None
    if args.no_flashinfer:
        left_out = "--no-flashinfer"
    elif "prefill" not in sections:
        left_out = "no prefill section"
    flashinfer, flashinfer_note = load_flashinfer(left_out)
    torch.manual_seed(0)
    results: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    results["triton"] = triton.__version__
    results["flashinfer"] = flashinfer_note
    bandwidth = copy_bandwidth()
    results["copy_bandwidth_TBps"] = bandwidth / 1e12
    reps = reps_of(args.reps)
    results["reps"] = {"graph": reps[0], "eager": reps[1]}
    results.update(prefill=[], decode=[], stages=[])

    def save() -> None:
        if args.out:
            with open(args.out, "w") as f:
                json.dump(results, f, indent=2)

    print(
        f"{results['device']}, torch {results['torch']}, triton {results['triton']}, "
        f"copy {results['copy_bandwidth_TBps']:.2f} TB/s; FlashInfer: {flashinfer_note}",
        flush=True,
    )
    chosen = contestants(ours, fla, flashinfer)
    with torch.inference_mode():
        if "prefill" in sections:
            print(
                f"\nprefill: {len(cases)} cases, {reps[0]} graph replays and {reps[1]} eager calls each\n"
                f"{PREFILL_LEGEND}\n{PREFILL_HEADER}",
                flush=True,
            )
            for case in cases:
                row = bench_prefill_case(case, chosen, bandwidth, reps)
                results["prefill"].append(row)
                print(prefill_line(row), flush=True)
                print("\n".join(prefill_notes(row, chosen)), flush=True)
                save()

        decode = []
        for N, H, HV in DECODE_CASES if "decode" in sections else ():
            x = decode_inputs(N, H, HV)
            state_bytes = 2 * N * HV * K * V * 4
            row = {
                "case": f"N{N}-HV{HV}",
                "ours_eager_ms": time_eager(
                    lambda x=x: ours.fused_recurrent_gated_delta_rule(**x), args.reps
                ),
                "ours_graph_ms": time_graph(
                    lambda x=x: ours.fused_recurrent_gated_delta_rule(**x), args.reps
                ),
            }
            row["ours_bw_frac"] = state_bytes / (row["ours_graph_ms"] * 1e-3) / bandwidth
            if fla is not None:
                row["fla_eager_ms"] = time_eager(
                    lambda x=x: fla.fused_recurrent_gated_delta_rule(**x), args.reps
                )
                row["fla_graph_ms"] = time_graph(
                    lambda x=x: fla.fused_recurrent_gated_delta_rule(**x), args.reps
                )
                row["fla_bw_frac"] = state_bytes / (row["fla_graph_ms"] * 1e-3) / bandwidth
                o, _ = ours.fused_recurrent_gated_delta_rule(**x)
                o_ref, _ = fla.fused_recurrent_gated_delta_rule(**x)
                row["o_vs_fla"] = rel_err(o, o_ref)
            decode.append(row)
            print(row, flush=True)
        results["decode"] = decode
        results["stages"] = bench_stage_kernels(args.reps) if "stages" in sections else []
        # Last of all GPU work: a profiler session can leave CUPTI attached, slowing launches after it.
        staged = breakdown_cases(args.stages_breakdown, cases) if "prefill" in sections else []
        if staged:
            print(
                f"\nper-stage breakdown (CUDA kernel time of one eager call, torch.profiler), {len(staged)} cases"
            )
            stage_breakdowns(staged, chosen, results["prefill"], save)
    save()

    print(
        f"\n{results['device']}, torch {results['torch']}, triton {results['triton']}, "
        f"copy {results['copy_bandwidth_TBps']:.2f} TB/s"
    )
    if results["decode"]:
        print(
            f"\n{'decode case':<12} {'ours eager':>10} {'FLA eager':>10} {'ours graph':>10} {'FLA graph':>10} "
            f"{'ours %bw':>8} {'FLA %bw':>8}"
        )
    for r in results["decode"]:
        print(
            f"{r['case']:<12} {r['ours_eager_ms'] * 1e3:>8.1f}us {r.get('fla_eager_ms', math.nan) * 1e3:>8.1f}us "
            f"{r['ours_graph_ms'] * 1e3:>8.1f}us {r.get('fla_graph_ms', math.nan) * 1e3:>8.1f}us "
            f"{100 * r['ours_bw_frac']:>7.0f}% {100 * r.get('fla_bw_frac', math.nan):>7.0f}%"
        )
    if results["stages"]:
        print(f"\n{'stage kernel (default config)':<32} {'case':<7} {'ms':>8}")
    for r in results["stages"]:
        print(f"{r['kernel'] + ' ' + r['config']:<32} {r['case']:<7} {r['ms']:>8.3f}")
    if results["prefill"]:
        results["prefill_summary"] = print_prefill_summary(
            results["prefill"], {c.key: c.label for c in chosen}
        )
        save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
