"""Stability of the tuner's pick on the GPU host: two independent sweeps of one kernel and shape.

    python scripts/bench_stability.py --kernels chunk_state --shape H=2,HV=8,K=128,V=128,T=8192 [--keep DIR]
    python scripts/bench_stability.py --kernels chunk_kkt_solve,chunk_output --preset qwen3.5-397b-a17b

Runs the same `gdn-tune sweep --gpu auto ...` twice, each into a fresh SQLite database, then re-times both
winners of every problem side by side in this process (`ProblemBench.retime`: interleaved CUDA-graph
replays over inputs larger than L2) and reports whether they are within 2 % of each other (issue 6,
goal 5; FLA's start-up autotuning picked 0.56 ms in one process and 0.73 ms in the next, ANCHORS.md).
Extra arguments after `--` go to both sweeps (e.g. `-- --strategy tpe --trials 24`).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

TOLERANCE = 0.02


def sweep(db: Path, args: argparse.Namespace, extra: list[str]) -> None:
    shapes = [a for s in args.shape for a in ("--shape", s)] or ["--preset", args.preset or "default"]
    command = [sys.executable, "-c", "from gdn_tune.cli import main; main()", "sweep", "--gpu", args.gpu]
    command += ["--kernels", args.kernels, *shapes, "--db", f"sqlite:///{db}", *extra]
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    print("$", " ".join(command[3:]), flush=True)
    done = subprocess.run(command, env=env)
    if done.returncode != 0:
        raise SystemExit(f"sweep into {db} failed (exit {done.returncode})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernels", required=True, help="comma-separated kernel names")
    parser.add_argument("--shape", action="append", default=[], help="as gdn-tune sweep --shape (repeatable)")
    parser.add_argument("--preset", help="instead of --shape (keep it small: every problem is swept twice)")
    parser.add_argument("--gpu", default="auto")
    parser.add_argument("--rounds", type=int, default=200, help="interleaved re-timing rounds")
    parser.add_argument("--keep", help="keep both databases in this folder")
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]

    import torch

    from gdn_kernels import kernel_specs
    from gdn_tune.measure import ProblemBench
    from gdn_tune.results import winners
    from gdn_tune.storage import Storage

    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="gdn-stability-"))
    folder.mkdir(parents=True, exist_ok=True)
    dbs = [folder / "first.db", folder / "second.db"]
    for db in dbs:
        if db.exists():
            raise SystemExit(f"{db} exists: each sweep must start from a fresh database")
        sweep(db, args, extra)

    picks = [
        {(w.kernel, w.key): w for w in winners(Storage(f"sqlite:///{db}", must_exist=True))} for db in dbs
    ]
    specs = kernel_specs()
    rows = []
    for kernel, key in sorted(picks[0].keys() & picks[1].keys(), key=lambda p: (p[0], p[1].label)):
        a, b = picks[0][(kernel, key)], picks[1][(kernel, key)]
        bench = ProblemBench(specs[kernel], key, torch.device("cuda"))
        ms_a, ms_b = bench.retime([a.config, b.config], rounds=args.rounds)
        gap = abs(ms_a - ms_b) / min(ms_a, ms_b)
        rows.append(
            (kernel, key.label, a.config.label, b.config.label, a.time_ms, b.time_ms, ms_a, ms_b, gap)
        )
    missing = picks[0].keys() ^ picks[1].keys()

    print(f"\n{torch.cuda.get_device_name()}: winners of two sweeps, re-timed side by side (ms)")
    print(
        f"{'kernel':<16} {'sweep 1 pick':<34} {'sweep 2 pick':<34} {'swept 1':>8} {'swept 2':>8} {'now 1':>8} {'now 2':>8} {'gap':>6}"
    )
    for kernel, label, ca, cb, ta, tb, na, nb, gap in rows:
        verdict = "same" if ca == cb else ("ok" if gap <= TOLERANCE else "MISS")
        print(
            f"{kernel:<16} {ca:<34} {cb:<34} {ta:>8.4f} {tb:>8.4f} {na:>8.4f} {nb:>8.4f} {gap:>5.1%} {verdict}  {label}"
        )
    for kernel, key in sorted(missing, key=lambda p: (p[0], p[1].label)):
        print(f"{kernel} {key.label}: a winner in only one of the sweeps")
    within = sum(gap <= TOLERANCE for *_, gap in rows)
    print(f"{within}/{len(rows)} problems: the two picks are within {TOLERANCE:.0%} of each other's time")
    print(f"databases: {folder}")
    return 0 if within == len(rows) and not missing else 1


if __name__ == "__main__":
    sys.exit(main())
