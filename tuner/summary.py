"""The summary of a target's sweeps kept beside its tables (`tuned_configs/sm90/SWEEP.md`): trials by
status, failures by kind, time spent compiling and measuring, per kernel. The database stays out of the
repository; this page says what it held.

Deterministic: written from the database alone (no clock, no host), rows in a fixed order, so the same
database gives the same bytes and a re-run shows no diff.
"""

from __future__ import annotations

import itertools
import re
import statistics
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from gdn_kernels.tuning import write_text_atomically

from .results import sweep_rows, trial_rows, winners
from .storage import Storage
from .trial_result import TrialStatus

STATUSES = tuple(s.value for s in TrialStatus)
# Consecutive trial commits further apart than this belong to different runs of a resumed sweep (the
# longest trial is bounded by the 180 s trial timeout plus a worker restart).
RUN_GAP_S = 600.0
_NUMBER = re.compile(r"\b\d+(?:\.\d+)?\b")  # whole numbers only: "h200" is a name
# The module path of an exception's name ("triton.runtime.errors.OutOfResources: ..."), left out.
_EXCEPTION_MODULE = re.compile(r"^(?:\w+\.)+(?=\w+:)")


def failure_kind(status: str, error: str | None) -> str:
    """A short, groupable description of why a trial failed: its error's exception line (see
    `_exception_line`) with numbers replaced by N (so "needs 262144 bytes" and "needs 198656 bytes"
    count as one kind)."""
    text = (error or "").strip()
    return _NUMBER.sub("N", _exception_line(text))[:90] if text else "(no error text)"


def _exception_line(error: str) -> str:
    """The line that names the exception. A trial's error is a traceback kept by its tail (it starts
    "...cent call last):"), whose exception line follows the last frame; other errors are one message,
    named by its first line."""
    lines = [line for line in error.splitlines() if line.strip()]
    frames = [i for i, line in enumerate(lines) if line.startswith("  File ")]
    if not frames:
        return lines[0]
    # After the last frame come its source and caret lines (indented), then the exception's line.
    after = [line for line in lines[frames[-1] + 1 :] if not line.startswith(" ")]
    return _EXCEPTION_MODULE.sub("", after[0] if after else lines[-1])


def sweep_summary(storage: Storage, target: str | None = None) -> dict[str, Any]:
    """Per kernel: problems, winners, trials by status, failures by kind, compile and measuring time."""
    sweeps = [s for s in sweep_rows(storage) if target is None or s["target"] == target]
    sweep_ids = {s["id"] for s in sweeps}
    trials = [t for t in trial_rows(storage) if t["sweep_id"] in sweep_ids]
    won = [w for w in winners(storage, target) if w.sweep_id in sweep_ids]
    kernels: dict[str, dict[str, Any]] = {}
    failures: Counter[tuple[str, str, str]] = Counter()
    commits: dict[int, list] = defaultdict(list)
    for t in trials:
        row = kernels.setdefault(
            t["kernel"],
            {
                "problems": set(),
                "trials": Counter(),
                "compile_s": 0.0,
                "timed_s": 0.0,
                "measure_wall_s": 0.0,
                "speedups": [],
            },
        )
        row["problems"].add((t["sweep_id"], t["key"]))
        row["trials"][t["status"]] += 1
        row["compile_s"] += t["compile_seconds"] or 0.0
        if t["median_ms"] is not None and t["repetitions"]:
            row["timed_s"] += t["median_ms"] * t["repetitions"] / 1e3
        if t["status"] != TrialStatus.OK:
            failures[(t["kernel"], t["status"], failure_kind(t["status"], t["error"]))] += 1
        if t["finished_at"] is not None:
            commits[t["sweep_id"]].append((t["finished_at"], t["kernel"]))
    # Measuring wall time: each trial is charged the time since the previous commit of its sweep (one
    # GPU measures one trial at a time), except across a pause between runs.
    for stamps in commits.values():
        stamps.sort()
        for (before, _), (after, kernel) in itertools.pairwise(stamps):
            gap = (after - before).total_seconds()
            if 0 <= gap <= RUN_GAP_S:
                kernels[kernel]["measure_wall_s"] += gap
    for w in won:
        if w.kernel in kernels and w.speedup is not None:
            kernels[w.kernel]["speedups"].append(w.speedup)
    winners_by_kernel = Counter(w.kernel for w in won)
    interpreted = {s["interpret"] for s in sweeps}
    # What the timed replays ran on: an interpreter sweep's times are the CPU's wall clock.
    timing = (
        "gpu and interpreter" if len(interpreted) > 1 else "interpreter" if True in interpreted else "gpu"
    )
    return {
        "target": target,
        "timing": timing,
        "sweeps": sweeps,
        "kernels": {
            name: {
                "problems": len(row["problems"]),
                "with_winner": winners_by_kernel[name],
                "trials": {s: row["trials"][s] for s in STATUSES},
                "compile_s": row["compile_s"],
                "timed_s": row["timed_s"],
                "measure_wall_s": row["measure_wall_s"],
                "median_speedup": statistics.median(row["speedups"]) if row["speedups"] else None,
            }
            for name, row in sorted(kernels.items())
        },
        "failures": [
            {"kernel": k, "status": s, "kind": kind, "trials": n}
            for (k, s, kind), n in sorted(
                failures.items(), key=lambda item: (item[0][0], item[0][1], -item[1], item[0][2])
            )
        ],
    }


def _hours(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.2f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.1f} s"


# What the page calls the timed replays' time, by where they ran (`sweep_summary`'s "timing").
TIMED_LABELS = {
    "gpu": ("timed GPU", "timed GPU time is the timed replays alone (median × repetitions)"),
    "interpreter": (
        "timed CPU (interpreter)",
        "timed CPU time is the timed runs alone (median × repetitions), under the Triton interpreter: "
        "CPU wall clock, not GPU time",
    ),
    "gpu and interpreter": (
        "timed GPU + CPU (interpreter)",
        "timed time is the timed replays alone (median × repetitions), GPU time for GPU sweeps and CPU "
        "wall clock for interpreter sweeps",
    ),
}


def summary_markdown(summary: dict[str, Any]) -> str:
    """The summary as a Markdown page."""
    timed_column, timed_text = TIMED_LABELS[summary["timing"]]
    lines = [f"# Sweep summary{': ' + summary['target'] if summary['target'] else ''}", ""]
    lines += [
        "Written by `gdn-tune summary` from the sweep database, which stays out of the repository. "
        f"Compile time is CPU time of the compile pool (summed over processes); {timed_text}; "
        "measuring wall time charges each trial the time "
        f"since the previous commit of its sweep (gaps over {RUN_GAP_S:.0f} s are pauses between runs).",
        "",
        "## Sweeps",
        "",
        "| id | target | GPU | status | strategy | problems with winner | started | finished | command |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for s in summary["sweeps"]:
        lines.append(
            f"| {s['id']} | {s['target']}{' (interpreter)' if s['interpret'] else ''} | {s['gpu_name']} | "
            f"{s['status']} | {s['strategy']} | {s['problems_with_winner']}/{s['problems']} | {s['started_at']} | "
            f"{s['finished_at'] or '-'} | `{s['command']}` |"
        )
    lines += [
        "",
        "## Per kernel",
        "",
        "| kernel | problems | with winner | trials | " + " | ".join(STATUSES) + " | compile (CPU) | "
        f"{timed_column} | measuring wall | median speedup over default |",
        "| --- " * (8 + len(STATUSES)) + "|",
    ]
    totals = Counter()
    for name, k in summary["kernels"].items():
        count = sum(k["trials"].values())
        speedup = f"{k['median_speedup']:.2f}×" if k["median_speedup"] is not None else "-"
        lines.append(
            f"| {name} | {k['problems']} | {k['with_winner']} | {count} | "
            + " | ".join(str(k["trials"][s]) for s in STATUSES)
            + f" | {_hours(k['compile_s'])} | {_hours(k['timed_s'])} | {_hours(k['measure_wall_s'])} | {speedup} |"
        )
        totals.update({"problems": k["problems"], "with_winner": k["with_winner"], "trials": count})
        totals.update({s: k["trials"][s] for s in STATUSES})
        totals.update({f: k[f] for f in ("compile_s", "timed_s", "measure_wall_s")})
    lines.append(
        f"| **all** | {totals['problems']} | {totals['with_winner']} | {totals['trials']} | "
        + " | ".join(str(totals[s]) for s in STATUSES)
        + f" | {_hours(totals['compile_s'])} | {_hours(totals['timed_s'])} | {_hours(totals['measure_wall_s'])} | |"
    )
    lines += ["", "## Failures by kind", ""]
    if not summary["failures"]:
        lines.append("None: every trial was ok.")
    else:
        lines += [
            "| kernel | status | kind (the error's exception line, numbers as N) | trials |",
            "| --- | --- | --- | --- |",
        ]
        for f in summary["failures"]:
            kind = f["kind"].replace("|", "\\|")
            lines.append(f"| {f['kernel']} | {f['status']} | {kind} | {f['trials']} |")
    return "\n".join(lines) + "\n"


def write_summary(storage: Storage, out: Path, target: str | None = None) -> dict[str, Any]:
    """Write the summary page to `out` (atomically: a temp file, then a rename) and return its data;
    FileWriteError names `out` when it cannot be written."""
    summary = sweep_summary(storage, target)
    write_text_atomically(out, summary_markdown(summary))
    return summary
